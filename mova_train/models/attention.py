"""Exact multi-head attention over ``[B, L, D]`` token tensors.

The default backend is ``torch.nn.functional.scaled_dot_product_attention`` (exact). FlashAttention is
used only when it is installed **and** explicitly selected with :func:`set_attention_backend`; a lossy
(quantized) kernel is never picked silently (upstream falls back to SageAttention when installed).
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch
import torch.nn.functional as F

__all__ = ["attention", "get_attention_backend", "set_attention_backend"]

log = logging.getLogger(__name__)

_BACKENDS = ("sdpa", "flash")
_backend = "sdpa"


def set_attention_backend(name: str) -> None:
    """Select the attention kernel for all towers and the bridge.

    Args:
        name: ``"sdpa"`` (default, exact, any device) or ``"flash"`` (FlashAttention 2/3, CUDA, half precision).

    Raises:
        ValueError: unknown name, or ``"flash"`` without the ``flash_attn`` / ``flash_attn_interface`` package.
    """
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"attention backend {name!r} unknown; choose one of {_BACKENDS}")
    if name == "flash" and _flash_fn() is None:
        raise ValueError(
            "attention backend 'flash' requested but neither flash_attn_interface (FA3) nor flash_attn (FA2) "
            "is installed; install one or keep backend 'sdpa'"
        )
    _backend = name
    log.info("attention backend: %s", name)


def get_attention_backend() -> str:
    """Name of the active attention backend."""
    return _backend


@functools.cache
def _flash_fn():
    for module in ("flash_attn_interface", "flash_attn"):
        if importlib.util.find_spec(module) is not None:
            return getattr(importlib.import_module(module), "flash_attn_func")
    return None


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    num_heads: int,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Full (non-causal) attention with scale ``1/sqrt(head_dim)``.

    Args:
        q: ``[B, Lq, H*d]`` queries.
        k: ``[B, Lk, H*d]`` keys.
        v: ``[B, Lk, H*d]`` values.
        num_heads: number of heads ``H``.
        key_padding_mask: optional bool ``[B, Lk]``, True where a key is real; False keys are ignored
            (used by context parallelism for padded tokens; the released model itself uses no mask).

    Returns:
        ``[B, Lq, H*d]``.
    """
    b, lq, dim = q.shape
    d = dim // num_heads
    if (
        _backend == "flash"
        and key_padding_mask is None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
    ):
        out = _flash_fn()(
            q.view(b, lq, num_heads, d), k.view(b, -1, num_heads, d), v.view(b, -1, num_heads, d)
        )
        out = out[0] if isinstance(out, tuple) else out
        return out.reshape(b, lq, dim)
    qh = q.view(b, lq, num_heads, d).transpose(1, 2)
    kh = k.view(b, -1, num_heads, d).transpose(1, 2)
    vh = v.view(b, -1, num_heads, d).transpose(1, 2)
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]
    out = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, lq, dim)
