"""The dual-tower bridge: bidirectional cross-attention between the video and audio residual streams.

Layer ``i`` (for ``i < min(visual_layers, audio_layers)``, strategy "full") holds an audio-to-video
conditioner (video queries attend to audio tokens) and a video-to-audio conditioner. Both directions are
computed from the *pre-update* states and added with unit scale. Positions for the cross RoPE live on a
shared time axis in audio-token units: audio token ``j`` sits at ``j``, every token of video latent frame
``f`` at ``f * audio_fps / (video_fps / temporal_stride)``.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mova_train.models.configs import BridgeConfig
from mova_train.models.dit import AttentionProjections
from mova_train.models.rope import aligned_rope_tables, apply_rotate_half_rope

__all__ = ["BridgeRope", "ConditionalCrossAttention", "ConditionalCrossAttentionBlock", "DualTowerBridge"]

BridgeRope = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""(video_cos, video_sin, audio_cos, audio_sin), each ``[1, N, head_dim]``."""


class ConditionalCrossAttention(AttentionProjections):
    """Cross-attention with q from the primary stream and k/v from the (normalized) condition stream.

    Same parameters as the towers' attention (``q, k, v, o, norm_q, norm_k``) with k/v reading ``cond_dim``.
    """

    def __init__(self, dim: int, cond_dim: int, head_dim: int, eps: float) -> None:
        super().__init__(dim, dim // head_dim, eps, kv_dim=cond_dim)

    def forward(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        x_rope: tuple[torch.Tensor, torch.Tensor] | None,
        y_rope: tuple[torch.Tensor, torch.Tensor] | None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Args:
            x: ``[B, Lx, dim]`` primary stream (not normalized).
            y: ``[B, Ly, cond_dim]`` condition stream, already normalized.
            x_rope, y_rope: ``(cos, sin)`` ``[1, L, head_dim]`` tables, or None without cross RoPE.
            key_padding_mask: optional bool mask of real ``y`` tokens (context parallelism only).

        Returns:
            ``[B, Lx, dim]``.
        """
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(y))
        if x_rope is not None and y_rope is not None:
            q = apply_rotate_half_rope(q, *x_rope, self.num_heads)
            k = apply_rotate_half_rope(k, *y_rope, self.num_heads)
        return self.o(self.attention_core(q, k, self.v(y), self.num_heads, key_padding_mask=key_padding_mask))


class ConditionalCrossAttentionBlock(nn.Module):
    """``y_norm`` (LayerNorm with affine, on the condition only) followed by the cross-attention ``inner``."""

    def __init__(self, dim: int, cond_dim: int, head_dim: int, eps: float) -> None:
        super().__init__()
        self.y_norm = nn.LayerNorm(cond_dim, eps=eps, elementwise_affine=True)
        self.inner = ConditionalCrossAttention(dim, cond_dim, head_dim, eps)

    def forward(self, x, y, x_rope, y_rope, key_padding_mask=None) -> torch.Tensor:  # noqa: D102 - as ``inner``
        return self.inner(x, self.y_norm(y), x_rope, y_rope, key_padding_mask)


class DualTowerBridge(nn.Module):
    """``audio_to_video_conditioners.i`` / ``video_to_audio_conditioners.i`` for the interaction layers.

    Class metadata: ``block_classes`` are the FSDP / offload units.
    """

    block_classes: tuple[type[nn.Module], ...] = (ConditionalCrossAttentionBlock,)

    def __init__(self, cfg: BridgeConfig, video_latent_stride: int = 4) -> None:
        super().__init__()
        self.config = cfg
        # The VAE's temporal compression; upstream hard-codes 4 (a FIXME there), here it is a parameter.
        self.video_latent_stride = video_latent_stride
        n = cfg.num_interaction_layers
        v, a, d = cfg.visual_hidden_dim, cfg.audio_hidden_dim, cfg.head_dim
        self.audio_to_video_conditioners = nn.ModuleList(
            ConditionalCrossAttentionBlock(v, a, d, cfg.eps) for _ in range(n)
        )
        self.video_to_audio_conditioners = nn.ModuleList(
            ConditionalCrossAttentionBlock(a, v, d, cfg.eps) for _ in range(n)
        )

    @property
    def num_layers(self) -> int:
        """Number of interaction layers (one A2V and one V2A block each)."""
        return len(self.audio_to_video_conditioners)

    def video_positions(self, num_latent_frames: int, video_fps: float, device: torch.device) -> torch.Tensor:
        """Time position of each latent frame in audio-token units: ``f * audio_fps / (fps / stride)``."""
        step = self.config.audio_fps / (video_fps / self.video_latent_stride)
        return torch.arange(num_latent_frames, device=device, dtype=torch.float32) * step

    def rope(
        self,
        grid: tuple[int, int, int],
        audio_len: int,
        video_fps: float,
        dtype: torch.dtype,
        device: torch.device,
    ) -> BridgeRope | None:
        """Cross RoPE tables for a video token grid ``(f, h, w)`` and ``audio_len`` audio tokens.

        Returns:
            ``(video_cos, video_sin, audio_cos, audio_sin)`` with ``[1, f*h*w, d]`` and ``[1, audio_len, d]``,
            or None when ``apply_cross_rope`` is off.
        """
        if not self.config.apply_cross_rope:
            return None
        f, h, w = grid
        vpos = self.video_positions(f, video_fps, device).repeat_interleave(h * w)
        apos = torch.arange(audio_len, device=device, dtype=torch.float32)
        d = self.config.head_dim
        vcos, vsin = aligned_rope_tables(vpos, d, dtype)
        acos, asin = aligned_rope_tables(apos, d, dtype)
        return vcos, vsin, acos, asin

    def forward(
        self,
        layer: int,
        visual: torch.Tensor,
        audio: torch.Tensor,
        rope: BridgeRope | None,
        scale: float = 1.0,
        visual_mask: torch.Tensor | None = None,
        audio_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply interaction layer ``layer`` in both directions from the pre-update states.

        Args:
            layer: interaction layer index.
            visual: ``[B, Nv, visual_hidden_dim]``.
            audio: ``[B, Na, audio_hidden_dim]``.
            rope: tables from :meth:`rope`.
            scale: residual scale (1.0 in the release).
            visual_mask: optional ``[B, Nv]`` bool mask of real video tokens when they are keys (context
                parallelism).
            audio_mask: optional ``[B, Na]`` bool mask of real audio tokens when they are keys.

        Returns:
            Updated ``(visual, audio)``.
        """
        v_rope = a_rope = None
        if rope is not None:
            v_rope, a_rope = rope[:2], rope[2:]
        a2v = self.audio_to_video_conditioners[layer](visual, audio, v_rope, a_rope, audio_mask)
        v2a = self.video_to_audio_conditioners[layer](audio, visual, a_rope, v_rope, visual_mask)
        return visual + scale * a2v, audio + scale * v2a
