"""Block streaming of frozen weights for single-GPU training (``strategy=single_gpu_offload``).

:class:`BlockStreamer` is plain torch (no Lightning). Every *unit* of the model (each instance of
``model.block_classes``: DiT blocks and bridge conditioners) keeps its **frozen** parameters in a host store
and holds only a 0-element placeholder on the device. The unit's ``forward`` is wrapped so that, just before
it runs, the weights are copied to the device (on a side stream when the device has streams, with an event
that the compute stream waits on) and swapped in; right after it returns they are swapped out again and the
device copies are released. While unit ``i`` runs, the next ``prefetch`` units (in the order observed on
earlier passes, learnt separately for the forward pass and for the checkpoint recomputation of the backward
pass) are already being copied, so transfers overlap compute.

Trainable parameters (LoRA ``lora_A`` / ``lora_B``, or a fully fine-tuned component) are never streamed: they
and their optimizer state stay on the device. Everything outside the units (patch embeddings, time and text
embeddings, heads) is small and stays resident.

Backward: autograd keeps references to the weights a unit used. With non-reentrant gradient checkpointing
around every unit (``MovaDualTower.set_gradient_checkpointing(True)``; the strategy turns it on), nothing of
the unit is saved during the forward pass, and the recomputation in the backward pass calls the wrapped
``forward`` again, which re-streams the weights. Without checkpointing the result is still correct, but the
streamed weights stay alive in the autograd graph until the backward pass (no memory saving).

Storage (``storage=``):

- ``"native"`` (default, lossless): the parameter's own dtype (bf16 for a bf16 model).
- ``"int8"`` (lossy): symmetric per-output-row int8 with a float32 scale ``absmax / 127`` per row.
- ``"fp8"`` (lossy, upstream's scheme, docs/model.md §10.3): ``float8_e4m3fn`` with one float32 scale
  ``absmax / 448`` per tensor.

The 8-bit kinds halve host memory and PCIe traffic, but training then sees rounded frozen weights; tensors
with fewer than two dimensions (biases, norm gains, modulation rows) always stay lossless.

On a CPU "device" the same code path runs (host store -> a separate copy made with ``copy_``), without
streams, so the logic is unit-tested on CPU. :attr:`BlockStreamer.stats` counts transfers.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

__all__ = ["STORAGE_KINDS", "BlockStreamer", "StreamStats"]

STORAGE_KINDS = ("native", "int8", "fp8")


@dataclass
class StreamStats:
    """Transfer counters (reset with :meth:`BlockStreamer.reset_stats`).

    Attributes:
        transfers: unit weight sets copied host -> device.
        bytes: bytes copied (host representation, i.e. 8-bit payloads count one byte per element).
        prefetch_hits: units whose weights were already in flight when they were needed.
        per_unit: transfers per unit name.
    """

    transfers: int = 0
    bytes: int = 0
    prefetch_hits: int = 0
    per_unit: Counter = field(default_factory=Counter)


@dataclass
class _HostTensor:
    """One frozen parameter in the host store (``data`` possibly quantized; ``scale`` for 8-bit kinds)."""

    data: torch.Tensor
    scale: torch.Tensor | None
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        extra = self.scale.numel() * self.scale.element_size() if self.scale is not None else 0
        return self.data.numel() * self.data.element_size() + extra

    def to_device(self, device: torch.device, non_blocking: bool) -> torch.Tensor:
        """A fresh device tensor with the (dequantized) values, in the parameter's dtype."""
        buf = torch.empty(self.data.shape, dtype=self.data.dtype, device=device)
        buf.copy_(self.data, non_blocking=non_blocking)
        if self.scale is None:
            return buf
        scale = self.scale.to(device, non_blocking=non_blocking)
        return (buf.to(torch.float32) * scale).to(self.dtype)

    def dequantized(self) -> torch.Tensor:
        """The values on the host in the parameter's dtype."""
        return self.to_device(torch.device("cpu"), non_blocking=False)


