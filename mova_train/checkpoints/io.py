"""The one Lightning ``CheckpointIO`` of every strategy: atomic saves with a manifest, pickle-free loads.

Saves go to a temporary file unique to the process (``.<name>.tmp-<pid>-<random>``) in the checkpoint's folder,
are fsynced and renamed over the target, then the manifest (global step, finite weights, sha256) is written the
same way. A save killed before the first rename leaves the previous checkpoint and its manifest intact; one
killed between the two renames leaves a file that no longer matches its manifest, which marks it as not to be
trusted (``ckpt_path=last`` then falls back to the newest intact checkpoint).

Loads never unpickle arbitrary objects: single files are read with ``torch.load(weights_only=True)`` (plus a
short allow-list of plain types Lightning stores), distributed-checkpoint folders only when their manifest
proves we wrote them (:mod:`mova_train.checkpoints.dcp`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from mova_train.checkpoints.manifest import CheckpointError, manifest_path, verify_manifest, write_manifest
from mova_train.models.files import unique_tmp

log = logging.getLogger(__name__)

__all__ = [
    "SAFE_GLOBALS",
    "MovaCheckpointIO",
    "atomic_write",
    "load_checkpoint_file",
    "state_is_finite",
]

# Plain types Lightning puts in a checkpoint dict besides tensors and builtins (torch.load refuses them under
# weights_only=True unless listed).
SAFE_GLOBALS: list[Any] = [Path, type(Path())]


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Write ``path`` through ``write(fh)`` into a unique temporary file, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def state_is_finite(state: Mapping[str, Any]) -> bool:
    """True when every floating-point tensor in ``state`` (a state dict) is finite."""
    for value in state.values():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            local = value.to_local() if hasattr(value, "to_local") else value
            if not bool(torch.isfinite(local).all()):
                return False
    return True


def torch_load_safe(source: Path | IO[bytes], map_location: Any = "cpu") -> Any:
    """``torch.load(weights_only=True)`` with :data:`SAFE_GLOBALS` allowed (never arbitrary code)."""
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        return torch.load(source, map_location=map_location, weights_only=True)


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a single-file checkpoint after checking its manifest (when it has one).

    Raises:
        CheckpointError: missing, checksum mismatch, truncated, or holding objects other than tensors and
            plain types; the message names the file and the checkpoints to use instead.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    verify_manifest(path, required=False)
    try:
        checkpoint = torch_load_safe(path, map_location)
    except Exception as err:  # noqa: BLE001 - torch raises many kinds for a torn or foreign file
        log.debug("reading %s failed: %r", path, err)
        raise CheckpointError(
            f"{path}: cannot be read as a checkpoint ({type(err).__name__}): it is truncated or corrupt, or "
            f"holds objects other than tensors and plain values (only those are loaded, never code). Resume "
            f"from an intact checkpoint of the same folder instead (ckpt_path=last picks the newest intact one, "
            f"or ckpt_path={path.parent}/stepNNNNNNN.ckpt)"
        ) from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"{path}: holds a {type(checkpoint).__name__}, not a checkpoint dict")
    return checkpoint


class MovaCheckpointIO(TorchCheckpointIO):
    """Atomic, manifest-carrying saves; pickle-free loads of files and of our distributed-checkpoint folders.

    The strategies of :mod:`mova_train.strategies` own one each; for Lightning's own strategies (``auto``) the
    entry point passes one as the trainer plugin (:func:`checkpoint_plugins`).
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        """Write ``checkpoint`` to ``path`` atomically, then its manifest."""
        if storage_options is not None:
            raise TypeError(f"MovaCheckpointIO takes no storage_options, got {storage_options!r}")
        path = Path(path)
        finite = state_is_finite(checkpoint.get("state_dict", {}))
        atomic_write(path, lambda fh: torch.save(checkpoint, fh))
        write_manifest(path, int(checkpoint.get("global_step", 0)), finite)
        if not finite:
            log.warning("%s: saved with non-finite weights (kept apart from rotation of finite ones)", path)

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """A single-file checkpoint, or a distributed-checkpoint folder converted to one (full tensors)."""
        from mova_train.checkpoints.dcp import is_dcp_checkpoint, read_dcp_folder

        if weights_only is False:
            raise CheckpointError(f"{path}: checkpoints are only loaded with weights_only=True")
        if is_dcp_checkpoint(path):
            return read_dcp_folder(path)
        return load_checkpoint_file(path, map_location if map_location is not None else "cpu")

    def remove_checkpoint(self, path: str | Path) -> None:
        """Remove a checkpoint and its manifest."""
        super().remove_checkpoint(path)
        sidecar = manifest_path(path)
        if sidecar.name.endswith(".manifest.json"):
            sidecar.unlink(missing_ok=True)


def checkpoint_plugins(strategy: Any) -> list[MovaCheckpointIO]:
    """``[MovaCheckpointIO()]`` when ``strategy`` (a name or an object) brings no checkpoint IO of its own."""
    if isinstance(strategy, str) or getattr(strategy, "_checkpoint_io", None) is None:
        return [MovaCheckpointIO()]
    return []
