"""Issue 14 item 6 under torchrun: SIGTERM to the torchrun agent (what a scheduler sends) is forwarded to both
workers, which finish the gradient accumulation, save `sigterm.ckpt` and exit with 143 well within the agent's
30 s grace period (before: a collective inside Lightning's signal handler stalled them until the agent's
SIGKILL). `ckpt_path=last` then resumes from `sigterm.ckpt` (it is newer than `last.ckpt`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest

from faults import runner
from mova_train.checkpoints.manifest import read_manifest

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

ARGS = [
    *runner.QUIET,
    "strategy=ddp",
    "trainer.devices=2",
    "trainer.accumulate_grad_batches=2",
    "callbacks.checkpoint.every_n_train_steps=2",
    "trainer.max_steps=100000",
]


def test_sigterm_to_torchrun_agent_saves_and_exits_nonzero(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [*ARGS, f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}"]
    log = tmp_path / "torchrun.log"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = runner.start(args, tmp_path, log, argv=runner.torchrun(2, *args))
    try:
        deadline = time.monotonic() + runner.TIMEOUT
        while not last.exists():
            assert proc.poll() is None, f"torchrun exited with {proc.returncode}; see {log}"
            assert time.monotonic() < deadline, f"no checkpoint within {runner.TIMEOUT} s; see {log}"
            time.sleep(0.1)
        sent = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)  # the agent only
        rc = proc.wait(timeout=120)
        took = time.monotonic() - sent
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    output = log.read_text(errors="replace")
    sigterm = run_dir / "checkpoints" / "sigterm.ckpt"
    assert rc != 0, output[-3000:]
    assert sigterm.is_file(), output[-3000:]
    assert took < 30, f"workers took {took:.0f} s to stop (the agent kills them at 30 s)"
    step = read_manifest(sigterm).global_step
    assert step >= read_manifest(last).global_step
    proc = runner.run([*args, f"trainer.max_steps={step + 1}", "ckpt_path=last"], cwd=tmp_path)
    assert "sigterm.ckpt" in proc.stdout + proc.stderr
