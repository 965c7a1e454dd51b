"""Rank-aware logging for multi-process training.

`RankedLogger` is a `logging.LoggerAdapter` that prefixes every message with the process rank and, by default,
drops messages on ranks other than 0 (so an 8-GPU job prints each line once). Pass ``rank=N`` to a call to log on
one given rank only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from mova_train.utils.dist import global_rank

__all__ = ["RankedLogger"]


class RankedLogger(logging.LoggerAdapter):
    """A logger that tags messages with the rank and, optionally, logs on rank 0 only.

    Args:
        name: Logger name (usually ``__name__``).
        rank_zero_only: Drop messages on ranks other than 0 (unless a call passes ``rank=``).
        extra: Extra context passed to `logging.LoggerAdapter`.

    Example:
        >>> log = RankedLogger(__name__)
        >>> log.info("starting")          # rank 0 only
        >>> log.info("my shard", rank=3)  # rank 3 only
    """

    def __init__(
        self, name: str = __name__, rank_zero_only: bool = True, extra: Mapping[str, Any] | None = None
    ):
        super().__init__(logging.getLogger(name), extra or {})
        self.rank_zero_only = rank_zero_only

    def log(self, level: int, msg: object, *args: Any, rank: int | None = None, **kwargs: Any) -> None:
        """Log ``msg`` with a ``[rank: N]`` prefix, subject to the rank filter."""
        if not self.isEnabledFor(level):
            return
        current = global_rank()
        if rank is not None and rank != current:
            return
        if rank is None and self.rank_zero_only and current != 0:
            return
        msg, kwargs = self.process(msg, kwargs)
        self.logger.log(level, f"[rank: {current}] {msg}", *args, **kwargs)

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: object, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        self.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: object, *args: Any, **kwargs: Any) -> None:  # noqa: D102
        self.log(logging.ERROR, msg, *args, **kwargs)
