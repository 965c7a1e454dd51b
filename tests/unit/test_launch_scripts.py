"""The cluster launchers (`recipes/launch/`): one SLURM script and one torchrun script, valid bash, and each runs
our entry point with a recipe. They run here with `srun` / `python` stand-ins on PATH that print their arguments,
so the command line each script builds is checked as written.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAUNCH = REPO / "recipes" / "launch"
SCRIPTS = sorted(p for p in LAUNCH.iterdir() if p.is_file())


def test_one_slurm_and_one_torchrun_script_and_no_others() -> None:
    assert [p.name for p in SCRIPTS] == ["slurm.sbatch", "torchrun.sh"]
    strays = [
        p for p in (REPO / "recipes").rglob("*") if p.suffix in (".sh", ".sbatch") and p.parent != LAUNCH
    ]
    assert not strays, f"launch scripts outside recipes/launch/: {strays}"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_valid_bash_and_calls_the_entry_point_with_a_recipe(script: Path) -> None:
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "-m mova_train +recipe=" in text and "SIGTERM" in text and "NCCL" in text and "MOVA_VENV" in text


def _run(script: Path, tmp_path: Path, env: dict[str, str], stub: str) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / stub).write_text('#!/bin/bash\necho "ARGS $*"\n')
    (bin_dir / stub).chmod(0o755)
    full = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MOVA_VENV": str(tmp_path / "no-venv"), **env}
    proc = subprocess.run(
        ["bash", str(script), "trainer.max_steps=5"], cwd=tmp_path, env=full, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_slurm_script_runs_the_recipe_on_the_allocation(tmp_path: Path) -> None:
    env = {
        "RECIPE": "lora_ddp",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_NTASKS_PER_NODE": "4",
        "SLURM_JOB_ID": "77",
    }
    out = _run(LAUNCH / "slurm.sbatch", tmp_path, env, "srun")
    assert "python -m mova_train +recipe=lora_ddp trainer.num_nodes=2 trainer.devices=4" in out
    assert "hydra.run.dir=outputs/lora_ddp/runs/slurm-77 trainer.max_steps=5" in out


def test_torchrun_script_runs_the_recipe_on_every_node(tmp_path: Path) -> None:
    env = {"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "node0", "RUN_ID": "exp1", "NPROC_PER_NODE": "8"}
    out = _run(LAUNCH / "torchrun.sh", tmp_path, env, "python")
    assert "--nnodes=2 --node_rank=1 --nproc_per_node=8 --master_addr=node0" in out
    assert "-m mova_train +recipe=lora_fsdp8 trainer.num_nodes=2 trainer.devices=8" in out
    assert "hydra.run.dir=outputs/lora_fsdp8/runs/exp1 trainer.max_steps=5" in out
