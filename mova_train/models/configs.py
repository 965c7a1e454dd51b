"""Configuration dataclasses of the MOVA denoiser components.

Field names and defaults follow the released checkpoints' ``config.json`` files (see ``docs`` and the
model specification): the defaults are the **release** values, not upstream's stale code defaults.
``from_dict`` accepts a ``config.json`` payload and ignores bookkeeping keys (``_class_name``, ...),
but rejects settings this implementation does not support instead of silently ignoring them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Self

__all__ = ["AudioDiTConfig", "BridgeConfig", "ConfigError", "VideoDiTConfig", "config_from_dict"]


class ConfigError(ValueError):
    """A component configuration asks for something this implementation does not provide."""


def config_from_dict(cls: type, data: dict[str, Any], *, source: str = "config") -> Any:
    """Build dataclass ``cls`` from ``data``, dropping unknown keys.

    Args:
        cls: A dataclass type.
        data: Parsed ``config.json`` content.
        source: Where ``data`` came from, used in error messages.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from err


class _DictMixin:
    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> Self:
        """Build from a ``config.json`` dict; unknown keys are ignored."""
        return config_from_dict(cls, data, source=source)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, suitable for ``config.json``."""
        return dataclasses.asdict(self)


@dataclass
class VideoDiTConfig(_DictMixin):
    """Video DiT (``WanModel``) of one MOVA expert. Defaults: the released 14B expert."""

    dim: int = 5120
    in_dim: int = 36
    ffn_dim: int = 13824
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    patch_size: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_heads: int = 40
    num_layers: int = 40
    has_image_input: bool = False
    require_vae_embedding: bool = True
    require_clip_embedding: bool = False

    def __post_init__(self) -> None:
        self.patch_size = list(self.patch_size)
        if self.has_image_input:
            raise ConfigError("video_dit: has_image_input=true (CLIP image branch) is not used by MOVA")
        if len(self.patch_size) != 3:
            raise ConfigError(f"video_dit: patch_size must have 3 entries, got {self.patch_size}")
        if self.dim % self.num_heads:
            raise ConfigError(f"video_dit: dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.in_dim != 2 * self.out_dim + 4:
            raise ConfigError(
                f"video_dit: in_dim must be 2*out_dim + 4 (noisy latent | mask | condition latent), "
                f"got in_dim={self.in_dim}, out_dim={self.out_dim}"
            )

    @property
    def head_dim(self) -> int:
        """Per-head width ``dim // num_heads``."""
        return self.dim // self.num_heads


@dataclass
class AudioDiTConfig(_DictMixin):
    """Audio DiT (``WanAudioModel``). Defaults: the released 1.3B audio tower."""

    dim: int = 1536
    in_dim: int = 128
    ffn_dim: int = 8960
    out_dim: int = 128
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    patch_size: list[int] = field(default_factory=lambda: [1])
    num_heads: int = 12
    num_layers: int = 30
    has_image_input: bool = False
    require_vae_embedding: bool = False
    require_clip_embedding: bool = False
    vae_type: str = "dac"

    def __post_init__(self) -> None:
        self.patch_size = list(self.patch_size)
        if self.vae_type != "dac":
            raise ConfigError(f"audio_dit: vae_type {self.vae_type!r} is legacy; only 'dac' is supported")
        if self.has_image_input:
            raise ConfigError("audio_dit: has_image_input=true is not supported")
        if self.patch_size != [1]:
            raise ConfigError(f"audio_dit: only patch_size [1] is supported, got {self.patch_size}")
        if self.dim % self.num_heads:
            raise ConfigError(f"audio_dit: dim {self.dim} is not divisible by num_heads {self.num_heads}")

    @property
    def head_dim(self) -> int:
        """Per-head width ``dim // num_heads``."""
        return self.dim // self.num_heads


@dataclass
class BridgeConfig(_DictMixin):
    """Dual-tower bridge (``DualTowerConditionalBridge``). Defaults: the released 30-layer bridge."""

    visual_layers: int = 40
    audio_layers: int = 30
    visual_hidden_dim: int = 5120
    audio_hidden_dim: int = 1536
    audio_fps: float = 50.0
    head_dim: int = 128
    interaction_strategy: str = "full"
    apply_cross_rope: bool = True
    apply_first_frame_bias_in_rope: bool = False
    trainable_condition_scale: bool = False
    pooled_adaln: bool = False
    eps: float = 1e-6

    def __post_init__(self) -> None:
        unsupported = {
            "interaction_strategy": (self.interaction_strategy, "full"),
            "apply_first_frame_bias_in_rope": (self.apply_first_frame_bias_in_rope, False),
            "trainable_condition_scale": (self.trainable_condition_scale, False),
            "pooled_adaln": (self.pooled_adaln, False),
        }
        for name, (value, released) in unsupported.items():
            if value != released:
                raise ConfigError(
                    f"dual_tower_bridge: {name}={value!r} is not supported (release: {released!r})"
                )
        for name, dim in (
            ("visual_hidden_dim", self.visual_hidden_dim),
            ("audio_hidden_dim", self.audio_hidden_dim),
        ):
            if dim % self.head_dim:
                raise ConfigError(
                    f"dual_tower_bridge: {name} {dim} is not divisible by head_dim {self.head_dim}"
                )

    @property
    def num_interaction_layers(self) -> int:
        """Layers ``0 .. n-1`` pair video block i with audio block i (strategy "full")."""
        return min(self.visual_layers, self.audio_layers)
