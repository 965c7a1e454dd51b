"""BlockStreamer (single-GPU offload) on CPU: the streaming code path with a host store and device copies."""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import tiny_args

from mova_train.models import mova_tiny
from mova_train.strategies.offload import BlockStreamer

# two samples with their own times (the offloaded blocks see both), 8 audio frames, 8 text rows
INPUTS = tiny_args(batch=2, audio_len=8, text_len=8, timestep=(300.0, 700.0))


def _model(trainable: bool = True) -> torch.nn.Module:
    model = mova_tiny(experts=("video_dit",), seed=0)
    model.requires_grad_(False)
    if trainable:  # a LoRA-like trainable subset living inside the units
        for name, p in model.named_parameters():
            if name.endswith("modulation") or name.endswith("inner.o.weight"):
                p.requires_grad_(True)
    return model


def _n_units(model: torch.nn.Module) -> int:
    return sum(isinstance(m, model.block_classes) for m in model.modules())


def test_forward_matches_and_every_unit_is_streamed() -> None:
    ref, model = _model(), _model()
    n = _n_units(model)
    streamer = BlockStreamer(model, "cpu", prefetch=1)
    assert len(streamer.units) == n == 8  # 2 video + 2 audio blocks + 2 x 2 bridge conditioners
    # frozen weights of the units are placeholders; trainable ones stay resident
    for name, p in model.named_parameters():
        if name in streamer.streamed_names:
            assert p.numel() == 0 and not p.requires_grad
    assert all(p.numel() > 0 for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        out = model(*INPUTS)
        expected = ref(*INPUTS)
    for a, b in zip(out, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert streamer.stats.transfers == n
    assert set(streamer.stats.per_unit.values()) == {1}
    # second pass: the learnt order makes every unit but the first a prefetch hit
    with torch.no_grad():
        model(*INPUTS)
    assert streamer.stats.transfers >= 2 * n
    assert streamer.stats.prefetch_hits >= n - 1


def test_backward_with_checkpointing_restreams_and_matches() -> None:
    ref, model = _model(), _model()
    ref.set_gradient_checkpointing(True)
    model.set_gradient_checkpointing(True)
    streamer = BlockStreamer(model, "cpu", prefetch=2)
    n = len(streamer.units)
    losses = []
    for m in (ref, model):
        v, a = m(*INPUTS)
        loss = v.square().mean() + a.square().mean()
        loss.backward()
        losses.append(loss.detach())
    assert losses[0].item() == losses[1].item()
    assert streamer.stats.transfers == 2 * n  # forward + recomputation in backward
    grads_ref = {k: p.grad for k, p in ref.named_parameters() if p.requires_grad}
    grads = {k: p.grad for k, p in model.named_parameters() if p.requires_grad}
    assert grads.keys() == grads_ref.keys() and grads
    for k in grads:
        torch.testing.assert_close(grads[k], grads_ref[k], rtol=0, atol=0)


@pytest.mark.parametrize("storage", ["int8", "fp8"])
def test_8bit_storage_is_close_but_lossy(storage: str) -> None:
    ref, model = _model(), _model()
    streamer = BlockStreamer(model, "cpu", storage=storage)
    with torch.no_grad():
        v, _ = model(*INPUTS)
        v_ref, _ = ref(*INPUTS)
    rel = (v - v_ref).norm() / v_ref.norm()
    assert 0 < rel < 0.05
    assert streamer.stats.bytes < sum(
        p.numel() * 4 for n, p in ref.named_parameters() if n in set(streamer.streamed_names)
    )


def test_remove_restores_parameters() -> None:
    ref, model = _model(), _model()
    streamer = BlockStreamer(model, "cpu")
    streamer.remove()
    for (n, p), (_, q) in zip(model.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.equal(p, q), n
    assert "forward" not in model.video_dit.blocks[0].__dict__


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="storage"):
        BlockStreamer(_model(), "cpu", storage="int4")
    with pytest.raises(ValueError, match="block_classes"):
        BlockStreamer(torch.nn.Linear(2, 2), "cpu")
