"""Issue 14.5: under DDP a rank without a validation batch must not hang the others (2 gloo processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.distributed
@pytest.mark.slow
def test_validation_with_an_empty_rank_finishes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'tests'}:{REPO}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29531"]
    proc = subprocess.Popen(
        [*cmd, str(REPO / "tests" / "helpers" / "val_ddp_worker.py"), str(tmp_path / "out")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        _, err = proc.communicate()
        pytest.fail(f"DDP validation hung with one rank empty: {err[-2000:]}")
    assert proc.returncode == 0, err[-3000:]
    value = float((tmp_path / "out" / "val_loss.txt").read_text())
    assert value == value and value > 0  # the one batch's loss, logged after the reduction over both ranks
