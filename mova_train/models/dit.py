"""Building blocks shared by the MOVA video and audio towers (Wan-style DiT).

Module and parameter names are the released checkpoint names (Wan-original naming):
``self_attn.{q,k,v,o,norm_q,norm_k}``, ``cross_attn.*``, ``norm3``, ``ffn.0/.2``, ``modulation``,
``text_embedding.0/.2``, ``time_embedding.0/.2``, ``time_projection.1``, ``head.head``, ``head.modulation``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from mova_train.models.attention import attention
from mova_train.models.rope import apply_complex_rope

__all__ = [
    "AttentionProjections",
    "CrossAttention",
    "DiTBlock",
    "DiTTower",
    "Head",
    "SelfAttention",
    "sinusoidal_embedding",
]


def sinusoidal_embedding(dim: int, timestep: torch.Tensor) -> torch.Tensor:
    """Timestep sinusoid ``[cos(t*w_k), sin(t*w_k)]`` with ``w_k = 10000^(-k/(dim/2))``.

    Computed in float64 and returned in float32.

    Args:
        dim: embedding size (``freq_dim``).
        timestep: ``[B]`` float times in [0, 1000] (= 1000 * sigma).

    Returns:
        ``[B, dim]`` float32.
    """
    half = dim // 2
    pos = timestep.to(torch.float64)
    omega = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=timestep.device) / half)
    args = torch.outer(pos, omega)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1).to(torch.float32)


class AttentionProjections(nn.Module):
    """q/k/v/o projections with RMSNorm on q and k over the full hidden size (not per head)."""

    def __init__(self, dim: int, num_heads: int, eps: float, kv_dim: int | None = None) -> None:
        super().__init__()
        kv_dim = dim if kv_dim is None else kv_dim
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(kv_dim, dim)
        self.v = nn.Linear(kv_dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        # Replaceable attention core (context parallelism swaps it for a sequence-parallel one).
        self.attention_core: Callable[..., torch.Tensor] = attention


class SelfAttention(AttentionProjections):
    """Self-attention with the towers' complex RoPE on q and k."""

    def forward(
        self, x: torch.Tensor, freqs: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Args: x ``[B, L, D]``; freqs ``[L, d/2]`` complex128; key_padding_mask: optional bool mask of real
        keys, passed to ``attention_core`` (context parallelism). Returns ``[B, L, D]``.
        """
        q = apply_complex_rope(self.norm_q(self.q(x)), freqs, self.num_heads)
        k = apply_complex_rope(self.norm_k(self.k(x)), freqs, self.num_heads)
        return self.o(self.attention_core(q, k, self.v(x), self.num_heads, key_padding_mask=key_padding_mask))


class CrossAttention(AttentionProjections):
    """Text cross-attention: no RoPE, no mask (zero-padded text rows are attended like any row)."""

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, L, D]``; context ``[B, Lt, D]``. Returns ``[B, L, D]``."""
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(context))
        return self.o(attention(q, k, self.v(context), self.num_heads))


