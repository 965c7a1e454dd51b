"""Checkpoint files: the one ``CheckpointIO`` every strategy uses, their manifests, resume resolution, the run lock.

* :mod:`~mova_train.checkpoints.io`: :class:`MovaCheckpointIO` (atomic save, manifest, pickle-free load of
  single files and of distributed-checkpoint folders).
* :mod:`~mova_train.checkpoints.manifest`: ``<ckpt>.manifest.json`` / ``<folder>/mova_manifest.json`` with the
  global step, whether the weights were finite, and a sha256 per file.
* :mod:`~mova_train.checkpoints.resume`: ``ckpt_path=last`` -> the newest intact checkpoint of a run folder.
* :mod:`~mova_train.checkpoints.lock`: one run per output folder.
"""

from mova_train.checkpoints.io import MovaCheckpointIO, atomic_write, load_checkpoint_file
from mova_train.checkpoints.lock import OutputFolderLock
from mova_train.checkpoints.manifest import CheckpointError, Manifest, read_manifest, verify_manifest
from mova_train.checkpoints.resume import find_checkpoints, resolve_ckpt_path

__all__ = [
    "CheckpointError",
    "Manifest",
    "MovaCheckpointIO",
    "OutputFolderLock",
    "atomic_write",
    "find_checkpoints",
    "load_checkpoint_file",
    "read_manifest",
    "resolve_ckpt_path",
    "verify_manifest",
]
