"""The sampler's guidance, Euler update, expert switching and batching, with a small deterministic model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mova_train.sampling import first_frame_condition, sample
from mova_train.schedulers.flow_match import FlowMatchScheduler

C, CA, T, H, W, L, LT, DT = 4, 3, 2, 2, 3, 5, 6, 7


class StubDenoiser(nn.Module):
    """A tiny per-sample function of every input the real denoiser takes; records each call."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.wv = nn.Parameter(0.3 * torch.randn(C, C, generator=g))
        self.wa = nn.Parameter(0.3 * torch.randn(CA, CA, generator=g))
        self.wy = nn.Parameter(0.3 * torch.randn(4 + C, C, generator=g))
        self.cv = nn.Parameter(torch.randn(DT, C, generator=g))
        self.ca = nn.Parameter(torch.randn(DT, CA, generator=g))
        self.calls: list[dict] = []

    def forward(
        self,
        latents: torch.Tensor,
        y: torch.Tensor,
        audio_latents: torch.Tensor,
        context: torch.Tensor,
        timestep: torch.Tensor,
        audio_timestep: torch.Tensor,
        video_fps: float = 24.0,
        expert: str = "video_dit",
        use_bridge: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls.append(
            dict(
                batch=latents.shape[0],
                timestep=timestep.clone(),
                audio_timestep=audio_timestep.clone(),
                expert=expert,
                use_bridge=use_bridge,
                video_fps=video_fps,
                dtype=latents.dtype,
            )
        )
        ctx = context.float().mean(1)  # [B, DT]
        tv = (timestep / 1000.0)[:, None, None, None, None]
        ta = (audio_timestep / 1000.0)[:, None, None]
        sign = 1.0 if expert == "video_dit" else -0.5
        v = sign * torch.einsum("bcthw,cd->bdthw", latents.float(), self.wv)
        v = (
            v
            + torch.einsum("bcthw,cd->bdthw", y.float(), self.wy)
            + tv * (ctx @ self.cv)[:, :, None, None, None]
        )
        a = torch.einsum("bcl,cd->bdl", audio_latents.float(), self.wa) + ta * (ctx @ self.ca)[:, :, None]
        if use_bridge:
            v = v + 0.2 * audio_latents.float().mean((1, 2))[:, None, None, None, None] * video_fps / 24.0
            a = a + 0.2 * latents.float().mean((1, 2, 3, 4))[:, None, None]
        return v.to(latents.dtype), a.to(latents.dtype)


def _inputs(batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return dict(
        video_noise=torch.randn(batch, C, T, H, W, generator=g),
        audio_noise=torch.randn(batch, CA, L, generator=g),
        y=first_frame_condition(torch.randn(batch, C, T, H, W, generator=g)),
        context_pos=torch.randn(batch, LT, DT, generator=g),
        context_neg=torch.randn(batch, LT, DT, generator=g),
    )


def _reference(model, sched, inp, num_steps, s_video, s_audio, bridge=0.0):
    """The loop written out independently: separate passes, guidance per the formula."""
    x, a = inp["video_noise"].clone(), inp["audio_noise"].clone()
    for st in sched.euler_steps(num_steps):
        t = torch.full((x.shape[0],), st.t_from)
        kw = dict(y=inp["y"], timestep=t, audio_timestep=t, video_fps=24.0, expert=st.expert)
        vp, ap = model(latents=x, audio_latents=a, context=inp["context_pos"], **kw)
        vn, an = model(latents=x, audio_latents=a, context=inp["context_neg"], **kw)
        vb, ab = model(latents=x, audio_latents=a, context=inp["context_pos"], use_bridge=False, **kw)
        v = vn + s_video * (vp - vn) + bridge * (vp - vb)
        va = an + s_audio * (ap - an) + bridge * (ap - ab)
        x, a = x + v * st.euler_factor, a + va * st.euler_factor
    return x, a


@pytest.fixture
def sched() -> FlowMatchScheduler:
    return FlowMatchScheduler()


@pytest.mark.parametrize("batch_cfg", [False, True])
def test_cfg_math_matches_reference(sched: FlowMatchScheduler, batch_cfg: bool) -> None:
    model, inp = StubDenoiser(), _inputs()
    out = sample(model, sched, **inp, num_steps=7, cfg_scale=5.0, audio_cfg_scale=3.0, batch_cfg=batch_cfg)
    ref_x, ref_a = _reference(StubDenoiser(), sched, inp, 7, 5.0, 3.0)
    torch.testing.assert_close(out.video_latents, ref_x, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.audio_latents, ref_a, atol=1e-5, rtol=0)
    assert out.video_latents.dtype == out.audio_latents.dtype == torch.float32
    # audio_cfg_scale matters (guards against one scale used for both).
    same = sample(model, sched, **inp, num_steps=7, cfg_scale=5.0, batch_cfg=batch_cfg)
    assert (same.audio_latents - out.audio_latents).abs().max() > 1e-3


def test_trace_velocities_follow_guidance(sched: FlowMatchScheduler) -> None:
    out = sample(StubDenoiser(), sched, **_inputs(), num_steps=3, cfg_scale=4.0, return_trace=True)
    assert out.trace is not None and len(out.trace) == 3
    x = _inputs()["video_noise"]
    for tr in out.trace:
        assert tr.model_passes == 2
        expected = tr.video_velocity_neg + 4.0 * (tr.video_velocity_pos - tr.video_velocity_neg)
        torch.testing.assert_close(tr.video_velocity, expected, atol=1e-6, rtol=0)
        x = x + tr.video_velocity * tr.step.euler_factor
        torch.testing.assert_close(tr.video_latents, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.trace[-1].video_latents, out.video_latents)


def test_one_pass_when_cfg_is_one(sched: FlowMatchScheduler) -> None:
    model, inp = StubDenoiser(), _inputs(batch=2)
    inp.pop("context_neg")
    out = sample(model, sched, **inp, num_steps=5, cfg_scale=1.0, return_trace=True)
    assert len(model.calls) == 5
    assert all(c["batch"] == 2 for c in model.calls)
    assert all(tr.video_velocity_neg is None and tr.model_passes == 1 for tr in out.trace)
    torch.testing.assert_close(out.trace[0].video_velocity, out.trace[0].video_velocity_pos, atol=0, rtol=0)
    # audio cfg != 1 alone brings the negative pass back.
    with pytest.raises(ValueError, match="context_neg"):
        sample(model, sched, **inp, num_steps=5, cfg_scale=1.0, audio_cfg_scale=2.0)


def test_batch_cfg_equals_two_passes(sched: FlowMatchScheduler) -> None:
    inp = _inputs(batch=2)
    m1, m2 = StubDenoiser(), StubDenoiser()
    a = sample(m1, sched, **inp, num_steps=6, cfg_scale=5.0, batch_cfg=True)
    b = sample(m2, sched, **inp, num_steps=6, cfg_scale=5.0, batch_cfg=False)
    assert [c["batch"] for c in m1.calls] == [4] * 6
    assert [c["batch"] for c in m2.calls] == [2] * 12
    torch.testing.assert_close(a.video_latents, b.video_latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.audio_latents, b.audio_latents, atol=1e-5, rtol=0)


def test_expert_switch_and_timesteps(sched: FlowMatchScheduler) -> None:
    model = StubDenoiser()
    sample(model, sched, **_inputs(batch=2), num_steps=10, cfg_scale=1.0, video_fps=12.0)
    # golden/README: 10 steps run video_dit at t = 1000, 978.33, 952.55, 921.36, then video_dit_2.
    assert [c["expert"] for c in model.calls] == ["video_dit"] * 4 + ["video_dit_2"] * 6
    grid, _ = sched.inference_grid(10)
    for call, t in zip(model.calls, grid, strict=True):
        assert call["timestep"].shape == (2,) and call["timestep"].dtype == torch.float32
        assert torch.equal(call["timestep"], torch.full((2,), t.item()))
        assert torch.equal(call["audio_timestep"], call["timestep"])
        assert call["video_fps"] == 12.0 and call["use_bridge"] is True
    assert model.calls[3]["timestep"][0].item() == pytest.approx(921.36, abs=0.01)
    # A boundary below every timestep keeps the high-noise expert throughout.
    model.calls.clear()
    sample(model, sched, **_inputs(), num_steps=4, cfg_scale=1.0, boundary_timestep=0.0)
    assert {c["expert"] for c in model.calls} == {"video_dit"}


def test_per_sample_independence(sched: FlowMatchScheduler) -> None:
    one, two = _inputs(seed=3), _inputs(seed=4)
    both = {k: torch.cat([one[k], two[k]]) for k in one}
    out = sample(StubDenoiser(), sched, **both, num_steps=5, cfg_scale=5.0)
    for i, single in enumerate((one, two)):
        ref = sample(StubDenoiser(), sched, **single, num_steps=5, cfg_scale=5.0)
        torch.testing.assert_close(out.video_latents[i : i + 1], ref.video_latents, atol=1e-6, rtol=0)
        torch.testing.assert_close(out.audio_latents[i : i + 1], ref.audio_latents, atol=1e-6, rtol=0)


def test_dual_guidance(sched: FlowMatchScheduler) -> None:
    model, inp = StubDenoiser(), _inputs()
    out = sample(model, sched, **inp, num_steps=4, cfg_scale=3.0, guidance="dual", bridge_cfg_scale=2.0)
    assert len(model.calls) == 4 * 2  # batched pos/neg + one no-bridge pass per step
    assert [c["use_bridge"] for c in model.calls] == [True, False] * 4
    ref_x, ref_a = _reference(StubDenoiser(), sched, inp, 4, 3.0, 3.0, bridge=2.0)
    torch.testing.assert_close(out.video_latents, ref_x, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.audio_latents, ref_a, atol=1e-5, rtol=0)
    # bridge scale 0 is plain text CFG: no extra pass.
    model.calls.clear()
    text = sample(model, sched, **inp, num_steps=4, cfg_scale=3.0, guidance="dual")
    assert len(model.calls) == 4
    plain = sample(StubDenoiser(), sched, **inp, num_steps=4, cfg_scale=3.0)
    torch.testing.assert_close(text.video_latents, plain.video_latents, atol=0, rtol=0)


def test_exact_euler_steps_changes_update(sched: FlowMatchScheduler) -> None:
    inp = _inputs()
    lookup = sample(StubDenoiser(), sched, **inp, num_steps=7, cfg_scale=1.0)
    exact = sample(StubDenoiser(), sched, **inp, num_steps=7, cfg_scale=1.0, exact_euler_steps=True)
    assert (lookup.video_latents - exact.video_latents).abs().max() > 1e-5
    assert exact.steps == sched.euler_steps(7, exact=True)


def test_callback_and_model_dtype(sched: FlowMatchScheduler) -> None:
    seen: list[tuple[int, torch.Tensor]] = []
    model = StubDenoiser()
    out = sample(
        model,
        sched,
        **_inputs(),
        num_steps=3,
        cfg_scale=2.0,
        model_dtype=torch.bfloat16,
        callback=lambda step, x, a: seen.append((step.index, x.clone())),
    )
    assert [i for i, _ in seen] == [0, 1, 2]
    torch.testing.assert_close(seen[-1][1], out.video_latents)
    assert all(c["dtype"] == torch.bfloat16 for c in model.calls)
    assert out.video_latents.dtype == torch.float32


def test_bad_inputs(sched: FlowMatchScheduler) -> None:
    inp = _inputs()
    with pytest.raises(ValueError, match="context_neg"):
        sample(StubDenoiser(), sched, **{**inp, "context_neg": None}, num_steps=2, cfg_scale=5.0)
    with pytest.raises(ValueError, match="y must be"):
        sample(StubDenoiser(), sched, **{**inp, "y": inp["y"][:, :, :1]}, num_steps=2, cfg_scale=1.0)
    with pytest.raises(ValueError, match="audio_noise"):
        sample(StubDenoiser(), sched, **{**inp, "audio_noise": inp["audio_noise"][0]}, num_steps=2)
    with pytest.raises(ValueError, match="guidance"):
        sample(StubDenoiser(), sched, **inp, num_steps=2, guidance="cross")


def test_first_frame_condition() -> None:
    z = torch.randn(2, C, 3, H, W)
    y = first_frame_condition(z)
    assert y.shape == (2, 4 + C, 3, H, W)
    assert torch.equal(y[:, 4:], z)
    assert torch.all(y[:, :4, 0] == 1) and torch.all(y[:, :4, 1:] == 0)
