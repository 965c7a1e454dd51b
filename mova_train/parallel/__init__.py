"""Model parallelism helpers that use plain ``torch.distributed`` (no Lightning)."""

from mova_train.parallel import context_parallel
from mova_train.parallel.context_parallel import *  # noqa: F403  (the public names are listed once, there)

__all__ = list(context_parallel.__all__)
