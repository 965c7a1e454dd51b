"""Test-only reader of a datamodule's training stream."""

from __future__ import annotations

from typing import Any


def take_batches(dm: Any, n: int, consume: int | None = None) -> list[dict[str, Any]]:
    """Receive `n` batches from `dm.train_dataloader()`; mark the first `consume` (default all) as trained on
    (`finalize_batch`), as a training step would, so that `dm.state_dict()` resumes after them.
    """
    out = []
    for i, batch in enumerate(dm.train_dataloader()):
        if consume is None or i < consume:
            dm.finalize_batch(batch, consumed=True)
        out.append(batch)
        if len(out) == n:
            break
    return out
