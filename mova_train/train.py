"""`train(cfg)`: everything between a composed Hydra config and a finished run.

Order: check the config (cheap, before anything heavy) -> seed -> (`show=true`: build on meta, report, exit) ->
datamodule (its `prepare_data` makes a missing embedded synthetic dataset), model, LightningModule, callbacks,
loggers, strategy, Trainer -> `trainer.fit` (resumable with `ckpt_path`; the `lora_export` callback writes the LoRA) ->
optionally sample one clip.
Returns the `cfg.monitor` metric so that a Hydra sweeper can optimize it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mova_train.checkpoints.io import checkpoint_plugins
from mova_train.checkpoints.lock import OutputFolderLock
from mova_train.checkpoints.resume import checkpoint_dir, resolve_ckpt_path
from mova_train.config.validate import ConfigError, validate_config
from mova_train.utils.logging import RankedLogger

log = RankedLogger(__name__, rank_zero_only=True)

__all__ = ["ConfigError", "build_module", "check_config", "lora_spec", "model_report", "train"]


# --------------------------------------------------------------------------------------------- checks


def check_config(cfg: DictConfig) -> None:
    """Fail fast, before data or weights are touched, on settings that cannot work.

    Raises:
        ConfigError: naming the offending key and how to fix it.
    """
    data = cfg.data
    if (int(data.num_frames) - 1) % 4:
        raise ConfigError(f"data.num_frames={data.num_frames} must be 4k + 1 (e.g. 17, 97, 193)")
    for key in ("height", "width"):
        if int(data[key]) % 16:
            raise ConfigError(f"data.{key}={data[key]} must be divisible by 16 (e.g. 352x640, 720x1280)")
    if data.mode not in ("raw", "cached"):
        raise ConfigError(f"data.mode={data.mode!r} must be 'raw' or 'cached'")
    if data.mode == "raw" and not cfg.model.get("encoders"):
        raise ConfigError(
            "data.mode=raw needs model.encoders to turn clips into latents; use cached data "
            "(data=shards_cached) or set model.encoders"
        )
    root = cfg.model.get("root")
    if root is not None and not cfg.show and not Path(root).is_dir():
        raise ConfigError(
            f"model.root={root} does not exist: download the release checkpoint there or set "
            f"paths.checkpoint_dir=/path/holding/MOVA-360p (or model.root=...)"
        )
    expert = cfg.get("expert")
    if expert is not None and cfg.objective.get("expert_mode") != "single":
        raise ConfigError(
            f"expert={expert} loads one video expert but objective.expert_mode={cfg.objective.expert_mode} "
            f"routes steps to both; drop the objective.expert_mode override (expert= sets it to single)"
        )
    if lora_spec(cfg) is None and not cfg.module.get("full_finetune"):
        raise ConfigError(
            "lora=none trains nothing: set module.full_finetune=[dual_tower_bridge] (or pick a lora)"
        )
    validate_config(cfg, "fit")
    devices = cfg.trainer.get("devices")
    if _is_multirun() and devices not in (1, "1", None) and cfg.trainer.accelerator != "cpu":
        log.warning(
            "multirun with trainer.devices=%s: every DDP rank re-runs the sweep; use one device per job",
            devices,
        )


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# --------------------------------------------------------------------------------------------- data


def build_datamodule(data_cfg: DictConfig) -> Any:
    """Instantiate the datamodule from `cfg.data` (its `prepare_data` makes a missing synthetic dataset)."""
    return instantiate(data_cfg, _convert_="all")


# --------------------------------------------------------------------------------------------- model


def build_module(cfg: DictConfig, denoiser: torch.nn.Module | None = None) -> Any:
    """Instantiate the LightningModule with the model, objective, optimizer, scheduler, LoRA and encoders.

    Args:
        cfg: The composed config.
        denoiser: An already built denoiser (default: instantiate `cfg.model.denoiser`).
    """
    model = denoiser if denoiser is not None else instantiate(cfg.model.denoiser, _convert_="all")
    encoders = None
    if cfg.data.mode == "raw" and cfg.model.get("encoders"):
        encoders = instantiate(cfg.model.encoders, _convert_="all")
    # Objects go in through a partial: Hydra would turn dataclass kwargs (LoraSpec) back into configs.
    factory = instantiate(cfg.module, _partial_=True, _convert_="all")
    return factory(
        model=model,
        objective=instantiate(cfg.objective, _convert_="all"),
        optimizer=instantiate(cfg.optimizer),
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        lora=lora_spec(cfg),
        encoders=encoders,
    )


def lora_spec(cfg: DictConfig) -> Any:
    """The run's `LoraSpec`, or None for `lora=none`.

    A recipe that sets `lora.rank`/`lora.alpha` leaves those keys behind when the command line says `lora=none`
    (the recipe is merged after the group choice): a `lora` node without `_target_` is that case, not a spec.
    """
    node = cfg.get("lora")
    if not node:
        return None
    if "_target_" not in node:
        log.info("lora=none: ignoring %s set by the recipe", sorted(node))
        return None
    return instantiate(node, _convert_="all")


def _strategy_shape(cfg: DictConfig) -> dict[str, Any]:
    """Map the `strategy` config group onto the estimator's vocabulary (name, dp, cp, storage)."""
    node = cfg.get("strategy") or {}
    target = str(node.get("_target_", ""))
    devices = cfg.trainer.get("devices", 1)
    world = (devices if isinstance(devices, int) and devices > 0 else 1) * int(
        cfg.trainer.get("num_nodes", 1) or 1
    )
    if "fsdp2" in target:
        # FSDP2 shards over the flattened (dp, cp) mesh: every device holds 1/world of the weights.
        cp = int(node.get("context_parallel_size", 1) or 1)
        dp = node.get("data_parallel_size", "auto")
        dp = max(world // cp, 1) if dp in (None, "auto") else int(dp)
        return {"strategy": "fsdp2", "dp": dp * cp, "cp": cp}
    if "offload" in target:
        storage = str(node.get("storage", "native"))
        return {
            "strategy": "offload",
            "weight_dtype": "fp8" if storage in ("fp8", "int8") else "bf16",
            "activation_offload": bool(node.get("offload_activations", False)),
        }
    if "ddp" in target:
        return {"strategy": "ddp", "dp": world}
    return {"strategy": "single"}


def model_report(cfg: DictConfig) -> dict[str, float]:
    """Build the denoiser on the meta device and print the estimator's sizes, FLOPs, step time and
    per-device memory for this run's strategy, resolution and frame count (nothing is allocated).

    Returns:
        A dict with parameter counts and the per-device memory estimate in GiB (also logged).
    """
    from mova_train.estimate import estimate_run, format_estimate
    from mova_train.models.builders import MovaConfig
    from mova_train.models.lora import LoraSpec

    node = cfg.model.get("meta_denoiser") or cfg.model.denoiser
    model = instantiate(node, _convert_="all")
    experts = tuple(n for n in ("video_dit", "video_dit_2") if getattr(model, n) is not None)
    tower = getattr(model, experts[0])
    config = MovaConfig(tower.config, model.audio_dit.config, model.dual_tower_bridge.config)
    spec: LoraSpec | None = lora_spec(cfg)
    lora_targets = None
    if spec is not None:
        lora_targets = {
            c: p for c, p in (spec.components or {}).items() if getattr(model, c, None) is not None
        }
    shape = _strategy_shape(cfg)
    est = estimate_run(
        config,
        experts=experts,
        lora_rank=spec.rank if spec is not None else 0,
        lora_targets=lora_targets,
        full_finetune=tuple(cfg.module.get("full_finetune") or ()),
        frames=int(cfg.data.num_frames),
        height=int(cfg.data.height),
        width=int(cfg.data.width),
        fps=float(cfg.data.fps),
        batch=int(cfg.data.get("batch_size", 1)),
        optimizer="adamw8bit" if "8bit" in str(cfg.optimizer.get("_target_", "")) else "adamw",
        gradient_checkpointing=bool(cfg.module.get("gradient_checkpointing", False)),
        peak_tflops=float(cfg.hardware.peak_tflops),
        mfu=float(cfg.hardware.mfu),
        **{"activation_offload": bool(cfg.module.get("activation_offload", False)), **shape},
    )
    title = f"{cfg.get('task_name', 'run')} ({shape['strategy']}, {cfg.hardware.name})"
    log.info("\n%s", format_estimate(est, title=title))
    gib = 1024**3
    return {
        "params_total": float(est.params_total),
        "params_trainable": float(est.params_trainable),
        "weights_gib": sum(p.numel() * p.element_size() for p in model.parameters()) / gib,
        "device_memory_gib": est.memory.device_total / gib,
        "train_flops": float(est.train.total),
        "step_time_s": float(est.step_time_s),
    }


# --------------------------------------------------------------------------------------------- trainer parts


def _instantiate_mapping(node: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every non-null `_target_` entry of a name -> config mapping (callbacks, loggers, plugins)."""
    out: list[Any] = []
    if not node:
        return out
    for name, sub in node.items():
        if sub is None:
            continue
        if not isinstance(sub, DictConfig) or "_target_" not in sub:
            raise ConfigError(f"{what}.{name} must be a config with a _target_, got {sub!r}")
        log.debug("instantiating %s.%s <%s>", what, name, sub._target_)
        out.append(instantiate(sub, _convert_="all"))
    return out


def build_strategy(node: DictConfig) -> Any:
    """A strategy object from a `_target_` config, or the Lightning strategy name in `name` (e.g. `auto`)."""
    if "_target_" in node:
        return instantiate(node, _convert_="all")
    return str(node.get("name", "auto"))


def build_trainer(cfg: DictConfig) -> Any:
    """The Lightning Trainer with strategy, loggers, callbacks and plugins from their groups."""
    from lightning.pytorch.callbacks import LearningRateMonitor

    loggers = _instantiate_mapping(cfg.get("logger"), "logger")
    callbacks = _instantiate_mapping(cfg.get("callbacks"), "callbacks")
    if not loggers:
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    plugins = _instantiate_mapping(cfg.get("plugins"), "plugins")
    strategy = build_strategy(cfg.strategy)
    plugins += checkpoint_plugins(strategy)  # the strategies of mova_train.strategies bring their own
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for lg in loggers:  # the resolved config is the run's config in W&B / hparams in TensorBoard and CSV
        lg.log_hyperparams(resolved)
    return instantiate(
        cfg.trainer,
        strategy=strategy,
        logger=loggers or False,
        callbacks=callbacks,
        plugins=plugins or None,
        _convert_="all",
    )


# --------------------------------------------------------------------------------------------- outputs


@torch.no_grad()
def sample_after_fit(cfg: DictConfig, module: Any, datamodule: Any, out_dir: Path) -> Path | None:
    """Sample one clip with the trained model, conditioned on the first frame of a training clip, to mp4.

    Uses the pure sampler (`mova_train.sampling`) and the module's encoders (to encode the first frame and the
    prompt, and to decode the latents). The full predict loop (many prompts, writer callback, W&B media) is the
    predict entry point's job; this is the quick look at the end of a run.

    Returns:
        The mp4 path, or None when the run has no encoders to decode with.
    """
    from mova_train.codecs.encoders import latents_from_cached
    from mova_train.sampling.generator import audio_latent_length
    from mova_train.sampling.mux import write_mp4
    from mova_train.sampling.sampler import sample

    encoders = getattr(module, "encoders", None)
    if encoders is None and cfg.model.get("encoders"):
        encoders = instantiate(cfg.model.encoders, _convert_="all").to(module.device)
    if encoders is None or None in (encoders.video_vae, encoders.audio_vae, encoders.text_encoder):
        log.info(
            "sample_after_fit: no encoders to decode with (model.encoders is null); use the predict entry point"
        )
        return None
    s = cfg.sample
    batch = datamodule.finalize_batch(next(iter(datamodule.train_dataloader())), consumed=False)
    model, device, vae, dac = module.model, module.device, encoders.video_vae, encoders.audio_vae
    if "video" in batch:  # raw clip: encode its first frame (at the sample's frame count)
        num_frames = int(s.num_frames)
        y = vae.encode_first_frame_condition(batch["video"][:1, :, 0].to(device), num_frames)
        context = None
    else:  # cached clip: its first-frame condition and caption states are in the batch; it fixes the length
        lat = latents_from_cached(batch)
        y, context = lat["cond"][:1].to(device), lat["context"][:1].to(device)
        num_frames = (y.shape[2] - 1) * vae.temporal_factor + 1
    captions = batch.get("caption") or [""]
    prompt = s.prompt or captions[0]
    if s.prompt or context is None:
        context = encoders.text_encoder.encode([prompt]).to(device)
    context_neg = None
    if float(s.cfg_scale) != 1.0:
        context_neg = encoders.text_encoder.encode([s.negative_prompt or ""]).to(device)
    gen = torch.Generator().manual_seed(int(s.seed))
    audio_len = audio_latent_length(num_frames, float(s.fps), dac.sample_rate, dac.hop_length)
    video_noise = torch.randn((1, y.shape[1] - 4, *y.shape[2:]), generator=gen).to(device)
    audio_noise = torch.randn((1, dac.latent_dim, audio_len), generator=gen).to(device)
    was_training = model.training
    model.eval()
    try:
        with module.ema_swapped():
            result = sample(
                model,
                module.objective.scheduler,
                video_noise=video_noise,
                audio_noise=audio_noise,
                y=y,
                context_pos=context,
                context_neg=context_neg,
                num_steps=int(s.num_steps),
                cfg_scale=float(s.cfg_scale),
                video_fps=float(s.fps),
            )
    finally:
        model.train(was_training)
    video = vae.decode(result.video_latents.to(next(vae.parameters()).dtype))[0]
    wave = dac.decode(result.audio_latents.to(next(dac.parameters()).dtype))[0]
    path = out_dir / "samples" / f"sample_seed{int(s.seed)}.mp4"
    frames = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 0, 2, 3).cpu()
    write_mp4(path, frames, wave.cpu(), float(s.fps), dac.sample_rate)
    log.info("sample written to %s (prompt: %s)", path, prompt)
    return path


# --------------------------------------------------------------------------------------------- train


def train(cfg: DictConfig) -> float | None:
    """Run one training job described by `cfg` (see `conf/train.yaml`).

    Returns:
        The value of `cfg.monitor` at the end of fit (None when it was never logged, or with `show=true`).
    """
    import lightning

    check_config(cfg)
    log.info("config:\n%s", OmegaConf.to_yaml(cfg, resolve=True))
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    lightning.seed_everything(int(cfg.seed), workers=True)

    if cfg.show:
        model_report(cfg)
        return None

    out_dir = Path(str(cfg.paths.output_dir))
    with OutputFolderLock(out_dir):
        ckpt_path = resolve_ckpt_path(cfg.ckpt_path, checkpoint_dir(cfg))
        datamodule = build_datamodule(cfg.data)
        module = build_module(cfg)
        trainer = build_trainer(cfg)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    if cfg.sample_after_fit and trainer.is_global_zero and not trainer.fast_dev_run:
        sample_after_fit(cfg, module, datamodule, out_dir)

    value = trainer.callback_metrics.get(cfg.monitor)
    if value is None:
        log.warning("monitor %s was not logged; train() returns None", cfg.monitor)
        return None
    log.info("%s = %.6f", cfg.monitor, float(value))
    return float(value)
