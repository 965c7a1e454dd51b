"""Release-width slices of the MOVA denoiser for the benchmarks (imported by ``gpu_check.py`` and
``activation_memory.py``; run from the repository root, ``benchmarks/`` is then on ``sys.path``).

A *slice* is the released architecture with ``layers`` interaction layers: video blocks at dim 5120 / 40 heads /
FFN 13824, audio blocks at 1536 / 12 heads / FFN 8960, bridge layers of both directions, the embeddings and heads
(random weights). ``tiny=True`` gives the same structure at the tiny test widths, for ``--dry-run`` on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mova_train.estimate.flops import TokenCounts, token_counts
from mova_train.models.builders import MovaConfig, build_dual_tower, release_config, tiny_config
from mova_train.models.lora import LoraSpec, inject_lora, set_trainable
from mova_train.models.mova import MovaDualTower
from mova_train.models.rope import audio_rope_freqs, video_rope_freqs

__all__ = ["UnitInputs", "build_slice", "clip_tokens", "run_unit", "slice_config", "unit_inputs"]

RELEASE_CLIP = (193, 352, 640)
"""360p x 193 frames: 49 x 22 x 40 latent grid = 43,120 video tokens, 403 audio tokens."""
TINY_CLIP = (17, 64, 96)
"""The dry-run clip: 5 x 4 x 6 = 120 video tokens, 34 audio tokens."""


def slice_config(layers: int = 1, tiny: bool = False) -> MovaConfig:
    """The release config (or the tiny one) cut down to ``layers`` blocks per tower and bridge layers."""
    cfg = tiny_config(num_layers=layers) if tiny else release_config()
    cfg.video_dit.num_layers = cfg.audio_dit.num_layers = layers
    cfg.dual_tower_bridge.visual_layers = cfg.dual_tower_bridge.audio_layers = layers
    return cfg


def clip_tokens(cfg: MovaConfig, tiny: bool = False) -> TokenCounts:
    """Token counts of the benchmark clip (360p x 193 frames, or the tiny dry-run clip)."""
    frames, h, w = TINY_CLIP if tiny else RELEASE_CLIP
    return token_counts(frames, h, w, 24.0, cfg.video_dit.patch_size)


def build_slice(
    cfg: MovaConfig,
    device: torch.device | str,
    dtype: torch.dtype,
    lora_rank: int = 16,
    lora_preset: str = "upstream",
    seed: int = 0,
) -> MovaDualTower:
    """One-expert dual tower of ``cfg`` with LoRA ``lora_rank`` (``0``: none) injected and set trainable."""
    model = build_dual_tower(cfg, experts=("video_dit",), device=device, dtype=dtype, seed=seed)
    spec = LoraSpec(rank=lora_rank, alpha=lora_rank, preset=lora_preset) if lora_rank else None
    if spec is not None:  # rank 0: a frozen model (sampling)
        inject_lora(model, spec)
        set_trainable(model, spec, ())
    else:
        model.requires_grad_(False)
    return model


@dataclass
class UnitInputs:
    """Inputs of one paired unit (bridge layer + video block + audio block) in the middle of the network.

    Attributes:
        video, audio: ``[1, Nv, Dv]`` / ``[1, Na, Da]`` residual streams (require grad).
        video_ctx, audio_ctx: ``[1, 512, D]`` embedded text.
        video_mod, audio_mod: ``[1, 6, D]`` float32 time projections.
        video_freqs, audio_freqs: complex RoPE tables.
        rope: the bridge's cross-RoPE tables.
    """

    video: torch.Tensor
    audio: torch.Tensor
    video_ctx: torch.Tensor
    audio_ctx: torch.Tensor
    video_mod: torch.Tensor
    audio_mod: torch.Tensor
    video_freqs: torch.Tensor
    audio_freqs: torch.Tensor
    rope: tuple | None


def unit_inputs(
    model: MovaDualTower, tokens: TokenCounts, device: torch.device | str, dtype: torch.dtype, grid=None
) -> UnitInputs:
    """Random unit inputs for ``tokens`` (``grid`` overrides the latent grid ``(f, h, w)`` after patchify)."""
    device = torch.device(device)
    v, a = model.video_dit, model.audio_dit
    pt, ph, pw = v.patch_size
    grid = grid or (tokens.latent_frames // pt, tokens.latent_height // ph, tokens.latent_width // pw)
    nv, na = grid[0] * grid[1] * grid[2], tokens.audio

    def rand(*shape, dt=dtype, grad=False):
        return (torch.randn(*shape, device=device, dtype=torch.float32) * 0.5).to(dt).requires_grad_(grad)

    return UnitInputs(
        video=rand(1, nv, v.dim, grad=True),
        audio=rand(1, na, a.dim, grad=True),
        video_ctx=rand(1, tokens.text, v.dim),
        audio_ctx=rand(1, tokens.text, a.dim),
        video_mod=rand(1, 6, v.dim, dt=torch.float32) * 0.1,
        audio_mod=rand(1, 6, a.dim, dt=torch.float32) * 0.1,
        video_freqs=video_rope_freqs(grid, v.head_dim, device),
        audio_freqs=audio_rope_freqs(na, a.head_dim, device),
        rope=model.dual_tower_bridge.rope(grid, na, 24.0, dtype, device),
    )


def run_unit(model: MovaDualTower, x: UnitInputs, layer: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Bridge layer ``layer``, then video block and audio block ``layer`` (the forward's interleaving), through
    ``model._run`` so that gradient checkpointing applies as in training. Returns the updated streams.
    """
    v, a = model._run(model.dual_tower_bridge, layer, x.video, x.audio, x.rope, 1.0, None, None)
    v = model._run(model.video_dit.blocks[layer], v, x.video_ctx, x.video_mod, x.video_freqs, None)
    a = model._run(model.audio_dit.blocks[layer], a, x.audio_ctx, x.audio_mod, x.audio_freqs, None)
    return v, a
