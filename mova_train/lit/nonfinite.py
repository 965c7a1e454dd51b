"""Non-finite guard of the training step (issue 14.2): a batch or loss holding NaN/Inf never reaches the weights.

A batch whose latents (cached, or encoded from raw clips) hold a non-finite value is skipped before the forward
pass; a non-finite loss skips the backward pass and the optimizer step (the training step returns None). Both
are counted (`train/skipped_nonfinite`); past `max_skips` the run stops with `NonFiniteError`, so a broken data
set or a diverging run ends with an error instead of training on, or checkpointing, garbage.

Under data parallelism every rank must take the same decision (a rank that skips its backward pass while another
runs it would hang the gradient all-reduce), so the flag is all-reduced (max) over the ranks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from mova_train.utils.dist import any_rank

log = logging.getLogger(__name__)

__all__ = ["NonFiniteError", "NonFiniteGuard", "nonfinite_names"]


class NonFiniteError(RuntimeError):
    """More non-finite batches or losses than `module.max_nonfinite_steps` allows."""


def nonfinite_names(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors in `tensors` that hold a NaN or an infinity (sorted)."""
    return sorted(
        name
        for name, t in tensors.items()
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())
    )


class NonFiniteGuard:
    """Counts skipped steps and stops past a limit (`skipped`, and `last_skip_step`: the global step of the newest
    skip, None while every step was finite; read by checkpoint rotation to keep the last finite checkpoint).

    Args:
        max_skips: Steps that may be skipped in a run (0: stop at the first non-finite batch or loss).
    """

    def __init__(self, max_skips: int = 10) -> None:
        if isinstance(max_skips, bool) or not isinstance(max_skips, int) or max_skips < 0:
            raise ValueError(f"module.max_nonfinite_steps={max_skips!r} must be an integer >= 0")
        self.max_skips = max_skips
        self.skipped = 0
        self.last_skip_step: int | None = None

    def should_skip(self, names: list[str], what: str, step: int, device: torch.device) -> bool:
        """Decide (the same on every rank) whether this step is skipped; count it and stop past the limit.

        Args:
            names: What is non-finite on this rank (empty: nothing).
            what: `batch` or `loss` (for the messages).
            step: The global step (for the messages).
            device: Where the all-reduce flag lives.

        Raises:
            NonFiniteError: the skip count passed `max_skips`.
        """
        if not any_rank(bool(names), device):
            return False
        self.skipped += 1
        self.last_skip_step = step
        where = f"non-finite {what} ({', '.join(names)})" if names else f"non-finite {what} on another rank"
        if self.skipped > self.max_skips:
            raise NonFiniteError(
                f"step {step}: {where}; {self.skipped} steps skipped for non-finite values, more than "
                f"module.max_nonfinite_steps={self.max_skips}. The data or the run is broken: check the cache "
                "(python -m data_tools.inspect_shards), lower optimizer.lr or set trainer.gradient_clip_val; "
                "raise module.max_nonfinite_steps to tolerate more"
            )
        log.warning("step %d: %s, step skipped (%d so far)", step, where, self.skipped)
        return True
