"""Conditioning modes of the objective: what each mode feeds the model, where the loss goes, the mix draw."""

from __future__ import annotations

import pytest
import torch

from mova_train.objectives import CONDITIONING_MODES, FlowMatchingObjective, ModeMix, no_frame_condition


def _latents(batch: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, 8, 2, 4, 4, generator=g)
    cond[:, :4] = 0.0
    cond[:, :4, 0] = 1.0
    return {
        "video_latents": torch.randn(batch, 4, 2, 4, 4, generator=g),
        "cond": cond,
        "audio_latents": torch.randn(batch, 8, 6, generator=g),
        "context": torch.randn(batch, 5, 32, generator=g),
        "empty_latents": torch.randn(1, 4, 2, 4, 4, generator=g).expand(batch, -1, -1, -1, -1),
    }


class Recorder:
    """Returns trainable velocities and keeps every input, so the tests can inspect what the model saw."""

    def __init__(self, lat: dict[str, torch.Tensor]) -> None:
        self.pred_v = torch.zeros_like(lat["video_latents"], requires_grad=True)
        self.pred_a = torch.zeros_like(lat["audio_latents"], requires_grad=True)
        self.calls: list[dict] = []

    def __call__(self, xt_v, y, xt_a, context, t_v, t_a, video_fps=24.0, expert="video_dit"):
        self.calls.append(dict(xt_v=xt_v, y=y, xt_a=xt_a, t_v=t_v, t_a=t_a, expert=expert))
        return self.pred_v * 1.0, self.pred_a * 1.0


def _run(mode, lat=None, step=1, seed=0, **kw):
    lat = lat or _latents()
    rec = Recorder(lat)
    obj = FlowMatchingObjective(mode=mode, **kw)
    out = obj(rec, lat, step, torch.Generator().manual_seed(seed))
    out.loss.backward()
    return out, rec.calls[0], rec, lat


def test_a2v_keeps_audio_clean_at_t0_without_loss():
    out, call, rec, lat = _run("a2v", a2v_first_frame=1.0)
    assert torch.equal(call["xt_a"], lat["audio_latents"])  # no noise at all
    assert torch.equal(call["t_a"], torch.zeros(4))
    assert (call["t_v"] > 0).all() and not torch.equal(call["xt_v"], lat["video_latents"])
    assert torch.equal(rec.pred_a.grad, torch.zeros_like(rec.pred_a))  # no loss reaches the audio output
    assert rec.pred_v.grad.abs().sum() > 0
    assert out.loss_audio == 0 and not out.audio_mask.any() and out.modes == ("a2v",) * 4
    assert torch.equal(call["y"], lat["cond"])  # a2v_first_frame=1: the first frame stays
    assert set(out.mode_losses()) == {"loss_a2v_video"}


def test_v2a_keeps_video_clean_on_the_low_noise_expert():
    out, call, rec, lat = _run("v2a", step=0)  # step 0 would be the high-noise expert under alternation
    assert call["expert"] == "video_dit_2"
    assert torch.equal(call["xt_v"], lat["video_latents"]) and torch.equal(call["t_v"], torch.zeros(4))
    assert torch.equal(rec.pred_v.grad, torch.zeros_like(rec.pred_v))
    assert rec.pred_a.grad.abs().sum() > 0 and (call["t_a"] > 0).all()
    assert out.loss_video == 0 and set(out.mode_losses()) == {"loss_v2a_audio"}
    assert FlowMatchingObjective(mode="v2a").experts == ("video_dit_2",)
    # the audio t of v2a spans the whole grid, high noise included (it is not tied to the video's range)
    t_a = torch.cat([_run("v2a", seed=s)[1]["t_a"] for s in range(40)])
    assert t_a.max() > 950 and t_a.min() < 300


def test_t2av_says_no_frame():
    out, call, _, lat = _run("t2av")
    assert torch.equal(call["y"][:, :4], torch.zeros_like(call["y"][:, :4]))  # all mask channels 0
    assert torch.equal(call["y"][:, 4:], lat["empty_latents"])  # the latent of an empty clip
    assert torch.equal(no_frame_condition(lat["empty_latents"]), call["y"])
    assert (call["t_v"] > 0).all() and (call["t_a"] > 0).all()
    assert set(out.mode_losses()) == {"loss_t2av_video", "loss_t2av_audio"}
    missing = {k: v for k, v in lat.items() if k != "empty_latents"}
    with pytest.raises(KeyError, match="empty_latents"):
        FlowMatchingObjective(mode="t2av")(Recorder(lat), missing, 0, torch.Generator().manual_seed(0))


