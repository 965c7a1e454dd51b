"""Predict entry point: ``python -m mova_train.predict [+recipe=NAME] [overrides]`` (config `conf/predict.yaml`).

Prompts (a requests file, or one ``prompt=...``) go through Lightning's predict loop (`MovaPredictModule`) and
come out as ``<output_dir>/<slug>-<sha8>-s<seed>.mp4`` with a ``.json`` sidecar each (`SampleWriter`). Examples::

    python -m mova_train.predict prompt="A red ball bounces on a wooden floor." sampling.steps=4
    python -m mova_train.predict +recipe=predict_tiny_cpu
    python -m mova_train.predict prompt="A man speaks." audio=voice.wav first_frame=face.png   # a2v (lip sync)
    python -m mova_train.predict prompt="Footsteps on gravel." video=walk.mp4                  # v2a (Foley)
    python -m mova_train.predict +recipe=predict_release_360p requests=prompts.jsonl \\
        'lora.adapters=[{path: outputs/run/lora.safetensors, strength: 0.8}]' lora.merge=true
    python -m mova_train.predict +recipe=predict_release_360p trainer.devices=8 strategy=ddp requests=...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from mova_train.config import CONF_DIR
from mova_train.utils.logging import RankedLogger

log = RankedLogger(__name__, rank_zero_only=True)

__all__ = ["main", "predict"]


def predict(cfg: DictConfig) -> list[Path]:
    """Run the predict loop described by ``cfg``; returns the mp4 paths written by this rank."""
    import lightning
    from hydra.utils import instantiate

    from mova_train.callbacks.sample_writer import SampleWriter
    from mova_train.config import torch_dtype
    from mova_train.config.validate import validate_config
    from mova_train.lit.predict import MovaPredictModule, PredictDataModule
    from mova_train.train import build_strategy

    validate_config(cfg, "predict")
    lightning.seed_everything(int(cfg.seed), workers=True)
    sampling: dict[str, Any] = OmegaConf.to_container(cfg.sampling, resolve=True)  # type: ignore[assignment]
    datamodule = PredictDataModule(
        requests=cfg.requests,
        prompt=cfg.prompt,
        first_frame=cfg.first_frame,
        audio=cfg.get("audio"),
        video=cfg.get("video"),
        sampling=sampling,
        batch_size=int(cfg.predict.batch_size),
    )
    datamodule.setup("predict")  # validate the requests before any weights are loaded
    denoiser = instantiate(cfg.model.denoiser, _convert_="all")
    encoders = instantiate(cfg.model.encoders, _convert_="all")
    adapters = OmegaConf.to_container(cfg.lora.adapters, resolve=True) if cfg.lora.adapters else []
    module = MovaPredictModule(
        denoiser=denoiser,
        video_vae=encoders.video_vae,
        audio_vae=encoders.audio_vae,
        text_encoder=encoders.text_encoder,
        scheduler=instantiate(cfg.flow_scheduler, _convert_="all"),
        loras=adapters,  # type: ignore[arg-type]
        merge_lora=bool(cfg.lora.merge),
        batch_cfg=bool(cfg.predict.batch_cfg),
        model_dtype=torch_dtype(cfg.predict.model_dtype) if cfg.predict.model_dtype else None,
        release_high_noise=str(cfg.predict.release_high_noise),
        first_frame_mode=str(cfg.predict.first_frame_mode),
    )
    writer = SampleWriter(str(cfg.output_dir), save_latents=bool(cfg.predict.save_latents))
    trainer = instantiate(
        cfg.trainer, strategy=build_strategy(cfg.strategy), logger=False, callbacks=[writer], _convert_="all"
    )
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    log.info("wrote %d sample(s) to %s", len(writer.written), cfg.output_dir)
    return writer.written


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    """Compose the predict config and run it."""
    predict(cfg)


if __name__ == "__main__":
    main()
