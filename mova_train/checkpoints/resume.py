"""``ckpt_path`` resolution: ``last`` is the newest intact checkpoint of the run folder, by global step.

Candidates are every ``*.ckpt`` file or distributed-checkpoint folder in the checkpoint folder: ``last.ckpt``,
``sigterm.ckpt`` and the step checkpoints. Their global step comes from their manifest. The newest one whose
files match their manifest (and whose weights were finite) is used; each one passed over is logged with the
reason. Without any checkpoint, ``last`` is an error that names the folder looked in: a new run folder (the
default ``hydra.run.dir`` has the start time in it) has none, so resuming needs the old run's folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mova_train.checkpoints.dcp import is_dcp_checkpoint
from mova_train.checkpoints.io import load_checkpoint_file
from mova_train.checkpoints.manifest import CheckpointError, Manifest, read_manifest, verify_manifest

log = logging.getLogger(__name__)

__all__ = ["Candidate", "checkpoint_dir", "find_checkpoints", "newest_intact", "resolve_ckpt_path"]


@dataclass(frozen=True)
class Candidate:
    """A checkpoint in a run folder: its path, global step and whether its weights were finite."""

    path: Path
    global_step: int
    finite: bool


_TIE_ORDER = {"sigterm.ckpt": 2, "last.ckpt": 1}  # equal steps: sigterm, then last, then the step file


def _claimed(folder: Path) -> tuple[list[tuple[Candidate, Manifest | None]], list[tuple[Path, str]]]:
    """Every checkpoint of ``folder`` with the step its manifest claims, newest first, read without hashing.

    A file without a manifest (older runs) is loaded to read its step.
    """
    claimed: list[tuple[Candidate, Manifest | None]] = []
    rejected: list[tuple[Path, str]] = []
    if not folder.is_dir():
        return claimed, rejected
    for path in sorted(folder.glob("*.ckpt")):
        if path.name.startswith("."):
            continue
        try:
            manifest = read_manifest(path)
            if manifest is not None:
                claimed.append((Candidate(path, manifest.global_step, manifest.finite), manifest))
            elif path.is_dir():
                verify_manifest(path, required=True)  # raises: a folder without our manifest
            else:
                step = int(load_checkpoint_file(path).get("global_step", 0))
                claimed.append((Candidate(path, step, True), None))
        except CheckpointError as err:
            rejected.append((path, str(err)))
    claimed.sort(key=lambda cm: (cm[0].global_step, _TIE_ORDER.get(cm[0].path.name, 0)), reverse=True)
    return claimed, rejected


def _intact(candidate: Candidate, manifest: Manifest | None) -> str | None:
    """None when the checkpoint's files match its manifest, else why not (files are hashed here, once)."""
    if manifest is None:
        return None  # read whole by `_claimed` already
    try:
        verify_manifest(candidate.path, required=candidate.path.is_dir())
    except CheckpointError as err:
        return str(err)
    return None


def find_checkpoints(folder: str | Path) -> tuple[list[Candidate], list[tuple[Path, str]]]:
    """The intact checkpoints of ``folder``, newest first, and the rejected ones with the reason.

    Ties in global step prefer ``sigterm.ckpt``, then ``last.ckpt``, then the step file. Every checkpoint is
    verified; :func:`newest_intact` verifies only down to the one it picks.
    """
    claimed, rejected = _claimed(Path(folder))
    intact: list[Candidate] = []
    for candidate, manifest in claimed:
        why = _intact(candidate, manifest)
        if why is None:
            intact.append(candidate)
        else:
            rejected.append((candidate.path, why))
    return intact, rejected


def newest_intact(folder: str | Path) -> Path | None:
    """The checkpoint ``ckpt_path=last`` resumes from (see the module docstring); None when there is none.

    Checkpoints are verified newest first, and only until an intact one with finite weights is found.
    """
    claimed, rejected = _claimed(Path(folder))
    for path, why in rejected:
        log.warning("ckpt_path=last: passing over %s: %s", path, why)
    newest: Candidate | None = None  # the newest intact one, finite or not
    chosen: Candidate | None = None
    for candidate, manifest in claimed:
        why = _intact(candidate, manifest)
        if why is not None:
            log.warning("ckpt_path=last: passing over %s: %s", candidate.path, why)
            continue
        newest = newest or candidate
        if candidate.finite:
            chosen = candidate
            break
        log.warning(
            "ckpt_path=last: passing over %s (step %d): non-finite weights",
            candidate.path,
            candidate.global_step,
        )
    chosen = chosen or newest
    if chosen is None:
        return None
    if rejected or chosen is not claimed[0][0]:
        log.warning("ckpt_path=last: falling back to %s (step %d)", chosen.path, chosen.global_step)
    else:
        log.info("ckpt_path=last: resuming from %s (step %d)", chosen.path, chosen.global_step)
    return chosen.path


def checkpoint_dir(cfg: Any) -> Path:
    """The run's checkpoint folder: ``callbacks.checkpoint.dirpath``, else ``<paths.output_dir>/checkpoints``."""
    callbacks = cfg.get("callbacks") or {}
    node = callbacks.get("checkpoint") or {}
    dirpath = node.get("dirpath") if hasattr(node, "get") else None
    return Path(str(dirpath)) if dirpath else Path(str(cfg.paths.output_dir)) / "checkpoints"


def resolve_ckpt_path(ckpt_path: str | None, checkpoint_dir: str | Path) -> str | None:
    """The path to give ``trainer.fit(ckpt_path=...)``, checked before any model is built.

    Args:
        ckpt_path: None (train from scratch), ``last`` (see :func:`newest_intact`), ``best`` (Lightning's), or a
            checkpoint file / distributed-checkpoint folder.
        checkpoint_dir: the run's checkpoint folder (``callbacks.checkpoint.dirpath``).

    Raises:
        CheckpointError: ``last`` without a checkpoint, a missing path, or a checkpoint that is corrupt or not
            ours; the message names the path and what to pass instead.
    """
    if ckpt_path in (None, ""):
        return None
    if ckpt_path == "best":
        return ckpt_path
    if ckpt_path == "last":
        found = newest_intact(checkpoint_dir)
        if found is None:
            raise CheckpointError(
                f"ckpt_path=last: no intact checkpoint in {checkpoint_dir}. Resume in the folder of the run to "
                f"continue: add hydra.run.dir=<that run's folder> (e.g. outputs/train/runs/<date>_<time>), or "
                f"pass its checkpoint file: ckpt_path=<run folder>/checkpoints/last.ckpt"
            )
        return str(found)
    path = Path(ckpt_path)
    if not path.exists():
        raise CheckpointError(f"ckpt_path={ckpt_path} does not exist (use `last` to resume this run folder)")
    try:
        if is_dcp_checkpoint(path) or read_manifest(path) is not None:
            verify_manifest(path, required=path.is_dir())
        elif path.is_dir():
            verify_manifest(path, required=True)
    except CheckpointError as err:
        intact, _ = find_checkpoints(path.parent)
        hint = f"; the newest intact checkpoint beside it is {intact[0].path}" if intact else ""
        raise CheckpointError(f"{err}{hint}") from None
    return str(path)
