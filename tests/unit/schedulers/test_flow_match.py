"""FlowMatchScheduler against `golden/scheduler.json` (produced by the original MOVA scheduler)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.golden import SIGMA_TOL, TIMESTEP_TOL, assert_euler_step

from mova_train.schedulers.flow_match import EulerStep, FlowMatchScheduler, SchedulerConfig


@pytest.fixture(scope="module")
def golden(golden_dir: Path) -> dict:
    return json.loads((golden_dir / "scheduler.json").read_text())


@pytest.fixture(scope="module")
def scheduler(golden: dict) -> FlowMatchScheduler:
    return FlowMatchScheduler(SchedulerConfig.from_dict(golden["config"]))


def _max_abs(a: torch.Tensor, b: list[float]) -> float:
    return (a.double() - torch.tensor(b, dtype=torch.float64)).abs().max().item()


def test_config_roundtrip_and_unknown_keys(golden: dict) -> None:
    cfg = SchedulerConfig.from_dict({**golden["config"], "_class_name": "FlowMatchPairScheduler", "foo": 1})
    assert cfg.to_dict() == golden["config"]
    assert SchedulerConfig() == SchedulerConfig.from_dict(golden["config"])


def test_train_grid(golden: dict, scheduler: FlowMatchScheduler) -> None:
    grid = golden["train_grid"]
    assert scheduler.train_timesteps.dtype == torch.float32
    assert scheduler.train_sigmas.shape == (grid["num_steps"],)
    assert _max_abs(scheduler.train_timesteps, grid["timesteps"]) <= TIMESTEP_TOL
    assert _max_abs(scheduler.train_sigmas, grid["sigmas"]) <= SIGMA_TOL


def test_training_boundary(golden: dict, scheduler: FlowMatchScheduler) -> None:
    ref = golden["training_expert_boundary"]
    boundary_t = ref["boundary_ratio"] * scheduler.num_train_timesteps
    assert int((scheduler.train_timesteps >= boundary_t).sum()) == ref["count_timesteps_ge_900"]
    assert scheduler.training_boundary(boundary_t) == pytest.approx(ref["boundary"], abs=1e-12)


def test_inference_grids_and_euler_steps(golden: dict, scheduler: FlowMatchScheduler) -> None:
    assert golden["inference"], "scheduler.json has no inference grids"
    for key, ref in golden["inference"].items():
        n = ref["num_steps"]
        assert int(key) == n
        timesteps, sigmas = scheduler.inference_grid(n)
        assert timesteps.shape == sigmas.shape == (n,)
        assert _max_abs(timesteps, ref["timesteps"]) <= TIMESTEP_TOL, key
        assert _max_abs(sigmas, ref["sigmas"]) <= SIGMA_TOL, key

        steps = scheduler.euler_steps(n)
        assert len(steps) == len(ref["euler_steps"]) == n
        for i, (got, exp) in enumerate(zip(steps, ref["euler_steps"], strict=True)):
            where = f"{n} steps, step {i}"
            assert isinstance(got, EulerStep)
            assert got.index == i
            assert_euler_step(got, exp, where)
            assert got.expert == exp["expert"], where
        assert sum(s.expert == "video_dit" for s in steps) == ref["num_high_noise_steps"]
        used_minus_grid = max(abs(s.sigma_from - g) for s, g in zip(steps, sigmas.tolist(), strict=True))
        assert used_minus_grid == pytest.approx(ref["max_abs_sigma_used_minus_grid_sigma"], abs=SIGMA_TOL)


def test_exact_vs_lookup(scheduler: FlowMatchScheduler) -> None:
    # 30 does not divide 1000: the lookup sigma differs from the inference grid (spec pitfall 5).
    lookup, exact = scheduler.euler_steps(30), scheduler.euler_steps(30, exact=True)
    diff = max(abs(a.euler_factor - b.euler_factor) for a, b in zip(lookup, exact, strict=True))
    assert diff > 1e-4
    _, sigmas30 = scheduler.inference_grid(30)
    assert [s.sigma_from for s in exact] == sigmas30.tolist()
    assert [s.expert for s in lookup] == [s.expert for s in exact]
    # 50 divides 1000: both agree.
    lookup, exact = scheduler.euler_steps(50), scheduler.euler_steps(50, exact=True)
    for a, b in zip(lookup, exact, strict=True):
        assert a.euler_factor == pytest.approx(b.euler_factor, abs=1e-7)
    # The constructor flag sets the default.
    assert FlowMatchScheduler(exact_euler_steps=True).euler_steps(30) == scheduler.euler_steps(30, exact=True)


def test_timestep_to_sigma(scheduler: FlowMatchScheduler) -> None:
    t = scheduler.train_timesteps
    assert scheduler.timestep_to_sigma(float(t[143])) == float(scheduler.train_sigmas[143])
    assert scheduler.timestep_to_sigma(float(t[143]) + 0.01) == float(scheduler.train_sigmas[143])
    batch = torch.stack([t[[0, 5, 999]], t[[10, 20, 30]]])
    out = scheduler.timestep_to_sigma(batch)
    assert out.shape == (2, 3)
    sig = scheduler.train_sigmas
    assert torch.equal(out, torch.stack([sig[[0, 5, 999]], sig[[10, 20, 30]]]))
    assert scheduler.timestep_to_index(torch.tensor(1e6)) == 0


def test_shift_override_and_extra_one_step() -> None:
    sched = FlowMatchScheduler()
    t5, _ = sched.inference_grid(50)
    t3, _ = sched.inference_grid(50, shift=3.0)
    assert t3[1] < t5[1]
    assert torch.equal(sched.train_timesteps, FlowMatchScheduler().train_timesteps)  # override is local
    no_extra = FlowMatchScheduler(SchedulerConfig(extra_one_step=False))
    assert no_extra.inference_grid(50)[0][-1].item() == pytest.approx(14.79, abs=0.01)
    assert sched.inference_grid(50)[0][-1].item() == pytest.approx(105.0, abs=0.05)
    assert no_extra.training_boundary() == pytest.approx(0.358)


@pytest.mark.parametrize(
    "field,value",
    [
        ("exponential_shift", True),
        ("exponential_shift_mu", 0.5),
        ("shift_terminal", 0.1),
        ("inverse_timesteps", True),
        ("reverse_sigmas", True),
    ],
)
def test_unsupported_settings_raise(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        SchedulerConfig(**{field: value})
    with pytest.raises(ValueError, match=f"my/scheduler_config.json: .*{field}"):
        SchedulerConfig.from_dict({field: value}, source="my/scheduler_config.json")


def test_bad_num_steps() -> None:
    with pytest.raises(ValueError, match="num_steps"):
        FlowMatchScheduler().inference_grid(0)
