"""What LoRA and full fine-tune runs write, through the entry points as a user types them, loads in predict.

* ``+recipe=lora_fsdp8`` on 2 gloo processes with its own FSDP2 strategy (and with context parallelism 2): the
  LoRA is gathered from the shards and written once; our predict loader takes it;
* the two-run workflow of one expert at a time (``expert=video_dit_2``, then ``expert=video_dit`` with
  ``lora.init_from`` and ``lora.freeze_groups=[shared]``): predict takes the pair as one adapter per expert
  plus one shared set;
* ``lora=none module.full_finetune=[dual_tower_bridge]``: the component export loads with
  ``model.components``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mova_train.models import mova_tiny
from mova_train.models.lora import LoraSpec, inject_lora, lora_state_dict
from mova_train.models.lora_apply import apply_loras
from mova_train.models.lora_file import read_lora

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOVA_")}
    env.update(WANDB_MODE="offline", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1500
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def _predict(tmp_path: Path, *overrides: str) -> Path:
    """`python -m mova_train.predict +recipe=predict_tiny_cpu` (2 steps) with ``overrides``; its run folder."""
    predict_dir = tmp_path / "predict"
    args = [
        "+recipe=predict_tiny_cpu",
        f"paths.output_root={tmp_path / 'outputs'}",
        f"hydra.run.dir={predict_dir}",
    ]
    _run("mova_train.predict", [*args, "sampling.steps=2", *overrides], cwd=tmp_path)
    return predict_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data")


def _common(data_dir: Path, tmp_path: Path, run: str) -> list[str]:
    return [
        f"paths.data_dir={data_dir}",
        f"paths.output_root={tmp_path / 'outputs'}",
        f"hydra.run.dir={tmp_path / run}",
        "trainer.max_steps=2",
    ]


@pytest.mark.distributed
@pytest.mark.parametrize("cp", [1, 2])
def test_lora_fsdp8_on_two_processes_writes_a_whole_lora(data_dir: Path, tmp_path: Path, cp: int) -> None:
    _run(
        "mova_train",
        [
            "+recipe=lora_fsdp8",
            *_common(data_dir, tmp_path, "run"),
            "model=tiny",
            "data=synthetic_cached",
            "trainer=cpu",
            "trainer.devices=2",
            "lr_scheduler=constant",
            "logger=csv",
            f"strategy.context_parallel_size={cp}",
            "strategy.mixed_precision=null",
            "callbacks.lora_export.formats=[upstream]",
        ],
        cwd=tmp_path,
    )
    path = tmp_path / "run" / "lora" / "lora.safetensors"
    weights = read_lora(path)  # checksum verified
    reference = mova_tiny()
    inject_lora(reference, LoraSpec(rank=16, alpha=16, preset="upstream"))
    shapes = {k: tuple(v.shape) for k, v in lora_state_dict(reference).items()}
    assert {k: tuple(v.shape) for k, v in weights.tensors.items()} == shapes  # whole tensors, not shards
    assert any(torch.count_nonzero(v) for k, v in weights.tensors.items() if ".lora_B." in k)  # trained
    assert weights.meta.experts == ["video_dit", "video_dit_2"]
    for adapter in (path, tmp_path / "run" / "lora" / "upstream"):  # our predict loader takes both
        info = apply_loras(mova_tiny(), [adapter])
        assert info[0]["layers"] == 76 and info[0]["rank"] == 16 and info[0]["gated_to"] is None


def test_one_expert_at_a_time_then_predict_with_the_pair(data_dir: Path, tmp_path: Path) -> None:
    tiny = ["+recipe=tiny_cpu", "callbacks.validation_sampling=null"]
    _run("mova_train", [*tiny, *_common(data_dir, tmp_path, "low"), "expert=video_dit_2"], cwd=tmp_path)
    low = tmp_path / "low" / "lora" / "lora.safetensors"
    _run(
        "mova_train",
        [
            *tiny,
            *_common(data_dir, tmp_path, "high"),
            "expert=video_dit",
            f"lora.init_from={low}",
            "lora.freeze_groups=[shared]",
        ],
        cwd=tmp_path,
    )
    high = tmp_path / "high" / "lora" / "lora.safetensors"
    meta_low, meta_high = read_lora(low).meta, read_lora(high).meta
    assert meta_low.experts == ["video_dit_2"] and meta_high.experts == ["video_dit"]
    assert meta_high.shared_checksum == meta_low.shared_checksum  # frozen in the second run
    assert meta_high.shared_experts == ["video_dit", "video_dit_2"]
    predict_dir = _predict(tmp_path, f"lora.adapters=[{{path: {low}}}, {{path: {high}}}]")
    (sidecar,) = sorted(predict_dir.rglob("*.json"))
    loras = json.loads(sidecar.read_text())["lora"]
    assert [entry["experts"] for entry in loras] == [["video_dit_2"], ["video_dit"]]
    assert "shared groups not loaded" in loras[0]["note"] and loras[1]["gated_to"] is None
    assert sorted(predict_dir.rglob("*.mp4"))


def test_full_finetune_through_the_entry_point_then_predict_with_the_component(
    data_dir: Path, tmp_path: Path
) -> None:
    _run(
        "mova_train",
        [
            "+recipe=tiny_cpu",
            "callbacks.validation_sampling=null",
            *_common(data_dir, tmp_path, "full"),
            "lora=none",
            "module.full_finetune=[dual_tower_bridge]",
        ],
        cwd=tmp_path,
    )
    folder = tmp_path / "full" / "lora" / "components" / "dual_tower_bridge"
    assert (folder / "config.json").is_file() and (folder / "diffusion_pytorch_model.safetensors").is_file()
    predict_dir = _predict(tmp_path, f"model.components={{dual_tower_bridge: {folder}}}")
    log = "".join(p.read_text() for p in predict_dir.glob("*.log"))
    assert f"loaded dual_tower_bridge weights from {folder}" in log
    assert sorted(predict_dir.rglob("*.mp4"))
