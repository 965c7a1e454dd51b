"""LoRA groups (video / audio / bridge a2v / bridge v2a), frozen groups, group strengths, fp32 adapters."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import fill_lora, tiny_inputs, tiny_output
from safetensors.torch import load_file

from mova_train.models import mova_tiny
from mova_train.models.builders import cast_for_compute
from mova_train.models.lora import (
    AUDIO_SIDE_GROUPS,
    VIDEO_SIDE_GROUPS,
    LoraError,
    LoraSpec,
    inject_lora,
    lora_group,
    lora_state_dict,
    scaled_lora_groups,
    set_trainable,
)
from mova_train.models.lora_apply import apply_loras
from mova_train.models.lora_file import LoraMeta, read_lora, save_lora

SPEC = LoraSpec(rank=4, alpha=8, preset="attn_ffn")


def _trained(spec: LoraSpec = SPEC, experts=("video_dit", "video_dit_2")):
    model = mova_tiny(experts=experts)
    inject_lora(model, spec)
    fill_lora(model, seed=3)
    return model


def test_every_lora_layer_has_one_group():
    names = [n for n, _ in _trained().named_modules() if n.endswith(".self_attn.q") or ".inner." in n]
    groups = {
        n.split(".")[0] + ("." + n.split(".")[1] if "bridge" in n else ""): lora_group(n) for n in names
    }
    assert groups == {
        "video_dit": "video",
        "video_dit_2": "video",
        "audio_dit": "audio",
        "dual_tower_bridge.audio_to_video_conditioners": "bridge_a2v",
        "dual_tower_bridge.video_to_audio_conditioners": "bridge_v2a",
    }
    assert set(VIDEO_SIDE_GROUPS) | set(AUDIO_SIDE_GROUPS) == {"video", "audio", "bridge_a2v", "bridge_v2a"}
    with pytest.raises(LoraError, match="belongs to no group"):
        lora_group("text_encoder.block.0")


def test_file_records_the_group_of_every_tensor(tmp_path):
    path = save_lora(tmp_path / "l.safetensors", _trained(), SPEC)
    meta = read_lora(path).meta
    tensors = load_file(str(path))
    by_module = {m: g for g, mods in meta.groups.items() for m in mods}
    assert set(meta.groups) == {"video", "audio", "bridge_a2v", "bridge_v2a"}
    for key in tensors:
        module = key.rsplit(".lora_", 1)[0]
        assert by_module[module] == lora_group(module)
    assert sum(len(m) for m in meta.groups.values()) == len(tensors) // 2


def test_freeze_groups_trains_only_the_others():
    model = mova_tiny()
    spec = LoraSpec(rank=2, alpha=2, preset="attn", freeze_groups=["shared"])
    inject_lora(model, spec)
    names = set_trainable(model, spec)
    assert names and all(n.startswith(("video_dit.", "video_dit_2.")) for n in names)
    spec = LoraSpec(rank=2, alpha=2, preset="attn", freeze_groups=["bridge", "video"])
    assert spec.freeze_groups == ["bridge_a2v", "bridge_v2a", "video"]
    with pytest.raises(LoraError, match="lora.freeze_groups: unknown LoRA group 'audo'"):
        LoraSpec(freeze_groups=["audo"])
    all_frozen = LoraSpec(rank=2, alpha=2, preset="attn", freeze_groups=["video", "shared"])
    model = mova_tiny()
    inject_lora(model, all_frozen)
    with pytest.raises(LoraError, match="froze every LoRA layer"):
        set_trainable(model, all_frozen)


def _without(path, tmp_path, groups: set[str]):
    """A copy of the file without the tensors of ``groups``."""
    weights = read_lora(path)
    kept = {k: v for k, v in weights.tensors.items() if lora_group(k.rsplit(".lora_", 1)[0]) not in groups}
    out = tmp_path / f"without_{'_'.join(sorted(groups))}.safetensors"
    return save_lora(out, kept, SPEC)


@pytest.mark.parametrize("group", ["audio", "video", "bridge_a2v", "bridge_v2a"])
def test_group_strength_zero_equals_adapter_without_its_tensors(tmp_path, group):
    path = save_lora(tmp_path / "l.safetensors", _trained(), SPEC)
    reference = mova_tiny()
    apply_loras(reference, [_without(path, tmp_path, {group})])
    want = tiny_output(reference)
    # at load: groups: {group: 0.0}
    zeroed = mova_tiny()
    apply_loras(zeroed, [{"path": str(path), "groups": {group: 0.0}}])
    assert torch.equal(want, tiny_output(zeroed))
    # live, on a loaded model (what the leakage check does)
    full = mova_tiny()
    apply_loras(full, [path])
    before = tiny_output(full)
    with scaled_lora_groups(full, {group: 0.0}):
        live = tiny_output(full)
    assert torch.equal(want, live)
    assert torch.equal(before, tiny_output(full)) and not torch.equal(before, live)


def test_group_strength_scales_that_group_only(tmp_path):
    model = _trained()
    path = save_lora(tmp_path / "l.safetensors", model, SPEC)
    half = {
        k: (0.5 * v if ".lora_B." in k and lora_group(k.rsplit(".lora_", 1)[0]) == "audio" else v)
        for k, v in lora_state_dict(model).items()
    }
    ref = mova_tiny()
    apply_loras(ref, [save_lora(tmp_path / "half.safetensors", half, SPEC)])
    got = mova_tiny()
    info = apply_loras(got, [{"path": str(path), "strength": 1.0, "groups": {"audio": 0.5}}])
    assert info[0]["groups"] == {"audio": 0.5}
    torch.testing.assert_close(tiny_output(ref), tiny_output(got), rtol=1e-6, atol=1e-6)
    with pytest.raises(LoraError, match="unknown LoRA group 'sound'"):
        apply_loras(mova_tiny(), [{"path": str(path), "groups": {"sound": 0.0}}])
    with pytest.raises(LoraError, match="unknown key"):
        apply_loras(mova_tiny(), [{"path": str(path), "strenght": 0.5}])


def test_adapters_are_float32_on_a_bf16_base():
    model = cast_for_compute(mova_tiny(), torch.bfloat16)
    spec = LoraSpec(rank=4, alpha=4, preset="attn_ffn")
    inject_lora(model, spec)
    trainable = set(set_trainable(model, spec))
    dtypes = {p.dtype for n, p in model.named_parameters() if n in trainable}
    assert dtypes == {torch.float32}
    assert model.video_dit.blocks[0].self_attn.q.base_layer.weight.dtype == torch.bfloat16
    inputs = tiny_inputs(expert="video_dit_2")
    inputs.update({k: inputs[k].to(torch.bfloat16) for k in ("latents", "y", "audio_latents", "context")})
    video, audio = model(**inputs)
    assert video.dtype == torch.bfloat16
    (video.float().square().mean() + audio.float().square().mean()).backward()
    grads = [
        p.grad for n, p in model.named_parameters() if ".lora_B." in n and not n.startswith("video_dit.")
    ]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)


def test_meta_roundtrip():
    meta = LoraMeta(
        rank=4, alpha=8.0, groups={"audio": ["audio_dit.blocks.0.self_attn.q"]}, experts=["video_dit_2"]
    )
    back = LoraMeta.from_metadata(meta.to_metadata(), "x")
    assert back == meta
