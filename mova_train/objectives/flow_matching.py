"""Flow-matching training objective of MOVA (docs/model.md §7), as small pure functions.

docs/model.md §7.1: ``x_sigma = (1 - sigma) * x0 + sigma * eps``, the model sees ``t = 1000 * sigma``
and regresses the velocity ``eps - x0``. Timesteps are drawn as **indices into the shifted 1000-entry
training grid** of the :class:`~mova_train.schedulers.flow_match.FlowMatchScheduler` (uniform over the index grid,
as upstream; docs/model.md §7.3), one per sample (upstream draws one per batch).

Expert routing (the two video experts share the audio tower and the bridge):

* ``"alternate"`` (upstream after PR #32): even optimizer steps train ``video_dit`` on indices
  ``[0, boundary)`` (t >= 900), odd steps ``video_dit_2`` on ``[boundary, 1)``. All micro-batches of one
  optimizer step use the same expert because the step counter is the optimizer step.
* ``"by_timestep"``: one expert per step, drawn with probability equal to its share of the index range
  (``boundary`` for ``video_dit``), then t is drawn inside that expert's range. The marginal t density equals
  uniform over the whole grid, and each step still runs a single expert (one forward, no batch split).
* ``"single"``: only ``expert`` trains, always on its own t range (a run that fine-tunes one expert).

Losses are computed in float32 whatever the activation dtype (upstream's bf16 targets are a pitfall we avoid).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from mova_train.objectives.modes import CONDITIONING_MODES, TRAINED_STREAMS, ModeMix, no_frame_condition
from mova_train.schedulers.flow_match import FlowMatchScheduler

log = logging.getLogger(__name__)

__all__ = [
    "EXPERT_MODES",
    "ExpertChoice",
    "ExpertSelector",
    "FlowMatchingObjective",
    "LossOutput",
    "TimestepSampler",
    "add_noise",
    "caption_dropout",
    "masked_mse",
    "sample_timestep_indices",
    "velocity_target",
]

HIGH_NOISE_EXPERT = "video_dit"
LOW_NOISE_EXPERT = "video_dit_2"
EXPERT_MODES = ("alternate", "by_timestep", "single")


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _uniform(batch: int, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(batch, generator=generator, dtype=torch.float64, device=_gen_device(generator))


def _index_range(low: float, high: float, num_train: int) -> tuple[int, int]:
    """Inclusive index bounds ``[int(N * low), int(N * high) - 1]`` (upstream's clamp)."""
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"timestep range must satisfy 0 <= low < high <= 1, got low={low}, high={high}")
    lo, hi = int(num_train * low), int(num_train * high) - 1
    if hi < lo:
        raise ValueError(f"timestep range [{low}, {high}) holds no index of a {num_train}-entry grid")
    return lo, hi


def sample_timestep_indices(
    batch: int, generator: torch.Generator | None, low: float = 0.0, high: float = 1.0, num_train: int = 1000
) -> torch.Tensor:
    """Uniform indices into the training grid, one per sample (upstream ``_sample_timestep_id``).

    ``u ~ U(low, high)``, ``id = floor(num_train * u)`` clamped to ``[int(num_train*low), int(num_train*high)-1]``.

    Args:
        batch: number of samples B.
        generator: CPU generator (None: the global RNG).
        low: lower bound of the index fraction (0 = highest noise, t = 1000).
        high: upper bound of the index fraction.
        num_train: size of the training grid.

    Returns:
        int64 [B] indices on the CPU.
    """
    lo, hi = _index_range(low, high, num_train)
    u = low + (high - low) * _uniform(batch, generator)
    return torch.floor(u * num_train).long().clamp_(lo, hi)


