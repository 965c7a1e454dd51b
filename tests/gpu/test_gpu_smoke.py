"""GPU tier: the same model and strategies on CUDA (skipped without a GPU; see tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import tiny_inputs

from mova_train.models.builders import build_dual_tower, mova_tiny, tiny_config

pytestmark = pytest.mark.gpu


def _inputs(device: str) -> dict:
    return tiny_inputs(
        batch=2, frames=3, width=6, audio_len=13, text_len=7, timestep=(950.0, 300.0), device=device
    )


def test_cuda_fp32_matches_cpu():
    cpu = mova_tiny().eval()
    gpu = mova_tiny().eval().cuda()
    with torch.no_grad():
        v_cpu, a_cpu = cpu(**_inputs("cpu"))
        v_gpu, a_gpu = gpu(**_inputs("cuda"))
    torch.testing.assert_close(v_gpu.cpu(), v_cpu, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(a_gpu.cpu(), a_cpu, atol=1e-4, rtol=1e-4)


def test_cuda_bf16_forward_backward_close_to_fp32():
    ref = build_dual_tower(tiny_config(), seed=0).cuda()
    bf16 = build_dual_tower(tiny_config(), seed=0, dtype=torch.bfloat16).cuda()
    v_ref, a_ref = ref(**_inputs("cuda"))
    v, a = bf16(**_inputs("cuda"))
    assert v.dtype == torch.bfloat16
    assert (v.float() - v_ref).abs().max() < 0.1 and (a.float() - a_ref).abs().max() < 0.1
    (v.float().square().mean() + a.float().square().mean()).backward()
    assert all(p.grad is not None for p in bf16.parameters() if p.requires_grad)


def test_offload_streams_on_cuda_match_resident():
    from mova_train.strategies.offload import BlockStreamer

    resident = mova_tiny().eval().cuda()
    streamed = mova_tiny().eval()
    streamer = BlockStreamer(streamed, "cuda", prefetch=1)
    streamed.cuda()  # the resident remainder (embeddings, heads); units hold 0-element placeholders
    with torch.no_grad():
        v_ref, a_ref = resident(**_inputs("cuda"))
        v, a = streamed(**_inputs("cuda"))
    torch.testing.assert_close(v, v_ref)
    torch.testing.assert_close(a, a_ref)
    assert streamer.stats.transfers == len(streamer.units)
