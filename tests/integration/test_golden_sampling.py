"""End-to-end sampling parity with the original MOVA pipeline (`golden/sampling*.safetensors`).

Data-driven: configs, the step schedule, CFG scale, shapes, weights, noise and contexts all come from the golden
files. From the stored noise, the sampler (with VAE first-frame conditioning and both decoders) must reproduce
every stored per-step latent and velocity, the final latents and the decoded video and audio within 1e-4.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.golden import SIGMA_TOL, TIMESTEP_TOL, assert_euler_step
from safetensors.torch import load_file

from mova_train.codecs.configs import DACConfig, VideoVAEConfig
from mova_train.codecs.dac import DAC
from mova_train.codecs.video_vae import WanVideoVAE
from mova_train.models.audio_tower import AudioDiT
from mova_train.models.bridge import DualTowerBridge
from mova_train.models.configs import AudioDiTConfig, BridgeConfig, VideoDiTConfig
from mova_train.models.mova import MovaDualTower
from mova_train.models.video_tower import VideoDiT
from mova_train.sampling import first_frame_condition, sample
from mova_train.schedulers.flow_match import FlowMatchScheduler, SchedulerConfig

TOL = 1e-4
CASES = ["sampling", "sampling_cfg1"]
DENOISER_PARTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")


def _group(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _load_strict(module: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
    assert weights, f"no weights for {what}"
    result = module.load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys, what


class GoldenRun:
    """One golden sampling file: meta, tensors and the components built and loaded from them."""

    def __init__(self, golden_dir: Path, name: str) -> None:
        self.name = name
        self.meta = json.loads((golden_dir / f"{name}.json").read_text())
        self.tensors = load_file(str(golden_dir / f"{name}.safetensors"))
        cfg = self.meta["config"]
        self.denoiser = MovaDualTower(
            video_dit=VideoDiT(VideoDiTConfig.from_dict(cfg["video_dit"])),
            audio_dit=AudioDiT(AudioDiTConfig.from_dict(cfg["audio_dit"])),
            dual_tower_bridge=DualTowerBridge(BridgeConfig.from_dict(cfg["dual_tower_bridge"])),
            video_dit_2=VideoDiT(VideoDiTConfig.from_dict(cfg["video_dit_2"])),
        ).eval()
        weights = _group(self.tensors, "weights.")
        denoiser_weights = {k: v for k, v in weights.items() if k.split(".", 1)[0] in DENOISER_PARTS}
        _load_strict(self.denoiser, denoiser_weights, f"{name}: denoiser")
        self.video_vae = WanVideoVAE(VideoVAEConfig.from_dict(cfg["video_vae"])).eval()
        _load_strict(self.video_vae, _group(self.tensors, "weights.video_vae."), f"{name}: video_vae")
        self.audio_vae = DAC(DACConfig.from_dict(cfg["audio_vae"])).eval()
        _load_strict(self.audio_vae, _group(self.tensors, "weights.audio_vae."), f"{name}: audio_vae")
        loaded = sum(1 for k in weights if k.split(".", 1)[0] in (*DENOISER_PARTS, "video_vae", "audio_vae"))
        assert loaded == len(weights) == self.meta["num_weight_tensors"], f"{name}: weights left unloaded"
        self.scheduler = FlowMatchScheduler(SchedulerConfig.from_dict(cfg["scheduler"]))

    @property
    def call(self) -> dict:
        return self.meta["call"]

    def expected(self) -> dict[str, torch.Tensor]:
        """Every stored result, keyed like the safetensors (``outputs.*`` and ``intermediates.*``)."""
        return {k: v for k, v in self.tensors.items() if k.startswith(("outputs.", "intermediates."))}


@pytest.fixture(scope="module", params=CASES)
def run(request: pytest.FixtureRequest, golden_dir: Path) -> GoldenRun:
    return GoldenRun(golden_dir, request.param)


def _boundary_timestep(run: GoldenRun) -> float:
    boundary = run.call.get("boundary_timestep")
    if boundary is None:
        boundary = run.meta["config"]["pipeline"]["boundary_ratio"] * run.scheduler.num_train_timesteps
    return float(boundary)


def test_step_schedule_matches(run: GoldenRun) -> None:
    call = run.call
    steps = run.scheduler.euler_steps(call["num_inference_steps"], boundary_timestep=_boundary_timestep(run))
    assert len(steps) == len(run.meta["steps"]) == call["num_inference_steps"]
    _, grid_sigmas = run.scheduler.inference_grid(call["num_inference_steps"])
    for got, exp, grid_sigma in zip(steps, run.meta["steps"], grid_sigmas.tolist(), strict=True):
        where = f"{run.name} step {exp['index']}"
        assert got.index == exp["index"] and got.expert == exp["expert"], where
        assert_euler_step(got, exp, where, t_from="timestep", t_to="next_timestep")
        assert got.t_from == pytest.approx(exp["audio_timestep"], abs=TIMESTEP_TOL), where
        assert grid_sigma == pytest.approx(exp["inference_grid_sigma"], abs=SIGMA_TOL), where
    assert sum(s.expert == "video_dit" for s in steps) == call["num_high_noise_steps"]


def _run_pipeline(run: GoldenRun, batch_cfg: bool) -> tuple[dict[str, torch.Tensor], list[int]]:
    """The full pipeline from the stored inputs; returns computed tensors under the golden names."""
    call, inputs = run.call, _group(run.tensors, "inputs.")
    cfg_scale = float(call["cfg_scale"])
    got: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        first = inputs["first_frame"]
        b, c, h, w = first.shape
        video = torch.cat([first.unsqueeze(2), first.new_zeros(b, c, call["num_frames"] - 1, h, w)], dim=2)
        got["intermediates.condition_latent"] = run.video_vae.encode_raw(video)
        y = first_frame_condition(run.video_vae.normalize(got["intermediates.condition_latent"]))
        got["intermediates.y"] = y
        assert tuple(inputs["video_noise"].shape) == tuple(call["video_latent_shape"])
        assert tuple(inputs["audio_noise"].shape) == tuple(call["audio_latent_shape"])
        result = sample(
            run.denoiser,
            run.scheduler,
            video_noise=inputs["video_noise"],
            audio_noise=inputs["audio_noise"],
            y=y,
            context_pos=inputs["context_pos"],
            context_neg=inputs.get("context_neg"),
            num_steps=call["num_inference_steps"],
            cfg_scale=cfg_scale,
            video_fps=float(call["video_fps"]),
            batch_cfg=batch_cfg,
            boundary_timestep=_boundary_timestep(run),
            return_trace=True,
        )
        for tr in result.trace:
            p = f"intermediates.step_{tr.step.index}_"
            got[p + "video_latents"], got[p + "audio_latents"] = tr.video_latents, tr.audio_latents
            got[p + "video_velocity"], got[p + "audio_velocity"] = tr.video_velocity, tr.audio_velocity
            got[p + "video_velocity_pos"] = tr.video_velocity_pos
            got[p + "audio_velocity_pos"] = tr.audio_velocity_pos
            if tr.video_velocity_neg is not None:
                got[p + "video_velocity_neg"] = tr.video_velocity_neg
                got[p + "audio_velocity_neg"] = tr.audio_velocity_neg
        got["outputs.video_latents"], got["outputs.audio_latents"] = (
            result.video_latents,
            result.audio_latents,
        )
        got["intermediates.video_latents_denormalized"] = run.video_vae.denormalize(result.video_latents)
        got["outputs.video"] = run.video_vae.decode(result.video_latents)
        got["outputs.audio"] = run.audio_vae.decode(result.audio_latents)
    return got, [tr.model_passes for tr in result.trace]


@pytest.mark.slow
@pytest.mark.parametrize("batch_cfg", [False, True], ids=["two_passes", "batched_cfg"])
def test_sampling_matches_golden(run: GoldenRun, batch_cfg: bool) -> None:
    got, passes = _run_pipeline(run, batch_cfg)
    assert passes == [s["model_passes"] for s in run.meta["steps"]]
    expected = run.expected()
    assert set(got) == set(expected), (
        f"{run.name}: computed {sorted(set(got) - set(expected))} not stored, "
        f"stored {sorted(set(expected) - set(got))} not computed"
    )
    errors = {}
    for key, ref in expected.items():
        assert got[key].shape == ref.shape, (
            f"{run.name}: {key} shape {tuple(got[key].shape)} != {tuple(ref.shape)}"
        )
        errors[key] = (got[key].float() - ref).abs().max().item()
    worst = sorted(errors.items(), key=lambda kv: -kv[1])[:5]
    assert all(e <= TOL for e in errors.values()), f"{run.name}: max |error| > {TOL}: {worst}"
