"""Closed-form tests of the flow-matching objective (noise mixing, target, timesteps, experts, masks)."""

from __future__ import annotations

import pytest
import torch

from mova_train.objectives import (
    ExpertSelector,
    FlowMatchingObjective,
    TimestepSampler,
    add_noise,
    caption_dropout,
    masked_mse,
    sample_timestep_indices,
    velocity_target,
)
from mova_train.schedulers.flow_match import FlowMatchScheduler


def _latents(batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "video_latents": torch.randn(batch, 4, 2, 4, 4, generator=g),
        "cond": torch.randn(batch, 8, 2, 4, 4, generator=g),
        "audio_latents": torch.randn(batch, 8, 6, generator=g),
        "context": torch.randn(batch, 5, 32, generator=g) + 3.0,
    }


class OracleModel:
    """Recovers the noise from x_t (knowing x0 and t = 1000 sigma) and returns ``noise - x0 + offset``."""

    def __init__(self, lat: dict[str, torch.Tensor], audio_offset: torch.Tensor | None = None) -> None:
        self.lat, self.audio_offset, self.calls = lat, audio_offset, []

    def __call__(self, xt_v, y, xt_a, context, t_v, t_a, video_fps=24.0, expert="video_dit"):
        self.calls.append(
            {"t": t_v.clone(), "t_a": t_a.clone(), "expert": expert, "context": context.clone()}
        )

        def velocity(xt, x0, t):
            s = (t / 1000.0).view(-1, *([1] * (x0.dim() - 1)))
            noise = (xt - (1 - s) * x0) / s
            return noise - x0

        pred_a = velocity(xt_a, self.lat["audio_latents"], t_a)
        if self.audio_offset is not None:
            pred_a = pred_a + self.audio_offset.view(-1, 1, 1)
        return velocity(xt_v, self.lat["video_latents"], t_v), pred_a


def test_add_noise_and_target_closed_form():
    x0, eps = torch.full((3, 2), 2.0), torch.full((3, 2), -1.0)
    sigma = torch.tensor([0.0, 0.25, 1.0])
    xt = add_noise(x0, eps, sigma)
    assert torch.allclose(xt[:, 0], torch.tensor([2.0, 0.75 * 2 - 0.25, -1.0]))
    assert torch.equal(velocity_target(x0, eps), torch.full((3, 2), -3.0))  # eps - x0, not x0 - eps


def test_sample_indices_per_sample_and_upstream_clamp():
    g = torch.Generator().manual_seed(0)
    idx = sample_timestep_indices(20000, g, 0.0, 0.359, 1000)
    assert idx.min() >= 0 and idx.max() <= 358
    assert len(idx.unique()) == 359  # uniform over every index of the range
    idx = sample_timestep_indices(20000, g, 0.359, 1.0, 1000)
    assert idx.min() >= 359 and idx.max() <= 999
    counts = torch.bincount(sample_timestep_indices(50000, g, 0.0, 1.0, 10), minlength=10).float()
    assert (counts / counts.mean() - 1).abs().max() < 0.05
    with pytest.raises(ValueError, match="low < high"):
        sample_timestep_indices(2, g, 0.5, 0.5)


def test_logit_normal_sampler_stays_in_range():
    g = torch.Generator().manual_seed(1)
    idx = TimestepSampler("logit_normal", 0.0, 1.0)(5000, g, 0.359, 1.0, 1000)
    assert idx.min() >= 359 and idx.max() <= 999
    assert abs(idx.float().mean().item() - (359 + 999) / 2) < 20  # symmetric around the middle
    with pytest.raises(ValueError, match="kind"):
        TimestepSampler("mode")


def test_release_boundary_and_alternation_by_step():
    obj = FlowMatchingObjective(FlowMatchScheduler())
    assert obj.boundary == pytest.approx(0.359)
    lat = _latents(8)
    for step, expert in [(0, "video_dit"), (1, "video_dit_2"), (2, "video_dit"), (7, "video_dit_2")]:
        model = OracleModel(lat)
        obj(model, lat, step, torch.Generator().manual_seed(step))
        call = model.calls[0]
        assert call["expert"] == expert
        if expert == "video_dit":
            assert (call["t"] >= 900).all()
        else:
            assert (call["t"] < 900).all()


