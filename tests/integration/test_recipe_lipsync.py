"""The lip-sync recipe, composed as written and run at tiny size through `python -m mova_train`.

Only what cannot run on a CPU is swapped (`model=tiny trainer=cpu logger=csv`, the LoRA rank, 4 steps); the
recipe's objective (a2v / i2av / t2av mix), its validation sampling in every trained mode and the cached data path
(the embedded synthetic cache, which stores the empty-clip latent) run as they would on the GPU.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_lipsync_recipe_trains_a2v_and_validates_every_mode(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    args = [
        "+recipe=lora_lipsync_a2v_1gpu_80gb", "model=tiny", "data=synthetic_cached", "trainer=cpu", "logger=csv",
        "lora.rank=4", "lora.alpha=4", "trainer.max_steps=4", "trainer.log_every_n_steps=1",
        "strategy.offload_activations=false", "strategy.device=cpu", "callbacks.validation_sampling.every_n_steps=4",
        "callbacks.validation_sampling.sampling.steps=2", f"paths.data_dir={tmp_path / 'data'}",
        f"paths.output_root={tmp_path / 'outputs'}", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOVA_")}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "mova_train", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1500)  # fmt: skip
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as f:
        logged = {k for row in csv.DictReader(f) for k, v in row.items() if v}
    assert (
        "train/loss_a2v_video" in logged and "train/loss_a2v_audio" not in logged
    )  # a2v trains the video only
    sidecars = list(run_dir.rglob("step0000004/*.json"))
    assert sorted(json.loads(p.read_text())["mode"] for p in sidecars) == ["a2v", "i2av", "t2av"]
    assert any(k.startswith("val_leakage/") for k in logged)
    lora = load_file(run_dir / "lora" / "lora.safetensors")
    frozen = [k for k in lora if k.startswith("audio_dit.") and ".lora_B." in k]
    assert frozen and all(not lora[k].any() for k in frozen)  # the audio side never trained (B stays zero)
    assert (run_dir / "lora" / "lora.safetensors").stat().st_size > 0
