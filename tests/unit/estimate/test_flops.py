"""Analytic FLOP model vs. torch's FlopCounterMode, and token counts."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mova_train.estimate.flops import COMPONENTS, forward_flops, token_counts, training_step_flops
from mova_train.models.builders import build_dual_tower, release_config, tiny_config
from mova_train.models.lora import LoraSpec, inject_lora, set_trainable

CFG = tiny_config(video_dim=64, audio_dim=32, head_dim=16, num_layers=3)
TOK = token_counts(9, 64, 96)


def _inputs():
    c = CFG.video_dit.out_dim
    shape = (TOK.latent_frames, TOK.latent_height, TOK.latent_width)
    return (
        torch.randn(1, c, *shape),
        torch.randn(1, c + 4, *shape),
        torch.randn(1, CFG.audio_dit.in_dim, TOK.audio),
        torch.randn(1, 512, CFG.video_dit.text_dim),
        torch.tensor([500.0]),
        torch.tensor([500.0]),
    )


def _measure(model, backward: bool) -> int:
    args = _inputs()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        v, a = model(*args)
        if backward:
            (v.square().mean() + a.square().mean()).backward()
    return counter.get_total_flops()


def test_token_counts_release():
    assert token_counts(193, 352, 640).video == 43_120
    assert token_counts(193, 720, 1280).video == 176_400
    assert token_counts(193, 352, 640).audio == 403
    with pytest.raises(ValueError, match="4k"):
        token_counts(192, 352, 640)


def test_forward_matches_flop_counter():
    model = build_dual_tower(CFG, experts=("video_dit",), seed=0)
    assert _measure(model, backward=False) == pytest.approx(sum(forward_flops(CFG, TOK).values()), rel=0.01)


def test_full_finetune_step_matches_flop_counter():
    model = build_dual_tower(CFG, experts=("video_dit",), seed=0)
    est = training_step_flops(CFG, TOK, full_finetune=COMPONENTS, gradient_checkpointing=False)
    assert _measure(model, backward=True) == pytest.approx(est.total, rel=0.01)


@pytest.mark.parametrize(
    ("preset", "full", "ckpt"),
    [
        ("upstream", (), True),
        ("attn", (), False),
        ("bridge", (), True),
        ("attn", ("dual_tower_bridge",), True),
    ],
)
def test_lora_step_matches_flop_counter(preset, full, ckpt):
    comps = {c: p for c, p in LoraSpec(rank=4, preset=preset).components.items() if c != "video_dit_2"}
    spec = LoraSpec(rank=4, components=comps)
    model = build_dual_tower(CFG, experts=("video_dit",), seed=0)
    inject_lora(model, spec)
    set_trainable(model, spec, full)
    model.set_gradient_checkpointing(ckpt)
    est = training_step_flops(
        CFG,
        TOK,
        lora_rank=4,
        lora_targets=spec.components,
        full_finetune=full,
        gradient_checkpointing=ckpt,
        fused_attention=False,
    )
    assert _measure(model, backward=True) == pytest.approx(est.total, rel=0.05)
    assert est.lora_params == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def test_lora_cheaper_than_full_finetune_and_checkpointing_costs_a_forward():
    cfg, tok = release_config(), token_counts(193, 352, 640)
    targets = LoraSpec(preset="upstream").components
    lora = training_step_flops(cfg, tok, lora_rank=16, lora_targets=targets)
    full = training_step_flops(cfg, tok, full_finetune=COMPONENTS)
    assert lora.total < full.total
    assert lora.recompute > 0.9 * lora.forward
    no_ckpt = training_step_flops(cfg, tok, lora_rank=16, lora_targets=targets, gradient_checkpointing=False)
    assert no_ckpt.recompute == 0 and no_ckpt.total < lora.total
