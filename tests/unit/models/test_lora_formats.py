"""LoRA exports for DiffSynth-Studio and ComfyUI, and imports of their (and kohya / PEFT) files.

Two kinds of checks for every format:

* round trip: export -> our importer (:func:`read_foreign_lora`) -> the same tensors and alphas, so the same merged
  weights (max |diff| 0 in float32), with alpha != rank;
* the tool's own rules: the exported file, loaded onto a state dict with the tool's module names by a
  re-implementation of the tool's loader (written from its source, cited per test), reproduces our merged weights
  (peft's ``merge``) exactly in float32.

The tiny model has 3 video and 2 audio blocks, so Prism's ``remaining_video_blocks`` and the bridge's two fusion
layers are both exercised.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from helpers.lora_exports import lora_model, max_diff, peft_merged, random_lora, reference_merged, tiny_model
from helpers.tool_loaders import ComfyModel, PrismTree, comfy_apply, diffsynth_fuse, with_weights
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mova_train.models import mova_release
from mova_train.models.lora import LoraError, base_state_dict
from mova_train.models.lora_apply import apply_loras
from mova_train.models.lora_file import save_lora
from mova_train.models.lora_formats import (
    PRISM_FILE,
    export_files,
    fused_layers_of,
    linear_targets,
    map_foreign,
    prism_name,
    read_foreign_lora,
    split_modules,
    write_export,
)
from mova_train.models.mova import COMPONENTS

# ------------------------------------------------------------------------------------------------ Prism names


def test_prism_names_follow_the_issue_rules_and_invert():
    f = 30
    assert prism_name("video_dit.blocks.29.self_attn.q", f) == "fusion_blocks.29.video_block.self_attn.q"
    assert prism_name("video_dit.blocks.30.ffn.0", f) == "remaining_video_blocks.0.ffn.0"
    assert prism_name("video_dit.blocks.39.ffn.2", f) == "remaining_video_blocks.9.ffn.2"
    assert prism_name("audio_dit.blocks.7.cross_attn.k", f) == "fusion_blocks.7.audio_block.cross_attn.k"
    assert prism_name("dual_tower_bridge.audio_to_video_conditioners.5.inner.q", f) == (
        "fusion_blocks.5.a2v_conditioner.inner.q"
    )
    assert prism_name("dual_tower_bridge.video_to_audio_conditioners.5.inner.o", f) == (
        "fusion_blocks.5.v2a_conditioner.inner.o"
    )
    assert prism_name("video_dit_2.blocks.3.self_attn.q", f) == "video_dit_2.blocks.3.self_attn.q"
    assert prism_name("video_dit.head.head", f) == "video_dit.head.head"
    release = linear_targets(mova_release(device="meta"))  # 40 video / 30 audio blocks
    names = [prism_name(n, f) for n in release]
    assert len(set(names)) == len(release)  # one Prism name per layer: the mapping inverts
    assert (
        sum(n.startswith("remaining_video_blocks.") for n in names) == 10 * 10
    )  # blocks 30..39, 10 linears each
    with pytest.raises(LoraError, match="beyond the 30 Prism fusion blocks"):
        prism_name("audio_dit.blocks.30.self_attn.q", f)


# ------------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("fmt", ["diffsynth", "comfyui", "comfyui_wan"])
@pytest.mark.parametrize(("rank", "alpha"), [(4, 8.0), (4, 6.0), (4, 4.0)])
def test_round_trip_through_our_importer_is_exact(tmp_path, fmt, rank, alpha):
    base, tensors, alphas = random_lora(rank, alpha)
    written = write_export(tensors, alphas, fmt, tmp_path, fused_layers=fused_layers_of(base))
    source = tmp_path / PRISM_FILE if fmt == "comfyui" else tmp_path
    read = read_foreign_lora(source, base)
    back, back_alphas, detected = read.tensors, read.alphas, read.format
    reference = reference_merged(rank, alpha)
    if fmt == "comfyui_wan":  # a Wan model takes the video experts only
        assert sorted(p.name for p in written) == ["video_dit.safetensors", "video_dit_2.safetensors"]
        tensors = {k: v for k, v in tensors.items() if k.startswith("video_dit")}
        alphas = {m: a for m, a in alphas.items() if m.startswith("video_dit")}
        reference = peft_merged(base, tensors, alphas)
    assert detected == fmt
    assert back.keys() == tensors.keys() and back_alphas == alphas
    assert all(torch.equal(back[k], tensors[k]) and back[k].dtype == tensors[k].dtype for k in tensors)
    assert max_diff(peft_merged(base, back, back_alphas), reference) == 0.0


def test_diffsynth_writes_alpha_only_when_it_differs_from_rank():
    _, tensors, alphas = random_lora(4, 4.0)
    files = export_files(tensors, alphas, "diffsynth")
    assert set(files) == {f"{c}.safetensors" for c in COMPONENTS}
    assert not any(k.endswith(".alpha") for t, _ in files.values() for k in t)
    assert all(not k.startswith(COMPONENTS) for t, _ in files.values() for k in t)  # no component prefix
    files = export_files(tensors, {m: 6.5 for m in alphas}, "diffsynth")
    bridge, meta = files["dual_tower_bridge.safetensors"]
    assert bridge["audio_to_video_conditioners.0.inner.q.alpha"].item() == 6.5
    assert meta["mova_train.component"] == "dual_tower_bridge"


def test_non_float32_alpha_is_stored_exactly(tmp_path):
    base, tensors, _ = random_lora(4, 4.0)
    alphas = {m: 0.1 for m in split_modules(tensors)}  # not a float32 number
    write_export(tensors, alphas, "comfyui", tmp_path, fused_layers=fused_layers_of(base))
    assert read_foreign_lora(tmp_path / PRISM_FILE, base).alphas == alphas


# ------------------------------------------------------------------------------------------------ DiffSynth


@pytest.mark.parametrize(("rank", "alpha"), [(4, 8.0), (4, 4.0), (4, 2.0)])
def test_diffsynth_loader_reproduces_our_merge_exactly(tmp_path, rank, alpha):
    base, tensors, alphas = random_lora(rank, alpha)
    reference = reference_merged(rank, alpha)
    write_export(tensors, alphas, "diffsynth", tmp_path)
    pipe = {
        "video_dit": "video_dit",
        "video_dit2": "video_dit_2",
        "audio_dit": "audio_dit",
        "dual_tower_bridge": "dual_tower_bridge",
    }
    for attr, comp in pipe.items():  # pipe.loadrandom_lora(pipe.<attr>, "<comp>.safetensors")
        state = {k: v for k, v in getattr(base, comp).state_dict().items()}
        fused = diffsynth_fuse(state, load_file(str(tmp_path / f"{comp}.safetensors")))
        expected = {k[len(comp) + 1 :]: v for k, v in reference.items() if k.startswith(comp + ".")}
        assert max_diff(fused, expected) == 0.0, attr


def test_diffsynth_loader_with_a_scale_that_is_not_a_power_of_two_is_within_rounding(tmp_path):
    # DiffSynth scales lora_A before the product (B @ (A * s)), peft after it ((B @ A) * s): identical only when
    # s is a power of two; otherwise the two differ by float32 rounding.
    base, tensors, alphas = random_lora(4, 6.0)
    reference = reference_merged(4, 6.0)
    write_export(tensors, alphas, "diffsynth", tmp_path)
    state = base.audio_dit.state_dict()
    fused = diffsynth_fuse(state, load_file(str(tmp_path / "audio_dit.safetensors")))
    expected = {k[len("audio_dit.") :]: v for k, v in reference.items() if k.startswith("audio_dit.")}
    assert 0 < max_diff(fused, expected) < 1e-6


# ------------------------------------------------------------------------------------------------ ComfyUI


@pytest.mark.parametrize(("rank", "alpha"), [(4, 8.0), (4, 6.0), (3, 5.0)])
def test_comfyui_prism_loader_reproduces_our_merge_exactly(tmp_path, rank, alpha):
    base, tensors, alphas = random_lora(rank, alpha)
    reference = reference_merged(rank, alpha)
    write_export(tensors, alphas, "comfyui", tmp_path, fused_layers=fused_layers_of(base))
    comfy_state = ComfyModel(PrismTree(base)).state_dict()
    expected = ComfyModel(PrismTree(with_weights(base, reference))).state_dict()
    patched = comfy_apply(comfy_state, load_file(str(tmp_path / PRISM_FILE)))
    assert any(k.startswith("diffusion_model.remaining_video_blocks.0.") for k in patched)
    assert max_diff(patched, expected) == 0.0


@pytest.mark.parametrize(("rank", "alpha"), [(4, 8.0), (4, 6.0)])
def test_comfyui_wan_loader_reproduces_our_merge_exactly(tmp_path, rank, alpha):
    # ComfyUI's Wan model (comfy/ldm/wan/model.py WanModel: blocks.N.self_attn.q/k/v/o, cross_attn.*, ffn.0/ffn.2,
    # head.head, text/time embeddings) has the release key names, one model per expert.
    base, tensors, alphas = random_lora(rank, alpha)
    reference = reference_merged(rank, alpha)
    write_export(tensors, alphas, "comfyui_wan", tmp_path)
    for expert in ("video_dit", "video_dit_2"):
        state = ComfyModel(copy.deepcopy(getattr(base, expert))).state_dict()
        expected = {
            "diffusion_model." + k[len(expert) + 1 :]: v
            for k, v in reference.items()
            if k.startswith(expert + ".")
        }
        patched = comfy_apply(state, load_file(str(tmp_path / f"{expert}.safetensors")))
        assert max_diff(patched, expected) == 0.0, expert


def test_comfyui_wan_refuses_a_lora_without_video_layers():
    _, tensors, alphas = random_lora(4, 4.0)
    bridge = {k: v for k, v in tensors.items() if k.startswith("dual_tower_bridge.")}
    with pytest.raises(LoraError, match="no video expert layers"):
        export_files(bridge, {m: 4.0 for m in split_modules(bridge)}, "comfyui_wan")


def test_comfyui_refuses_layers_prism_has_no_place_for():
    _, tensors, alphas = random_lora(4, 4.0)
    with pytest.raises(LoraError, match="beyond the 1 Prism fusion blocks"):
        export_files(tensors, alphas, "comfyui", fused_layers=1)


# ------------------------------------------------------------------------------------------------ other imports


def test_kohya_underscored_and_peft_files_import(tmp_path):
    base, tensors, alphas = random_lora(4, 8.0)
    pairs = split_modules(tensors)
    targets, fused = linear_targets(base), fused_layers_of(base)
    kohya = {}
    for module, (a, b) in pairs.items():
        name = "lora_unet_" + prism_name(module, fused).replace(".", "_")
        kohya |= {
            f"{name}.lora_down.weight": a,
            f"{name}.lora_up.weight": b,
            f"{name}.alpha": torch.tensor(8.0),
        }
    back, back_alphas = map_foreign(kohya, targets, fused)
    assert back.keys() == tensors.keys() and back_alphas == alphas
    peft = {f"base_model.model.{k}": v for k, v in tensors.items()}
    save_file(peft, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(LoraError, match="without its adapter_config.json has no alpha"):
        read_foreign_lora(tmp_path / "adapter_model.safetensors", base)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 8, "peft_type": "LORA"}))
    read = read_foreign_lora(tmp_path / "adapter_model.safetensors", base)
    back, back_alphas, fmt = read.tensors, read.alphas, read.format
    assert fmt == "peft" and back_alphas == alphas
    assert all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_diffsynth_training_files_with_default_adapter_keys_need_their_component(tmp_path):
    # DiffSynth's own trainer saves peft keys of one module, e.g. blocks.0.self_attn.q.lora_A.default.weight
    # (diffsynth/diffusion/training_module.py mapping_lora_state_dict), with alpha = rank.
    base, tensors, _ = random_lora(4, 4.0)
    own = {
        k[len("video_dit_2.") :].replace(".weight", ".default.weight"): v
        for k, v in tensors.items()
        if k.startswith("video_dit_2.")
    }
    save_file(own, str(tmp_path / "epoch-4.safetensors"))
    with pytest.raises(LoraError, match="carry no component"):
        read_foreign_lora(tmp_path / "epoch-4.safetensors", base)
    read = read_foreign_lora(tmp_path / "epoch-4.safetensors", base, component="video_dit_2")
    back, back_alphas, fmt = read.tensors, read.alphas, read.format
    assert fmt == "diffsynth" and set(back_alphas.values()) == {4.0}
    assert back.keys() == {k for k in tensors if k.startswith("video_dit_2.")}


def test_unsupported_or_foreign_keys_are_refused(tmp_path):
    base, tensors, alphas = random_lora(4, 4.0)
    targets, fused = linear_targets(base), fused_layers_of(base)
    with pytest.raises(LoraError, match="not linear LoRA factors"):
        map_foreign({**tensors, "video_dit.blocks.0.self_attn.q.dora_scale": torch.ones(32)}, targets, fused)
    with pytest.raises(LoraError, match="not LoRA-able layers of the loaded model"):
        map_foreign(
            {
                "text_encoder.block.0.q.lora_A.weight": torch.ones(4, 8),
                "text_encoder.block.0.q.lora_B.weight": torch.ones(8, 4),
            },
            targets,
            fused,
        )
    single = tiny_model(("video_dit",))
    write_export(tensors, alphas, "comfyui", tmp_path, fused_layers=fused)
    with pytest.raises(LoraError, match="video_dit_2"):
        read_foreign_lora(tmp_path / PRISM_FILE, single)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoraError, match="broken.safetensors: cannot be read"):
        read_foreign_lora(tmp_path / "broken.safetensors", base)
    half = {k: v for k, v in tensors.items() if not k.endswith("lora_B.weight") or "blocks.0." not in k}
    with pytest.raises(LoraError, match="has only its down"):
        map_foreign(half, targets, fused)


def test_export_metadata_names_format_and_component(tmp_path):
    _, tensors, alphas = random_lora(4, 4.0)
    write_export(tensors, alphas, "comfyui_wan", tmp_path)
    with safe_open(str(tmp_path / "video_dit_2.safetensors"), framework="pt") as f:
        meta = f.metadata()
        keys = list(f.keys())
    assert meta["mova_train.format"] == "comfyui_wan" and meta["mova_train.component"] == "video_dit_2"
    assert all(re.match(r"diffusion_model\.blocks\.\d+\.", k) for k in keys)


# ------------------------------------------------------------------------------------------------ predict adapters


@pytest.mark.parametrize("fmt", ["diffsynth", "comfyui", "comfyui_wan"])
def test_predict_adapters_take_exported_files_like_the_native_one(tmp_path, fmt):
    base, tensors, alphas = random_lora(4, 6.0)
    trained = lora_model(base, tensors, alphas)
    native = save_lora(tmp_path / "lora.safetensors", trained, trained.lora_spec)
    write_export(tensors, alphas, fmt, tmp_path / fmt, fused_layers=fused_layers_of(base))
    source = tmp_path / fmt / PRISM_FILE if fmt == "comfyui" else tmp_path / fmt
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    apply_loras(ours, [{"path": str(native)}], merge=True)
    (info,) = apply_loras(theirs, [{"path": str(source), "strength": 1.0}], merge=True)
    assert info["format"] == fmt and info["rank"] == 4 and info["alpha"] == 6.0
    expected = base_state_dict(ours)
    if fmt == "comfyui_wan":  # video experts only
        video = {k: v for k, v in tensors.items() if k.startswith("video_dit")}
        expected = peft_merged(base, video, {m: 6.0 for m in split_modules(video)})
    assert max_diff(base_state_dict(theirs), expected) == 0.0


def test_predict_adapter_entry_names_the_component_of_a_component_less_file(tmp_path):
    base, tensors, _ = random_lora(4, 4.0)
    expert = {k: v for k, v in tensors.items() if k.startswith("video_dit_2.")}
    save_file(
        {k.removeprefix("video_dit_2."): v for k, v in expert.items()},
        str(tmp_path / "low_noise.safetensors"),
    )
    with pytest.raises(LoraError, match="carry no component"):
        apply_loras(copy.deepcopy(base), [{"path": str(tmp_path / "low_noise.safetensors")}])
    model = copy.deepcopy(base)
    (info,) = apply_loras(
        model, [{"path": str(tmp_path / "low_noise.safetensors"), "component": "video_dit_2"}], merge=True
    )
    assert info["format"] == "diffsynth" and info["experts"] == ["video_dit_2"]
    assert (
        max_diff(base_state_dict(model), peft_merged(base, expert, {m: 4.0 for m in split_modules(expert)}))
        == 0.0
    )
