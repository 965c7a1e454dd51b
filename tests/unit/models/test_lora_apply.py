"""Adapters at inference: single-expert files, high/low-noise pairs, base fingerprints, checksums."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import fill_lora, tiny_output

from mova_train.models import mova_tiny
from mova_train.models.lora import (
    SHARED_GROUPS,
    LoraError,
    LoraSpec,
    component_fingerprints,
    inject_lora,
    lora_group,
    lora_state_dict,
    set_trainable,
)
from mova_train.models.lora_apply import apply_loras
from mova_train.models.lora_file import build_meta, read_lora, save_lora, warm_start_lora

LOW, HIGH = "video_dit_2", "video_dit"
RANGES = {LOW: [0.0, 899.9], HIGH: [900.0, 1000.0]}


def _single_run(tmp_path, expert: str, seed: int, name: str, **spec_kw) -> tuple:
    """A run that loaded one expert (like lora_low_resource): returns (file, trained model)."""
    model = mova_tiny(experts=(expert,))
    fps = component_fingerprints(model)
    spec = LoraSpec(rank=4, alpha=8, preset="attn", **spec_kw)
    inject_lora(model, spec)
    if spec.init_from:
        warm_start_lora(model, spec, fps)
    set_trainable(model, spec)
    fill_lora(model, seed, only_trainable=True)
    tensors = lora_state_dict(model)
    meta = build_meta(tensors, spec, base_fingerprints=fps, experts=[expert], timesteps=RANGES[expert])
    return save_lora(tmp_path / f"{name}.safetensors", tensors, spec, meta=meta), model


def _combined(tmp_path, parts: dict[str, dict[str, torch.Tensor]]):
    """One two-expert file holding the given tensors (the reference for a pair)."""
    tensors = {k: v for p in parts.values() for k, v in p.items()}
    spec = LoraSpec(rank=4, alpha=8, preset="attn")
    return save_lora(tmp_path / "combined.safetensors", tensors, spec)


def _split(path) -> tuple[dict, dict]:
    tensors = read_lora(path).tensors
    shared = {k: v for k, v in tensors.items() if lora_group(k.rsplit(".lora_", 1)[0]) in SHARED_GROUPS}
    return {k: v for k, v in tensors.items() if k not in shared}, shared


def test_single_expert_file_lists_its_targets_and_acts_with_its_expert_only(tmp_path):
    path, trained = _single_run(tmp_path, LOW, seed=1, name="low")
    meta = read_lora(path).meta
    assert set(meta.targets) == {"video_dit_2", "audio_dit", "dual_tower_bridge"}  # what was injected
    assert meta.experts == [LOW] and meta.shared_experts == [LOW]
    assert meta.shared_trained_on == [
        {"experts": [LOW], "timesteps": RANGES[LOW], "trained_groups": ["audio", "bridge_a2v", "bridge_v2a"]}
    ]
    both = mova_tiny()
    info = apply_loras(both, [path])
    assert info[0]["gated_to"] == [LOW] and info[0]["layers"] == 48
    # low-noise steps: exactly the single-expert model it was trained in
    assert torch.equal(tiny_output(both, expert=LOW), tiny_output(trained, expert=LOW))
    # high-noise steps: the base model (the shared adapters never saw these steps)
    assert torch.equal(tiny_output(both, expert=HIGH), tiny_output(mova_tiny(), expert=HIGH))
    merged = mova_tiny()
    apply_loras(merged, [path], merge=True)  # the video layers merge; the gated shared layers stay live
    torch.testing.assert_close(
        tiny_output(merged, expert=LOW), tiny_output(trained, expert=LOW), rtol=1e-5, atol=1e-5
    )
    assert torch.equal(tiny_output(merged, expert=HIGH), tiny_output(mova_tiny(), expert=HIGH))


def _assert_pair_is_one_adapter(tmp_path, model, low, high, shared_from) -> None:
    """``model`` (the pair loaded) samples both experts exactly as one adapter holding each file's video
    layers and the shared (audio/bridge) set of ``shared_from``.
    """
    video_low, video_high, shared = _split(low)[0], _split(high)[0], _split(shared_from)[1]
    ref = mova_tiny()
    apply_loras(ref, [_combined(tmp_path, {"low": video_low, "high": video_high, "shared": shared})])
    for expert in (LOW, HIGH):
        assert torch.equal(tiny_output(model, expert=expert), tiny_output(ref, expert=expert)), expert


def test_pair_with_frozen_shared_set_loads_one_shared_set(tmp_path):
    low, _ = _single_run(tmp_path, LOW, seed=1, name="low")
    high, _ = _single_run(tmp_path, HIGH, seed=2, name="high", init_from=str(low), freeze_groups=["shared"])
    meta_low, meta_high = read_lora(low).meta, read_lora(high).meta
    assert meta_high.shared_checksum == meta_low.shared_checksum  # frozen: the same shared tensors
    assert meta_high.init_from["shared_checksum"] == meta_low.shared_checksum
    assert meta_high.shared_experts == [HIGH, LOW] and meta_high.frozen_groups == list(SHARED_GROUPS)
    assert [r["trained_groups"] for r in meta_high.shared_trained_on] == [list(SHARED_GROUPS), []]
    model = mova_tiny()
    infos = apply_loras(model, [low, high])
    assert [i["gated_to"] for i in infos] == [None, None]
    assert "shared groups not loaded" in infos[0]["note"] and infos[1]["layers"] == 48
    _assert_pair_is_one_adapter(tmp_path, model, low, high, shared_from=low)


def test_pair_with_warm_started_shared_set_uses_the_descendant(tmp_path):
    low, _ = _single_run(tmp_path, LOW, seed=1, name="low")
    high, _ = _single_run(tmp_path, HIGH, seed=2, name="high", init_from=str(low))  # shared trains on
    meta_high = read_lora(high).meta
    assert meta_high.shared_checksum != read_lora(low).meta.shared_checksum
    assert [r["experts"] for r in meta_high.shared_trained_on] == [[LOW], [HIGH]]
    model = mova_tiny()
    infos = apply_loras(model, [high, low])  # order does not matter
    assert "warm-started from it" in infos[1]["note"]
    _assert_pair_is_one_adapter(tmp_path, model, low, high, shared_from=high)


def test_independent_pair_is_refused_with_the_fix(tmp_path):
    low, _ = _single_run(tmp_path, LOW, seed=1, name="low")
    high, _ = _single_run(tmp_path, HIGH, seed=2, name="high")
    with pytest.raises(LoraError, match="two independent audio/bridge adapters") as err:
        apply_loras(mova_tiny(), [low, high])
    assert "lora.init_from=" in str(err.value) and "freeze_groups" in str(err.value)
    model = mova_tiny()  # switching one file's shared groups off resolves it
    infos = apply_loras(model, [low, {"path": str(high), "groups": {"shared": 0.0}}])
    assert infos[0]["gated_to"] == [LOW] and infos[1]["layers"] == 16


def test_lora_from_another_base_is_refused(tmp_path):
    path, _ = _single_run(tmp_path, LOW, seed=1, name="low")
    other = mova_tiny(seed=7)
    with pytest.raises(LoraError, match="trained on another base model") as err:
        apply_loras(other, [path])
    message = str(err.value)
    assert str(path) in message and "allow_other_base: true" in message
    fps = component_fingerprints(other)
    assert fps["audio_dit"] in message and read_lora(path).meta.base_fingerprints["audio_dit"] in message
    apply_loras(other, [{"path": str(path), "allow_other_base": True}])
    model = mova_tiny(seed=7, experts=(HIGH,))
    spec = LoraSpec(rank=4, alpha=8, preset="attn", init_from=str(path))
    inject_lora(model, spec)
    with pytest.raises(LoraError, match=r"lora.init_from .* set lora.init_from_other_base=true"):
        warm_start_lora(model, spec, component_fingerprints(mova_tiny(seed=7, experts=(HIGH,))))
    spec.init_from_other_base = True  # the explicit override warm-starts anyway
    assert (
        warm_start_lora(model, spec, component_fingerprints(mova_tiny(seed=7, experts=(HIGH,))))["copied"] > 0
    )


def test_same_weights_in_bf16_have_the_same_fingerprint():
    from mova_train.models.builders import cast_for_compute

    assert component_fingerprints(cast_for_compute(mova_tiny(), torch.bfloat16)) == component_fingerprints(
        cast_for_compute(mova_tiny(), torch.bfloat16).float()
    )
    assert component_fingerprints(mova_tiny(experts=(LOW,)))[LOW] == component_fingerprints(mova_tiny())[LOW]


def test_corrupted_or_truncated_file_is_refused_by_name(tmp_path):
    path, _ = _single_run(tmp_path, LOW, seed=1, name="low")
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    for i in range(8 + header + 100, 8 + header + 164):  # 64 bytes inside the tensor data
        data[i] ^= 0xFF
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(bytes(data))
    with pytest.raises(LoraError, match="corrupted") as err:
        apply_loras(mova_tiny(), [bad])
    assert str(bad) in str(err.value)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[: 8 + header + 50])
    with pytest.raises(LoraError, match="truncated or corrupted") as err:
        apply_loras(mova_tiny(), [cut])
    assert str(cut) in str(err.value)


def test_warm_start_checks_rank_and_alpha(tmp_path):
    low, _ = _single_run(tmp_path, LOW, seed=1, name="low")
    model = mova_tiny(experts=(HIGH,))
    spec = LoraSpec(rank=8, alpha=8, preset="attn", init_from=str(low))
    inject_lora(model, spec)
    with pytest.raises(LoraError, match="alpha"):
        warm_start_lora(model, spec, component_fingerprints(mova_tiny(experts=(HIGH,))))
    model = mova_tiny(experts=(HIGH,))
    spec = LoraSpec(rank=8, alpha=16, preset="attn", init_from=str(low))
    inject_lora(model, spec)
    with pytest.raises(LoraError, match="shape"):
        warm_start_lora(model, spec)
