"""`python -m mova_train` end to end in temporary folders: tiny CPU run, resume, show, two-job multirun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 1200  # generous: the CI machine has 2 cores


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOVA_")}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "mova_train", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-6000:]}"
    )
    return proc


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic dataset for the module (the first run generates it)."""
    return tmp_path_factory.mktemp("data")


@pytest.mark.slow
def test_tiny_cpu_fit_writes_outputs_and_resumes(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    common = [
        "+recipe=tiny_cpu",
        f"paths.data_dir={data_dir}",
        f"paths.output_root={tmp_path / 'outputs'}",
        f"hydra.run.dir={run_dir}",
        "callbacks.checkpoint.every_n_train_steps=1",
    ]
    proc = _run(
        [*common, "trainer.max_steps=2", "callbacks.validation_sampling.sampling.steps=2"], cwd=tmp_path
    )
    log = (run_dir / "__main__.log").read_text()
    assert (data_dir / "synthetic" / "shards" / "index.json").is_file()  # generated on first use
    assert (run_dir / "lora" / "lora.safetensors").stat().st_size > 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    metrics = (run_dir / "csv" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in metrics.splitlines()[0]
    samples = list((run_dir / "validation_samples" / "step0000002").glob("*.mp4"))
    assert len(samples) == 1 and samples[0].stat().st_size > 0
    assert "train/loss = " in log  # the value returned to sweepers
    assert "Epoch 0" in proc.stdout + proc.stderr  # progress bar
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 2

    # resume the same run folder from its last checkpoint and train one more step
    _run(
        [*common, "trainer.max_steps=3", "ckpt_path=last", "callbacks.validation_sampling=null"], cwd=tmp_path
    )
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert "Restoring states from the checkpoint" in (run_dir / "__main__.log").read_text()


@pytest.mark.slow
def test_show_builds_and_exits(data_dir: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "show"
    _run(["show=true", f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    log = (run_dir / "__main__.log").read_text()
    assert "memory per device" in log and "trainable" in log and "training step:" in log
    assert not (run_dir / "checkpoints").exists()


@pytest.mark.slow
def test_multirun_writes_two_runs(data_dir: Path, tmp_path: Path) -> None:
    sweep_dir = tmp_path / "sweep"
    _run(
        [
            "-m",
            "optimizer.lr=1e-4,5e-5",
            "trainer.max_steps=1",
            f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep_dir}",
        ],
        cwd=tmp_path,
    )
    assert (sweep_dir / "multirun.yaml").is_file()
    for job, lr in (("0", 1e-4), ("1", 5e-5)):
        job_dir = sweep_dir / job
        assert (job_dir / "lora" / "lora.safetensors").is_file(), job
        job_cfg = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
        assert job_cfg.optimizer.lr == pytest.approx(lr)
        assert "train/loss = " in (job_dir / "__main__.log").read_text()
