"""Structured-config schemas for the Hydra entry point, stored in Hydra's ConfigStore.

They are pulled in through defaults lists (`conf/train.yaml` starts with `base_train`, every `conf/data/*.yaml` with
`base_data`, every `conf/trainer/*.yaml` with `base_trainer`), so that

- a misspelled key, on the command line or in a YAML file, fails at composition with Hydra's own message
  (``Could not override 'seeed'`` / ``Key 'max_stpes' not in 'TrainerConfig'``);
- a value of the wrong type fails at composition too (``seed=abc``).

Keys typed `Any` hold a config group whose options point `_target_` at different classes (model, strategy,
optimizer, ...); their own options are checked when they are instantiated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from mova_train.data.options import DataOptions
from mova_train.data.sources import DataSource
from mova_train.data.synthetic import SyntheticSpec

__all__ = ["DataConfig", "TrainConfig", "TrainerConfig", "register_configs"]


@dataclass
class DataConfig(DataOptions):
    """`MovaDataModule(**cfg.data)`: the `DataOptions` (defined there, once) plus where the data is.

    Attributes:
        shards: Training shards (a folder with `index.json`, a glob, a `.tar`, or a list).
        val_shards: Validation shards, or null.
        synthetic: The embedded synthetic dataset (`SyntheticSpec`), made by `MovaDataModule.prepare_data` when
            `shards` is its folder and missing.
        sources: Several training shard sets mixed with weights (`[{shards, weight, repeats}]`,
            `mova_train.data.sources.DataSource`), with `shards: null`.
    """

    _target_: str = "mova_train.data.datamodule.MovaDataModule"
    shards: Any = MISSING
    val_shards: Any = None
    synthetic: SyntheticSpec | None = None
    sources: list[DataSource] | None = None


@dataclass
class TrainerConfig:
    """The `lightning.pytorch.Trainer` arguments the recipes use (typos fail; add a field to use a new one).

    `accelerator`, `devices`, `num_nodes`, `enable_progress_bar`, `log_every_n_steps` do not change results.
    `strategy`, `logger`, `callbacks` and `plugins` come from their own groups and are passed by the entry point.
    """

    _target_: str = "lightning.pytorch.Trainer"
    accelerator: Any = "auto"  # a name, or a `_target_` node (the NPU accelerator)
    devices: Any = "auto"
    num_nodes: int = 1
    precision: Any = "32-true"
    max_steps: int = -1
    min_steps: int | None = None
    max_epochs: int | None = None
    max_time: Any = None
    val_check_interval: Any = None
    check_val_every_n_epoch: int | None = 1
    limit_train_batches: Any = None
    limit_val_batches: Any = None
    limit_predict_batches: Any = None
    num_sanity_val_steps: int | None = None
    log_every_n_steps: int | None = None
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    gradient_clip_algorithm: str | None = None
    fast_dev_run: Any = False
    overfit_batches: Any = 0.0
    profiler: Any = None
    deterministic: Any = None
    benchmark: bool | None = None
    detect_anomaly: bool = False
    enable_progress_bar: bool | None = None
    enable_model_summary: bool | None = None
    enable_checkpointing: bool | None = None
    use_distributed_sampler: bool = True
    inference_mode: bool = True
    default_root_dir: str | None = None


@dataclass
class HardwareConfig:
    """What `show=true` assumes about one device when it turns FLOPs into a step time.

    Attributes:
        name: Label printed with the estimate (e.g. "H100 80GB", "RTX 4090").
        peak_tflops: Dense bf16 peak per device (H100 SXM 989, A100 312, RTX 4090 165).
        mfu: Model-FLOPs utilization assumed (0.4 is typical for large DiTs).
    """

    name: str = "H100 80GB"
    peak_tflops: float = 989.0
    mfu: float = 0.4


@dataclass
class TrainConfig:
    """Top level of `conf/train.yaml`.

    Attributes:
        task_name: Names the output folder (`outputs/<task_name>/...`) and the W&B group default.
        seed: Global seed (`lightning.seed_everything`), also the default seed of the model init and the data stream.
        tags: Free-form tags for the loggers.
        expert: None trains both video experts; `video_dit` or `video_dit_2` loads and trains that one only
            (the model's experts, the objective's routing and the LoRA targets follow it).
        ckpt_path: Resume from this Lightning checkpoint; `last` resumes from the run's newest checkpoint.
        show: Build the model on the meta device, log parameter counts and a memory estimate, and exit.
        monitor: The metric `train()` returns (what a Hydra sweeper optimizes), e.g. `train/loss` or `val/loss`.
        float32_matmul_precision: `torch.set_float32_matmul_precision` (`highest`, `high`, `medium`).
        model: `denoiser` (and `meta_denoiser`, `encoders`) configs, from `conf/model/`.
        lora: A `LoraSpec` config or null (full fine-tune of `module.full_finetune`), from `conf/lora/`.
        data: The datamodule, from `conf/data/` (schema `DataConfig`).
        strategy: A Lightning strategy config (`_target_`) or `{name: auto}`, from `conf/strategy/`.
        optimizer: A partial optimizer, from `conf/optimizer/`.
        lr_scheduler: A partial LR scheduler or null, from `conf/lr_scheduler/`.
        objective: The flow-matching objective, from `conf/objective/`.
        module: The LightningModule's remaining arguments (`_target_`, EMA, gradient checkpointing, ...).
        trainer: Trainer arguments, from `conf/trainer/` (schema `TrainerConfig`).
        logger: Mapping name -> logger config (empty: no logger), from `conf/logger/`.
        callbacks: Mapping name -> callback config, from `conf/callbacks/`.
        plugins: Mapping name -> Trainer plugin config (e.g. checkpoint IO).
        paths: Data, checkpoint and output locations, from `conf/paths/`.
        hardware: The device `show=true` estimates for (schema `HardwareConfig`).
    """

    task_name: str = "train"
    seed: int = 0
    tags: list[str] = field(default_factory=list)
    expert: str | None = None
    ckpt_path: str | None = None
    show: bool = False
    monitor: str = "train/loss"
    float32_matmul_precision: str | None = None
    model: Any = MISSING
    lora: Any = None
    data: Any = MISSING
    strategy: Any = MISSING
    optimizer: Any = MISSING
    lr_scheduler: Any = None
    objective: Any = MISSING
    module: Any = MISSING
    trainer: Any = MISSING
    logger: Any = None
    callbacks: Any = None
    plugins: Any = None
    paths: Any = MISSING
    hardware: HardwareConfig = field(default_factory=HardwareConfig)


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent; called on import of `mova_train.config`)."""
    cs = ConfigStore.instance()
    cs.store(name="base_train", node=TrainConfig)
    cs.store(group="data", name="base_data", node=DataConfig)
    cs.store(group="trainer", name="base_trainer", node=TrainerConfig)
