"""The MOVA audio tower: a Wan2.1-1.3B-shaped DiT over DAC latents (``WanAudioModel`` key names)."""

from __future__ import annotations

import torch
import torch.nn as nn

from mova_train.models.configs import AudioDiTConfig
from mova_train.models.dit import DiTTower, Head
from mova_train.models.rope import audio_rope_freqs

__all__ = ["AudioDiT"]


class AudioDiT(DiTTower):
    """Audio diffusion transformer: one token per DAC latent frame (Conv1d patch 1), 1-D RoPE."""

    def __init__(self, cfg: AudioDiTConfig) -> None:
        super().__init__(
            cfg.dim, cfg.ffn_dim, cfg.text_dim, cfg.freq_dim, cfg.num_heads, cfg.num_layers, cfg.eps
        )
        self.config = cfg
        # 1. Patch embedding: Conv1d, kernel = stride = 1.
        self.patch_embedding = nn.Conv1d(
            cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size[0], stride=cfg.patch_size[0]
        )
        # 2. Head.
        self.head = Head(cfg.dim, cfg.out_dim * cfg.patch_size[0], cfg.eps)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in_dim, L]`` -> tokens ``[B, L, D]``."""
        w = self.patch_embedding.weight
        return self.patch_embedding(x.to(w.dtype)).transpose(1, 2)

    @staticmethod
    def unpatchify(x: torch.Tensor) -> torch.Tensor:
        """Head output ``[B, L, C]`` -> ``[B, C, L]`` (patch 1)."""
        return x.transpose(1, 2)

    def rope_freqs(self, length: int, device: torch.device) -> torch.Tensor:
        """1-D RoPE factors ``[L, head_dim/2]`` complex128."""
        return audio_rope_freqs(length, self.head_dim, device)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Audio tower alone (no bridge).

        Args:
            x: ``[B, in_dim, L]`` audio latent.
            timestep: ``[B]`` or ``[1]`` float in [0, 1000].
            context: ``[B, Lt, text_dim]``.

        Returns:
            ``[B, out_dim, L]`` predicted velocity.
        """
        tokens = self.patchify(x)
        t_emb, t_mod = self.time_embed(timestep, tokens.shape[0])
        ctx = self.embed_text(context)
        freqs = self.rope_freqs(tokens.shape[1], tokens.device)
        for block in self.blocks:
            tokens = block(tokens, ctx, t_mod, freqs)
        return self.unpatchify(self.head(tokens, t_emb))