def test_per_sample_timesteps_and_oracle_loss_is_zero():
    obj = FlowMatchingObjective()
    lat = _latents(8)
    model = OracleModel(lat)
    out = obj(model, lat, 1, torch.Generator().manual_seed(0))
    assert len(out.timesteps.unique()) > 1  # one t per sample
    assert torch.equal(out.timesteps, out.audio_timesteps)  # upstream: audio t = video t
    # t = 1000 sigma on the shifted grid: every t is a training-grid timestep
    grid = obj.scheduler.train_timesteps
    assert all((grid - t).abs().min() < 1e-3 for t in out.timesteps)
    assert out.loss.item() < 1e-8 and out.loss.dtype == torch.float32


def test_by_timestep_expert_share_matches_boundary():
    sel = ExpertSelector("by_timestep", 0.359)
    g = torch.Generator().manual_seed(0)
    picks = [sel(0, g).expert for _ in range(4000)]
    share = picks.count("video_dit") / len(picks)
    assert abs(share - 0.359) < 0.03
    assert sel.range_of("video_dit_2").low == 0.359


def test_single_expert_mode():
    obj = FlowMatchingObjective(expert_mode="single", expert="video_dit_2")
    lat = _latents(4)
    for step in range(3):
        model = OracleModel(lat)
        out = obj(model, lat, step, torch.Generator().manual_seed(step))
        assert out.expert == "video_dit_2" and (out.timesteps < 900).all()
    with pytest.raises(ValueError, match="single"):
        FlowMatchingObjective(expert_mode="single")


def test_independent_audio_timesteps():
    obj = FlowMatchingObjective(independent_audio_timesteps=True)
    lat = _latents(8)
    out = obj(OracleModel(lat), lat, 0, torch.Generator().manual_seed(0))
    assert not torch.equal(out.timesteps, out.audio_timesteps)
    assert (out.audio_timesteps < 900).any()  # the audio t spans the whole grid, not the expert's range


def test_audio_mask_and_weights():
    lat = _latents(4)
    lat["audio_mask"] = torch.tensor([True, False, True, False])
    offset = torch.tensor([1.0, 10.0, 3.0, 10.0])  # per-sample audio MSE = offset^2
    obj = FlowMatchingObjective(video_weight=0.5, audio_weight=2.0)
    out = obj(OracleModel(lat, offset), lat, 0, torch.Generator().manual_seed(0))
    assert out.loss_audio.item() == pytest.approx((1.0 + 9.0) / 2, rel=1e-4)
    assert out.per_sample_audio[1] == 0 and out.per_sample_audio[3] == 0
    assert out.loss.item() == pytest.approx(0.5 * out.loss_video.item() + 2.0 * 5.0, rel=1e-4)


def test_caption_dropout_rate_and_null_context():
    ctx = torch.ones(10000, 2, 3)
    out, dropped = caption_dropout(ctx, 0.3, torch.Generator().manual_seed(0))
    assert abs(dropped.float().mean().item() - 0.3) < 0.02
    assert (out[dropped] == 0).all() and (out[~dropped] == 1).all()
    null = torch.full((2, 3), 7.0)
    out, dropped = caption_dropout(ctx[:50], 1.0, None, null)
    assert dropped.all() and (out == 7.0).all()
    # inside the objective the model sees the dropped context
    obj = FlowMatchingObjective(caption_dropout=1.0)
    lat = _latents(3)
    model = OracleModel(lat)
    res = obj(model, lat, 0, torch.Generator().manual_seed(0))
    assert res.dropped_captions.all() and (model.calls[0]["context"] == 0).all()


def test_masked_mse_fp32_and_mask():
    pred = torch.ones(2, 4, dtype=torch.bfloat16)
    target = torch.zeros(2, 4)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]])
    assert masked_mse(pred, target).dtype == torch.float32
    pred2 = torch.tensor([[1.0, 3.0, 100.0, 100.0], [2.0, 100.0, 100.0, 100.0]])
    assert torch.allclose(masked_mse(pred2, target, mask), torch.tensor([5.0, 4.0]))
    with pytest.raises(ValueError, match="shape"):
        masked_mse(pred2, target[:, :2])


def test_same_generator_same_draws():
    obj = FlowMatchingObjective()
    lat = _latents(4)
    a = obj(OracleModel(lat), lat, 3, torch.Generator().manual_seed(5))
    b = obj(OracleModel(lat), lat, 3, torch.Generator().manual_seed(5))
    assert torch.equal(a.timesteps, b.timesteps)
