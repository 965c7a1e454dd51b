"""Hydra configuration support: structured schemas (registered on import) and small config helpers."""

from __future__ import annotations

import torch
from omegaconf import ListConfig, OmegaConf

from mova_train.config.schema import (
    DataConfig,
    TrainConfig,
    TrainerConfig,
    register_configs,
)

__all__ = [
    "CONF_DIR",
    "DataConfig",
    "TrainConfig",
    "TrainerConfig",
    "conf_dir",
    "expert_mode_of",
    "experts_of",
    "negative_prompt",
    "register_configs",
    "register_resolvers",
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


def experts_of(expert: str | None) -> list[str]:
    """The video experts a run loads for the top-level `expert` key (resolver `${mova.experts:${expert}}`).

    Args:
        expert: None (both experts, the release pipeline) or the one expert a run trains, `video_dit` (high
            noise, t >= the expert boundary) or `video_dit_2` (low noise).

    Raises:
        ValueError: on any other name (Hydra reports it with the key being resolved).
    """
    from mova_train.models.mova import EXPERTS

    if expert is None:
        return list(EXPERTS)
    if expert not in EXPERTS:
        raise ValueError(f"expert={expert!r}: use null (both video experts), {' or '.join(EXPERTS)}")
    return [str(expert)]


def expert_mode_of(expert: str | None, mode: str) -> str:
    """The objective's expert routing for the `expert` key (resolver `${mova.expert_mode:${expert},MODE}`):
    `single` when one expert is chosen, else `mode` (`alternate` or `by_timestep`).
    """
    return mode if expert is None else "single"


def negative_prompt() -> str:
    """Upstream's default negative prompt (resolver `${mova.negative_prompt:}`; defined once, in
    `mova_train.sampling.requests.WAN_NEGATIVE_PROMPT`).
    """
    from mova_train.sampling.requests import WAN_NEGATIVE_PROMPT

    return WAN_NEGATIVE_PROMPT


def register_resolvers() -> None:
    """Register the `mova.*` OmegaConf resolvers the configs use (idempotent; done on import)."""
    # a ListConfig, not a list: `OmegaConf.resolve` (Hydra's instantiate) can then resolve a node that reaches the
    # model through an interpolation (`module.denoiser: ${model.denoiser}` in conf/predict.yaml)
    OmegaConf.register_new_resolver("mova.experts", lambda e: ListConfig(experts_of(e)), replace=True)
    OmegaConf.register_new_resolver("mova.expert_mode", expert_mode_of, replace=True)
    OmegaConf.register_new_resolver("mova.negative_prompt", negative_prompt, replace=True)


register_configs()
register_resolvers()
