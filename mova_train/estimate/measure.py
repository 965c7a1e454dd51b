"""Measured counterpart of the activation factors: the bytes autograd saves for the backward pass.

Used by ``benchmarks/activation_memory.py`` (release width) and the unit tests of
:func:`~mova_train.estimate.memory.block_saved_elements` (small width), so the estimator's per-block factors
are held against what autograd really keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

__all__ = ["parameter_storages", "saved_activation_bytes"]


def parameter_storages(modules: Iterable[torch.nn.Module]) -> set[int]:
    """Storage addresses of every parameter of ``modules`` (weights autograd saves are not activations)."""
    return {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}


def saved_activation_bytes(
    fn: Callable[[], object], exclude: set[int], device_type: str = "cpu", autocast: bool = True
) -> int:
    """Bytes of the distinct storages autograd saves while ``fn()`` runs.

    Args:
        fn: runs one forward (its output is dropped after counting).
        exclude: storage addresses not to count (:func:`parameter_storages`).
        device_type: autocast device type (``"cpu"`` or ``"cuda"``).
        autocast: run under bf16 autocast, as the trainer's ``bf16-mixed`` precision does.

    Returns:
        The sum over distinct saved storages (each counted once, whole storage) of their sizes in bytes.
    """
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr and ptr not in exclude:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast(device_type, torch.bfloat16, enabled=autocast),
    ):
        out = fn()
    del out
    return sum(seen.values())