def _quantize(t: torch.Tensor, storage: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    if storage == "native" or t.dim() < 2 or not t.is_floating_point():
        return t, None
    w = t.detach().to(torch.float32)
    if storage == "int8":
        scale = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True).clamp_min(1e-12) / 127.0
        return (w / scale).round().clamp(-127, 127).to(torch.int8), scale
    scale = w.abs().amax().clamp_min(1e-12) / 448.0
    return (w / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), scale


@dataclass
class _Slot:
    module: nn.Module
    name: str
    qualname: str
    host: _HostTensor
    placeholder: nn.Parameter


@dataclass
class _Unit:
    index: int
    name: str
    module: nn.Module
    slots: list[_Slot]


@dataclass
class _Fetched:
    tensors: list[torch.Tensor]
    event: object | None


class BlockStreamer:
    """Stream the frozen weights of ``model``'s units between a host store and ``device``.

    Args:
        model: the model (e.g. a ``MovaDualTower``); it is modified in place (see :meth:`remove`).
        device: the compute device the units run on.
        block_classes: unit classes; defaults to ``model.block_classes``.
        prefetch: number of units copied ahead of the running one (0: copy synchronously on use).
        storage: ``"native"``, ``"int8"`` or ``"fp8"`` (see the module docstring).
        pin_memory: pin the host store (default: when ``device`` is not the CPU).
    """

    def __init__(
        self,
        model: nn.Module,
        device: torch.device | str,
        block_classes: Sequence[type[nn.Module]] | None = None,
        prefetch: int = 1,
        storage: str = "native",
        pin_memory: bool | None = None,
    ) -> None:
        if storage not in STORAGE_KINDS:
            raise ValueError(f"offload storage must be one of {STORAGE_KINDS}, got {storage!r}")
        if prefetch < 0:
            raise ValueError(f"offload prefetch must be >= 0, got {prefetch}")
        classes = (
            tuple(block_classes) if block_classes is not None else tuple(getattr(model, "block_classes", ()))
        )
        if not classes:
            raise ValueError(
                f"{type(model).__name__} exports no block_classes; pass block_classes= to BlockStreamer"
            )
        self.device = torch.device(device)
        self.prefetch = int(prefetch)
        self.storage = storage
        self.pin_memory = self.device.type != "cpu" if pin_memory is None else bool(pin_memory)
        self.stats = StreamStats()
        self._device_mod = (
            None if self.device.type in ("cpu", "meta") else torch.get_device_module(self.device)
        )
        self._stream = self._device_mod.Stream(self.device) if self._device_mod is not None else None
        self._next: dict[str, dict[int, int]] = {"forward": {}, "backward": {}}
        self._last: dict[str, int | None] = {"forward": None, "backward": None}
        self._inflight: OrderedDict[int, _Fetched] = OrderedDict()
        self.units: list[_Unit] = []
        for name, module in model.named_modules():
            if isinstance(module, classes) and not any(name.startswith(u.name + ".") for u in self.units):
                self.units.append(self._install(len(self.units), name, module))
        if not self.units:
            raise ValueError(f"no module of {[c.__name__ for c in classes]} found in {type(model).__name__}")
        n_bytes = sum(s.host.nbytes for u in self.units for s in u.slots)
        log.info(
            "block streamer: %d units, %.1f MiB frozen weights on the host (%s, pinned=%s), prefetch %d",
            len(self.units),
            n_bytes / 2**20,
            storage,
            self.pin_memory,
            self.prefetch,
        )

    # ------------------------------------------------------------------------------------------ install

    def _install(self, index: int, name: str, module: nn.Module) -> _Unit:
        if getattr(module, "_compiled_call_impl", None) is not None:
            raise ValueError(
                f"block streaming: unit {name!r} is compiled (module.compile=blocks); the streamer swaps weights "
                "inside forward, which a compiled graph would bake in. Use module.compile=none with this strategy"
            )
        slots: list[_Slot] = []
        for sub_name, sub in module.named_modules():
            for pname, p in list(sub._parameters.items()):
                if p is None or p.requires_grad:
                    continue  # trainable weights stay resident
                data, scale = _quantize(p.detach(), self.storage)
                data = data.to("cpu")
                if self.pin_memory:
                    data = data.pin_memory()
                qual = ".".join(x for x in (name, sub_name, pname) if x)
                holder = nn.Parameter(torch.empty(0, dtype=p.dtype, device=self.device), requires_grad=False)
                sub._parameters[pname] = holder
                slots.append(_Slot(sub, pname, qual, _HostTensor(data, scale, p.dtype), holder))
        unit = _Unit(index, name, module, slots)
        original = module.forward

        def streamed_forward(*args, **kwargs):
            with self._weights_in(unit):
                return original(*args, **kwargs)

        module.forward = streamed_forward  # instance attribute shadows the class method
        return unit

    @property
    def streamed_names(self) -> list[str]:
        """Qualified names (relative to the model) of every streamed parameter."""
        return [s.qualname for u in self.units for s in u.slots]

    def remove(self) -> None:
        """Undo the installation: frozen parameters become ordinary CPU parameters again (dequantized)."""
        self._inflight.clear()
        for unit in self.units:
            if "forward" in unit.module.__dict__:
                del unit.module.forward
            for slot in unit.slots:
                slot.module._parameters[slot.name] = nn.Parameter(
                    slot.host.dequantized(), requires_grad=False
                )
        self.units = []

    def reset_stats(self) -> None:
        """Zero the transfer counters."""
        self.stats = StreamStats()

    # ------------------------------------------------------------------------------------------ streaming

    def _fetch(self, unit: _Unit) -> _Fetched:
        self.stats.transfers += 1
        self.stats.per_unit[unit.name] += 1
        self.stats.bytes += sum(s.host.nbytes for s in unit.slots)
        if self._stream is None:
            return _Fetched([s.host.to_device(self.device, non_blocking=False) for s in unit.slots], None)
        with self._device_mod.stream(self._stream):
            tensors = [s.host.to_device(self.device, non_blocking=True) for s in unit.slots]
            event = self._device_mod.Event()
            event.record(self._stream)
        return _Fetched(tensors, event)

    def _predicted(self, index: int, phase: str) -> list[int]:
        out: list[int] = []
        nxt = self._next[phase]
        cur = index
        while len(out) < self.prefetch and cur in nxt:
            cur = nxt[cur]
            if cur == index or cur in out:
                break
            out.append(cur)
        return out

    @contextlib.contextmanager
    def _weights_in(self, unit: _Unit) -> Iterator[None]:
        # The backward pass (checkpoint recomputation) visits units in another order than the forward pass.
        phase = "backward" if torch._C._current_graph_task_id() != -1 else "forward"
        last = self._last[phase]
        if last is not None and last != unit.index:
            self._next[phase][last] = unit.index
        self._last[phase] = unit.index
        fetched = self._inflight.pop(unit.index, None)
        if fetched is None:
            fetched = self._fetch(unit)
        else:
            self.stats.prefetch_hits += 1
        for j in self._predicted(unit.index, phase):
            if j not in self._inflight:
                self._inflight[j] = self._fetch(self.units[j])
        while len(self._inflight) > self.prefetch:
            self._inflight.popitem(last=False)  # a misprediction: drop the oldest
        if fetched.event is not None:
            current = self._device_mod.current_stream(self.device)
            current.wait_event(fetched.event)
            for t in fetched.tensors:
                t.record_stream(current)  # the allocator must not reuse the block before compute is done
        for slot, t in zip(unit.slots, fetched.tensors, strict=True):
            slot.module._parameters[slot.name] = nn.Parameter(t, requires_grad=False)
        try:
            yield
        finally:
            for slot in unit.slots:
                slot.module._parameters[slot.name] = slot.placeholder
            del fetched
