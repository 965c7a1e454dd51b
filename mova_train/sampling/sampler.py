"""The MOVA sampler: Euler steps of the dual-tower velocity with classifier-free guidance, docs/model.md §8.

Pure tensor code (no Lightning); used by the predict entry point and the validation callback. The denoiser is
anything with the `MovaDualTower.forward` signature::

    denoiser(latents=[B, C, T', H', W'], y=[B, 4 + C, T', H', W'], audio_latents=[B, Ca, L],
             context=[B, Lt, Dt], timestep=[B], audio_timestep=[B], video_fps=float, expert=str
             [, use_bridge=False]) -> (video_velocity [B, C, T', H', W'], audio_velocity [B, Ca, L])

Per step (see `FlowMatchScheduler.euler_steps`): the model sees the inference-grid timestep ``t_from`` (the
same for video and audio) and runs the step's expert; the guided velocity is combined in float32 and the
latents move by ``v * euler_factor``. Latents stay float32 throughout.

Given streams (a2v / v2a): a stream passed as ``video_given`` / ``audio_given`` is held clean at t = 0 for every
step (its latent never moves, its velocity is ignored), exactly as the objective trains those modes; the expert
still follows the video timestep, so a given video runs the low-noise expert (pass the matching
``boundary_timestep``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from mova_train.schedulers.flow_match import EulerStep, FlowMatchScheduler

logger = logging.getLogger(__name__)

__all__ = ["SampleResult", "StepTrace", "first_frame_condition", "sample"]

StepCallback = Callable[[EulerStep, torch.Tensor, torch.Tensor], None]


@dataclass
class StepTrace:
    """Everything one sampling step computed (kept only with ``return_trace=True``; tensors are float32).

    Attributes:
        step: The scheduler step (timesteps, sigmas, factor, expert).
        model_passes: Number of denoiser evaluations per sample (1, 2 or 3).
        video_velocity, audio_velocity: Guided velocities used by the update.
        video_velocity_pos, audio_velocity_pos: Outputs with the positive context.
        video_velocity_neg, audio_velocity_neg: Outputs with the negative context (None without text CFG).
        video_velocity_nobridge, audio_velocity_nobridge: Positive context with the bridge disabled (dual
            guidance only, else None).
        video_latents, audio_latents: Latents after this step's update.
    """

    step: EulerStep
    model_passes: int
    video_velocity: torch.Tensor
    audio_velocity: torch.Tensor
    video_velocity_pos: torch.Tensor
    audio_velocity_pos: torch.Tensor
    video_velocity_neg: torch.Tensor | None
    audio_velocity_neg: torch.Tensor | None
    video_velocity_nobridge: torch.Tensor | None
    audio_velocity_nobridge: torch.Tensor | None
    video_latents: torch.Tensor
    audio_latents: torch.Tensor


@dataclass
class SampleResult:
    """Output of `sample`.

    Attributes:
        video_latents: Final normalized video latents [B, C, T', H', W'] float32 (denormalize before
            decoding).
        audio_latents: Final audio latents [B, Ca, L] float32 (raw DAC latents).
        steps: The scheduler steps that were run.
        trace: Per-step `StepTrace`s when asked for, else None.
    """

    video_latents: torch.Tensor
    audio_latents: torch.Tensor
    steps: list[EulerStep] = field(default_factory=list)
    trace: list[StepTrace] | None = None


def first_frame_condition(cond_latents: torch.Tensor) -> torch.Tensor:
    """Build the video DiT conditioning ``y`` from the normalized first-frame latent (docs/model.md §2.5).

    Args:
        cond_latents: Normalized VAE latent of [first frame, zero frames...], [B, C, T', H', W'].

    Returns:
        y [B, 4 + C, T', H', W']: 4 mask channels (1 on latent frame 0, 0 elsewhere), then ``cond_latents``.
    """
    if cond_latents.dim() != 5:
        raise ValueError(f"cond_latents must be [B, C, T', H', W'], got shape {tuple(cond_latents.shape)}")
    b, _, t, h, w = cond_latents.shape
    mask = torch.zeros(b, 4, t, h, w, dtype=cond_latents.dtype, device=cond_latents.device)
    mask[:, :, 0] = 1.0
    return torch.cat([mask, cond_latents], dim=1)


def _check_inputs(
    video_noise: torch.Tensor,
    audio_noise: torch.Tensor,
    y: torch.Tensor,
    context_pos: torch.Tensor,
    context_neg: torch.Tensor | None,
) -> None:
    if video_noise.dim() != 5:
        raise ValueError(f"video_noise must be [B, C, T', H', W'], got shape {tuple(video_noise.shape)}")
    if audio_noise.dim() != 3:
        raise ValueError(f"audio_noise must be [B, Ca, L], got shape {tuple(audio_noise.shape)}")
    b = video_noise.shape[0]
    if audio_noise.shape[0] != b:
        raise ValueError(f"audio_noise batch {audio_noise.shape[0]} != video_noise batch {b}")
    if y.dim() != 5 or y.shape[0] != b or y.shape[2:] != video_noise.shape[2:]:
        raise ValueError(
            f"y must be [B={b}, 4 + C, {', '.join(map(str, video_noise.shape[2:]))}] like video_noise, "
            f"got shape {tuple(y.shape)}"
        )
    for name, ctx in (("context_pos", context_pos), ("context_neg", context_neg)):
        if ctx is not None and (ctx.dim() != 3 or ctx.shape[0] not in (1, b)):
            raise ValueError(f"{name} must be [B={b} or 1, Lt, Dt], got shape {tuple(ctx.shape)}")


def _forward(
    denoiser: nn.Module | Callable[..., tuple[torch.Tensor, torch.Tensor]],
    x: torch.Tensor,
    y: torch.Tensor,
    a: torch.Tensor,
    context: torch.Tensor,
    t_from: float,
    video_fps: float,
    expert: str,
    use_bridge: bool,
    model_dtype: torch.dtype | None,
    video_held: bool = False,
    audio_held: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One denoiser evaluation (a held stream at t = 0); returns float32 velocities."""
    timestep = torch.full((x.shape[0],), 0.0 if video_held else t_from, dtype=torch.float32, device=x.device)
    audio_timestep = torch.full(
        (x.shape[0],), 0.0 if audio_held else t_from, dtype=torch.float32, device=x.device
    )
    if model_dtype is not None:
        x, y, a, context = (v.to(model_dtype) for v in (x, y, a, context))
    extra = {} if use_bridge else {"use_bridge": False}
    video_v, audio_v = denoiser(
        latents=x,
        y=y,
        audio_latents=a,
        context=context,
        timestep=timestep,
        audio_timestep=audio_timestep,
        video_fps=video_fps,
        expert=expert,
        **extra,
    )
    return video_v.float(), audio_v.float()


def _guide(
    pos: torch.Tensor,
    neg: torch.Tensor | None,
    nobridge: torch.Tensor | None,
    text_scale: float,
    bridge_scale: float,
) -> torch.Tensor:
    """``neg + s_text * (pos - neg) [+ s_bridge * (pos - nobridge)]`` in float32 (inactive terms skipped)."""
    v = pos if neg is None or text_scale == 1.0 else neg + text_scale * (pos - neg)
    if nobridge is not None and bridge_scale != 0.0:
        v = v + bridge_scale * (pos - nobridge)
    return v


@torch.no_grad()
def sample(
    denoiser: nn.Module | Callable[..., tuple[torch.Tensor, torch.Tensor]],
    scheduler: FlowMatchScheduler,
    *,
    video_noise: torch.Tensor,
    audio_noise: torch.Tensor,
    y: torch.Tensor,
    context_pos: torch.Tensor,
    context_neg: torch.Tensor | None = None,
    num_steps: int,
    cfg_scale: float = 5.0,
    audio_cfg_scale: float | None = None,
    video_fps: float = 24.0,
    batch_cfg: bool = True,
    callback: StepCallback | None = None,
    boundary_timestep: float = 900.0,
    guidance: str = "text",
    bridge_cfg_scale: float = 0.0,
    audio_bridge_cfg_scale: float | None = None,
    exact_euler_steps: bool | None = None,
    model_dtype: torch.dtype | None = None,
    return_trace: bool = False,
    video_given: torch.Tensor | None = None,
    audio_given: torch.Tensor | None = None,
) -> SampleResult:
    """Run the MOVA sampling loop from given noise.

    Guidance modes:

    * ``"text"`` (the released pipeline): ``v = neg + s * (pos - neg)`` with ``s = cfg_scale`` for video and
      ``audio_cfg_scale`` for audio. Two model passes per step, or one when both scales are 1 (then
      ``context_neg`` is not needed and ``v = pos``).
    * ``"dual"`` (the paper's dual CFG, not in the released code): text CFG plus a cross-modal term from a
      pass with the bridge disabled, ``v = v_uncond + s_text * (v_cond - v_uncond) + s_bridge * (v_cond -
      v_cond_nobridge)``. Costs **3 passes per step** (2 when the text scales are 1); the denoiser must
      accept ``use_bridge=False``.

    Args:
        denoiser: A `MovaDualTower` (or anything with its forward signature, see the module docstring).
        scheduler: Provides the Euler steps and the expert per step.
        video_noise: Initial video latent [B, C, T', H', W'] (t = 1000), float32.
        audio_noise: Initial audio latent [B, Ca, L], float32.
        y: Video conditioning [B, 4 + C, T', H', W'] (see `first_frame_condition`).
        context_pos: Prompt text states [B or 1, Lt, Dt].
        context_neg: Negative-prompt text states [B or 1, Lt, Dt]; required when a text CFG scale is not 1.
        num_steps: Number of sampling steps.
        cfg_scale: Text guidance scale for video (and for audio unless `audio_cfg_scale` is given).
        audio_cfg_scale: Text guidance scale for audio; None uses `cfg_scale`.
        video_fps: Frame rate; sets the bridge RoPE scale.
        batch_cfg: Evaluate positive and negative context in one batch-2B forward (faster, same result up to
            summation order, about 1e-5); False runs them as two batch-B passes, as upstream does.
        callback: Called after each update as ``callback(step, video_latents, audio_latents)``.
        boundary_timestep: Expert switch timestep (900 for the release).
        guidance: ``"text"`` or ``"dual"``.
        bridge_cfg_scale: Cross-modal guidance scale for video (``"dual"`` only).
        audio_bridge_cfg_scale: Cross-modal scale for audio; None uses `bridge_cfg_scale`.
        exact_euler_steps: Override the scheduler's sigma lookup mode (see `FlowMatchScheduler.euler_steps`).
        model_dtype: Cast the model inputs (not the timesteps) to this dtype; outputs are cast back to
            float32.
        return_trace: Keep a per-step `StepTrace` (clones of every velocity and latent).
        video_given: Clean video latents [B, C, T', H', W'] held at t = 0 (v2a); replaces ``video_noise``.
        audio_given: Clean audio latents [B, Ca, L] held at t = 0 (a2v); replaces ``audio_noise``.

    Returns:
        `SampleResult` with the final float32 latents (and the trace when asked).
    """
    _check_inputs(video_noise, audio_noise, y, context_pos, context_neg)
    for name, given, noise in (
        ("video_given", video_given, video_noise),
        ("audio_given", audio_given, audio_noise),
    ):
        if given is not None and given.shape != noise.shape:
            raise ValueError(f"{name} shape {tuple(given.shape)} != noise shape {tuple(noise.shape)}")
    if video_given is not None and audio_given is not None:
        raise ValueError("video_given and audio_given together leave nothing to generate")
    if guidance not in ("text", "dual"):
        raise ValueError(f"guidance must be 'text' or 'dual', got {guidance!r}")
    audio_cfg_scale = cfg_scale if audio_cfg_scale is None else audio_cfg_scale
    audio_bridge_cfg_scale = bridge_cfg_scale if audio_bridge_cfg_scale is None else audio_bridge_cfg_scale
    need_neg = cfg_scale != 1.0 or audio_cfg_scale != 1.0
    need_nobridge = guidance == "dual" and (bridge_cfg_scale != 0.0 or audio_bridge_cfg_scale != 0.0)
    if need_neg and context_neg is None:
        raise ValueError(
            f"cfg_scale={cfg_scale}, audio_cfg_scale={audio_cfg_scale} need context_neg (the negative "
            "prompt's text states); pass it, or set both scales to 1.0 for a single pass per step"
        )

    b = video_noise.shape[0]
    context_pos = context_pos.expand(b, -1, -1)
    if context_neg is not None:
        context_neg = context_neg.expand(b, -1, -1)
    batched = batch_cfg and need_neg and context_neg is not None and context_neg.shape == context_pos.shape
    if batch_cfg and need_neg and not batched:
        logger.info("context_pos and context_neg differ in shape; running CFG as two passes")

    steps = scheduler.euler_steps(num_steps, boundary_timestep=boundary_timestep, exact=exact_euler_steps)
    passes = 1 + int(need_neg) + int(need_nobridge)
    logger.info(
        "sampling %d steps, cfg %.3g/%.3g, %s guidance, %d pass(es) per step", num_steps, cfg_scale,
        audio_cfg_scale, guidance, passes,
    )  # fmt: skip
    x = (video_noise if video_given is None else video_given).to(torch.float32).clone()
    a = (audio_noise if audio_given is None else audio_given).to(torch.float32).clone()
    video_held, audio_held = video_given is not None, audio_given is not None
    y_in = torch.cat([y, y]) if batched else y
    ctx_in = torch.cat([context_pos, context_neg]) if batched else context_pos
    trace: list[StepTrace] | None = [] if return_trace else None

    for step in steps:
        common = dict(
            t_from=step.t_from, video_fps=video_fps, expert=step.expert, model_dtype=model_dtype,
            video_held=video_held, audio_held=audio_held,
        )  # fmt: skip
        vneg = aneg = vnb = anb = None
        if batched:
            x2, a2 = torch.cat([x, x]), torch.cat([a, a])
            vv, av = _forward(denoiser, x2, y_in, a2, ctx_in, use_bridge=True, **common)
            (vpos, vneg), (apos, aneg) = vv.chunk(2), av.chunk(2)
        else:
            vpos, apos = _forward(denoiser, x, y, a, context_pos, use_bridge=True, **common)
            if need_neg:
                vneg, aneg = _forward(denoiser, x, y, a, context_neg, use_bridge=True, **common)
        if need_nobridge:
            vnb, anb = _forward(denoiser, x, y, a, context_pos, use_bridge=False, **common)

        v_video = _guide(vpos, vneg, vnb, cfg_scale, bridge_cfg_scale)
        v_audio = _guide(apos, aneg, anb, audio_cfg_scale, audio_bridge_cfg_scale)
        if not video_held:
            x = x + v_video * step.euler_factor
        if not audio_held:
            a = a + v_audio * step.euler_factor

        if trace is not None:
            trace.append(
                StepTrace(
                    step=step,
                    model_passes=passes,
                    video_velocity=v_video.clone(),
                    audio_velocity=v_audio.clone(),
                    video_velocity_pos=vpos.clone(),
                    audio_velocity_pos=apos.clone(),
                    video_velocity_neg=None if vneg is None else vneg.clone(),
                    audio_velocity_neg=None if aneg is None else aneg.clone(),
                    video_velocity_nobridge=vnb,
                    audio_velocity_nobridge=anb,
                    video_latents=x.clone(),
                    audio_latents=a.clone(),
                )
            )
        if callback is not None:
            callback(step, x, a)
        logger.debug("step %d/%d t=%.2f expert=%s", step.index + 1, len(steps), step.t_from, step.expert)

    return SampleResult(video_latents=x, audio_latents=a, steps=steps, trace=trace)
