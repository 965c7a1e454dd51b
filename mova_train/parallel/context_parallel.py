"""Context (sequence) parallelism for :class:`~mova_train.models.mova.MovaDualTower`, Ulysses style.

Every rank of a context-parallel (cp) group holds the same batch. After patch embedding, each rank keeps
one contiguous slice of ``ceil(N / cp)`` video tokens (the last slice is zero-padded), together with the
matching slices of the RoPE tables. Each video self-attention exchanges q/k/v with an all-to-all so that every
rank attends over the *whole* sequence with ``H / cp`` heads, then exchanges the result back. Unlike upstream
(docs/model.md §11.1), padded tokens are masked as keys, so the result equals the one-process result for any
sequence length. The text cross-attention stays local (its keys, the text context, are replicated). After the
heads the sequences are gathered again.

The audio stream (a few hundred tokens) is either sharded the same way (``audio="shard"``: needs cp to divide
the audio tower's 12 heads, so cp 1, 2, 4 for the release) or **replicated** (``audio="replicate"``: every rank
keeps all audio tokens and runs the audio tower itself; cp then only has to divide the 40 video heads, so cp 8
works). With replicated audio the bridge needs no all-to-all: audio-to-video attention is local (each video
query slice attends to all audio keys), and video-to-audio attention all-gathers the video keys and values
(projected to the audio width, 1536) and attends locally with the padded keys masked. ``audio="auto"``
(default) shards when cp divides every audio-side head count and replicates otherwise.

Gradient convention: the gather's backward is a reduce-scatter with SUM over the cp group, so the gradient
that reaches rank ``r``'s slice is the gradient of ``sum over cp ranks of the loss``. A replicated stream
follows the same convention: each rank's copy receives the gradient of its own loss copy plus, through the
gathered keys, the summed gradient of every rank's use. With the (identical) loss replicated on the cp ranks,
*averaging* the parameter gradients over the cp group -- which FSDP2 / DDP do when they average over the
flattened ``(dp, cp)`` world -- gives exactly the single-process gradient, for both modes.

This module uses plain ``torch.distributed`` (gloo, nccl or hccl); it never imports Lightning.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn

from mova_train.models.attention import attention
from mova_train.models.bridge import ConditionalCrossAttention
from mova_train.models.dit import SelfAttention

__all__ = [
    "AUDIO_MODES",
    "ContextParallel",
    "GatheredKeysAttention",
    "SequenceSharding",
    "UlyssesAttention",
    "allowed_cp_sizes",
    "apply_context_parallel",
    "build_cp_group",
    "check_head_divisibility",
    "gather_sequence",
    "resolve_audio_mode",
    "shard_sequence",
]

log = logging.getLogger(__name__)

AttentionFn = Callable[..., torch.Tensor]
AUDIO_MODES = ("auto", "shard", "replicate")


class ContextParallel:
    """A context-parallel group and the sharding hooks :class:`MovaDualTower` calls in its forward.

    Args:
        group: the cp process group (e.g. ``mesh["cp"].get_group()``); None = the default (world) group.
        mask_padding: mask the zero-padded tokens as keys (default). False reproduces upstream's unmasked
            padding (results then depend on the cp size); only useful to measure that flaw.
    """

    def __init__(self, group: dist.ProcessGroup | None = None, mask_padding: bool = True) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError(
                "ContextParallel needs an initialized torch.distributed process group; call "
                "torch.distributed.init_process_group (or let the Lightning strategy do it) first"
            )
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.mask_padding = mask_padding

    def __repr__(self) -> str:
        return f"ContextParallel(rank={self.rank}, size={self.size}, mask_padding={self.mask_padding})"

    def __deepcopy__(self, memo: dict) -> ContextParallel:
        # A handle on a process group: copies of a model share it.
        return self

    def padding_mask(self, n: int, device: torch.device) -> torch.Tensor | None:
        """Bool ``[1, cp * ceil(n / cp)]`` mask of the real tokens of a gathered sequence, or None when
        there is no padding (or masking is off).
        """
        n_pad = self.size * math.ceil(n / self.size)
        if n_pad == n or not self.mask_padding:
            return None
        return (torch.arange(n_pad, device=device) < n)[None]

    # -- helpers for trainers ----------------------------------------------------------------------------
    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Overwrite ``tensor`` in place with cp-group rank 0's copy (noise, timesteps, batch) and return it.

        The cp ranks must see identical inputs; use this when random draws are seeded per global rank.
        """
        if self.size > 1:
            dist.broadcast(tensor, group=self.group, group_src=0)
        return tensor


