"""One run per output folder: ``<folder>/.mova_train.lock`` holds the pid, host and start time of its run.

A second run in the same folder is refused with the holder named. A lock whose process is gone (killed with
SIGKILL, the machine rebooted) is taken over with a warning. Only global rank 0 takes the lock; the other
ranks of a multi-process run share the folder with it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from mova_train.checkpoints.manifest import CheckpointError
from mova_train.utils.logging import global_rank

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "OutputFolderLock"]

LOCK_NAME = ".mova_train.lock"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (tells a reused pid apart), None when unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return True  # cannot tell: assume it runs
    pid = int(holder.get("pid", -1))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = holder.get("start_time")
    return started is None or _start_time(pid) in (None, started)


class OutputFolderLock:
    """Context manager holding ``<folder>/.mova_train.lock`` for this run (rank 0 only).

    Raises:
        CheckpointError: another live run holds the folder (its pid and host are named).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        """Take the lock (no-op on ranks other than 0)."""
        if global_rank() != 0:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "start_time": _start_time(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            return
        raise CheckpointError(f"{self.path}: could not take the output-folder lock (it keeps reappearing)")

    def _take_over_if_stale(self) -> None:
        try:
            holder = json.loads(self.path.read_text() or "{}")
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            holder = {}
        if holder and _alive(holder):
            raise CheckpointError(
                f"output folder {self.folder} is in use by another run (pid {holder.get('pid')} on "
                f"{holder.get('host')}, since {holder.get('since')}; lock file {self.path}). Wait for it to "
                f"end, or write this run elsewhere (hydra.run.dir=...); if that run is gone, delete the lock file"
            )
        log.warning(
            "output folder %s: taking over the lock of a dead run (%s)", self.folder, holder or "empty"
        )
        stale = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, stale)  # only one taker wins the rename
        except FileNotFoundError:
            return
        stale.unlink(missing_ok=True)

    def release(self) -> None:
        """Drop the lock if this process holds it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> OutputFolderLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
