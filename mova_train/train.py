"""`train(cfg)`: everything between a composed Hydra config and a finished run.

Order: check the config (cheap, before anything heavy) -> seed -> (`show=true`: build on meta, report, exit,
`mova_train.show`) -> datamodule (its `prepare_data` makes a missing embedded synthetic dataset), LightningModule,
Trainer with its strategy, loggers, callbacks and plugins (`mova_train.config.instantiate`) -> `trainer.fit`
(resumable with `ckpt_path`; the `lora_export` callback writes the LoRA, `validation_sampling` samples clips).
Returns the `cfg.monitor` metric so that a Hydra sweeper can optimize it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mova_train.checkpoints.lock import OutputFolderLock
from mova_train.checkpoints.resume import checkpoint_dir, resolve_ckpt_path
from mova_train.config.instantiate import build_module, build_trainer, lora_spec
from mova_train.config.validate import ConfigError, validate_config
from mova_train.utils.logging import RankedLogger

log = RankedLogger(__name__, rank_zero_only=True)

__all__ = ["ConfigError", "build_datamodule", "check_config", "train"]


# --------------------------------------------------------------------------------------------- checks


def check_config(cfg: DictConfig) -> None:
    """Fail fast, before data or weights are touched, on settings that cannot work.

    Raises:
        ConfigError: naming the offending key and how to fix it.
    """
    data = cfg.data
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
    # unknown keys, value ranges (every data.* option, through DataOptions.validate), shards
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


# --------------------------------------------------------------------------------------------- run


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
        from mova_train.show import model_report

        model_report(cfg)
        return None

    out_dir = Path(str(cfg.paths.output_dir))
    with OutputFolderLock(out_dir):
        ckpt_path = resolve_ckpt_path(cfg.ckpt_path, checkpoint_dir(cfg))
        datamodule = build_datamodule(cfg.data)
        module = build_module(cfg)
        trainer = build_trainer(cfg)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    value = trainer.callback_metrics.get(cfg.monitor)
    if value is None:
        log.warning("monitor %s was not logged; train() returns None", cfg.monitor)
        return None
    log.info("%s = %.6f", cfg.monitor, float(value))
    return float(value)
