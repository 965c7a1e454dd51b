"""File-writing helpers shared by the model savers and the training checkpoints (plain Python)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["unique_tmp"]


def unique_tmp(path: Path) -> Path:
    """A temporary sibling of ``path`` that no other process or save uses (``.<name>.tmp-<pid>-<random>``).

    Write there, then ``os.replace`` it over ``path``: two runs (or two saves) never share a temporary name.
    """
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
