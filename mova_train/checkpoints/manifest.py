"""Checkpoint manifests: which run wrote a checkpoint, at which step, with finite weights or not, and checksums.

A single-file checkpoint ``<name>.ckpt`` gets a sidecar ``<name>.ckpt.manifest.json``; a distributed-checkpoint
folder ``<name>.ckpt/`` holds ``mova_manifest.json``. Both are JSON::

    {"format": "mova_train.checkpoint", "version": 1, "global_step": 12, "finite": true,
     "files": {"last.ckpt": {"size": 1234, "sha256": "..."}}}

A DCP folder's ``.metadata`` is a pickle that torch unpickles without restriction, so a folder is only read
after :func:`verify_manifest` found our manifest and every listed file with its checksum (folders written by
someone else are refused). The checksums also catch a bit-flipped or truncated ``last.ckpt`` before it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FOLDER_MANIFEST",
    "CheckpointError",
    "Manifest",
    "manifest_path",
    "read_manifest",
    "sha256_file",
    "verify_manifest",
    "write_manifest",
]

FORMAT = "mova_train.checkpoint"
VERSION = 1
FOLDER_MANIFEST = "mova_manifest.json"
SIDECAR_SUFFIX = ".manifest.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: missing, corrupt, or not written by mova_train (the path is named)."""


@dataclass(frozen=True)
class Manifest:
    """What a checkpoint's manifest records.

    Attributes:
        global_step: the trainer's optimizer-step count at save time.
        finite: True when every floating-point tensor of the saved state dict was finite.
        files: relative file name -> (size in bytes, sha256 hex digest).
    """

    global_step: int
    finite: bool
    files: dict[str, tuple[int, str]]


def manifest_path(ckpt: str | Path) -> Path:
    """The manifest of a checkpoint file (sidecar) or folder (inside)."""
    p = Path(ckpt)
    return p / FOLDER_MANIFEST if p.is_dir() else p.with_name(p.name + SIDECAR_SUFFIX)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _listed_files(ckpt: Path) -> list[Path]:
    if ckpt.is_dir():
        return sorted(p for p in ckpt.iterdir() if p.is_file() and p.name != FOLDER_MANIFEST)
    return [ckpt]


def write_manifest(ckpt: str | Path, global_step: int, finite: bool) -> Path:
    """Write the manifest of ``ckpt`` (a file, or a folder whose files are all written) atomically."""
    from mova_train.checkpoints.io import atomic_write

    ckpt = Path(ckpt)
    files = {p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in _listed_files(ckpt)}
    body = {
        "format": FORMAT,
        "version": VERSION,
        "global_step": int(global_step),
        "finite": bool(finite),
        "files": files,
    }
    target = manifest_path(ckpt)
    atomic_write(target, lambda fh: fh.write(json.dumps(body, indent=1).encode()))
    return target


def read_manifest(ckpt: str | Path) -> Manifest | None:
    """The manifest of ``ckpt``, or None when there is none.

    Raises:
        CheckpointError: the manifest exists but is not ours or cannot be parsed.
    """
    path = manifest_path(ckpt)
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
        if body.get("format") != FORMAT:
            raise ValueError(f"format {body.get('format')!r} is not {FORMAT!r}")
        files = {name: (int(v["size"]), str(v["sha256"])) for name, v in body["files"].items()}
        return Manifest(int(body["global_step"]), bool(body["finite"]), files)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise CheckpointError(f"{path}: not a mova_train checkpoint manifest ({err})") from err


def verify_manifest(ckpt: str | Path, required: bool) -> Manifest | None:
    """Check every file listed in the manifest of ``ckpt`` (size and sha256) and, for a folder, that no file
    outside the manifest is present.

    Args:
        ckpt: checkpoint file or distributed-checkpoint folder.
        required: raise when there is no manifest (always for folders: their ``.metadata`` is a pickle).

    Raises:
        CheckpointError: missing manifest (when required), missing/extra files or a checksum mismatch.
    """
    ckpt = Path(ckpt)
    manifest = read_manifest(ckpt)
    if manifest is None:
        if required or ckpt.is_dir():
            raise CheckpointError(
                f"{ckpt}: no {manifest_path(ckpt).name}: this checkpoint was not written by mova_train "
                f"(a distributed-checkpoint folder holds pickles, so only folders we wrote are read); "
                f"convert it where it was written, or resume from a checkpoint of a mova_train run"
            )
        return None
    present = {p.name for p in _listed_files(ckpt)}
    extra = present - set(manifest.files) if ckpt.is_dir() else set()
    missing = set(manifest.files) - present
    if missing or extra:
        raise CheckpointError(
            f"{ckpt}: files differ from its manifest (missing {sorted(missing)}, not listed {sorted(extra)}); "
            f"the checkpoint is incomplete or was changed after it was written"
        )
    base = ckpt if ckpt.is_dir() else ckpt.parent
    for name, (size, digest) in manifest.files.items():
        path = base / name
        if os.path.getsize(path) != size or sha256_file(path) != digest:
            raise CheckpointError(
                f"{path}: size or sha256 differs from its manifest {manifest_path(ckpt).name}: the file is "
                f"corrupt or truncated"
            )
    return manifest
