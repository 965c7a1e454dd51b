"""Size presets and constructors of the MOVA denoiser.

Configs point ``_target_`` at these functions. ``mova_tiny`` is the fixture of the tests and of the CPU
recipe; ``release_configs`` are the released MOVA-360p / MOVA-720p component configs (identical
architecture; only the weights differ); ``build_dual_tower`` builds any configuration on any device,
including ``meta`` (no memory is allocated, for key checks and memory estimates).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from mova_train.models.audio_tower import AudioDiT
from mova_train.models.bridge import DualTowerBridge
from mova_train.models.configs import AudioDiTConfig, BridgeConfig, VideoDiTConfig
from mova_train.models.mova import EXPERTS, MovaDualTower
from mova_train.models.video_tower import VideoDiT

__all__ = [
    "MovaConfig",
    "build_dual_tower",
    "cast_for_compute",
    "mova_release",
    "mova_tiny",
    "release_config",
    "tiny_config",
]


@dataclass
class MovaConfig:
    """Configs of the three denoiser parts (both video experts share ``video_dit``)."""

    video_dit: VideoDiTConfig = field(default_factory=VideoDiTConfig)
    audio_dit: AudioDiTConfig = field(default_factory=AudioDiTConfig)
    dual_tower_bridge: BridgeConfig = field(default_factory=BridgeConfig)

    def to_dict(self) -> dict:
        """The three part configs as plain nested dicts, keyed by part name."""
        return {
            "video_dit": self.video_dit.to_dict(),
            "audio_dit": self.audio_dit.to_dict(),
            "dual_tower_bridge": self.dual_tower_bridge.to_dict(),
        }


def release_config() -> MovaConfig:
    """The released MOVA config (360p and 720p share it): 2 x 14.3B video experts, 1.4B audio, 2.7B bridge."""
    return MovaConfig()


def tiny_config(
    video_dim: int = 32,
    audio_dim: int = 32,
    head_dim: int = 16,
    num_layers: int = 2,
    video_latent_channels: int = 4,
    audio_latent_channels: int = 8,
    text_dim: int = 32,
) -> MovaConfig:
    """A dual-tower config small enough for a CPU forward+backward in milliseconds."""
    return MovaConfig(
        video_dit=VideoDiTConfig(
            dim=video_dim,
            in_dim=2 * video_latent_channels + 4,
            ffn_dim=2 * video_dim,
            out_dim=video_latent_channels,
            text_dim=text_dim,
            freq_dim=32,
            num_heads=video_dim // head_dim,
            num_layers=num_layers,
        ),
        audio_dit=AudioDiTConfig(
            dim=audio_dim,
            in_dim=audio_latent_channels,
            ffn_dim=2 * audio_dim,
            out_dim=audio_latent_channels,
            text_dim=text_dim,
            freq_dim=32,
            num_heads=audio_dim // head_dim,
            num_layers=num_layers,
        ),
        dual_tower_bridge=BridgeConfig(
            visual_layers=num_layers,
            audio_layers=num_layers,
            visual_hidden_dim=video_dim,
            audio_hidden_dim=audio_dim,
            head_dim=head_dim,
        ),
    )


def cast_for_compute(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast floating parameters to ``dtype`` but keep each tower's ``keep_in_fp32_modules`` in float32."""
    module.to(dtype)
    for sub in module.modules():
        for name in getattr(sub, "keep_in_fp32_modules", ()):
            getattr(sub, name).to(torch.float32)
    return module


def build_dual_tower(
    config: MovaConfig,
    experts: tuple[str, ...] = EXPERTS,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int | None = None,
) -> MovaDualTower:
    """Construct a :class:`MovaDualTower` with random weights.

    Args:
        config: the component configs.
        experts: which video experts to build (``("video_dit",)`` trains/samples with one expert only).
        device: ``"meta"`` builds without allocating memory (weights are then loaded with ``assign=True``).
        dtype: parameter dtype (the time MLPs stay float32).
        seed: optional seed for a reproducible random init (a one-expert model then holds the same weights as
            the matching parts of the two-expert model of that seed).
    """
    unknown = set(experts) - set(EXPERTS)
    if unknown or not experts:
        raise ValueError(f"experts must be a non-empty subset of {EXPERTS}, got {experts}")
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device):
        # A seeded low-noise-only model draws (and drops) the high-noise expert too, so that its parts hold the
        # same weights as in the two-expert model of that seed (LoRA files move between the two).
        high = VideoDiT(config.video_dit) if "video_dit" in experts or seed is not None else None
        model = MovaDualTower(
            video_dit=high if "video_dit" in experts else None,
            audio_dit=AudioDiT(config.audio_dit),
            dual_tower_bridge=DualTowerBridge(config.dual_tower_bridge),
            video_dit_2=VideoDiT(config.video_dit) if "video_dit_2" in experts else None,
        )
    return cast_for_compute(model, dtype)


def mova_tiny(
    experts: tuple[str, ...] = EXPERTS, seed: int = 0, components: dict[str, str] | None = None, **kwargs
) -> MovaDualTower:
    """The tiny random-weight dual tower used by tests and the CPU recipe (keyword args: :func:`tiny_config`).

    ``components`` maps a component to a folder whose weights replace the random ones (e.g. a full fine-tune
    export, ``{dual_tower_bridge: outputs/run/lora/components/dual_tower_bridge}``).
    """
    model = build_dual_tower(tiny_config(**kwargs), experts=tuple(experts), seed=seed)
    if components:
        from mova_train.models.checkpoint import load_component_into

        for name, folder in components.items():
            if getattr(model, name, None) is None:
                raise ValueError(f"model.components: {name!r} is not a loaded component of the tiny model")
            load_component_into(getattr(model, name), folder, name)
    return model


def mova_release(
    experts: tuple[str, ...] = EXPERTS,
    device: str | torch.device = "meta",
    dtype: torch.dtype = torch.bfloat16,
) -> MovaDualTower:
    """The released architecture, on the ``meta`` device by default (load weights with ``checkpoint``)."""
    return build_dual_tower(release_config(), experts=tuple(experts), device=device, dtype=dtype)
