"""Issue 14 items 1 and 6: runs killed at seeded moments (SIGKILL, SIGTERM, SIGINT; once or twice per run) and
resumed with `ckpt_path=last` end with trainable weights and optimizer state bit-identical to an uninterrupted
run, with gradient accumulation (`accumulate_grad_batches=2 every_n_train_steps=3`) and under 2-process DDP.

Each kill comes a seeded delay after `last.ckpt` was (re)written, the moment the torn-state bug needed: before
the fix the resumed run rewrote `last.ckpt` after its first micro-batch, mid-accumulation. SIGTERM must save
`sigterm.ckpt` and exit 143. More sequences: `MOVA_FAULT_SEQUENCES=N` (default 3 kill -9 sequences).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
from pathlib import Path

import pytest

from faults import runner

pytestmark = [pytest.mark.slow]

STEPS = 12
BASE = [
    *runner.QUIET,
    "trainer.accumulate_grad_batches=2",
    "callbacks.checkpoint.every_n_train_steps=3",
    f"trainer.max_steps={STEPS}",
]
DDP = ["strategy=ddp", "trainer.devices=2"]
SEQUENCES = int(os.environ.get("MOVA_FAULT_SEQUENCES", "3"))
RESULTS: list[tuple[str, bool]] = []  # (sequence, bit-identical), printed at the end of the module


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    root = tmp_path_factory.mktemp("fault_data")
    return [f"paths.data_dir={root / 'data'}", f"paths.output_root={root / 'outputs'}"]


def _args(data: list[str], run_dir: Path, extra: list[str]) -> list[str]:
    record = [runner.RECORD, f"+callbacks.record.dirpath={run_dir / 'record'}"]
    return [*BASE, *extra, *data, f"hydra.run.dir={run_dir}", *record]


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns)


def _interrupt(args: list[str], cwd: Path, sig: signal.Signals, delay: float, log: Path) -> tuple[int, bool]:
    """Start a run, wait until its last.ckpt is (re)written, wait `delay` s more, send `sig`.

    Returns:
        the exit code, and whether the run was still going when the signal was sent.
    """
    last = Path(next(a for a in args if a.startswith("hydra.run.dir=")).split("=", 1)[1]) / "checkpoints"
    last = last / "last.ckpt"
    before = _stamp(last)
    proc = runner.start(args, cwd, log)
    deadline = time.monotonic() + runner.TIMEOUT
    try:
        while _stamp(last) == before and proc.poll() is None:
            assert time.monotonic() < deadline, f"no checkpoint within {runner.TIMEOUT} s; see {log}"
            time.sleep(0.05)
        time.sleep(delay)
        running = proc.poll() is None
        if running:
            if sig == signal.SIGTERM:
                os.kill(proc.pid, sig)  # what `kill PID` / a scheduler sends to the main process
            else:
                os.killpg(proc.pid, sig)  # SIGKILL of the job, Ctrl-C to the foreground group
        return proc.wait(timeout=runner.TIMEOUT), running
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _reference(data: list[str], tmp_path: Path, extra: list[str]) -> dict:
    run_dir = tmp_path / "reference"
    runner.run(_args(data, run_dir, extra), cwd=tmp_path)
    return runner.load(run_dir / "record" / "end.pt")


def _sequence(
    name: str, data: list[str], tmp_path: Path, extra: list[str], faults: list[tuple[signal.Signals, float]]
) -> dict:
    run_dir = tmp_path / name
    log = tmp_path / f"{name}.log"
    args = _args(data, run_dir, extra)
    for i, (sig, delay) in enumerate(faults):
        rc, running = _interrupt([*args, *(["ckpt_path=last"] if i else [])], tmp_path, sig, delay, log)
        print(f"{name}: {sig.name} after {delay:.2f} s: {'exit ' + str(rc) if running else 'run had ended'}")
        if sig == signal.SIGTERM and running:  # (the plans send it while steps remain)
            assert rc == 143, f"SIGTERM: exit {rc}, expected 143 after saving; see {log}"
            assert (run_dir / "checkpoints" / "sigterm.ckpt").exists()
    runner.run([*args, "ckpt_path=last"], cwd=tmp_path)
    return runner.load(run_dir / "record" / "end.pt")


def _check(name: str, reference: dict, result: dict) -> None:
    same = runner.same_state(reference, result)
    RESULTS.append((name, same))
    print(f"fault sequence {name}: {'bit-identical' if same else 'DIFFERENT'}")
    assert result["global_step"] == reference["global_step"] == STEPS
    assert same, f"{name}: max |d weights| {runner.max_diff(reference['weights'], result['weights'])}"


def _faults(seed: int, sig: signal.Signals) -> list[tuple[signal.Signals, float]]:
    rng = random.Random(seed)
    return [(sig, rng.uniform(0.0, 1.5)) for _ in range(rng.choice([1, 2]))]


@pytest.fixture(scope="module")
def reference(data: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted one-process run."""
    return _reference(data, tmp_path_factory.mktemp("reference"), [])


def test_kill_and_int_with_accumulation_resume_bit_identical(
    data: list[str], reference: dict, tmp_path: Path
) -> None:
    plans = {f"kill9_seed{s}": _faults(s, signal.SIGKILL) for s in range(SEQUENCES)}
    plans["kill9_twice_at_rewrite"] = [(signal.SIGKILL, 0.0), (signal.SIGKILL, 0.0)]  # the repro
    plans["sigint"] = _faults(200, signal.SIGINT)
    for name, faults in plans.items():
        _check(name, reference, _sequence(name, data, tmp_path, [], faults))
    ok = sum(same for _, same in RESULTS)
    print(f"fault sequences (one process): {ok} of {len(RESULTS)} bit-identical")


def test_sigterm_saves_exits_143_and_resumes_bit_identical(
    data: list[str], reference: dict, tmp_path: Path
) -> None:
    # sent right after a checkpoint at step 3 (then 6), while steps remain: rc 143 and sigterm.ckpt each time
    faults = [(signal.SIGTERM, 0.0), (signal.SIGTERM, 0.2)]
    _check("sigterm_twice", reference, _sequence("sigterm_twice", data, tmp_path, [], faults))


@pytest.mark.distributed
def test_kill_and_term_under_ddp_resume_bit_identical(data: list[str], tmp_path: Path) -> None:
    reference = _reference(data, tmp_path, DDP)
    plans = {"ddp_kill9": _faults(300, signal.SIGKILL), "ddp_sigterm": [(signal.SIGTERM, 0.3)]}
    for name, faults in plans.items():
        _check(name, reference, _sequence(name, data, tmp_path, DDP, faults))
