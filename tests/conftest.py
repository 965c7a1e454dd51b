"""Shared fixtures: offline environment, golden data location, deterministic CPU settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

# Tests never reach a hub or a tracking server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.pop("WANDB_API_KEY", None)


def _find_shared() -> Path:
    env = os.environ.get("MOVA_SHARED_DIR")
    if env:
        return Path(env)
    for parent in [REPO_ROOT, *REPO_ROOT.parents]:
        candidate = parent / "shared"
        if (candidate / "golden").is_dir():
            return candidate
        candidate = parent.parent / "shared"
        if (candidate / "golden").is_dir():
            return candidate
    return REPO_ROOT.parent / "shared"


SHARED_DIR = _find_shared()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's `shared/` folder (golden tensors, media, docs)."""
    return SHARED_DIR


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """Folder holding the golden tensors produced by the original MOVA implementation."""
    path = Path(os.environ.get("MOVA_GOLDEN_DIR", SHARED_DIR / "golden"))
    if not path.is_dir():
        pytest.fail(f"golden data not found at {path}; set MOVA_GOLDEN_DIR")
    return path


@pytest.fixture(scope="session")
def media_dir() -> Path:
    """Real media from upstream (a generated clip with its prompt, first-frame images)."""
    path = SHARED_DIR / "media"
    if not path.is_dir():
        pytest.fail(f"shared media not found at {path}; set MOVA_SHARED_DIR")
    return path


@pytest.fixture(autouse=True)
def _deterministic_torch():
    import torch

    torch.manual_seed(0)
    prev_dtype = torch.get_default_dtype()
    yield
    torch.set_default_dtype(prev_dtype)


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: tiny models gain nothing from more, and on a busy 2-core machine
    OpenMP spinning costs seconds (use with ``pytestmark = pytest.mark.usefixtures("one_thread")``).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config, items):
    """`gpu` tests need CUDA; without it they are skipped (never failed)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        # The marker, not `item.keywords`: keywords also hold every parent folder's name (a checkout in a
        # folder called `gpu` would skip the whole suite).
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
