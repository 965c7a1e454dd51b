"""Distributed-checkpoint (DCP) folders: written atomically with a manifest, read only when we wrote them.

``strategy=fsdp2`` writes ``<name>.ckpt/`` with one ``__<rank>_0.distcp`` per rank, torch's ``.metadata`` and
Lightning's ``meta.pt`` (loops, schedulers, callbacks). Only the trainable state is in them. A folder is first
written under a temporary name, gets ``mova_manifest.json`` (sha256 per file), then replaces the old one.
Reading never runs pickled code: torch's ``FileSystemReader`` unpickles ``.metadata`` without restriction and
its planners load non-tensor items unrestricted; :class:`SafeFileSystemReader` unpickles
``.metadata`` with an allow-list of DCP's metadata classes and :class:`SafeLoadPlanner` loads items with
``weights_only=True``. On top of that, a folder is only read after its manifest is verified (a folder written
by someone else, or changed since, is refused). :func:`read_dcp_folder` reads the tensors in memory (one
process, no group) and ``meta.pt`` with ``weights_only=True``.
"""

from __future__ import annotations

import io
import logging
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata

from mova_train.checkpoints.io import torch_load_safe
from mova_train.checkpoints.manifest import CheckpointError, verify_manifest, write_manifest
from mova_train.models.files import unique_tmp

log = logging.getLogger(__name__)

__all__ = [
    "META_FILENAME",
    "SafeFileSystemReader",
    "SafeLoadPlanner",
    "is_dcp_checkpoint",
    "read_dcp_folder",
    "read_dcp_meta",
    "replace_folder",
]

META_FILENAME = "meta.pt"  # Lightning's metadata file inside a DCP folder


# (module, name) a DCP ``.metadata`` pickle may reference: the metadata dataclasses, torch sizes, dtypes, layouts.
_METADATA_GLOBALS = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "TensorProperties",
        "TensorStorageMetadata",
        "_MEM_FORMAT_ENCODING",
    },
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"},
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset", "slice"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata only: any other global (a function that would run) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _METADATA_GLOBALS.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's .metadata")


class SafeFileSystemReader(FileSystemReader):
    """``FileSystemReader`` whose ``.metadata`` is unpickled with an allow-list (never code)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        """The folder's metadata, refusing any pickled global outside DCP's metadata classes."""
        path = self._get_metadata_path(kwargs.get("rank"))
        with self.fs.create_stream(path, "rb") as fh:
            metadata = _MetadataUnpickler(fh).load()
        if not isinstance(metadata, Metadata):
            raise pickle.UnpicklingError(f"{path}: holds a {type(metadata).__name__}, not DCP Metadata")
        if getattr(metadata, "storage_meta", None) is None:
            from torch.distributed.checkpoint.metadata import StorageMeta

            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


class _SafeBytes:
    """``load_bytes`` with ``weights_only=True`` (torch's planners load them unrestricted)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        from mova_train.checkpoints.io import torch_load_safe

        obj = torch_load_safe(value)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


class SafeLoadPlanner(_SafeBytes, DefaultLoadPlanner):
    """torch's default load planner, loading non-tensor items with ``weights_only=True``."""


class _SafeEmptyPlanner(_SafeBytes, _EmptyStateDictLoadPlanner):
    """Loads everything in a folder into an empty dict, non-tensor items with ``weights_only=True``."""


def is_dcp_checkpoint(path: str | Path) -> bool:
    """True for a folder with DCP metadata (``.metadata``) and Lightning's ``meta.pt``."""
    p = Path(path)
    return p.is_dir() and (p / ".metadata").is_file() and (p / META_FILENAME).is_file()


def read_dcp_meta(path: str | Path) -> dict[str, Any]:
    """Lightning's ``meta.pt`` of a verified folder (``weights_only=True``)."""
    verify_manifest(path, required=True)
    return torch_load_safe(Path(path) / META_FILENAME)


def _optimizer_state_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """Rekey a name-keyed optimizer state dict (``torch.distributed.checkpoint.state_dict`` format) by index."""
    index: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = []
        for name in group["params"]:
            index[name] = len(index)
            ids.append(index[name])
        groups.append({**group, "params": ids})
    unknown = set(state["state"]) - set(index)
    if unknown:
        raise ValueError(f"optimizer state has entries for parameters in no group: {sorted(unknown)[:3]}")
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def read_dcp_folder(path: str | Path) -> dict[str, Any]:
    """Read a DCP folder we wrote into an ordinary Lightning checkpoint dict (one process, no group).

    The optimizer state is keyed by parameter name in the folder; it is renumbered in the order of the saved
    parameter groups, the order a torch optimizer's ``state_dict`` uses.

    Returns:
        ``state_dict`` (full CPU tensors), ``optimizer_states`` (index-keyed) and everything in ``meta.pt``.

    Raises:
        CheckpointError: the folder has no manifest of ours or a file differs from it.
    """
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    src = Path(path)
    verify_manifest(src, required=True)
    tensors: dict[str, Any] = {}
    try:
        _load_state_dict(
            tensors, storage_reader=SafeFileSystemReader(src), planner=_SafeEmptyPlanner(), no_dist=True
        )
        checkpoint = torch_load_safe(src / META_FILENAME)
    except (CheckpointException, pickle.UnpicklingError, RuntimeError, OSError, EOFError) as err:
        log.debug("reading %s failed: %r", src, err)
        raise CheckpointError(
            f"{src}: cannot be read as a distributed checkpoint ({type(err).__name__}): it is corrupt, or holds "
            f"objects other than tensors and plain values (refused, never run)"
        ) from None
    checkpoint["state_dict"] = tensors.pop("state_dict", {})
    n_opt = sum(1 for k in tensors if k.startswith("optimizer_"))
    checkpoint["optimizer_states"] = [
        _optimizer_state_by_index(tensors[f"optimizer_{i}"]) for i in range(n_opt)
    ]
    log.info(
        "read distributed checkpoint %s: %d tensors, %d optimizer(s), global_step %s",
        src,
        len(checkpoint["state_dict"]),
        n_opt,
        checkpoint.get("global_step"),
    )
    return checkpoint


def replace_folder(tmp: Path, path: Path, global_step: int, finite: bool) -> None:
    """Give the completely written folder ``tmp`` its manifest and move it to ``path`` (old one removed)."""
    write_manifest(tmp, global_step, finite)
    old = None
    if path.exists():
        old = unique_tmp(path)
        path.rename(old)
    tmp.rename(path)
    if old is not None:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def new_temporary_folder(path: Path) -> Path:
    """A fresh temporary sibling folder name for writing ``path``."""
    return unique_tmp(path)
