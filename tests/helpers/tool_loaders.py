"""The LoRA loaders of DiffSynth-Studio and ComfyUI, re-implemented from their source (key rules and merge math).

Each function cites the repository, commit, file and function it follows. They load an exported file onto a
state dict with the tool's own module names, as the tool does, so the tests and
``benchmarks/lora_export_exactness.py`` can compare the result with our merged weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def diffsynth_fuse(module_state: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], alpha: float = 1.0):
    """DiffSynth-Studio's LoRA fusion, re-implemented from its source.

    modelscope/DiffSynth-Studio (commit fed7b18), ``diffsynth/utils/lora/general.py``:
    ``GeneralLoRALoader.get_name_dict`` (a key holding ``lora_B`` (or ``lora_up`` when ``.lora_up.`` is in it) names
    a layer: drop ``lora_B``, the token after it when the key has more than two tokens after it (``default``), a
    leading ``diffusion_model`` and the trailing ``weight``; the alpha key is the key with ``lora_B.weight`` replaced by
    ``alpha``), ``convert_state_dict`` (with an alpha: ``lora_A * alpha / rank``) and ``fuse_lora_to_base_model``
    (``weight + alpha * lora_B @ lora_A`` for every module whose name is a target; ``pipe.loadrandom_lora(module, path,
    alpha=1)`` in ``diffsynth/diffusion/base_pipeline.py`` takes this path without VRAM management). The pipeline
    (``diffsynth/pipelines/mova_audio_video.py``) loads the release files with no key conversion (its modules carry
    the checkpoint names) and names the experts ``pipe.video_dit`` / ``pipe.video_dit2``.
    """
    names = {}
    for key in lora:
        a_key, b_key = ("lora_down", "lora_up") if ".lora_up." in key else ("lora_A", "lora_B")
        if b_key not in key:
            continue
        keys = key.split(".")
        if len(keys) > keys.index(b_key) + 2:
            keys.pop(keys.index(b_key) + 1)
        keys.pop(keys.index(b_key))
        if keys[0] == "diffusion_model":
            keys.pop(0)
        keys.pop(-1)
        key_alpha = key.replace(b_key + ".weight", "alpha").replace(b_key + ".default.weight", "alpha")
        names[".".join(keys)] = (
            key,
            key.replace(b_key, a_key),
            key_alpha if key_alpha != key and key_alpha in lora else None,
        )
    out = dict(module_state)
    used = set()
    for name, (up_key, down_key, alpha_key) in names.items():
        up, down = lora[up_key], lora[down_key]
        if alpha_key is not None:
            down = down * (lora[alpha_key] / down.shape[0])
            used.add(alpha_key)
        out[f"{name}.weight"] = out[f"{name}.weight"] + alpha * torch.mm(up, down)
        used |= {up_key, down_key}
    assert used == set(lora), f"DiffSynth would not use {sorted(set(lora) - used)[:3]}"
    return out


class PrismTree(nn.Module):
    """The module tree of core ComfyUI's Prism (``comfy/ldm/prism/model.py``, ``Prism.__init__``), built from ours.

    Comfy-Org/ComfyUI (formerly comfyanonymous/ComfyUI; commit c4b595b of ``comfy/ldm/prism/model.py``): the
    towers ``video_dit``, ``video_dit_2``, ``audio_dit``; ``count = min(video_layers, audio_layers)``;
    ``fusion_blocks[i] = FusedBlock(video_dit.blocks[i], audio_dit.blocks[i])`` which adds ``a2v_conditioner`` /
    ``v2a_conditioner`` (a ``Conditioner``: ``y_norm`` + ``inner`` cross attention ``q/k/v/o``, the names of the
    release bridge's ``audio_to_video_conditioners.i`` / ``video_to_audio_conditioners.i``);
    ``remaining_video_blocks = video_dit.blocks[count:]``; then ``video_dit.blocks`` and ``audio_dit.blocks`` are
    emptied. ``video_dit_2`` keeps its blocks.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        model = copy.deepcopy(model)
        self.video_dit, self.video_dit_2, self.audio_dit = model.video_dit, model.video_dit_2, model.audio_dit
        count = min(len(self.video_dit.blocks), len(self.audio_dit.blocks))
        bridge = model.dual_tower_bridge
        fused = []
        for i in range(count):
            block = nn.Module()
            block.video_block, block.audio_block = self.video_dit.blocks[i], self.audio_dit.blocks[i]
            block.a2v_conditioner = bridge.audio_to_video_conditioners[i]
            block.v2a_conditioner = bridge.video_to_audio_conditioners[i]
            fused.append(block)
        self.fusion_blocks = nn.ModuleList(fused)
        self.remaining_video_blocks = nn.ModuleList(self.video_dit.blocks[count:])
        self.video_dit.blocks = nn.ModuleList()
        self.audio_dit.blocks = nn.ModuleList()


class ComfyModel(nn.Module):
    """ComfyUI's ``BaseModel`` holds the network as ``diffusion_model`` (``comfy/model_base.py``)."""

    def __init__(self, diffusion_model: nn.Module) -> None:
        super().__init__()
        self.diffusion_model = diffusion_model


def comfy_apply(model_state: dict[str, torch.Tensor], lora: dict[str, torch.Tensor], strength: float = 1.0):
    """ComfyUI's LoRA loading, re-implemented from its source (Comfy-Org/ComfyUI, commit 17358c8).

    ``comfy/sd.py`` ``load_lora_for_models``: ``key_map = comfy.lora.model_lora_keys_unet(model)``, the file through
    ``comfy.lora_convert.convert_lora`` (unchanged for these keys: it only rewrites BFL-control, Wan-Fun
    ``lora_unet__``, USO and fused-qkv files), ``comfy.lora.loadrandom_lora(lora, key_map)``, patches added at
    ``strength``. ``model_lora_keys_unet``: for every model key ``diffusion_model.<p>.weight`` the LoRA names
    ``lora_unet_<p with . -> _>`` and ``diffusion_model.<p>`` (Prism and Wan add no model-specific names).
    ``load_lora``: ``<x>.alpha`` -> ``alpha = tensor.item()``; ``comfy/weight_adapter/lora.py``
    ``LoRAAdapter.load``: ``<x>.lora_up.weight`` + ``<x>.lora_down.weight`` (also ``.lora_B.weight`` +
    ``.lora_A.weight`` and others); ``calculate_weight``: ``weight += (strength * alpha / rank) * mm(up, down)``
    in the intermediate float32 (alpha None: 1.0); keys not loaded are logged ("lora key not loaded").
    """
    key_map = {}
    for k in model_state:
        if k.startswith("diffusion_model.") and k.endswith(".weight"):
            key_map["lora_unet_" + k[len("diffusion_model.") : -len(".weight")].replace(".", "_")] = k
            key_map[k[: -len(".weight")]] = k
    out = dict(model_state)
    loaded = set()
    for x, target in key_map.items():
        alpha = None
        if f"{x}.alpha" in lora:
            alpha = lora[f"{x}.alpha"].item()
            loaded.add(f"{x}.alpha")
        for up_name, down_name in (
            (f"{x}.lora_up.weight", f"{x}.lora_down.weight"),
            (f"{x}.lora_B.weight", f"{x}.lora_A.weight"),
        ):
            if up_name in lora:
                up, down = lora[up_name].float(), lora[down_name].float()
                scale = alpha / down.shape[0] if alpha is not None else 1.0
                diff = torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)).reshape(out[target].shape)
                out[target] = out[target] + ((strength * scale) * diff).type(out[target].dtype)
                loaded |= {up_name, down_name}
                break
    assert loaded == set(lora), f"ComfyUI would not load {sorted(set(lora) - loaded)[:3]}"
    return out


def with_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A copy of ``model`` holding ``state``."""
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out
