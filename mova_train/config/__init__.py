"""Hydra configuration support: structured schemas (registered on import) and small config helpers."""

from __future__ import annotations

import torch

from mova_train.config.schema import (
    DataConfig,
    SyntheticDataConfig,
    TrainConfig,
    TrainerConfig,
    register_configs,
)

__all__ = [
    "CONF_DIR",
    "DataConfig",
    "SyntheticDataConfig",
    "TrainConfig",
    "TrainerConfig",
    "conf_dir",
    "register_configs",
    "torch_dtype",
]


def conf_dir() -> str:
    """Absolute path of the top-level `conf/` folder (a sibling of the `mova_train` package).

    The configs live beside the package, so an editable install (`pip install -e .`) or a source checkout is needed.
    `MOVA_CONF_DIR` points the entry point at another copy.
    """
    import os
    from pathlib import Path

    env = os.environ.get("MOVA_CONF_DIR")
    if env:
        return str(Path(env).resolve())
    return str(Path(__file__).resolve().parents[2] / "conf")


CONF_DIR = conf_dir()


def torch_dtype(name: str) -> torch.dtype:
    """Map a dtype name from a config (`bfloat16`, `float32`, `bf16`, `fp32`, ...) to a `torch.dtype`.

    Used as a nested `_target_` because YAML cannot hold a `torch.dtype`.
    """
    aliases = {
        "bf16": "bfloat16",
        "fp16": "float16",
        "half": "float16",
        "fp32": "float32",
        "float": "float32",
    }
    key = aliases.get(name, name)
    dtype = getattr(torch, key, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in config; use bfloat16, float16 or float32")
    return dtype


register_configs()
