"""Issue 14 item 3: nothing in the package unpickles a user-supplied file. A crafted checkpoint that would run a
shell command when unpickled (single file, DCP folder with or without a forged manifest, the convert CLI) is
refused and the command never runs.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from mova_train.checkpoints.io import MovaCheckpointIO
from mova_train.checkpoints.manifest import CheckpointError, write_manifest
from mova_train.strategies.checkpoint_convert import main as convert_main

PACKAGE = Path(__file__).resolve().parents[3] / "mova_train"


class _RunsCode:
    """Unpickling this runs ``touch <marker>``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _call_text(text: str, open_paren: int) -> str:
    depth = 0
    for i in range(open_paren, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_paren : i + 1]
    return text[open_paren:]


def test_package_never_unpickles_without_restriction() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for pattern in (r"weights_only\s*=\s*False", r"pickle\.loads?\(", r"dill|cloudpickle"):
            offenders += [f"{path}: {m.group(0)}" for m in re.finditer(pattern, text)]
        for call in re.finditer(r"torch\.load\(", text):  # every torch.load names weights_only=True
            if "weights_only=True" not in _call_text(text, call.end() - 1):
                offenders.append(f"{path}: torch.load without weights_only=True")
    assert not offenders, offenders


def _crafted_folder(folder: Path, marker: Path) -> Path:
    folder.mkdir()
    torch.save({"global_step": 1, "evil": _RunsCode(marker)}, folder / "meta.pt")
    (folder / ".metadata").write_bytes(pickle.dumps(_RunsCode(marker)))  # torch's .metadata is a pickle
    (folder / "__0_0.distcp").write_bytes(b"\0" * 16)
    return folder


def test_crafted_dcp_folder_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    folder = _crafted_folder(tmp_path / "last.ckpt", marker)
    with pytest.raises(CheckpointError, match="not written by mova_train"):
        MovaCheckpointIO().load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="not written by mova_train"):
        convert_main([str(folder), str(tmp_path / "out.ckpt")])
    write_manifest(folder, 1, True)  # forged: checksums match, the pickles are still refused
    with pytest.raises(CheckpointError, match="never run") as info:
        MovaCheckpointIO().load_checkpoint(folder)
    assert "weights_only=False" not in str(info.value)
    assert not marker.exists()


def test_crafted_checkpoint_file_is_refused_without_advising_unsafe_loading(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    path = tmp_path / "last.ckpt"
    torch.save({"global_step": 1, "state_dict": {}, "evil": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        MovaCheckpointIO().load_checkpoint(path)
    assert str(path) in str(info.value) and "weights_only=False" not in str(info.value)
    assert not marker.exists()