def test_mix_changes_only_the_conditioning_of_each_sample():
    mix = {"i2av": 0.25, "t2av": 0.25, "a2v": 0.25, "v2a": 0.25}
    lat = _latents(batch=64)
    out, call, _, _ = _run(mix, lat=lat, step=1, a2v_first_frame=0.0)  # alternate: odd step = low noise
    _, ref, _, _ = _run("i2av", lat=lat, step=1)
    modes = out.modes
    assert set(modes) == set(CONDITIONING_MODES)
    for i, m in enumerate(modes):
        if m != "v2a":  # noise and video t are the i2av run's: the mode draw comes after them
            assert torch.equal(call["xt_v"][i], ref["xt_v"][i]) and call["t_v"][i] == ref["t_v"][i]
        assert torch.equal(call["y"][i], ref["y"][i]) == (m in ("i2av", "v2a"))
        assert (call["t_a"][i] == 0) == (m == "a2v") and (call["t_v"][i] == 0) == (m == "v2a")
    losses = out.mode_losses()
    assert {k for k in losses} == {
        "loss_i2av_video", "loss_i2av_audio", "loss_t2av_video", "loss_t2av_audio", "loss_a2v_video",
        "loss_v2a_audio",
    }  # fmt: skip
    assert sum(n for k, (_, n) in losses.items() if k.endswith("_video")) == sum(m != "v2a" for m in modes)


@pytest.mark.parametrize("expert_mode", ["by_timestep", "alternate"])
def test_mix_shares_are_exact_and_v2a_runs_only_the_low_noise_expert(expert_mode):
    mix = {"i2av": 0.5, "t2av": 0.3, "a2v": 0.1, "v2a": 0.1}
    obj = FlowMatchingObjective(mode=mix, expert_mode=expert_mode)
    gen = torch.Generator().manual_seed(0)
    counts, high_i2av, n_i2av = dict.fromkeys(CONDITIONING_MODES, 0), 0, 0
    steps = 4000
    for step in range(steps):
        choice = obj.selector(step, gen, obj.mix.v2a_share)
        low = choice.expert == "video_dit_2"
        modes = obj.mix.draw(8, gen, low, obj.selector.low_noise_share(obj.mix.v2a_share))
        for i in modes.tolist():
            counts[CONDITIONING_MODES[i]] += 1
        if not low:
            assert CONDITIONING_MODES.index("v2a") not in modes.tolist()
        n_i2av += int((modes == 0).sum())
        high_i2av += int((modes == 0).sum()) * (not low)
    total = steps * 8
    for m, p in mix.items():
        assert abs(counts[m] / total - p) < 0.012, (m, counts[m] / total)
    # the video timesteps of the other modes keep the routing's expert share
    want = obj.boundary if expert_mode == "by_timestep" else 0.5 / 0.9
    assert abs(high_i2av / n_i2av - want) < 0.03


def test_mode_settings_are_validated():
    with pytest.raises(ValueError, match="unknown mode"):
        ModeMix("txt2av")
    with pytest.raises(ValueError, match="sum to 1"):
        ModeMix({"i2av": 0.5, "t2av": 0.3})
    with pytest.raises(ValueError, match="low-noise expert"):
        FlowMatchingObjective(mode="v2a", expert_mode="single", expert="video_dit")
    with pytest.raises(ValueError, match="by_timestep"):
        FlowMatchingObjective(mode={"v2a": 0.7, "i2av": 0.3}, expert_mode="alternate")
    with pytest.raises(ValueError, match="trains no stream"):
        FlowMatchingObjective(mode="v2a", audio_weight=0.0)
    assert ModeMix({"i2av": 1.0, "t2av": 0.0}).single == "i2av"
    assert not ModeMix("a2v", a2v_first_frame=1.0).uses_no_frame and ModeMix("a2v").uses_no_frame


def test_single_i2av_draws_nothing_new():
    """An i2av run consumes the generator exactly as before modes existed (resume and golden losses hold)."""
    lat = _latents()
    gen = torch.Generator().manual_seed(5)
    FlowMatchingObjective(mode="i2av")(Recorder(lat), lat, 0, gen)
    after_i2av = torch.rand(3, generator=gen)
    gen = torch.Generator().manual_seed(5)
    FlowMatchingObjective(mode="t2av")(Recorder(lat), lat, 0, gen)  # also a single mode: no draw either
    assert torch.equal(torch.rand(3, generator=gen), after_i2av)


def test_modes_come_from_the_step_generator():
    """The per-sample draw uses only the step's generator: the same seed (a resumed step) draws the same modes."""
    mix = {"i2av": 0.25, "t2av": 0.25, "a2v": 0.25, "v2a": 0.25}
    lat = _latents(batch=16)
    runs = [_run(mix, lat=lat, step=1, seed=s) for s in (3, 3, 4)]
    assert runs[0][0].modes == runs[1][0].modes and torch.equal(runs[0][0].loss, runs[1][0].loss)
    assert runs[0][0].modes != runs[2][0].modes
