"""LoRA through peft: exact targets, save/load, merge, upstream export, fingerprint."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny import fill_lora, tiny_args
from safetensors import safe_open

from mova_train.models import mova_tiny
from mova_train.models.lora import (
    LoraError,
    LoraSpec,
    base_fingerprint,
    base_state_dict,
    inject_lora,
    lora_state_dict,
    merge_lora,
    set_trainable,
    target_names,
)
from mova_train.models.lora_apply import load_lora
from mova_train.models.lora_file import save_lora
from mova_train.models.lora_upstream import export_upstream


def _run(model, expert: str = "video_dit") -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return model(*tiny_args(batch=2, audio_len=6, text_len=5, timestep=(950.0, 500.0)), expert=expert)


@pytest.mark.parametrize(
    ("preset", "count"), [("upstream", 76), ("attn_ffn", 76), ("attn", 64), ("bridge", 16)]
)
def test_preset_layer_counts(preset, count):
    # tiny model: 2 blocks; towers 10 (attn+ffn) / 8 (attn) linears per block, bridge 8 per layer, 2 experts
    names = inject_lora(mova_tiny(), LoraSpec(rank=4, alpha=4, preset=preset))
    assert len(names) == count
    if preset == "attn":
        assert not any(".ffn." in n for n in names)
    if preset == "bridge":
        assert all(n.startswith("dual_tower_bridge.") for n in names)
    assert not any("time_" in n or "text_embedding" in n or "head" in n for n in names)


def test_exact_matching_per_component():
    spec = LoraSpec(rank=2, alpha=2, components={"audio_dit": ["self_attn.q"], "video_dit_2": "attn"})
    names = inject_lora(mova_tiny(), spec)
    audio = [n for n in names if n.startswith("audio_dit.")]
    assert audio == ["audio_dit.blocks.0.self_attn.q", "audio_dit.blocks.1.self_attn.q"]  # not cross_attn.q
    assert not any(n.startswith("video_dit.") for n in names)
    with pytest.raises(LoraError, match="matches no nn.Linear"):
        inject_lora(mova_tiny(), LoraSpec(components={"audio_dit": ["attn.q"]}))
    with pytest.raises(LoraError, match="unknown component"):
        LoraSpec(components={"text_encoder": "attn"})
    with pytest.raises(LoraError, match="unknown preset"):
        LoraSpec(components={"audio_dit": "everything"})


def test_injection_keeps_outputs_and_freezes_base():
    model = mova_tiny()
    ref = _run(model)
    spec = LoraSpec(rank=4, alpha=8, preset="attn")
    inject_lora(model, spec)
    out = _run(model)
    assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])  # B = 0
    trainable = set_trainable(model, spec)
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    trainable = set_trainable(model, spec, ["dual_tower_bridge"])
    assert any(n.startswith("dual_tower_bridge.") and "lora" not in n for n in trainable)
    with pytest.raises(LoraError, match="nothing to train"):
        set_trainable(mova_tiny(), None, [])


def test_save_load_identical_outputs_and_strict(tmp_path):
    spec = LoraSpec(rank=4, alpha=8, preset="upstream")
    model = mova_tiny()
    inject_lora(model, spec)
    fill_lora(model, seed=1, scale=0.1, part=".lora_B.")
    ref = _run(model, "video_dit_2")
    path = save_lora(tmp_path / "lora.safetensors", model, spec, base_fingerprint="model:abc")
    with safe_open(str(path), framework="pt") as f:
        meta, keys = f.metadata(), list(f.keys())
    assert meta["rank"] == "4" and float(meta["alpha"]) == 8.0 and meta["base_fingerprint"] == "model:abc"
    assert meta["format"] == "mova_lora/2" and len(meta["checksum"]) == 64
    assert json.loads(meta["targets"]) == spec.components
    assert "video_dit.blocks.0.self_attn.q.lora_A.weight" in keys and not any(".default" in k for k in keys)
    fresh = mova_tiny()
    loaded = load_lora(path, fresh)  # injects from the metadata
    assert loaded.components == spec.components
    out = _run(fresh, "video_dit_2")
    assert torch.equal(ref[0], out[0]) and torch.equal(ref[1], out[1])
    # strength 0 gives the base model back
    base = _run(mova_tiny(), "video_dit_2")
    other = mova_tiny()
    load_lora(path, other, strength=0.0)
    assert torch.allclose(_run(other, "video_dit_2")[0], base[0])
    # a model with other targets cannot take the file
    narrow = mova_tiny()
    inject_lora(narrow, LoraSpec(rank=4, alpha=8, preset="attn"))
    with pytest.raises(LoraError, match="unexpected"):
        load_lora(path, narrow)
    wrong_rank = mova_tiny()
    inject_lora(wrong_rank, LoraSpec(rank=2, alpha=8, preset="upstream"))
    with pytest.raises(LoraError, match="shape"):
        load_lora(path, wrong_rank)


def test_merge_equals_unmerged_and_restores_names():
    spec = LoraSpec(rank=4, alpha=8, preset="upstream")
    model = mova_tiny()
    base_keys = set(model.state_dict())
    inject_lora(model, spec)
    fill_lora(model, seed=1, scale=0.1, part=".lora_B.")
    ref = _run(model)
    assert merge_lora(model) == 76
    out = _run(model)
    assert torch.allclose(ref[0], out[0], atol=1e-5) and torch.allclose(ref[1], out[1], atol=1e-5)
    assert set(model.state_dict()) == base_keys  # plain nn.Linear again, release key names


def test_export_upstream_same_tensors(tmp_path):
    spec = LoraSpec(rank=4, alpha=8, preset="upstream")
    model = mova_tiny()
    inject_lora(model, spec)
    fill_lora(model, seed=1, scale=0.1, part=".lora_B.")
    save_lora(tmp_path / "lora.safetensors", model, spec)
    export_upstream(tmp_path / "up", lora_state_dict(model), spec.rank, spec.alpha)
    weights = torch.load(tmp_path / "up" / "lora_weights.pt", weights_only=True)
    config = torch.load(tmp_path / "up" / "lora_config.pt", weights_only=True)
    assert config == {"rank": 4, "alpha": 8.0, "target_modules": list(spec.components)}
    with safe_open(str(tmp_path / "lora.safetensors"), framework="pt") as f:
        assert set(f.keys()) == set(weights)
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), weights[k])
    assert weights["video_dit.blocks.0.self_attn.q.lora_A.weight"].shape == (4, 32)
    assert set(weights) == set(lora_state_dict(model))


def test_base_fingerprint(tmp_path):
    model = mova_tiny()
    fp = base_fingerprint(model)
    inject_lora(model, LoraSpec(rank=2, alpha=2))
    fill_lora(model, seed=1, scale=0.1, part=".lora_B.")
    assert base_fingerprint(model) == fp  # LoRA does not change the base identity
    assert set(base_state_dict(model)) == set(mova_tiny().state_dict())
    other = mova_tiny(seed=1)
    assert base_fingerprint(other) != fp
    from mova_train.models.checkpoint import save_dual_tower

    save_dual_tower(mova_tiny(), tmp_path / "ckpt")
    folder_fp = base_fingerprint(tmp_path / "ckpt")
    assert folder_fp.startswith("folder:") and folder_fp == base_fingerprint(tmp_path / "ckpt")
    with pytest.raises(LoraError, match="no .safetensors"):
        base_fingerprint(tmp_path / "nothing")


def test_preset_skips_unloaded_expert_but_explicit_component_must_exist():
    single = mova_tiny(experts=("video_dit_2",))
    names = target_names(single, LoraSpec(preset="attn"))
    assert set(names) == {"video_dit_2", "audio_dit", "dual_tower_bridge"}
    with pytest.raises(LoraError, match="'video_dit' but the model has no such component"):
        target_names(single, LoraSpec(components={"video_dit": "attn"}))
