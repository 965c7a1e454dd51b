"""Wan2.1 video VAE (diffusers `AutoencoderKLWan`) with MOVA's latent normalization, docs/model.md §5.1.

`WanVideoVAE` holds the diffusers model as `.vae`. Its `state_dict()` / `load_state_dict()` use the diffusers key
names **without** a `vae.` prefix (state-dict hooks strip and restore it, also when the wrapper is nested in a
larger module), so a released `video_vae/diffusion_pytorch_model.safetensors` loads into the wrapper directly,
strictly. `named_parameters()` still shows the `vae.` prefix; a loader may equally use `wrapper.vae`.

Normalization follows the diffusers Wan convention: `z_n = (z - mean) * (1 / std)` with the reciprocal taken in
float32, and `z = z_n * std + mean` before decoding.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from diffusers import AutoencoderKLWan
from torch import nn

from mova_train.codecs.configs import VideoVAEConfig

logger = logging.getLogger(__name__)

_PREFIX = "vae."
MASK_CHANNELS = 4


def _strip_vae_prefix(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
) -> None:
    """State-dict post-hook: rename `<prefix>vae.<key>` to `<prefix><key>` in place (order kept)."""
    inner = prefix + _PREFIX
    keys = [k for k in state_dict if k.startswith(inner)]
    for k in keys:
        state_dict[prefix + k[len(inner) :]] = state_dict.pop(k)


def _add_vae_prefix(
    module: nn.Module,
    state_dict: dict[str, Any],
    prefix: str,
    local_metadata: Any,
    strict: bool,
    missing_keys: list[str],
    unexpected_keys: list[str],
    error_msgs: list[str],
) -> None:
    """Load pre-hook: accept diffusers keys `<prefix><key>` by renaming them to `<prefix>vae.<key>`."""
    inner = prefix + _PREFIX
    keys = [k for k in state_dict if k.startswith(prefix) and not k.startswith(inner)]
    for k in keys:
        state_dict[inner + k[len(prefix) :]] = state_dict.pop(k)


class WanVideoVAE(nn.Module):
    """Video VAE: pixels [B, 3, F, H, W] in [-1, 1] <-> normalized latents [B, z, (F - 1) // 4 + 1, H / 8, W / 8].

    Args:
        cfg: the `video_vae/config.json` values.
    """

    def __init__(self, cfg: VideoVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vae = AutoencoderKLWan(**cfg.to_dict())
        self.register_state_dict_post_hook(_strip_vae_prefix)
        self.register_load_state_dict_pre_hook(_add_vae_prefix)

    @property
    def z_dim(self) -> int:
        """Latent channels."""
        return self.cfg.z_dim

    @property
    def temporal_factor(self) -> int:
        """Pixel frames per latent frame after the first (4 for Wan2.1)."""
        return 2 ** sum(bool(t) for t in self.cfg.temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent cell along H and W (8 for Wan2.1)."""
        return 2 ** (len(self.cfg.dim_mult) - 1)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-channel (mean, std, 1/std) in float32, shaped [1, z, 1, 1, 1], on `like`'s device."""
        if like.ndim != 5 or like.shape[1] != self.z_dim:
            raise ValueError(
                f"WanVideoVAE expects latents [B, {self.z_dim}, T', H', W'], got shape {tuple(like.shape)}"
            )
        shape = (1, self.z_dim, 1, 1, 1)
        mean = torch.tensor(self.cfg.latents_mean, dtype=torch.float32, device=like.device).view(shape)
        std = torch.tensor(self.cfg.latents_std, dtype=torch.float32, device=like.device).view(shape)
        return mean, std, 1.0 / std

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw posterior latent [B, z, T', H', W'] -> normalized `(z - mean) * (1 / std)` (same dtype)."""
        mean, _, inv_std = self._stats(z)
        return ((z.float() - mean) * inv_std).to(z.dtype)

    def denormalize(self, z_n: torch.Tensor) -> torch.Tensor:
        """Normalized latent [B, z, T', H', W'] -> raw latent `z_n * std + mean` (same dtype)."""
        mean, std, _ = self._stats(z_n)
        return (z_n.float() * std + mean).to(z_n.dtype)

    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5 or video.shape[1] != self.cfg.in_channels:
            raise ValueError(
                f"WanVideoVAE expects a video [B, {self.cfg.in_channels}, F, H, W], got shape {tuple(video.shape)}"
            )
        frames, height, width = video.shape[2:]
        if (frames - 1) % self.temporal_factor:
            raise ValueError(
                f"WanVideoVAE: num_frames={frames} must be {self.temporal_factor}k + 1 (e.g. 193); fix num_frames"
            )
        if height % self.spatial_factor or width % self.spatial_factor:
            raise ValueError(
                f"WanVideoVAE: height x width = {height} x {width} must be divisible by {self.spatial_factor}"
            )

    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """Posterior mean (mode) of the diffusers encoder, before normalization.

        Args:
            video: [B, 3, F, H, W] in [-1, 1], F = 4k + 1.

        Returns:
            [B, z, (F - 1) // 4 + 1, H / 8, W / 8].
        """
        self._check_video(video)
        return self.vae.encode(video).latent_dist.mode()

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode pixels to the normalized latent the DiT works on.

        Args:
            video: [B, 3, F, H, W] in [-1, 1], F = 4k + 1.

        Returns:
            normalized posterior mean [B, z, (F - 1) // 4 + 1, H / 8, W / 8].
        """
        return self.normalize(self.encode_raw(video))

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Decode a **denormalized** latent [B, z, T', H', W'] -> video [B, 3, 1 + 4 (T' - 1), H, W] in [-1, 1]."""
        if z.ndim != 5 or z.shape[1] != self.z_dim:
            raise ValueError(
                f"WanVideoVAE expects latents [B, {self.z_dim}, T', H', W'], got {tuple(z.shape)}"
            )
        return self.vae.decode(z).sample.clamp(-1.0, 1.0)

    def decode(self, z_n: torch.Tensor) -> torch.Tensor:
        """Decode a normalized latent.

        Args:
            z_n: normalized latent [B, z, T', H', W'].

        Returns:
            video [B, 3, 1 + 4 (T' - 1), H, W] clamped to [-1, 1].
        """
        return self.decode_raw(self.denormalize(z_n))

    def encode_first_frame_condition(self, first_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Build the first-frame conditioning `y` = [4 mask channels | normalized latent] (§2.5).

        The pixel video is [first_frame, then num_frames - 1 frames of exact zeros]; the mask is 1 on latent
        frame 0 and 0 on every later latent frame.

        Args:
            first_frame: [B, 3, H, W] in [-1, 1], already at the target size.
            num_frames: pixel frames of the clip (4k + 1).

        Returns:
            y [B, 4 + z, (num_frames - 1) // 4 + 1, H / 8, W / 8].
        """
        if first_frame.ndim != 4:
            raise ValueError(f"first_frame must be [B, 3, H, W], got shape {tuple(first_frame.shape)}")
        b, c, h, w = first_frame.shape
        zeros = first_frame.new_zeros(b, c, num_frames - 1, h, w)
        video = torch.cat([first_frame.unsqueeze(2), zeros], dim=2)
        latent = self.encode(video)
        mask = torch.zeros(b, MASK_CHANNELS, *latent.shape[2:], dtype=latent.dtype, device=latent.device)
        mask[:, :, 0] = 1.0
        return torch.cat([mask, latent], dim=1)

    def encode_empty(self, num_frames: int, height: int, width: int, batch: int = 1) -> torch.Tensor:
        """Normalized latent of an all-zero clip (exact 0.0 in [-1, 1], i.e. mid-grey): the latent half of the
        "no frame" condition of text-to-audio+video (whose 4 mask channels are all 0).

        Args:
            num_frames: pixel frames (4k + 1).
            height: frame height.
            width: frame width.
            batch: rows of the result (the same latent repeated).

        Returns:
            [batch, z, (num_frames - 1) // 4 + 1, height / 8, width / 8] in the parameters' dtype and device.
        """
        param = next(self.vae.parameters())
        zeros = torch.zeros(
            1, self.cfg.in_channels, num_frames, height, width, dtype=param.dtype, device=param.device
        )
        return self.encode(zeros).expand(batch, -1, -1, -1, -1)
