"""A tiny dual tower (3 video / 2 audio blocks), a random LoRA on it, and our merged weights (peft's merge)."""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from mova_train.models import build_dual_tower, tiny_config
from mova_train.models.checkpoint import save_component
from mova_train.models.lora import LoraSpec, base_state_dict, inject_lora, lora_state_dict, merge_lora
from mova_train.models.lora_formats import split_modules

EXPERTS = ("video_dit", "video_dit_2")
# model_index.json as upstream's save_pretrained writes it (docs/model.md §1.2)
UPSTREAM_INDEX = {
    "_class_name": "MOVA",
    "_diffusers_version": "0.35.1",
    "audio_dit": ["mova.diffusion.models.wan_audio_dit", "WanAudioModel"],
    "audio_vae": ["mova.diffusion.models.dac_vae", "DAC"],
    "audio_vae_type": "dac",
    "boundary_ratio": 0.9,
    "dual_tower_bridge": ["mova.diffusion.models.interactionv2", "DualTowerConditionalBridge"],
    "scheduler": ["mova.diffusion.schedulers.flow_match_pair", "FlowMatchPairScheduler"],
    "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "video_dit": ["mova.diffusion.models.wan_video_dit", "WanModel"],
    "video_dit_2": ["mova.diffusion.models.wan_video_dit", "WanModel"],
    "video_vae": ["diffusers", "AutoencoderKLWan"],
}


def tiny_model(experts: tuple[str, ...] = EXPERTS, dtype: torch.dtype = torch.float32) -> nn.Module:
    """3 video blocks and 2 audio blocks, so Prism's ``remaining_video_blocks`` is not empty."""
    cfg = tiny_config(num_layers=3)
    cfg = dataclasses.replace(
        cfg,
        audio_dit=dataclasses.replace(cfg.audio_dit, num_layers=2),
        dual_tower_bridge=dataclasses.replace(cfg.dual_tower_bridge, audio_layers=2),
    )
    return build_dual_tower(cfg, experts=experts, seed=0, dtype=dtype)


@functools.cache
def _random_lora(rank: int, alpha: float, seed: int, experts: tuple[str, ...]):
    model = tiny_model(experts)
    trained = copy.deepcopy(model)
    inject_lora(trained, LoraSpec(rank=rank, alpha=alpha, preset="upstream"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in trained.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    tensors = {k: v.clone() for k, v in lora_state_dict(trained).items()}
    return model, tensors, {m: float(alpha) for m in split_modules(tensors)}


def random_lora(rank: int, alpha: float, seed: int = 1, experts: tuple[str, ...] = EXPERTS):
    """(base model, LoRA tensors in our layout, module -> alpha): random A and B on the upstream preset."""
    model, tensors, alphas = _random_lora(rank, alpha, seed, tuple(experts))
    return copy.deepcopy(model), dict(tensors), dict(alphas)


def lora_model(base: nn.Module, tensors: dict[str, torch.Tensor], alphas: dict[str, float]) -> nn.Module:
    """A copy of ``base`` with LoRA layers holding ``tensors`` (one rank and alpha) and the spec injected."""
    model = copy.deepcopy(base)
    pairs = split_modules(tensors)
    (alpha,) = set(alphas.values())
    (rank,) = {a.shape[0] for a, _ in pairs.values()}
    components: dict[str, list[str]] = {}
    for module in pairs:
        comp, _, path = module.partition(".")
        components.setdefault(comp, []).append(path)
    spec = LoraSpec(rank=rank, alpha=alpha, components=components)
    inject_lora(model, spec)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for module, (a, b) in pairs.items():
            params[f"{module}.lora_A.default.weight"].copy_(a)
            params[f"{module}.lora_B.default.weight"].copy_(b)
    model.lora_spec = spec
    return model


def peft_merged(
    base: nn.Module, tensors: dict[str, torch.Tensor], alphas: dict[str, float]
) -> dict[str, torch.Tensor]:
    """Our merged weights: peft's ``merge`` of the LoRA into a copy of ``base`` (one rank and alpha)."""
    model = lora_model(base, tensors, alphas)
    merge_lora(model, unload=True)
    return base_state_dict(model)


@functools.cache
def _reference(rank: int, alpha: float, seed: int, experts: tuple[str, ...]) -> dict[str, torch.Tensor]:
    model, tensors, alphas = _random_lora(rank, alpha, seed, experts)
    return peft_merged(model, tensors, alphas)


def reference_merged(rank: int, alpha: float, seed: int = 1, experts: tuple[str, ...] = EXPERTS):
    """:func:`peft_merged` of :func:`random_lora` (cached: do not modify the tensors)."""
    return _reference(rank, alpha, seed, tuple(experts))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Max |a - b| over the tensors of two state dicts with the same keys."""
    assert set(a) == set(b), (sorted(set(a) ^ set(b)))[:5]
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def write_tiny_release(root: Path, model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> Path:
    """A release-layout folder: the DiTs (video experts in 2 shards + index) and placeholders for the rest."""
    for comp in ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge"):
        part = copy.deepcopy(getattr(model, comp)).to(dtype)
        save_component(part, root, comp, max_shard_bytes=40_000 if comp.startswith("video_dit") else None)
    for comp, cls in (("audio_vae", "DAC"), ("video_vae", "AutoencoderKLWan")):
        (root / comp).mkdir()
        (root / comp / "config.json").write_text(
            json.dumps({"_class_name": cls, "_diffusers_version": "0.35.1"})
        )
        save_file({"w": torch.zeros(2)}, str(root / comp / "diffusion_pytorch_model.safetensors"))
    (root / "text_encoder").mkdir()
    (root / "text_encoder" / "config.json").write_text(json.dumps({"architectures": ["UMT5EncoderModel"]}))
    save_file({"shared.weight": torch.zeros(2, 2)}, str(root / "text_encoder" / "model.safetensors"))
    (root / "tokenizer").mkdir()
    (root / "tokenizer" / "tokenizer.json").write_text("{}")
    (root / "scheduler").mkdir()
    (root / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchPairScheduler"})
    )
    (root / "model_index.json").write_text(json.dumps(UPSTREAM_INDEX, indent=2))
    return root
