"""The MOVA model in plain PyTorch (no lightning, hydra or wandb imports)."""

from mova_train.models.audio_tower import AudioDiT
from mova_train.models.bridge import DualTowerBridge
from mova_train.models.builders import (
    MovaConfig,
    build_dual_tower,
    mova_release,
    mova_tiny,
    release_config,
    tiny_config,
)
from mova_train.models.configs import AudioDiTConfig, BridgeConfig, ConfigError, VideoDiTConfig
from mova_train.models.mova import EXPERTS, MovaDualTower
from mova_train.models.video_tower import VideoDiT

__all__ = [
    "EXPERTS",
    "AudioDiT",
    "AudioDiTConfig",
    "BridgeConfig",
    "ConfigError",
    "DualTowerBridge",
    "MovaConfig",
    "MovaDualTower",
    "VideoDiT",
    "VideoDiTConfig",
    "build_dual_tower",
    "mova_release",
    "mova_tiny",
    "release_config",
    "tiny_config",
]
