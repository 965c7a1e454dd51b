"""Rotary position embeddings of the MOVA towers and of the bridge.

Two different conventions are used by the released model and both are reproduced exactly:

* **Towers** (self-attention): complex RoPE on *interleaved* pairs (dims ``2j, 2j+1``), tables in
  complex128 and the rotation done in float64. The video tower splits ``head_dim`` into a frame, a height
  and a width part (``d - 4*(d//6)``, ``2*(d//6)``, ``2*(d//6)`` dims: 44/42/42 for d = 128); the audio
  tower uses one axis over all dims.
* **Bridge** (cross-modal attention): rotate-half (NeoX) pairing of dims ``i`` and ``i + d/2`` on a shared
  time axis measured in audio-token units; cos/sin computed in float32 then cast to the activation dtype.
"""

from __future__ import annotations

import torch

__all__ = [
    "aligned_rope_tables",
    "apply_complex_rope",
    "apply_rotate_half_rope",
    "audio_rope_freqs",
    "complex_rope_table",
    "video_rope_freqs",
    "video_rope_split",
]

THETA = 10000.0


def complex_rope_table(positions: torch.Tensor, dim: int, theta: float = THETA) -> torch.Tensor:
    """Complex rotation factors ``exp(i * p * theta^(-2j/dim))`` for ``j < dim/2``.

    Args:
        positions: ``[N]`` positions (any real dtype).
        dim: number of real dims of this axis (even).
        theta: RoPE base.

    Returns:
        ``[N, dim/2]`` complex128.
    """
    inv = 1.0 / torch.pow(
        theta, torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device)[: dim // 2] / dim
    )
    angles = torch.outer(positions.to(torch.float64), inv)
    return torch.polar(torch.ones_like(angles), angles)


def video_rope_split(head_dim: int) -> tuple[int, int, int]:
    """Real dims of the (frame, height, width) axes of the video 3-D RoPE."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def video_rope_freqs(
    grid: tuple[int, int, int], head_dim: int, device: torch.device | None = None
) -> torch.Tensor:
    """3-D RoPE factors for a ``(f, h, w)`` token grid in row-major order.

    Returns:
        ``[f*h*w, head_dim/2]`` complex128: concat(frame[f], height[h], width[w]) per token.
    """
    f, h, w = grid
    df, dh, dw = video_rope_split(head_dim)
    tf = complex_rope_table(torch.arange(f, device=device), df)
    th = complex_rope_table(torch.arange(h, device=device), dh)
    tw = complex_rope_table(torch.arange(w, device=device), dw)
    table = torch.cat(
        [
            tf[:, None, None, :].expand(f, h, w, -1),
            th[None, :, None, :].expand(f, h, w, -1),
            tw[None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    )
    return table.reshape(f * h * w, head_dim // 2)


def audio_rope_freqs(length: int, head_dim: int, device: torch.device | None = None) -> torch.Tensor:
    """1-D RoPE factors over all ``head_dim`` dims, position = audio token index.

    Returns:
        ``[length, head_dim/2]`` complex128.
    """
    return complex_rope_table(torch.arange(length, device=device), head_dim)


def apply_complex_rope(x: torch.Tensor, freqs: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Rotate interleaved pairs of ``x`` by ``freqs`` in float64 and cast back.

    Args:
        x: ``[B, L, H*d]``.
        freqs: ``[L, d/2]`` complex128 (or ``[B, L, d/2]``).
        num_heads: ``H``.

    Returns:
        ``[B, L, H*d]`` in ``x.dtype``.
    """
    b, n, dim = x.shape
    xc = torch.view_as_complex(x.to(torch.float64).reshape(b, n, num_heads, -1, 2))
    f = freqs.unsqueeze(-2) if freqs.dim() == 3 else freqs[None, :, None, :]
    out = torch.view_as_real(xc * f).flatten(2)
    return out.to(x.dtype)


def aligned_rope_tables(
    positions: torch.Tensor, head_dim: int, dtype: torch.dtype, theta: float = THETA
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half cos/sin tables of the bridge for the given positions.

    Args:
        positions: ``[N]`` positions in audio-token units.
        head_dim: ``d``.
        dtype: activation dtype the tables are cast to (after computing them in float32).
        theta: RoPE base.

    Returns:
        ``(cos, sin)``, each ``[1, N, d]``.
    """
    inv = 1.0 / (
        theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    )
    with torch.autocast(device_type=positions.device.type, enabled=False):
        freqs = positions.to(torch.float32)[:, None] * inv[None, :]
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
    return cos[None].to(dtype), sin[None].to(dtype)


def apply_rotate_half_rope(
    x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int
) -> torch.Tensor:
    """``x * cos + rotate_half(x) * sin`` per head (pairs ``i``, ``i + d/2``).

    Args:
        x: ``[B, L, H*d]``.
        cos: ``[1 or B, L, d]`` cosine table.
        sin: ``[1 or B, L, d]`` sine table.
        num_heads: ``H``.

    Returns:
        ``[B, L, H*d]`` in the dtype of ``x``.
    """
    b, n, dim = x.shape
    xh = x.view(b, n, num_heads, -1)
    x1, x2 = xh.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    out = xh * cos.unsqueeze(2) + rotated * sin.unsqueeze(2)
    return out.reshape(b, n, dim)