class TimestepSampler:
    """Draws training-grid indices: ``"uniform"`` over the index grid (upstream) or ``"logit_normal"``.

    For ``"logit_normal"``, ``u = sigmoid(N(mean, std))`` in (0, 1) is mapped linearly onto the allowed index
    fraction ``[low, high)`` (so an expert's range keeps the logit-normal shape inside it).

    Args:
        kind: ``"uniform"`` or ``"logit_normal"``.
        logit_mean: mean of the normal before the sigmoid.
        logit_std: standard deviation of the normal before the sigmoid.
    """

    KINDS = ("uniform", "logit_normal")

    def __init__(self, kind: str = "uniform", logit_mean: float = 0.0, logit_std: float = 1.0) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"TimestepSampler.kind must be one of {self.KINDS}, got {kind!r}")
        if logit_std <= 0:
            raise ValueError(f"TimestepSampler.logit_std must be > 0, got {logit_std}")
        self.kind, self.logit_mean, self.logit_std = kind, float(logit_mean), float(logit_std)

    def __call__(
        self,
        batch: int,
        generator: torch.Generator | None,
        low: float = 0.0,
        high: float = 1.0,
        num_train: int = 1000,
    ) -> torch.Tensor:
        """int64 [B] indices in ``[int(N*low), int(N*high) - 1]`` (see :func:`sample_timestep_indices`)."""
        if self.kind == "uniform":
            return sample_timestep_indices(batch, generator, low, high, num_train)
        lo, hi = _index_range(low, high, num_train)
        z = torch.randn(batch, generator=generator, dtype=torch.float64, device=_gen_device(generator))
        z = z * self.logit_std + self.logit_mean
        u = low + (high - low) * torch.sigmoid(z)
        return torch.floor(u * num_train).long().clamp_(lo, hi)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """``x_sigma = (1 - sigma) * x0 + sigma * noise`` with a per-sample sigma.

    Args:
        x0: clean latents ``[B, ...]``.
        noise: standard normal noise, same shape.
        sigma: ``[B]`` (or a scalar) noise level in [0, 1].

    Returns:
        noisy latents ``[B, ...]`` in float32.
    """
    s = sigma.to(device=x0.device, dtype=torch.float32)
    if s.dim() == 1:
        s = s.view(-1, *([1] * (x0.dim() - 1)))
    return (1.0 - s) * x0.float() + s * noise.float()


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target ``noise - x0`` (float32), same shape as the inputs."""
    return noise.float() - x0.float()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample mean squared error in float32.

    Args:
        pred: ``[B, ...]`` prediction (any float dtype).
        target: ``[B, ...]`` target.
        mask: optional element mask broadcastable to ``pred`` (True/1 = counted), e.g. valid audio frames.

    Returns:
        ``[B]`` mean over each sample's counted elements (0 for a sample with none).
    """
    if pred.shape != target.shape:
        raise ValueError(f"masked_mse: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    err = (pred.float() - target.float()).square()
    if mask is None:
        return err.flatten(1).mean(dim=1)
    m = mask.to(device=err.device, dtype=torch.float32).expand_as(err)
    return (err * m).flatten(1).sum(dim=1) / m.flatten(1).sum(dim=1).clamp_min(1.0)


def caption_dropout(
    context: torch.Tensor,
    p: float,
    generator: torch.Generator | None,
    null_context: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the text context of a random subset of samples by the unconditional context.

    Upstream samples classifier-free guidance with the *encoded* negative/empty prompt, which is not all
    zeros (UMT5 writes an ``</s>`` row). Pass it as ``null_context`` when a text encoder is available; in
    cached-latent mode, where no encoder runs, the default is all-zero rows (a zero context).

    Args:
        context: ``[B, Lt, D]`` text states.
        p: drop probability per sample.
        generator: generator (its device is where the draw happens).
        null_context: optional ``[Lt, D]`` or ``[1, Lt, D]`` unconditional context.

    Returns:
        (context ``[B, Lt, D]`` with dropped rows replaced, dropped mask bool ``[B]`` on the generator's device).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"caption dropout probability must be in [0, 1], got {p}")
    batch = context.shape[0]
    dropped = _uniform(batch, generator) < p
    if not bool(dropped.any()):
        return context, dropped
    if null_context is None:
        null = torch.zeros_like(context[:1])
    else:
        null = null_context.to(device=context.device, dtype=context.dtype).reshape(1, *context.shape[1:])
    keep = dropped.to(context.device).view(-1, 1, 1)
    return torch.where(keep, null, context), dropped


@dataclass(frozen=True)
class ExpertChoice:
    """The video expert of one step and its index-fraction range ``[low, high)``."""

    expert: str
    low: float
    high: float


class ExpertSelector:
    """Picks the video expert and its timestep range per optimizer step (see the module docstring).

    Args:
        mode: ``"alternate"``, ``"by_timestep"`` or ``"single"``.
        boundary: index fraction where ``video_dit_2`` takes over (0.359 for the release grid).
        expert: the expert trained in ``"single"`` mode.
    """

    def __init__(self, mode: str = "alternate", boundary: float = 0.359, expert: str | None = None) -> None:
        if mode not in EXPERT_MODES:
            raise ValueError(f"expert mode must be one of {EXPERT_MODES}, got {mode!r}")
        if not 0.0 < boundary < 1.0:
            raise ValueError(f"expert boundary must be in (0, 1), got {boundary}")
        if mode == "single" and expert not in (HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT):
            raise ValueError(
                f"expert mode 'single' needs expert='video_dit' or 'video_dit_2', got {expert!r}"
            )
        self.mode, self.boundary, self.expert = mode, float(boundary), expert

    @property
    def experts(self) -> tuple[str, ...]:
        """The experts this selector can return (the model must hold all of them)."""
        if self.mode == "single":
            return (self.expert,)  # type: ignore[return-value]
        return (HIGH_NOISE_EXPERT, LOW_NOISE_EXPERT)

    def range_of(self, expert: str) -> ExpertChoice:
        """The fixed index range of ``expert``."""
        if expert == HIGH_NOISE_EXPERT:
            return ExpertChoice(expert, 0.0, self.boundary)
        return ExpertChoice(expert, self.boundary, 1.0)

    def check_low_noise_share(self, q: float) -> None:
        """Refuse a share ``q`` of samples that need the low-noise expert (v2a) this routing cannot give."""
        if q <= 0.0:
            return
        if self.mode == "single" and self.expert == HIGH_NOISE_EXPERT:
            raise ValueError(
                "objective.mode has v2a (video at t = 0, run by the low-noise expert video_dit_2), but "
                "expert_mode=single trains only video_dit; use expert=video_dit_2 or drop v2a"
            )
        if self.mode == "alternate" and 0.5 < q < 1.0:
            raise ValueError(
                f"objective.mode: a v2a share of {q} needs more than the half of the steps that "
                "expert_mode=alternate gives the low-noise expert; use expert_mode=by_timestep"
            )

    def low_noise_share(self, q: float = 0.0) -> float:
        """Probability that a step runs the low-noise expert when a share ``q`` of samples needs it."""
        if self.mode == "single":
            return 1.0 if self.expert == LOW_NOISE_EXPERT else 0.0
        if q >= 1.0:
            return 1.0
        if self.mode == "alternate":
            return 0.5
        return 1.0 - self.boundary * (1.0 - q)

    def __call__(
        self, step: int, generator: torch.Generator | None, low_noise_share: float = 0.0
    ) -> ExpertChoice:
        """Expert and range for optimizer step ``step``.

        Args:
            step: optimizer step.
            generator: draws the expert in ``"by_timestep"`` mode.
            low_noise_share: share of samples that need the low-noise expert whatever their timestep (v2a:
                the video is clean); ``"by_timestep"`` then picks the high-noise expert with probability
                ``boundary * (1 - share)``, and a share of 1 always picks the low-noise expert.
        """
        if self.mode == "single":
            return self.range_of(self.expert)  # type: ignore[arg-type]
        if low_noise_share >= 1.0:
            return self.range_of(LOW_NOISE_EXPERT)
        if self.mode == "alternate":
            return self.range_of(HIGH_NOISE_EXPERT if step % 2 == 0 else LOW_NOISE_EXPERT)
        high = bool(_uniform(1, generator)[0] < self.boundary * (1.0 - low_noise_share))
        return self.range_of(HIGH_NOISE_EXPERT if high else LOW_NOISE_EXPERT)


@dataclass
class LossOutput:
    """Result of one objective evaluation.

    Attributes:
        loss: weighted total, scalar float32 (what is back-propagated).
        loss_video: mean video MSE over the samples whose video is trained (0 when none), scalar.
        loss_audio: mean audio MSE over the samples whose audio is trained and present (0 when none), scalar.
        timesteps: ``[B]`` video timesteps (``1000 * sigma``; 0 for a clean video) float32.
        audio_timesteps: ``[B]`` audio timesteps float32 (0 for a clean audio).
        expert: the video expert that ran.
        per_sample_video: ``[B]`` detached per-sample video MSE (0 where the video is not trained).
        per_sample_audio: ``[B]`` detached per-sample audio MSE (0 where audio is masked or not trained).
        audio_mask: ``[B]`` bool, samples whose audio counted.
        dropped_captions: ``[B]`` bool, samples whose caption was dropped.
        modes: the conditioning mode of each sample (see :mod:`mova_train.objectives.modes`).
        video_weight: ``[B]`` float, 1 where the video loss counts.
    """

    loss: torch.Tensor
    loss_video: torch.Tensor
    loss_audio: torch.Tensor
    timesteps: torch.Tensor
    audio_timesteps: torch.Tensor
    expert: str
    per_sample_video: torch.Tensor
    per_sample_audio: torch.Tensor
    audio_mask: torch.Tensor
    dropped_captions: torch.Tensor
    modes: tuple[str, ...] = ()
    video_weight: torch.Tensor | None = None

    def mode_losses(self) -> dict[str, tuple[torch.Tensor, int]]:
        """``{"loss_<mode>_<stream>": (mean loss, sample count)}`` for every mode present and stream it trains."""
        out: dict[str, tuple[torch.Tensor, int]] = {}
        batch = self.per_sample_video.shape[0]
        video_w = self.video_weight if self.video_weight is not None else torch.ones(batch)
        weights = {"video": video_w.to(self.per_sample_video.device) > 0, "audio": self.audio_mask}
        per = {"video": self.per_sample_video, "audio": self.per_sample_audio}
        for mode in dict.fromkeys(self.modes):
            in_mode = torch.tensor([m == mode for m in self.modes], device=self.per_sample_video.device)
            for stream in TRAINED_STREAMS[mode]:
                sel = in_mode & weights[stream].to(in_mode.device)
                n = int(sel.sum())
                if n:
                    out[f"loss_{mode}_{stream}"] = (per[stream][sel].mean(), n)
        return out


def _weighted_mean(per: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (per * weight).sum() / weight.sum().clamp_min(1.0)


class FlowMatchingObjective:
    """Flow-matching loss of the dual tower, bound to a scheduler's training grid.

    Args:
        scheduler: the :class:`FlowMatchScheduler` whose training grid is sampled (default: release config).
        video_weight: weight of the video loss.
        audio_weight: weight of the audio loss.
        independent_audio_timesteps: draw the audio t independently over the whole grid (upstream: audio t =
            video t).
        expert_mode: ``"alternate"``, ``"by_timestep"`` or ``"single"``.
        expert: expert of ``"single"`` mode.
        boundary_timestep: expert switch timestep (900 in the release) turned into an index fraction by
            ``scheduler.training_boundary``.
        caption_dropout: probability of replacing a sample's text context by the unconditional one.
        timestep_sampler: index sampler (default uniform over the index grid).
        mode: conditioning mode or per-sample mix (see :mod:`mova_train.objectives.modes`); ``"i2av"`` is the
            release training.
        a2v_first_frame: share of ``a2v`` samples that keep the first-frame condition.
    """

    def __init__(
        self,
        scheduler: FlowMatchScheduler | None = None,
        video_weight: float = 1.0,
        audio_weight: float = 1.0,
        independent_audio_timesteps: bool = False,
        expert_mode: str = "alternate",
        expert: str | None = None,
        boundary_timestep: float = 900.0,
        caption_dropout: float = 0.0,
        timestep_sampler: TimestepSampler | None = None,
        mode: str | Mapping[str, float] = "i2av",
        a2v_first_frame: float = 0.5,
    ) -> None:
        self.scheduler = scheduler if scheduler is not None else FlowMatchScheduler()
        if video_weight < 0 or audio_weight < 0 or video_weight + audio_weight == 0:
            raise ValueError(
                f"loss weights must be >= 0 and not both 0, got video_weight={video_weight}, "
                f"audio_weight={audio_weight}"
            )
        if not 0.0 <= caption_dropout <= 1.0:
            raise ValueError(f"caption_dropout must be in [0, 1], got {caption_dropout}")
        self.video_weight, self.audio_weight = float(video_weight), float(audio_weight)
        self.independent_audio_timesteps = independent_audio_timesteps
        self.boundary = self.scheduler.training_boundary(boundary_timestep)
        self.selector = ExpertSelector(expert_mode, self.boundary, expert)
        self.caption_dropout = float(caption_dropout)
        self.sampler = timestep_sampler or TimestepSampler()
        self.mix = ModeMix(mode, a2v_first_frame)
        self.selector.check_low_noise_share(self.mix.v2a_share)
        trained = [s for s, w in (("video", video_weight), ("audio", audio_weight)) if w > 0]
        if not any(self.mix.trains(s) for s in trained):
            raise ValueError(
                f"objective.mode {self.mix.probs} trains no stream with a positive loss weight "
                f"(video_weight={video_weight}, audio_weight={audio_weight})"
            )
        self.null_context: torch.Tensor | None = None

    @property
    def num_train(self) -> int:
        """Size of the training grid."""
        return self.scheduler.num_train_timesteps

    @property
    def experts(self) -> tuple[str, ...]:
        """The video experts this objective can run (the model must hold all of them)."""
        if self.mix.v2a_share >= 1.0:
            return (LOW_NOISE_EXPERT,)
        return self.selector.experts

    @property
    def needs_empty_latents(self) -> bool:
        """Whether batches must carry ``empty_latents`` (some sample can get the no-frame condition)."""
        return self.mix.uses_no_frame

    def sigmas_of(self, indices: torch.Tensor) -> torch.Tensor:
        """float32 sigmas ``[B]`` of training-grid indices (on the indices' device)."""
        return self.scheduler.train_sigmas.to(indices.device)[indices]

    def _condition(
        self, batch_latents: dict[str, torch.Tensor], modes: torch.Tensor, generator: torch.Generator | None
    ) -> torch.Tensor:
        """The video conditioning ``y`` per sample: the batch's first-frame condition or the no-frame one."""
        cond = batch_latents["cond"]
        if not self.mix.uses_no_frame:
            return cond
        no_frame = modes == CONDITIONING_MODES.index("t2av")
        if "a2v" in self.mix.probs and self.mix.a2v_first_frame < 1.0:
            drop = _uniform(modes.shape[0], generator) >= self.mix.a2v_first_frame
            no_frame |= (modes == CONDITIONING_MODES.index("a2v")) & drop
        if "empty_latents" not in batch_latents:
            raise KeyError(
                f"objective.mode {self.mix.probs} gives some samples the no-frame condition, which needs "
                "`empty_latents` (the latent of an all-zero clip) in the batch: raw training computes it with "
                "the video VAE; a latent cache made before it stored them must be re-encoded "
                "(`python -m data_tools.encode ... --resume` only adds them)"
            )
        y = no_frame_condition(batch_latents["empty_latents"].to(device=cond.device, dtype=cond.dtype))
        keep = no_frame.to(cond.device).view(-1, *([1] * (cond.dim() - 1)))
        return torch.where(keep, y, cond)

    def __call__(
        self,
        model: Callable[..., tuple[torch.Tensor, torch.Tensor]] | nn.Module,
        batch_latents: dict[str, torch.Tensor],
        step: int,
        generator: torch.Generator | None,
        video_fps: float = 24.0,
    ) -> LossOutput:
        """Noise the latents, run the dual tower and compute the weighted loss.

        Args:
            model: a ``MovaDualTower`` (or any callable with its forward signature).
            batch_latents: ``video_latents [B, C, T', H', W']``, ``cond [B, 4 + C, T', H', W']``,
                ``audio_latents [B, Ca, L]``, ``context [B, Lt, D]``, optional ``audio_mask`` bool ``[B]``,
                and ``empty_latents [B, C, T', H', W']`` when a mode uses the no-frame condition.
            step: optimizer step (drives the expert alternation).
            generator: generator for timesteps, noise, caption dropout and modes (the only randomness); noise
                is drawn on the generator's device and moved to the latents' device.
            video_fps: pixel frame rate of the clips.

        Returns:
            a :class:`LossOutput`.
        """
        for key in ("video_latents", "cond", "audio_latents", "context"):
            if key not in batch_latents:
                raise KeyError(
                    f"FlowMatchingObjective: batch_latents lacks {key!r} (has {sorted(batch_latents)})"
                )
        x0_v, x0_a = batch_latents["video_latents"], batch_latents["audio_latents"]
        batch, device = x0_v.shape[0], x0_v.device
        q = self.mix.v2a_share
        choice = self.selector(step, generator, q)
        idx_v = self.sampler(batch, generator, choice.low, choice.high, self.num_train)
        if self.independent_audio_timesteps:
            idx_a = self.sampler(batch, generator, 0.0, 1.0, self.num_train)
        else:
            idx_a = idx_v
        sig_v, sig_a = self.sigmas_of(idx_v), self.sigmas_of(idx_a)
        gdev = _gen_device(generator)
        noise_v = torch.randn(x0_v.shape, generator=generator, dtype=torch.float32, device=gdev).to(device)
        noise_a = torch.randn(x0_a.shape, generator=generator, dtype=torch.float32, device=gdev).to(device)
        context, dropped = caption_dropout(
            batch_latents["context"], self.caption_dropout, generator, self.null_context
        )
        # Conditioning modes (nothing is drawn for a single mode).
        low_share = self.selector.low_noise_share(q)
        modes = self.mix.draw(batch, generator, choice.expert == LOW_NOISE_EXPERT, low_share)
        clean_v = modes == CONDITIONING_MODES.index("v2a")
        clean_a = modes == CONDITIONING_MODES.index("a2v")
        if q > 0.0 and not self.independent_audio_timesteps:
            # a v2a sample's audio t is not tied to a clean video: draw it over the whole grid
            idx_full = self.sampler(batch, generator, 0.0, 1.0, self.num_train)
            sig_a = torch.where(clean_v, self.sigmas_of(idx_full), sig_a)
        sig_v = torch.where(clean_v, torch.zeros_like(sig_v), sig_v)
        sig_a = torch.where(clean_a, torch.zeros_like(sig_a), sig_a)
        cond = self._condition(batch_latents, modes, generator)
        dtype = cond.dtype
        clean_v_d, clean_a_d = clean_v.to(device), clean_a.to(device)
        xt_v = torch.where(clean_v_d.view(-1, 1, 1, 1, 1), x0_v.float(), add_noise(x0_v, noise_v, sig_v))
        xt_a = torch.where(clean_a_d.view(-1, 1, 1), x0_a.float(), add_noise(x0_a, noise_a, sig_a))
        t_v = (sig_v * self.num_train).to(device)
        t_a = (sig_a * self.num_train).to(device)
        pred_v, pred_a = model(
            xt_v.to(dtype),
            cond,
            xt_a.to(dtype),
            context,
            t_v,
            t_a,
            video_fps=video_fps,
            expert=choice.expert,
        )
        per_v = masked_mse(pred_v, velocity_target(x0_v, noise_v))
        per_a = masked_mse(pred_a, velocity_target(x0_a, noise_a))
        audio_mask = batch_latents.get("audio_mask")
        if audio_mask is None:
            audio_mask = torch.ones(batch, dtype=torch.bool, device=device)
        audio_mask = audio_mask.to(device=device, dtype=torch.bool).view(-1) & ~clean_a_d
        w_v = (~clean_v_d).float()
        loss_v = per_v.mean() if self.mix.single == "i2av" else _weighted_mean(per_v, w_v)
        w_a = audio_mask.float()
        loss_a = _weighted_mean(per_a, w_a)
        loss = self.video_weight * loss_v + self.audio_weight * loss_a
        return LossOutput(
            loss=loss,
            loss_video=loss_v,
            loss_audio=loss_a,
            timesteps=t_v,
            audio_timesteps=t_a,
            expert=choice.expert,
            per_sample_video=(per_v * w_v).detach(),
            per_sample_audio=(per_a * w_a).detach(),
            audio_mask=audio_mask,
            dropped_captions=dropped,
            modes=tuple(CONDITIONING_MODES[i] for i in modes.tolist()),
            video_weight=w_v,
        )
