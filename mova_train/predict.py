r"""Predict entry point: ``python -m mova_train.predict [+recipe=NAME] [overrides]`` (also installed as
``mova-predict``; config `conf/predict.yaml`).

Prompts (a requests file, or one ``prompt=...``) go through Lightning's predict loop (`MovaPredictModule`) and
come out as ``<output_dir>/<slug>-<sha8>-s<seed>.mp4`` with a ``.json`` sidecar each (`SampleWriter`). Examples::

    python -m mova_train.predict prompt="A red ball bounces on a wooden floor." sampling.steps=4
    python -m mova_train.predict +recipe=predict_tiny_cpu
    python -m mova_train.predict prompt="A man speaks." audio=voice.wav first_frame=face.png   # a2v (lip sync)
    python -m mova_train.predict prompt="Footsteps on gravel." video=walk.mp4                  # v2a (Foley)
    python -m mova_train.predict +recipe=predict_release_360p requests=prompts.jsonl \
        'lora.adapters=[{path: outputs/run/lora.safetensors, strength: 0.8}]' lora.merge=true
    python -m mova_train.predict +recipe=predict_release_360p trainer.devices=8 strategy=ddp requests=...
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from mova_train.config import CONF_DIR
from mova_train.utils.logging import RankedLogger

log = RankedLogger(__name__, rank_zero_only=True)

__all__ = ["main", "predict"]


def predict(cfg: DictConfig) -> list[Path]:
    """Run the predict loop described by ``cfg``; returns the mp4 paths written by this rank.

    The requests (``cfg.datamodule``) are parsed and checked before any weights are loaded; then the module
    (``cfg.module``) and the Trainer (strategy and ``cfg.callbacks``, among them the sample writer) are built.
    """
    import lightning
    from hydra.utils import instantiate

    from mova_train.callbacks.sample_writer import SampleWriter
    from mova_train.config.instantiate import build_trainer
    from mova_train.config.validate import validate_config

    validate_config(cfg, "predict")
    lightning.seed_everything(int(cfg.seed), workers=True)
    datamodule = instantiate(cfg.datamodule, _convert_="all")
    datamodule.setup("predict")  # validate the requests before any weights are loaded
    module = instantiate(cfg.module, _convert_="all")
    trainer = build_trainer(cfg)
    trainer.predict(module, datamodule=datamodule, return_predictions=False)
    written = [p for cb in trainer.callbacks if isinstance(cb, SampleWriter) for p in cb.written]
    log.info("wrote %d sample(s) to %s", len(written), cfg.output_dir)
    return written


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    """Compose the predict config and run it."""
    predict(cfg)


if __name__ == "__main__":
    main()
