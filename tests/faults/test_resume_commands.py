"""The README's resume commands (issue 14 item 9), run as written plus tiny overrides: a named run folder resumes
with `ckpt_path=last`; `ckpt_path=last` in a fresh folder (the default, time-stamped) is an error naming the
folder it looked in and `hydra.run.dir`; a folder held by a live run is refused naming it and the holder pid;
each resume keeps the earlier loss log (issue 14 item 7).
"""

from __future__ import annotations

import json
import os
import shlex
import socket
from pathlib import Path

import pytest

from faults import runner

pytestmark = [pytest.mark.slow]

TRAIN = "python -m mova_train +recipe=tiny_cpu hydra.run.dir=outputs/my_run"
RESUME = "python -m mova_train +recipe=tiny_cpu hydra.run.dir=outputs/my_run ckpt_path=last"
FRESH = "python -m mova_train +recipe=tiny_cpu ckpt_path=last"
TINY = ["trainer.max_steps=2", "data.synthetic.count=2", "callbacks.checkpoint.every_n_train_steps=1"]


def _args(command: str, tmp_path: Path, *extra: str) -> list[str]:
    parts = shlex.split(command)
    assert parts[:3] == ["python", "-m", "mova_train"]
    return [*parts[3:], *TINY, f"paths.data_dir={tmp_path / 'data'}", *extra]


def test_readme_has_the_commands() -> None:
    readme = (runner.REPO / "README.md").read_text()
    assert TRAIN in readme and RESUME in readme
    assert FRESH not in readme.replace(RESUME, "")  # the one-liner that started a new folder is gone


def test_named_folder_resumes_and_keeps_its_loss_log(tmp_path: Path) -> None:
    run_dir = tmp_path / "outputs" / "my_run"
    runner.run(_args(TRAIN, tmp_path), cwd=tmp_path)
    proc = runner.run(_args(RESUME, tmp_path, "trainer.max_steps=3"), cwd=tmp_path)
    assert "Restoring states from the checkpoint" in proc.stdout + proc.stderr
    logs = sorted((run_dir / "csv").glob("version_*/metrics.csv"))
    assert [p.parent.name for p in logs] == ["version_0", "version_1"]
    assert all("train/loss" in p.read_text() for p in logs)


def test_last_in_a_fresh_folder_and_a_held_folder_are_refused(tmp_path: Path) -> None:
    proc = runner.run(_args(FRESH, tmp_path), cwd=tmp_path, expect_rc=None)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "no intact checkpoint in" in out and "hydra.run.dir=" in out
    assert "outputs/tiny_cpu/runs/" in out
    held = tmp_path / "outputs" / "my_run"
    held.mkdir(parents=True)
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": "now"}
    (held / ".mova_train.lock").write_text(json.dumps(holder))
    proc = runner.run(_args(TRAIN, tmp_path), cwd=tmp_path, expect_rc=None)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"pid {os.getpid()}" in out and str(held) in out
