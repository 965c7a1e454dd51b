"""`ckpt_path=last` resolution (issue 14 items 6, 9, 10): newest intact checkpoint by global step over last.ckpt,
sigterm.ckpt and step files; a corrupt last.ckpt is named and passed over for the newest intact step checkpoint;
non-finite weights are passed over; no checkpoint is an error naming the folder. The output-folder lock refuses a
second run (naming folder and holder pid) and takes over a dead run's lock.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mova_train.checkpoints.io import MovaCheckpointIO, load_checkpoint_file
from mova_train.checkpoints.lock import LOCK_NAME, OutputFolderLock
from mova_train.checkpoints.manifest import CheckpointError
from mova_train.checkpoints.resume import resolve_ckpt_path


def _save(path: Path, step: int, value: float = 1.0) -> Path:
    MovaCheckpointIO().save_checkpoint(
        {"global_step": step, "state_dict": {"w": torch.full((4,), value)}}, path
    )
    return path


def test_last_is_the_newest_by_global_step(tmp_path: Path) -> None:
    _save(tmp_path / "step0000003.ckpt", 3)
    _save(tmp_path / "last.ckpt", 3)
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "last.ckpt")
    _save(tmp_path / "sigterm.ckpt", 5)  # SIGTERM saved after the last step checkpoint
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "sigterm.ckpt")
    _save(tmp_path / "last.ckpt", 6)
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "last.ckpt")


def test_corrupt_last_falls_back_to_newest_intact_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _save(tmp_path / "step0000002.ckpt", 2)
    _save(tmp_path / "step0000004.ckpt", 4)
    last = _save(tmp_path / "last.ckpt", 6)
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    last.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(last)
    assert str(last) in str(info.value) and "weights_only=False" not in str(info.value)
    with caplog.at_level(logging.WARNING):
        assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "step0000004.ckpt")
    assert "last.ckpt" in caplog.text and "falling back" in caplog.text
    with pytest.raises(CheckpointError, match="step0000004.ckpt"):  # an explicit path names the alternative
        resolve_ckpt_path(str(last), tmp_path)


def test_truncated_last_without_manifest_is_named(tmp_path: Path) -> None:
    last = tmp_path / "last.ckpt"
    torch.save({"global_step": 1, "state_dict": {"w": torch.ones(1000)}}, last)
    last.write_bytes(last.read_bytes()[:500])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(last)
    assert str(last) in str(info.value) and "weights_only=False" not in str(info.value)


def test_non_finite_checkpoints_are_passed_over(tmp_path: Path) -> None:
    _save(tmp_path / "step0000002.ckpt", 2)
    _save(tmp_path / "last.ckpt", 4, value=float("nan"))
    manifest = json.loads((tmp_path / "last.ckpt.manifest.json").read_text())
    assert manifest["finite"] is False and manifest["global_step"] == 4
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "step0000002.ckpt")


def test_last_without_checkpoint_names_the_folder(tmp_path: Path) -> None:
    folder = tmp_path / "outputs" / "train" / "runs" / "2026-01-01_00-00-00" / "checkpoints"
    with pytest.raises(CheckpointError) as info:
        resolve_ckpt_path("last", folder)
    assert str(folder) in str(info.value) and "hydra.run.dir=" in str(info.value)


def test_lock_refuses_a_second_run_and_takes_over_a_dead_one(tmp_path: Path) -> None:
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {"pid": other.pid, "host": os.uname().nodename, "since": "earlier"}
        (tmp_path / LOCK_NAME).write_text(json.dumps(holder))
        with pytest.raises(CheckpointError) as info, OutputFolderLock(tmp_path):
            pass
        assert str(tmp_path) in str(info.value) and f"pid {other.pid}" in str(info.value)
    finally:
        other.kill()
        other.wait()
    with OutputFolderLock(tmp_path) as lock:  # the holder is dead now: taken over
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(CheckpointError, match=f"pid {os.getpid()}"), OutputFolderLock(tmp_path):
            pass
    assert not (tmp_path / LOCK_NAME).exists()


def test_temporary_names_are_unique_per_save(tmp_path: Path) -> None:
    from mova_train.models.files import unique_tmp

    names = {unique_tmp(tmp_path / "last.ckpt") for _ in range(100)}
    assert len(names) == 100 and all(str(os.getpid()) in n.name for n in names)
