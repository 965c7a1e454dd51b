"""One rank/world helper (`mova_train.utils.dist`): the launcher's environment before a process group exists, and
no other module reads the rank variables itself.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mova_train.utils.dist import global_rank, local_rank, planned_world, rank_world

PACKAGES = [Path(__file__).resolve().parents[2] / name for name in ("mova_train", "data_tools")]
RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in RANK_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_single_process_without_a_launcher(clean_env: pytest.MonkeyPatch) -> None:
    assert rank_world() == (0, 1) and global_rank() == 0 and local_rank() == 0


def test_torchrun_and_slurm_environments(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SLURM_PROCID", "5")
    clean_env.setenv("SLURM_NTASKS", "8")
    clean_env.setenv("SLURM_LOCALID", "1")
    assert rank_world() == (5, 8) and local_rank() == 1
    clean_env.setenv("RANK", "3")  # torchrun's variables win
    clean_env.setenv("WORLD_SIZE", "4")
    clean_env.setenv("LOCAL_RANK", "3")
    assert rank_world() == (3, 4) and global_rank() == 3 and local_rank() == 3


def test_planned_world_from_trainer_settings() -> None:
    assert planned_world(8, 2) == 16 and planned_world("auto", 1) == 1 and planned_world([0, 1], None) == 1


def test_no_other_module_reads_the_rank_variables() -> None:
    pattern = re.compile(r"environ(?:\.get)?\s*[\[(]\s*[\"'](?:" + "|".join(RANK_VARS) + r")[\"']")
    offenders = [
        str(path)
        for package in PACKAGES
        for path in sorted(package.rglob("*.py"))
        if path.name != "dist.py" and pattern.search(path.read_text(encoding="utf-8"))
    ]
    assert not offenders, f"read the rank through mova_train.utils.dist instead: {offenders}"
