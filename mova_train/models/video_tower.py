"""The MOVA video tower: a Wan2.2-A14B-shaped DiT expert (``WanModel``, Wan-original key names)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from einops import rearrange

from mova_train.models.configs import VideoDiTConfig
from mova_train.models.dit import DiTTower, Head
from mova_train.models.rope import video_rope_freqs

__all__ = ["VideoDiT"]


class VideoDiT(DiTTower):
    """Video diffusion transformer of one expert (high- or low-noise).

    Input channel order is ``[noisy latent (out_dim) | mask (4) | condition latent (out_dim)]``.
    The head output is unpatchified with the channel fastest: ``(pt, ph, pw, c)``.
    """

    def __init__(self, cfg: VideoDiTConfig) -> None:
        super().__init__(
            cfg.dim, cfg.ffn_dim, cfg.text_dim, cfg.freq_dim, cfg.num_heads, cfg.num_layers, cfg.eps
        )
        self.config = cfg
        self.patch_size = tuple(cfg.patch_size)
        # 1. Patch embedding: Conv3d with kernel = stride = patch size.
        self.patch_embedding = nn.Conv3d(
            cfg.in_dim, cfg.dim, kernel_size=self.patch_size, stride=self.patch_size
        )
        # 2. Head: LN + modulation + Linear to out_dim * prod(patch).
        self.head = Head(cfg.dim, cfg.out_dim * math.prod(self.patch_size), cfg.eps)

    def patchify(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """``[B, in_dim, T', H', W']`` -> tokens ``[B, N, D]`` in row-major (f, h, w) order, and the grid."""
        w = self.patch_embedding.weight
        x = self.patch_embedding(x.to(w.dtype).contiguous(memory_format=torch.channels_last_3d))
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Head output ``[B, N, pt*ph*pw*C]`` -> ``[B, C, T', H', W']`` (channel fastest)."""
        pt, ph, pw = self.patch_size
        f, h, w = grid
        return rearrange(x, "b (f h w) (x y z c) -> b c (f x) (h y) (w z)", f=f, h=h, w=w, x=pt, y=ph, z=pw)

    def rope_freqs(self, grid: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        """3-D RoPE factors ``[N, head_dim/2]`` complex128 for a token grid."""
        return video_rope_freqs(grid, self.head_dim, device)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Video tower alone (no bridge).

        Args:
            x: ``[B, in_dim, T', H', W']`` DiT input (noisy latent, mask, condition latent).
            timestep: ``[B]`` or ``[1]`` float in [0, 1000].
            context: ``[B, Lt, text_dim]`` text-encoder states.

        Returns:
            ``[B, out_dim, T', H', W']`` predicted velocity (noise - x0), in the activation dtype.
        """
        tokens, grid = self.patchify(x)
        t_emb, t_mod = self.time_embed(timestep, tokens.shape[0])
        ctx = self.embed_text(context)
        freqs = self.rope_freqs(grid, tokens.device)
        for block in self.blocks:
            tokens = block(tokens, ctx, t_mod, freqs)
        return self.unpatchify(self.head(tokens, t_emb), grid)
