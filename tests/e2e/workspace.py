"""Typing the journey: a scratch folder in which commands run as a user's shell runs them, the session's training
runs (each started once, independent ones two at a time), and checks of what they write.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from e2e.journey import MULTI_PROCESS, REPO, TRAIN_NEEDS, TRAIN_RUNS
from e2e.known_issues import ISSUE_9, KnownIssue

PARALLEL = 2  # commands at a time: each spends most of its time importing on one core


def command(*parts: str) -> list[str]:
    """One argv from README command strings and override strings (split as a user's shell splits them)."""
    return [arg for part in parts for arg in shlex.split(part)]


@dataclass
class Result:
    """What one command did: its argv, exit status, combined output and wall time."""

    argv: list[str]
    returncode: int
    output: str
    seconds: float
    cwd: Path = field(repr=False, default=Path("."))

    def check(self, *known: int) -> Result:
        """Assert the command succeeded.

        Args:
            known: issue-9 items this step fails on today: a failure showing one of their symptoms raises
                `KnownIssue` (what the step's strict xfail expects); any other failure is an AssertionError.
        """
        if self.returncode == 0:
            return self
        message = f"`{shlex.join(self.argv)}` exited {self.returncode} after {self.seconds:.0f} s:\n{self.output[-6000:]}"
        for item in known:
            symptom = ISSUE_9[item].symptom
            if symptom is not None and symptom in self.output:
                raise KnownIssue(f"issue 9 item {item}: {message}")
        raise AssertionError(message)


class Workspace:
    """The user's working folder: every command runs with it as the current directory.

    Args:
        root: the folder.
        timings: where to note each command's wall time.
    """

    def __init__(self, root: Path, timings: dict[str, float] | None = None) -> None:
        self.root = root
        self.timings = timings if timings is not None else {}

    def env(self, threads: int | None = None) -> dict[str, str]:
        """The environment of a command: offline, this checkout first on the path, no MOVA_* overrides."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOVA_")}
        env.pop("WANDB_API_KEY", None)
        env.update(
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            WANDB_MODE="offline",
            PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        )
        if threads is not None:
            env["OMP_NUM_THREADS"] = str(threads)
        return env

    def argv(self, parts: tuple[str, ...]) -> list[str]:
        """`python` is this interpreter; a script path of the repository is made absolute."""
        argv = command(*parts)
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        if len(argv) > 1 and argv[1].endswith(".py") and (REPO / argv[1]).is_file():
            argv[1] = str(REPO / argv[1])
        return argv

    def run(self, *parts: str, timeout: float = 900, threads: int | None = None) -> Result:
        """Run one command (README string + override strings) to completion; never raises on failure."""
        argv = self.argv(parts)
        start = time.monotonic()
        try:
            proc = subprocess.run(
                argv,
                cwd=self.root,
                env=self.env(threads),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=timeout,
            )
            code, out = proc.returncode, proc.stdout
        except subprocess.TimeoutExpired as err:
            out = err.stdout if isinstance(err.stdout, str) else (err.stdout or b"").decode(errors="replace")
            code, out = -9, f"{out}\n[timed out after {timeout} s]"
        seconds = time.monotonic() - start
        self.timings[f"{len(self.timings) + 1:2d}. {shlex.join(argv[1:])[:120]}"] = seconds
        return Result(argv, code, out, seconds, self.root)

    def run_all(self, *commands: tuple[str, ...]) -> list[Result]:
        """Run independent commands, `PARALLEL` at a time (results in the given order)."""
        with ThreadPoolExecutor(PARALLEL) as pool:
            return list(pool.map(lambda parts: self.run(*parts), commands))

    def start(self, *parts: str) -> subprocess.Popen:
        """Start a command in its own process group (so that a test can kill it and every child)."""
        return subprocess.Popen(
            self.argv(parts),
            cwd=self.root,
            env=self.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


class Runs:
    """The session's training runs (`journey.TRAIN_RUNS`), each started once; its folder is `outputs/<name>`.

    `prefetch` starts the runs the selected tests will need in the background, `PARALLEL` at a time, so that
    later tests find them done.
    """

    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self.pool = ThreadPoolExecutor(PARALLEL)
        self.futures: dict[str, Future[Result]] = {}

    def _submit(self, name: str) -> Future[Result]:
        if name not in self.futures:
            # a run's inputs are submitted before it: the pool takes tasks in order, so they never wait on it
            needs = [self._submit(dep) for dep in TRAIN_NEEDS.get(name, ())]
            threads = 1 if name in MULTI_PROCESS else None

            def run() -> Result:
                for dep in needs:
                    dep.result().check()
                return self.workspace.run(*TRAIN_RUNS[name], threads=threads)

            self.futures[name] = self.pool.submit(run)
        return self.futures[name]

    def prefetch(self, names: Iterable[str]) -> None:
        """Start these runs in the background (in this order)."""
        for name in names:
            self._submit(name)

    def train(self, name: str) -> Result:
        """The result of run ``name`` (waits for it, starting it first if needed)."""
        return self._submit(name).result()

    def dir(self, name: str) -> Path:
        """The run folder of ``name``."""
        return self.workspace.root / "outputs" / name

    def close(self) -> None:
        """Wait for runs still going (a test that did not need them was deselected or failed)."""
        self.pool.shutdown(wait=True, cancel_futures=True)


def ffprobe(path: Path) -> dict[str, dict]:
    """Streams of an mp4 by type, as ffprobe (an outside tool, not our own probe) reports them."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_entries", "stream", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


def check_sample(folder: Path, frames: int) -> dict:
    """The one mp4 + sidecar in ``folder``: H.264 video of ``frames`` frames and a 48 kHz mono AAC track of the
    same length; returns the sidecar.
    """
    mp4s = sorted(folder.glob("*.mp4"))
    listing = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else "no folder"
    assert len(mp4s) == 1, f"{folder}: {listing}"
    streams = ffprobe(mp4s[0])
    video, audio = streams["video"], streams["audio"]
    assert video["codec_name"] == "h264" and int(video["nb_frames"]) == frames
    assert audio["codec_name"] == "aac" and audio["sample_rate"] == "48000" and audio["channels"] == 1
    assert abs(float(audio["duration"]) - float(video["duration"])) <= 1 / 12
    return json.loads(mp4s[0].with_suffix(".json").read_text())
