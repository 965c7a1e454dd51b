"""`LoraExport` and `LoraGradNorms` in a real Lightning fit of the tiny model (one process)."""

from __future__ import annotations

import csv

import pytest
import torch
from helpers.tiny import cpu_trainer
from helpers.tiny_latents import TinyDataModule, tiny_module
from lightning.pytorch.loggers import CSVLogger

from mova_train.callbacks.lora_export import LoraExport
from mova_train.callbacks.lora_grad_norms import LoraGradNorms
from mova_train.models import mova_tiny
from mova_train.models.lora import LoraSpec, base_state_dict
from mova_train.models.lora_apply import apply_loras
from mova_train.models.lora_file import read_lora

pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(tmp_path, module, callbacks, steps=3):
    trainer = cpu_trainer(
        max_steps=steps,
        enable_checkpointing=False,
        logger=CSVLogger(tmp_path, name="csv"),
        log_every_n_steps=1,
        default_root_dir=tmp_path,
        callbacks=callbacks,
    )
    trainer.fit(module, datamodule=TinyDataModule(seed=0))
    return trainer


def test_single_expert_run_records_provenance_freezes_groups_and_logs_group_grad_norms(tmp_path):
    spec = LoraSpec(rank=4, alpha=4, preset="attn", freeze_groups=["bridge"])
    module = tiny_module(lr=5e-3, lora=spec, expert_mode="single", expert="video_dit_2")
    _fit(tmp_path, module, [LoraExport(tmp_path / "lora"), LoraGradNorms()])
    weights = read_lora(tmp_path / "lora" / "lora.safetensors")
    meta = weights.meta
    assert meta.experts == ["video_dit_2"] and meta.shared_experts == ["video_dit_2"]
    t_min, t_max = meta.shared_trained_on[0]["timesteps"]
    assert t_min < 100 and 850 < t_max < 900  # the low-noise expert's range (boundary 900)
    assert meta.shared_trained_on[0]["trained_groups"] == ["audio"] and meta.frozen_groups == [
        "bridge_a2v",
        "bridge_v2a",
    ]
    assert meta.base_fingerprints == module.base_fingerprints
    bridge_b = [
        v for k, v in weights.tensors.items() if k.startswith("dual_tower_bridge.") and ".lora_B." in k
    ]
    audio_b = [v for k, v in weights.tensors.items() if k.startswith("audio_dit.") and ".lora_B." in k]
    assert bridge_b and all(torch.count_nonzero(t) == 0 for t in bridge_b)  # frozen: still zero
    assert any(torch.count_nonzero(t) > 0 for t in audio_b)
    with open(next((tmp_path / "csv").rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    logged = {k for r in rows for k, v in r.items() if v and k.startswith("train/grad_norm_")}
    assert logged == {"train/grad_norm_video", "train/grad_norm_audio"}
    values = [float(r["train/grad_norm_audio"]) for r in rows if r.get("train/grad_norm_audio")]
    assert len(values) == 3 and all(v > 0 for v in values)  # every step (log_every_n_steps=1)
    # into the two-expert model: the low-noise expert's adapter, shared layers gated to it
    info = apply_loras(mova_tiny(), [tmp_path / "lora" / "lora.safetensors"])
    assert info[0]["gated_to"] == ["video_dit_2"] and info[0]["experts"] == ["video_dit_2"]


def test_full_finetune_run_exports_its_component(tmp_path):
    module = tiny_module(lr=5e-3, full_finetune=("dual_tower_bridge",))
    export = LoraExport(tmp_path / "lora")
    _fit(tmp_path, module, [export, LoraGradNorms()], steps=2)
    folder = tmp_path / "lora" / "components" / "dual_tower_bridge"
    assert (folder / "config.json").is_file() and not (tmp_path / "lora" / "lora.safetensors").exists()
    loaded = mova_tiny(components={"dual_tower_bridge": str(folder)})
    trained = base_state_dict(module.model.dual_tower_bridge)
    assert all(torch.equal(loaded.dual_tower_bridge.state_dict()[k], v) for k, v in trained.items())
    assert not torch.equal(
        trained["audio_to_video_conditioners.0.inner.q.weight"],
        mova_tiny().state_dict()["dual_tower_bridge.audio_to_video_conditioners.0.inner.q.weight"],
    )
    with open(next((tmp_path / "csv").rglob("metrics.csv"))) as f:
        assert "train/grad_norm_full_dual_tower_bridge" in f.readline()
