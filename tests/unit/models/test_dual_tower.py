"""Behaviour of the dual-tower denoiser on the tiny preset: batching, experts, bridge, checkpointing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers.tiny import tiny_inputs

from mova_train.models import mova_tiny
from mova_train.models.attention import get_attention_backend, set_attention_backend

# two samples with their own times; latents 3 x 4 x 6 (token grid 3 x 2 x 3), 13 audio frames, 7 text rows
BATCH = dict(
    batch=2,
    frames=3,
    width=6,
    audio_len=13,
    text_len=7,
    timestep=(950.0, 120.0),
    audio_timestep=(400.0, 990.0),
    seed=1,
)
ONE = {**BATCH, "batch": 1}


@pytest.fixture(scope="module")
def model():
    return mova_tiny().eval()


def test_output_shapes(model):
    x = tiny_inputs(model, **BATCH)
    v, a = model(**x)
    assert v.shape == x["latents"].shape
    assert a.shape == x["audio_latents"].shape


def test_batch_of_two_equals_two_singles(model):
    """Per-sample timesteps and heads: upstream's video head breaks at batch > 1, ours must not."""
    x = tiny_inputs(model, **BATCH)
    with torch.no_grad():
        v, a = model(**x)
        for i in range(2):
            single = {k: t[i : i + 1] for k, t in x.items()}
            vi, ai = model(**single)
            torch.testing.assert_close(v[i : i + 1], vi, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a[i : i + 1], ai, atol=1e-5, rtol=1e-5)


def test_shared_timestep_broadcasts(model):
    x = tiny_inputs(model, **BATCH)
    with torch.no_grad():
        v1, a1 = model(**{**x, "timestep": torch.tensor([500.0]), "audio_timestep": torch.tensor([500.0])})
        v2, a2 = model(
            **{**x, "timestep": torch.tensor([500.0, 500.0]), "audio_timestep": torch.tensor([500.0] * 2)}
        )
    torch.testing.assert_close(v1, v2)
    torch.testing.assert_close(a1, a2)


def test_experts_differ_and_missing_expert_fails(model):
    x = tiny_inputs(model, **ONE)
    with torch.no_grad():
        v_hi, _ = model(**x, expert="video_dit")
        v_lo, _ = model(**x, expert="video_dit_2")
    assert not torch.allclose(v_hi, v_lo)
    single = mova_tiny(experts=("video_dit",))
    with pytest.raises(ValueError, match="video_dit_2"):
        single(**x, expert="video_dit_2")
    with pytest.raises(ValueError, match="unknown video expert"):
        single(**x, expert="video")


@pytest.mark.parametrize("experts", [("video_dit",), ("video_dit_2",), ("video_dit", "video_dit_2")])
def test_block_classes_with_either_expert_loaded(experts):
    # FSDP2 units and offload streaming read these; the low-noise-only model once exported none.
    from mova_train.models.bridge import ConditionalCrossAttentionBlock
    from mova_train.models.dit import DiTBlock

    model = mova_tiny(experts=experts)
    assert getattr(model, "block_classes", ()) == (DiTBlock, ConditionalCrossAttentionBlock)


def test_bridge_carries_information_both_ways(model):
    """Changing the audio input changes the video output only through the bridge (and vice versa)."""
    x = tiny_inputs(model, **ONE)
    other_audio = {**x, "audio_latents": x["audio_latents"] + 1.0}
    other_video = {**x, "latents": x["latents"] + 1.0}
    with torch.no_grad():
        v, a = model(**x)
        v_a, _ = model(**other_audio)
        _, a_v = model(**other_video)
        v_nb, a_nb = model(**x, use_bridge=False)
        v_a_nb, _ = model(**other_audio, use_bridge=False)
        _, a_v_nb = model(**other_video, use_bridge=False)
    assert not torch.allclose(v, v_a) and not torch.allclose(a, a_v)
    torch.testing.assert_close(v_nb, v_a_nb)
    torch.testing.assert_close(a_nb, a_v_nb)


def test_gradient_checkpointing_same_loss_and_grads():
    x = tiny_inputs(mova_tiny(), **BATCH)
    grads = []
    for enabled in (False, True):
        m = mova_tiny()
        m.set_gradient_checkpointing(enabled)
        v, a = m(**x)
        (v.square().mean() + a.square().mean()).backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5)


def test_forward_backward_reaches_every_trainable_parameter():
    m = mova_tiny()
    x = tiny_inputs(m, **BATCH)
    loss = sum(
        out.square().mean() for expert in ("video_dit", "video_dit_2") for out in m(**x, expert=expert)
    )
    loss.backward()
    no_grad = [k for k, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert no_grad == []


def test_bf16_forward_keeps_time_mlps_in_fp32():
    from mova_train.models.builders import build_dual_tower, tiny_config

    m = build_dual_tower(tiny_config(), dtype=torch.bfloat16)
    assert m.video_dit.time_embedding[0].weight.dtype == torch.float32
    assert m.video_dit.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    v, a = m(**tiny_inputs(m, **BATCH))
    assert v.dtype == torch.bfloat16 and torch.isfinite(v.float()).all() and torch.isfinite(a.float()).all()


def test_attention_backend_selection():
    assert get_attention_backend() == "sdpa"
    with pytest.raises(ValueError, match="unknown"):
        set_attention_backend("sage")
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="not installed|neither"):
            set_attention_backend("flash")
    assert get_attention_backend() == "sdpa"


def test_models_package_is_framework_free():
    code = (
        "import sys, mova_train.models, mova_train.models.checkpoint; "
        "bad = [m for m in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf', 'wandb') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