class DiTBlock(nn.Module):
    """One DiT block: modulated self-attention, un-modulated text cross-attention, modulated FFN."""

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.self_attn = SelfAttention(dim, num_heads, eps)
        self.cross_attn = CrossAttention(dim, num_heads, eps)
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm3 = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim)
        )
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / math.sqrt(dim))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        t_mod: torch.Tensor,
        freqs: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            x: ``[B, L, D]`` residual stream.
            context: ``[B, Lt, D]`` embedded text.
            t_mod: ``[B, 6, D]`` time projection (rows: shift, scale, gate for attention, then for the FFN).
            freqs: ``[L, d/2]`` complex RoPE factors.
            key_padding_mask: optional bool mask of real self-attention keys (context parallelism only).

        Returns:
            ``[B, L, D]``.
        """
        # Upstream adds the table and the projection in the activation dtype (bf16 in production).
        mod = self.modulation.to(x.dtype) + t_mod.to(x.dtype)
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.chunk(6, dim=1)
        h = self.norm1(x) * (1 + scale_a) + shift_a
        x = x + gate_a * self.self_attn(h, freqs, key_padding_mask)
        x = x + self.cross_attn(self.norm3(x), context)
        h = self.norm2(x) * (1 + scale_m) + shift_m
        return x + gate_m * self.ffn(h)


class Head(nn.Module):
    """Output head: ``LN(x)*(1 + scale) + shift`` from the time *embedding*, then a Linear (batch-safe)."""

    def __init__(self, dim: int, out_features: int, eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_features)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / math.sqrt(dim))

    def forward(self, x: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
        """Args: x ``[B, L, D]``; t_emb ``[B, D]``. Returns ``[B, L, out_features]``."""
        mod = self.modulation.to(x.dtype) + t_emb.to(x.dtype).unsqueeze(1)
        shift, scale = mod.chunk(2, dim=1)
        return self.head(self.norm(x) * (1 + scale) + shift)


def build_text_embedding(text_dim: int, dim: int) -> nn.Sequential:
    """``text_embedding``: Linear(text_dim, D) -> GELU(tanh) -> Linear(D, D)."""
    return nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))


def build_time_embedding(freq_dim: int, dim: int) -> nn.Sequential:
    """``time_embedding``: Linear(freq_dim, D) -> SiLU -> Linear(D, D)."""
    return nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))


def build_time_projection(dim: int) -> nn.Sequential:
    """``time_projection``: SiLU -> Linear(D, 6D)."""
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))


class DiTTower(nn.Module):
    """Shared skeleton of both towers: embeddings, blocks and head; subclasses add patchify/unpatchify.

    Class metadata for trainers: ``block_classes`` (FSDP wrapping / block swap units) and
    ``keep_in_fp32_modules`` (the timestep MLPs run in float32, as upstream does under fp32 autocast).
    """

    block_classes: tuple[type[nn.Module], ...] = (DiTBlock,)
    keep_in_fp32_modules: tuple[str, ...] = ("time_embedding", "time_projection")

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        text_dim: int,
        freq_dim: int,
        num_heads: int,
        num_layers: int,
        eps: float,
    ):
        super().__init__()
        self.dim = dim
        self.freq_dim = freq_dim
        self.num_heads = num_heads
        self.text_embedding = build_text_embedding(text_dim, dim)
        self.time_embedding = build_time_embedding(freq_dim, dim)
        self.time_projection = build_time_projection(dim)
        self.blocks = nn.ModuleList(DiTBlock(dim, ffn_dim, num_heads, eps) for _ in range(num_layers))

    @property
    def head_dim(self) -> int:
        """Per-head width ``dim // num_heads``."""
        return self.dim // self.num_heads

    def time_embed(self, timestep: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Time embedding and projection, computed in float32.

        Args:
            timestep: ``[B]`` or ``[1]`` float times in [0, 1000].
            batch: ``B``.

        Returns:
            ``t_emb [B, D]`` and ``t_mod [B, 6, D]``, float32.
        """
        timestep = timestep.reshape(-1)
        if timestep.shape[0] == 1 and batch > 1:
            timestep = timestep.expand(batch)
        s = sinusoidal_embedding(self.freq_dim, timestep)
        w = self.time_embedding[0].weight
        with torch.autocast(device_type=s.device.type, enabled=False):
            t_emb = self.time_embedding(s.to(w.dtype)).float()
            t_mod = self.time_projection(t_emb.to(w.dtype)).float().unflatten(1, (6, self.dim))
        return t_emb, t_mod

    def embed_text(self, context: torch.Tensor) -> torch.Tensor:
        """``[B, Lt, text_dim]`` -> ``[B, Lt, D]``."""
        return self.text_embedding(context.to(self.text_embedding[0].weight.dtype))
