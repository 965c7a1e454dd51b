"""Issue 14.9/14.10 through the entry points: bad settings stop before any model is built (rc != 0, key named)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, module: str, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HYDRA_FULL_ERROR": "1"}
    cmd = [
        sys.executable,
        "-m",
        module,
        f"paths.output_dir={tmp_path / 'out'}",
        f"paths.data_dir={tmp_path / 'd'}",
    ]
    return subprocess.run(
        [*cmd, *overrides], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("data.batch_size=0", "data.batch_size=0 must be a positive integer"),  # hung with memory growing
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be an integer >= 1"),
    ],
)
def test_fit_refuses_before_building_anything(tmp_path: Path, override: str, words: str) -> None:
    proc = _run(tmp_path, "mova_train", override)
    assert proc.returncode != 0
    assert words in proc.stderr
    assert not (tmp_path / "d" / "synthetic").exists()  # no data made, no model built


@pytest.mark.slow
def test_a_diverging_run_stops_with_an_error_not_a_nan_run(tmp_path: Path) -> None:
    """Issue 14.2 through the entry point: lr 1e30 makes every loss non-finite after the first step; the steps are
    skipped (weights never see the NaN), and past module.max_nonfinite_steps the run exits with rc != 0.
    """
    proc = _run(
        tmp_path, "mova_train", "optimizer.lr=1e30", "module.max_nonfinite_steps=2", "trainer.max_steps=10",
        "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
    )  # fmt: skip
    assert proc.returncode != 0, proc.stderr[-3000:]
    assert "NonFiniteError" in proc.stderr and "more than module.max_nonfinite_steps=2" in proc.stderr
