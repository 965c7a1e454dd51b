"""LoRA at inference: our safetensors, upstream's two .pt layouts, strength, merging."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import fill_lora, tiny_output

from mova_train.models.builders import mova_tiny
from mova_train.models.lora import LoraError, LoraSpec, inject_lora, lora_state_dict
from mova_train.models.lora_apply import apply_loras
from mova_train.models.lora_file import save_lora
from mova_train.models.lora_upstream import export_upstream


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    model = mova_tiny(seed=1)
    spec = LoraSpec(rank=4, alpha=8.0, preset="attn_ffn")
    inject_lora(model, spec)
    fill_lora(model, seed=1, scale=0.2)
    save_lora(tmp / "lora.safetensors", model, spec)
    export_upstream(tmp / "upstream", lora_state_dict(model), spec.rank, spec.alpha)
    return tmp, tiny_output(model), lora_state_dict(model), spec


def test_safetensors_strength_and_merge(trained):
    tmp, ref, _, _ = trained
    base = tiny_output(mova_tiny(seed=1))
    assert (ref - base).abs().max() > 1e-3  # the LoRA changes the output
    m = mova_tiny(seed=1)
    info = apply_loras(m, [{"path": str(tmp / "lora.safetensors")}])
    assert torch.allclose(tiny_output(m), ref, atol=1e-6)
    assert info[0]["format"] == "mova_lora" and info[0]["rank"] == 4 and len(info[0]["sha256_16"]) == 16
    merged = mova_tiny(seed=1)
    apply_loras(merged, [{"path": str(tmp / "lora.safetensors")}], merge=True)
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(tiny_output(merged), ref, atol=1e-5)
    half = mova_tiny(seed=1)
    apply_loras(half, [{"path": str(tmp / "lora.safetensors"), "strength": 0.0}], merge=True)
    assert torch.allclose(tiny_output(half), base, atol=1e-6)


def test_upstream_accelerate_layout(trained):
    tmp, ref, _, _ = trained
    m = mova_tiny(seed=1)
    info = apply_loras(m, [{"path": str(tmp / "upstream")}])
    assert info[0]["format"] == "upstream" and info[0]["alpha"] == 8.0
    assert torch.allclose(tiny_output(m), ref, atol=1e-6)


def test_upstream_low_resource_layout_and_alpha_override(trained, tmp_path):
    _, ref, sd, spec = trained
    nested = {
        "lora_state_dict": {k.removesuffix(".weight"): v for k, v in sd.items()},
        "rank": 4,
        "alpha": 8.0,
    }
    torch.save(nested, tmp_path / "lora_weights.pt")
    m = mova_tiny(seed=1)
    apply_loras(m, [{"path": str(tmp_path)}])
    assert torch.allclose(tiny_output(m), ref, atol=1e-6)
    m2 = mova_tiny(seed=1)
    apply_loras(m2, [{"path": str(tmp_path), "alpha": 4.0, "strength": 2.0}])  # (4/4)*2 == 8/4
    assert torch.allclose(tiny_output(m2), ref, atol=1e-6)


def test_empty_or_missing_upstream_file_is_an_error(tmp_path):
    torch.save({}, tmp_path / "lora_weights.pt")
    with pytest.raises(LoraError, match="no LoRA tensors"):
        apply_loras(mova_tiny(), [{"path": str(tmp_path)}])
    with pytest.raises(LoraError, match="does not exist"):
        apply_loras(mova_tiny(), [{"path": str(tmp_path / "nope.safetensors")}])


# Upstream's loader (OpenMOSS/MOVA @ 595a976, mova/diffusion/pipelines/mova_lora.py `_inject_lora_layers` and
# mova/engine/trainer/accelerate/lora_utils.py `inject_lora_to_model`): target_layer_names
# ["q", "k", "v", "o", "to_q", "to_k", "to_v", "proj"], exclude_modules ["time_projection", "time_embedding"],
# both as re.compile(f".*{name}.*").match on the dotted path inside each component; an excluded path is not
# descended into; an nn.Linear whose path matches a target is wrapped. Encoded here independently of ours:
def _upstream_wrapped(component: torch.nn.Module) -> set[str]:
    import re

    targets = [re.compile(f".*{p}.*") for p in ["q", "k", "v", "o", "to_q", "to_k", "to_v", "proj"]]
    excludes = [re.compile(f".*{p}.*") for p in ["time_projection", "time_embedding"]]
    out: set[str] = set()

    def walk(module: torch.nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            full = f"{prefix}.{name}" if prefix else name
            if any(x.match(full) for x in excludes):
                continue
            if isinstance(child, torch.nn.Linear) and any(t.match(full) for t in targets):
                out.add(full)
            else:
                walk(child, full)

    walk(component, "")
    return out


def test_upstream_injection_rule_matches_upstreams_loader():
    from mova_train.models.lora_upstream import upstream_injects

    model = mova_tiny()
    for comp in ("video_dit", "audio_dit", "dual_tower_bridge"):
        sub = getattr(model, comp)
        wrapped = _upstream_wrapped(sub)
        linears = {n for n, m in sub.named_modules() if isinstance(m, torch.nn.Linear)}
        assert {n for n in linears if upstream_injects(f"{comp}.{n}")} == wrapped, comp
    assert not upstream_injects("video_dit.head.head") and not upstream_injects("audio_dit.time_embedding.0")
    assert upstream_injects("video_dit.blocks.0.ffn.2")  # "o" in "blocks": every block Linear


def test_export_refuses_layers_upstream_does_not_inject(tmp_path, caplog):
    spec = LoraSpec(
        rank=4,
        alpha=8,
        components={"video_dit": ["head.head", "self_attn.q"], "audio_dit": ["time_embedding.0"]},
    )
    model = mova_tiny()
    inject_lora(model, spec)
    tensors = lora_state_dict(model)
    with pytest.raises(LoraError, match="does not inject") as err:
        export_upstream(tmp_path / "up", tensors, 4, 8.0)
    assert "video_dit.head.head" in str(err.value) and "drop_unsupported" in str(err.value)
    assert not (tmp_path / "up").exists()
    with caplog.at_level("WARNING"):
        export_upstream(tmp_path / "up", tensors, 4, 8.0, drop_unsupported=True)
    assert "audio_dit.time_embedding.0" in caplog.text and "video_dit.head.head" in caplog.text
    weights = torch.load(tmp_path / "up" / "lora_weights.pt", weights_only=True)
    assert {k.rsplit(".lora_", 1)[0] for k in weights} == {
        "video_dit.blocks.0.self_attn.q",
        "video_dit.blocks.1.self_attn.q",
    }
    config = torch.load(tmp_path / "up" / "lora_config.pt", weights_only=True)
    assert config == {"rank": 4, "alpha": 8.0, "target_modules": ["video_dit"]}


def test_untrustworthy_upstream_config_needs_an_explicit_alpha(trained, tmp_path):
    _, ref, sd, _ = trained  # trained at rank 4, alpha 8
    torch.save(sd, tmp_path / "lora_weights.pt")
    torch.save({"rank": 16, "alpha": 16.0, "target_modules": []}, tmp_path / "lora_config.pt")  # FSDP saver
    with pytest.raises(LoraError, match="cannot be trusted") as err:
        apply_loras(mova_tiny(seed=1), [{"path": str(tmp_path)}])
    assert str(tmp_path / "lora_config.pt") in str(err.value) and "alpha: <trained alpha>" in str(err.value)
    m = mova_tiny(seed=1)
    info = apply_loras(m, [{"path": str(tmp_path), "alpha": 8.0}])
    assert info[0]["alpha"] == 8.0 and torch.allclose(tiny_output(m), ref, atol=1e-6)
    torch.save({"rank": "LoRALinear", "alpha": 16.0}, tmp_path / "lora_config.pt")  # single-GPU saver
    with pytest.raises(LoraError, match="cannot be trusted"):
        apply_loras(mova_tiny(seed=1), [{"path": str(tmp_path)}])
    torch.save({"rank": 4, "alpha": 8.0}, tmp_path / "lora_config.pt")  # agrees with the tensors: trusted
    m = mova_tiny(seed=1)
    apply_loras(m, [{"path": str(tmp_path)}])
    assert torch.allclose(tiny_output(m), ref, atol=1e-6)