class SequenceSharding:
    """The hooks :class:`MovaDualTower` calls in its forward (``model.sequence_parallel``).

    Args:
        cp: the context-parallel group.
        replicated: streams (``"video"``, ``"audio"``) kept whole on every rank instead of sharded.
    """

    def __init__(self, cp: ContextParallel, replicated: frozenset[str] = frozenset()) -> None:
        unknown = set(replicated) - {"video", "audio"}
        if unknown:
            raise ValueError(f"unknown stream(s) {sorted(unknown)}; expected 'video' and/or 'audio'")
        self.cp = cp
        self.replicated = frozenset(replicated)

    def __repr__(self) -> str:
        return f"SequenceSharding({self.cp!r}, replicated={sorted(self.replicated)})"

    def __deepcopy__(self, memo: dict) -> SequenceSharding:
        # Holds a process-group handle: copies of a model share it.
        return self

    def shard_stream(
        self, tokens: torch.Tensor, freqs: torch.Tensor, stream: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """This rank's slice of one token stream and of its tower RoPE table (all of it when replicated).

        Args:
            tokens: ``[B, N, D]`` embedded tokens (replicated on the cp ranks).
            freqs: ``[N, d/2]`` complex RoPE factors.
            stream: ``"video"`` or ``"audio"``.

        Returns:
            ``(tokens [B, n, D], freqs [n, d/2], key_padding_mask [1, cp*n] or None)`` with ``n = ceil(N/cp)``
            (``n = N`` and no mask for a replicated stream).
        """
        if stream in self.replicated:
            return tokens, freqs, None
        n = tokens.shape[1]
        local, _ = shard_sequence(tokens, self.cp, dim=1)
        local_freqs, _ = shard_sequence(freqs, self.cp, dim=0)
        return local, local_freqs, self.cp.padding_mask(n, tokens.device)

    def shard_bridge_rope(self, rope: Sequence[torch.Tensor] | None) -> tuple[torch.Tensor, ...] | None:
        """Slice the bridge tables ``(video_cos, video_sin, audio_cos, audio_sin)``, each ``[1, N, d]``."""
        if rope is None:
            return None
        streams = ("video", "video", "audio", "audio")
        return tuple(
            t if s in self.replicated else shard_sequence(t, self.cp, dim=1)[0]
            for t, s in zip(rope, streams, strict=True)
        )

    def gather(self, x: torch.Tensor, n: int, stream: str) -> torch.Tensor:
        """``[B, ceil(n/cp), C]`` slices -> the whole ``[B, n, C]`` sequence on every cp rank."""
        if stream in self.replicated:
            return x[:, :n]
        return gather_sequence(x, self.cp, n)


def build_cp_group(mesh: Any, dim: str = "cp", mask_padding: bool = True) -> ContextParallel:
    """:class:`ContextParallel` over one dimension of a ``torch.distributed.device_mesh.DeviceMesh``.

    Args:
        mesh: a DeviceMesh, e.g. ``init_device_mesh("cuda", (dp, cp), mesh_dim_names=("dp", "cp"))``.
        dim: the name of the context-parallel mesh dimension.
        mask_padding: see :class:`ContextParallel`.
    """
    names = getattr(mesh, "mesh_dim_names", None) or ()
    if dim not in names:
        raise ValueError(
            f"device mesh has no dimension {dim!r} (dimensions: {names}); name it in mesh_dim_names"
        )
    return ContextParallel(mesh.get_group(dim), mask_padding=mask_padding)


# -- sequence sharding ---------------------------------------------------------------------------------
def shard_sequence(x: torch.Tensor, cp: Any, dim: int = 1) -> tuple[torch.Tensor, int]:
    """Rank ``cp.rank``'s contiguous slice of ``x`` along ``dim``; the last slices are zero-padded.

    Differentiable (the gradient outside the slice is zero). Works for complex tensors.

    Args:
        x: e.g. ``[B, N, D]`` (``dim=1``) or ``[N, d]`` (``dim=0``).
        cp: anything with ``rank`` and ``size`` (a :class:`ContextParallel`).
        dim: the sequence dimension.

    Returns:
        ``(local, pad)``: ``local`` has ``ceil(N / cp.size)`` entries along ``dim``; ``pad`` zeros were appended
        to the full sequence (``cp.size * ceil(N / cp.size) - N``).
    """
    n = x.shape[dim]
    n_local = math.ceil(n / cp.size)
    pad = n_local * cp.size - n
    if pad:
        shape = list(x.shape)
        shape[dim] = pad
        x = torch.cat([x, x.new_zeros(shape)], dim=dim)
    return x.narrow(dim, cp.rank * n_local, n_local), pad


class _GatherSequence(torch.autograd.Function):
    """All-gather along dim 1; backward = reduce-scatter (SUM) of the incoming gradient."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, cp: ContextParallel) -> torch.Tensor:
        ctx.cp = cp
        local = local.contiguous()
        parts = [torch.empty(local.shape, dtype=local.dtype, device=local.device) for _ in range(cp.size)]
        dist.all_gather(parts, local, group=cp.group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        cp = ctx.cp
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=cp.group)
        return grad.chunk(cp.size, dim=1)[cp.rank].contiguous(), None


def gather_sequence(local: torch.Tensor, cp: ContextParallel, n: int) -> torch.Tensor:
    """Inverse of :func:`shard_sequence` along dim 1, with padding removed.

    Args:
        local: ``[B, ceil(n / cp), C]`` this rank's slice.
        cp: the group.
        n: true sequence length.

    Returns:
        ``[B, n, C]``, identical on every cp rank. Backward: this rank's slice of the gradient *summed* over
        the cp ranks (see the module docstring for the resulting gradient convention).
    """
    if cp.size == 1:
        return local[:, :n]
    return _GatherSequence.apply(local, cp)[:, :n]


# -- Ulysses attention -----------------------------------------------------------------------------------
class _AllToAll(torch.autograd.Function):
    """``all_to_all_single`` with equal splits along dim 0 (``[cp, ...]``); it is its own adjoint."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
        ctx.group = group
        return _all_to_all(x, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return _all_to_all(grad, ctx.group), None


def _all_to_all(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    # Both buffers must be contiguous: ``empty_like`` of a strided tensor would keep its strides.
    x = x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    dist.all_to_all_single(out, x, group=group)
    return out


def _seq_to_heads(x: torch.Tensor, cp: ContextParallel) -> torch.Tensor:
    """``[B, n, G, cp*c]`` sequence slices -> ``[B, cp*n, G, c]`` (whole sequence, this rank's head group)."""
    b, n, g, c = x.shape
    x = x.view(b, n, g, cp.size, c // cp.size).permute(3, 0, 1, 2, 4).contiguous()
    x = _AllToAll.apply(x, cp.group)  # [cp (source = sequence slice), B, n, G, c/cp]
    return x.permute(1, 0, 2, 3, 4).reshape(b, cp.size * n, g, c // cp.size)


def _heads_to_seq(x: torch.Tensor, cp: ContextParallel) -> torch.Tensor:
    """``[B, cp*n, c]`` (whole sequence, one head group) -> ``[B, n, cp*c]`` (sequence slice, all heads)."""
    b, m, c = x.shape
    n = m // cp.size
    x = x.view(b, cp.size, n, c).transpose(0, 1).contiguous()
    x = _AllToAll.apply(x, cp.group)  # [cp (source = head group), B, n, c]
    return x.permute(1, 2, 0, 3).reshape(b, n, cp.size * c)


class _CPAttention:
    """Shared frame of the context-parallel ``attention_core`` drop-ins.

    Subclasses implement :meth:`_parallel` for ``cp > 1``; with ``cp == 1`` the call is ``inner`` unchanged.

    Args:
        cp: the context-parallel group.
        inner: exact attention, called on this rank's part of the work.
    """

    def __init__(self, cp: ContextParallel, inner: AttentionFn = attention) -> None:
        self.cp = cp
        self.inner = inner

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cp!r})"

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_heads: int,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Same signature as :func:`mova_train.models.attention.attention` (shapes: see the subclass)."""
        if self.cp.size == 1:
            return self.inner(q, k, v, num_heads, key_padding_mask=key_padding_mask)
        return self._parallel(q, k, v, num_heads, key_padding_mask)

    def _parallel(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        num_heads: int,
        key_padding_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def _check_mask(self, key_padding_mask: torch.Tensor | None, gathered: int, local: int) -> None:
        """The mask must cover the gathered key sequence ``[B or 1, cp*local]``."""
        if key_padding_mask is not None and key_padding_mask.shape[-1] != gathered:
            raise ValueError(
                f"key_padding_mask covers {key_padding_mask.shape[-1]} keys but the gathered key sequence has "
                f"{gathered} (= cp {self.cp.size} x {local} local keys)"
            )


class UlyssesAttention(_CPAttention):
    """Drop-in ``attention_core``: sequence-sharded q/k/v in, sequence-sharded output out.

    ``q``, ``k`` and ``v`` are this rank's slices ``[B, n_q, H*d]`` / ``[B, n_k, H*d]``; the output is this rank's
    slice ``[B, n_q, H*d]``. ``key_padding_mask`` (if any) covers the *gathered* key sequence ``[B or 1, cp*n_k]``.
    Inside, exact attention runs on ``H/cp`` heads over the whole sequence.
    """

    def _parallel(self, q, k, v, num_heads, key_padding_mask):
        cp = self.cp
        if num_heads % cp.size:
            raise ValueError(
                f"{num_heads} attention heads cannot be split over context-parallel size {cp.size}"
            )
        if q.shape == k.shape:  # self-attention: one all-to-all for q, k and v
            qh, kh, vh = _seq_to_heads(torch.stack([q, k, v], dim=2), cp).unbind(2)
        else:
            qh = _seq_to_heads(q.unsqueeze(2), cp).squeeze(2)
            kh, vh = _seq_to_heads(torch.stack([k, v], dim=2), cp).unbind(2)
        self._check_mask(key_padding_mask, kh.shape[1], k.shape[1])
        out = self.inner(qh, kh, vh, num_heads // cp.size, key_padding_mask=key_padding_mask)
        return _heads_to_seq(out, cp)


class GatheredKeysAttention(_CPAttention):
    """Drop-in ``attention_core`` for replicated queries over sharded keys (video-to-audio, audio replicated).

    ``q`` ``[B, Lq, H*d]`` is whole on every rank; ``k`` and ``v`` are this rank's slices ``[B, n_k, H*d]``.
    They are all-gathered (backward: the summed gradient of every rank's use, see the module docstring) and
    attention runs locally over the gathered keys, with ``key_padding_mask`` covering them. The output
    ``[B, Lq, H*d]`` is identical on every cp rank.
    """

    def _parallel(self, q, k, v, num_heads, key_padding_mask):
        kv = _GatherSequence.apply(torch.stack([k, v], dim=2), self.cp)  # [B, cp*n_k, 2, H*d]
        k_all, v_all = kv.unbind(2)
        self._check_mask(key_padding_mask, k_all.shape[1], k.shape[1])
        return self.inner(q, k_all, v_all, num_heads, key_padding_mask=key_padding_mask)


# -- model wiring ----------------------------------------------------------------------------------------
_ROLES = {
    # attention module role -> (query stream, key stream)
    "video_self": ("video", "video"),
    "audio_self": ("audio", "audio"),
    "audio_to_video": ("video", "audio"),
    "video_to_audio": ("audio", "video"),
}


def _role(name: str, module: nn.Module) -> str:
    """Which streams an attention module reads, from its place in the ``MovaDualTower``."""
    if isinstance(module, ConditionalCrossAttention):
        if "video_to_audio_conditioners" in name:
            return "video_to_audio"
        return "audio_to_video"
    return "audio_self" if name.split(".", 1)[0] == "audio_dit" else "video_self"


def _attention_modules(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """``(name, role, module)`` of the towers' self-attentions and the bridge conditioners."""
    return [
        (n, _role(n, m), m)
        for n, m in model.named_modules()
        if isinstance(m, SelfAttention | ConditionalCrossAttention)
    ]


def resolve_audio_mode(cp_size: int, audio_side_heads: Sequence[int], audio: str = "auto") -> str:
    """``"shard"`` or ``"replicate"`` for the audio stream.

    Args:
        cp_size: the context-parallel size.
        audio_side_heads: head counts of every attention that reads audio tokens (the audio self-attention
            and both bridge directions).
        audio: ``"auto"`` (shard when ``cp_size`` divides every one of them), ``"shard"`` or ``"replicate"``.
    """
    if audio not in AUDIO_MODES:
        raise ValueError(f"context parallel audio mode {audio!r} unknown; choose one of {AUDIO_MODES}")
    if audio != "auto":
        return audio
    return "shard" if all(h % cp_size == 0 for h in audio_side_heads) else "replicate"


def _audio_mode(model: nn.Module, cp_size: int, audio: str) -> str:
    heads = [m.num_heads for _, role, m in _attention_modules(model) if "audio" in _ROLES[role]]
    return resolve_audio_mode(cp_size, heads, audio)


def _sharded_modules(model: nn.Module, audio_mode: str) -> list[tuple[str, nn.Module]]:
    """Attentions that run Ulysses (both streams sharded), whose heads cp must divide."""
    return [
        (n, m) for n, role, m in _attention_modules(model) if role == "video_self" or audio_mode == "shard"
    ]


def allowed_cp_sizes(model: nn.Module, audio: str = "auto") -> list[int]:
    """Context-parallel sizes this model accepts (release: ``[1, 2, 4, 5, 8, 10, 20, 40]`` with ``auto``,
    ``[1, 2, 4]`` with ``audio="shard"``).
    """
    out = []
    video = max(m.num_heads for _, role, m in _attention_modules(model) if role == "video_self")
    for c in range(1, video + 1):
        modules = _sharded_modules(model, _audio_mode(model, c, audio))
        if all(m.num_heads % c == 0 for _, m in modules):
            out.append(c)
    return out


def check_head_divisibility(model: nn.Module, cp_size: int, audio: str = "auto") -> None:
    """Raise a ValueError naming the first sharded attention whose head count ``cp_size`` does not divide.

    Args:
        model: a :class:`MovaDualTower` (or any module holding the towers' / bridge's attentions).
        cp_size: the context-parallel size.
        audio: the audio mode (see :func:`resolve_audio_mode`).
    """
    if cp_size < 1:
        raise ValueError(f"context-parallel size must be >= 1, got {cp_size}")
    for name, module in _sharded_modules(model, _audio_mode(model, cp_size, audio)):
        if module.num_heads % cp_size:
            raise ValueError(
                f"context-parallel size {cp_size} does not divide the {module.num_heads} heads of {name!r}; "
                f"allowed cp sizes for this model: {allowed_cp_sizes(model, audio)} (set the cp mesh dimension "
                "to one of them; for more ranks add data parallelism)"
            )


def apply_context_parallel(model: nn.Module, cp: ContextParallel, audio: str = "auto") -> nn.Module:
    """Make ``model`` (a :class:`MovaDualTower`) run context-parallel over ``cp``; returns it (in place).

    Installs the attention cores (:class:`UlyssesAttention` where both streams are sharded; with replicated
    audio the plain local attention for the audio self-attention and audio-to-video attention, and
    :class:`GatheredKeysAttention` for video-to-audio) and sets ``model.sequence_parallel`` to a
    :class:`SequenceSharding`, so that the forward shards the tokens and RoPE tables after embedding and
    gathers after the heads. Afterwards only ``model.forward`` is valid (calling a tower's own ``forward``
    would feed whole sequences to the sharded cores). Can be applied before or after FSDP2 ``fully_shard``.

    Args:
        model: the dual tower.
        cp: the context-parallel group.
        audio: ``"auto"``, ``"shard"`` or ``"replicate"`` (see the module docstring).

    Raises:
        ValueError: if ``cp.size`` does not divide a sharded attention's head count, or ``model`` has no
            ``sequence_parallel`` hook.
    """
    if not hasattr(model, "sequence_parallel"):
        raise ValueError(f"{type(model).__name__} has no sequence_parallel hook; apply to a MovaDualTower")
    check_head_divisibility(model, cp.size, audio)
    mode = _audio_mode(model, cp.size, audio)
    ulysses, gathered = UlyssesAttention(cp), GatheredKeysAttention(cp)
    modules = _attention_modules(model)
    for _, role, module in modules:
        if mode == "shard" or role == "video_self":
            module.attention_core = ulysses
        elif role == "video_to_audio":
            module.attention_core = gathered
        else:  # audio self-attention and audio-to-video: all keys are local
            module.attention_core = attention
    model.sequence_parallel = SequenceSharding(
        cp, frozenset({"audio"}) if mode == "replicate" else frozenset()
    )
    log.info("context parallel: %s, audio %sd, over %d attention modules", cp, mode, len(modules))
    return model
