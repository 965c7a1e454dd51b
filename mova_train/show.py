"""`show=true`: build the denoiser on the meta device and log the estimator's sizes, FLOPs, step time and
per-device memory for the run's strategy, resolution and frame count (nothing is allocated, no data is read).

The strategy describes itself: each of our strategy classes has `estimator_shape(devices, num_nodes)`, the
keywords of `mova_train.estimate.estimate_run` (strategy name, data/context-parallel degrees, weight storage,
activation offload). A Lightning strategy name (`strategy=auto`) counts as one device.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

from mova_train.config.instantiate import build_strategy, lora_spec
from mova_train.utils.logging import RankedLogger

log = RankedLogger(__name__, rank_zero_only=True)

__all__ = ["estimator_shape", "model_report"]


def estimator_shape(cfg: DictConfig) -> dict[str, Any]:
    """The run's strategy in the estimator's vocabulary (see the module docstring)."""
    strategy = build_strategy(cfg.get("strategy"))
    shape = getattr(strategy, "estimator_shape", None)
    if shape is None:  # a Lightning name (auto) or a strategy of Lightning's own
        return {"strategy": "single"}
    return shape(cfg.trainer.get("devices", 1), cfg.trainer.get("num_nodes", 1))


def _optimizer_name(cfg: DictConfig) -> str:
    """``adamw8bit`` for an 8-bit optimizer class, else ``adamw`` (the estimator's optimizer-state sizes)."""
    return "adamw8bit" if "8bit" in str(cfg.optimizer.get("_target_", "")) else "adamw"


def model_report(cfg: DictConfig) -> dict[str, float]:
    """Build the denoiser on the meta device and log the estimate of this run (see the module docstring).

    Returns:
        Parameter counts, the weights' size and the per-device memory estimate in GiB, training FLOPs per step
        and the step time in seconds (also logged as a table).
    """
    from mova_train.estimate import estimate_run, format_estimate
    from mova_train.models.builders import MovaConfig
    from mova_train.models.mova import EXPERTS

    node = cfg.model.get("meta_denoiser") or cfg.model.denoiser
    model = instantiate(node, _convert_="all")
    experts = tuple(n for n in EXPERTS if getattr(model, n) is not None)
    tower = getattr(model, experts[0])
    config = MovaConfig(tower.config, model.audio_dit.config, model.dual_tower_bridge.config)
    spec = lora_spec(cfg)
    lora_targets = None
    if spec is not None:
        lora_targets = {
            c: p for c, p in (spec.components or {}).items() if getattr(model, c, None) is not None
        }
    shape = estimator_shape(cfg)
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
        optimizer=_optimizer_name(cfg),
        gradient_checkpointing=bool(cfg.module.get("gradient_checkpointing", False)),
        peak_tflops=float(cfg.hardware.peak_tflops),
        mfu=float(cfg.hardware.mfu),
        **shape,
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
