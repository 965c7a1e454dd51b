"""LoRA at inference: our safetensors, upstream's two .pt layouts, strength, merging."""

from __future__ import annotations

import pytest
import torch

from mova_train.models.builders import mova_tiny
from mova_train.models.lora import (
    LoraError,
    LoraSpec,
    inject_lora,
    lora_state_dict,
    save_lora,
)
from mova_train.models.lora_upstream import apply_loras, export_upstream, load_upstream_lora


def _inputs():
    g = torch.Generator().manual_seed(0)
    return dict(
        latents=torch.randn(1, 4, 2, 4, 4, generator=g),
        y=torch.randn(1, 8, 2, 4, 4, generator=g),
        audio_latents=torch.randn(1, 8, 10, generator=g),
        context=torch.randn(1, 6, 32, generator=g),
        timestep=torch.tensor([500.0]),
        audio_timestep=torch.tensor([500.0]),
        video_fps=8.0,
        expert="video_dit_2",
    )


@torch.no_grad()
def _out(model):
    v, a = model.eval()(**_inputs())
    return torch.cat([v.flatten(), a.flatten()])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lora")
    model = mova_tiny(seed=1)
    spec = LoraSpec(rank=4, alpha=8.0, preset="attn_ffn")
    inject_lora(model, spec)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    save_lora(tmp / "lora.safetensors", model, spec)
    export_upstream(tmp / "upstream", model, spec)
    return tmp, _out(model), lora_state_dict(model), spec


def test_safetensors_strength_and_merge(trained):
    tmp, ref, _, _ = trained
    base = _out(mova_tiny(seed=1))
    assert (ref - base).abs().max() > 1e-3  # the LoRA changes the output
    m = mova_tiny(seed=1)
    info = apply_loras(m, [{"path": str(tmp / "lora.safetensors")}])
    assert torch.allclose(_out(m), ref, atol=1e-6)
    assert info[0]["format"] == "mova_lora" and info[0]["rank"] == 4 and len(info[0]["sha256_16"]) == 16
    merged = mova_tiny(seed=1)
    apply_loras(merged, [{"path": str(tmp / "lora.safetensors")}], merge=True)
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    assert torch.allclose(_out(merged), ref, atol=1e-5)
    half = mova_tiny(seed=1)
    apply_loras(half, [{"path": str(tmp / "lora.safetensors"), "strength": 0.0}], merge=True)
    assert torch.allclose(_out(half), base, atol=1e-6)


def test_upstream_accelerate_layout(trained):
    tmp, ref, _, _ = trained
    m = mova_tiny(seed=1)
    info = apply_loras(m, [{"path": str(tmp / "upstream")}])
    assert info[0]["format"] == "upstream" and info[0]["alpha"] == 8.0
    assert torch.allclose(_out(m), ref, atol=1e-6)


def test_upstream_low_resource_layout_and_alpha_override(trained, tmp_path):
    _, ref, sd, spec = trained
    nested = {
        "lora_state_dict": {k.removesuffix(".weight"): v for k, v in sd.items()},
        "rank": 4,
        "alpha": 8.0,
    }
    torch.save(nested, tmp_path / "lora_weights.pt")
    m = mova_tiny(seed=1)
    load_upstream_lora(tmp_path, m)
    assert torch.allclose(_out(m), ref, atol=1e-6)
    m2 = mova_tiny(seed=1)
    load_upstream_lora(tmp_path, m2, alpha=4.0, strength=2.0)  # (4/4)*2 == 8/4
    assert torch.allclose(_out(m2), ref, atol=1e-6)


def test_empty_or_missing_upstream_file_is_an_error(tmp_path):
    torch.save({}, tmp_path / "lora_weights.pt")
    with pytest.raises(LoraError, match="no LoRA tensors"):
        load_upstream_lora(tmp_path, mova_tiny())
    with pytest.raises(LoraError, match="does not exist"):
        apply_loras(mova_tiny(), [{"path": str(tmp_path / "nope.safetensors")}])
