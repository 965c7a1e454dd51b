"""Sampling during training: every N optimizer steps, fixed requests through the same `MovaGenerator`.

Each sample is written as ``<output_dir>/step<step:07d>/<request id>.mp4`` + ``.json`` sidecar, logged to every
attached `WandbLogger` as ``wandb.Video(path, format="mp4")`` (from the file, so its audio track is kept and no
moviepy is needed; docs/environment.md gotcha 5), and summarized as latent statistics through every logger's
``log_metrics``, with the weight-free A/V sync audit of each decoded sample (``val/av_offset_ms``,
``val/av_confidence``; `mova_train.data.av_sync`).

Only global rank 0 samples by default (``split_by_rank=False``); with ``split_by_rank=True`` each rank samples
its share of the requests (DDP, where every rank holds the full model). Under sharded FSDP2 every rank runs
every request in lockstep (a forward needs all shards) and rank 0 writes and logs. The
denoiser is the LightningModule's ``model`` (LoRA layers active), switched to eval mode and back.

Modes: with ``modes="trained"`` (default) every request is sampled in each conditioning mode the run trains
(`objective.mode`; see `validation_media`), with the first frame, audio or video a request lacks taken from the
first training clip. Sidecars and W&B captions carry the mode.

Leakage check (``leakage_check=True``, LoRA runs): the same seeds are rendered again with the audio-side adapter
groups (audio tower, bridge video->audio) off, then with the video-side groups (video towers, bridge
audio->video) off; ``val_leakage/<i>_<mode>_<audio|video>_side_off_<video|audio>_change`` is the relative latent
change ``||x_off - x|| / ||x||`` of each stream. For a video-only adapter, switching its video side off moves the
video and should leave the audio in place: an audio change there is leakage, shown before anyone listens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import WandbLogger

from mova_train.callbacks.ema import ema_swapped
from mova_train.callbacks.sample_writer import write_sample
from mova_train.callbacks.validation_media import NEEDS, ClipMedia, request_in_mode, write_clip_media
from mova_train.data.av_sync import sample_offset_metrics
from mova_train.sampling.generator import GeneratedSample, MovaGenerator
from mova_train.sampling.requests import Request, SamplingSettings, load_requests, make_request
from mova_train.schedulers.flow_match import FlowMatchScheduler

logger = logging.getLogger(__name__)

__all__ = ["ValidationSampling"]


class ValidationSampling(Callback):
    """Sample fixed requests every ``every_n_steps`` optimizer steps.

    Args:
        requests: A requests file, or a list of request mappings (each at least ``{"prompt": ...}``).
        every_n_steps: Sampling period in optimizer steps (global_step); 0: only at the end of training.
        sampling: Defaults of the request fields (CPU-friendly values are the caller's job).
        output_dir: Where the samples go (default: ``<trainer.default_root_dir>/samples``).
        encoders: A `MovaEncoders` with ``video_vae``, ``audio_vae`` and ``text_encoder``; default: the module's
            ``encoders`` (raw-mode training). Required with cached training.
        scheduler: Flow-matching scheduler (default: the release config).
        boundary_timestep: Expert switch of the two-expert sampler (None: the generator's, 900).
        split_by_rank: Each rank samples its share (else rank 0 samples all).
        at_train_end: Also sample after the last step.
        batch_cfg: Positive and negative prompts in one forward.
        spatial_multiple: Height/width multiple of the requests.
        modes: ``"trained"`` (the modes of the module's objective), a list of modes, or None (each request in
            the mode its own fields give).
        first_frame_mode: Condition of requests without an image (``"none"`` or ``"white"``).
        leakage_check: Also render with the audio-side and then the video-side LoRA groups off and log how much
            each stream moves.
    """

    def __init__(
        self,
        requests: str | Path | Sequence[dict[str, Any]],
        every_n_steps: int = 500,
        sampling: SamplingSettings | dict[str, Any] | None = None,
        output_dir: str | Path | None = None,
        encoders: Any = None,
        scheduler: FlowMatchScheduler | None = None,
        boundary_timestep: float | None = None,
        split_by_rank: bool = False,
        at_train_end: bool = False,
        batch_cfg: bool = True,
        spatial_multiple: int = 16,
        modes: str | Sequence[str] | None = "trained",
        first_frame_mode: str = "none",
        leakage_check: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(modes, str) and modes != "trained":
            raise ValueError(
                f"ValidationSampling.modes must be 'trained', a list of modes or null, got {modes!r}"
            )
        if every_n_steps < 0 or (every_n_steps == 0 and not at_train_end):
            raise ValueError(
                f"ValidationSampling.every_n_steps must be >= 1 (or 0 with at_train_end=true), got {every_n_steps}"
            )
        settings = (
            sampling if isinstance(sampling, SamplingSettings) else SamplingSettings.from_dict(sampling)
        )
        if isinstance(requests, (str, Path)):
            self.requests = load_requests(requests, settings, spatial_multiple=spatial_multiple)
        else:
            self.requests = [
                make_request(dict(r), settings, source="ValidationSampling.requests", line=i + 1,
                             spatial_multiple=spatial_multiple)
                for i, r in enumerate(requests)
            ]  # fmt: skip
        if not self.requests:
            raise ValueError("ValidationSampling: no requests given")
        self.every_n_steps = int(every_n_steps)
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.encoders = encoders
        self.scheduler = scheduler if scheduler is not None else FlowMatchScheduler()
        self.boundary_timestep = boundary_timestep
        self.split_by_rank = split_by_rank
        self.at_train_end = at_train_end
        self.batch_cfg = batch_cfg
        self.spatial_multiple = spatial_multiple
        self.modes = modes if modes is None or isinstance(modes, str) else tuple(modes)
        self.first_frame_mode = first_frame_mode
        self.leakage_check = leakage_check
        self.written: list[Path] = []
        self._last_step = -1
        self._media: ClipMedia | None = None

    def _run_modes(self, pl_module: LightningModule) -> tuple[str, ...] | None:
        if self.modes != "trained":
            return self.modes  # type: ignore[return-value]
        mix = getattr(getattr(pl_module, "objective", None), "mix", None)
        return None if mix is None else mix.modes

    def _root(self, trainer: Trainer) -> Path:
        return self.output_dir or Path(trainer.default_root_dir) / "samples"

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Keep the first training clip as media for modes whose requests lack a first frame, audio or video."""
        modes = self._run_modes(pl_module)
        if self._media is not None or not modes or not isinstance(batch, dict):
            return
        if any(getattr(r, NEEDS[m]) is None for r in self.requests for m in modes if m in NEEDS):
            fps = self.requests[0].fps
            folder = self._root(trainer) / "media" / f"rank{trainer.global_rank}"
            codecs = None if "video" in batch else self._codecs(pl_module)  # cached clips are decoded
            self._media = write_clip_media(folder, batch, codecs, fps)

    def mode_requests(self, pl_module: LightningModule) -> list[Request]:
        """The requests of one validation round: each request in each mode of the run (see the class doc)."""
        modes = self._run_modes(pl_module)
        if not modes:
            return self.requests
        mix = getattr(getattr(pl_module, "objective", None), "mix", None)
        a2v_frame = mix is not None and mix.a2v_first_frame >= 1.0  # the run's a2v samples always keep theirs
        out = []
        for req in self.requests:
            for mode in modes:
                variant = request_in_mode(req, mode, self._media, a2v_frame, self.spatial_multiple)
                if variant is None:
                    logger.warning(
                        "validation request %s: no %s for mode %s yet; skipped", req.id, NEEDS[mode], mode
                    )
                else:
                    out.append(variant)
        return out

    def _codecs(self, pl_module: LightningModule) -> Any:
        enc = self.encoders if self.encoders is not None else getattr(pl_module, "encoders", None)
        missing = [n for n in ("video_vae", "audio_vae", "text_encoder") if getattr(enc, n, None) is None]
        if missing:
            raise ValueError(
                f"ValidationSampling needs a video VAE, an audio VAE and a text encoder; missing {missing}. "
                f"Pass encoders=... (e.g. mova_train.codecs.encoders.tiny_encoders) when training on cached latents"
            )
        return enc

    def _my_requests(self, trainer: Trainer, pl_module: LightningModule) -> list[Request]:
        reqs = self.mode_requests(pl_module)
        if _sharded(trainer):
            return reqs  # FSDP2: every rank takes part in every forward; rank 0 writes
        if self.split_by_rank:
            return reqs[trainer.global_rank :: trainer.world_size]
        return reqs if trainer.is_global_zero else []

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Sample when ``global_step`` reaches a multiple of ``every_n_steps`` (once per step)."""
        step = trainer.global_step
        every = self.every_n_steps
        if every and step > 0 and step % every == 0 and step != self._last_step:
            self._last_step = step
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Optionally sample after the last step."""
        if self.at_train_end and trainer.global_step != self._last_step:
            self._last_step = trainer.global_step
            self.run(trainer, pl_module)

    @torch.no_grad()
    def run(self, trainer: Trainer, pl_module: LightningModule) -> list[GeneratedSample]:
        """Sample this rank's requests now, write them and log them; returns the samples."""
        reqs = self._my_requests(trainer, pl_module)
        if not reqs:
            return []
        model = getattr(pl_module, "model", None)
        if model is None:
            raise ValueError("ValidationSampling: the LightningModule has no `model` (the dual tower)")
        enc = self._codecs(pl_module)
        was_training = model.training
        model.eval()
        leakage: dict[str, float] = {}
        with ema_swapped(pl_module):  # the EMA weights when the run keeps them (callbacks.ema)
            try:
                kw: dict[str, Any] = dict(batch_cfg=self.batch_cfg, first_frame_mode=self.first_frame_mode)
                if self.boundary_timestep is not None:
                    kw["boundary_timestep"] = float(self.boundary_timestep)
                generator = MovaGenerator(
                    model, self.scheduler, enc.video_vae, enc.audio_vae, enc.text_encoder, **kw
                )
                samples = generator.generate(reqs, device=pl_module.device)
                if self.leakage_check:
                    latents = MovaGenerator(
                        model,
                        self.scheduler,
                        enc.video_vae,
                        enc.audio_vae,
                        enc.text_encoder,
                        decode=False,
                        **kw,
                    )
                    leakage = _leakage(model, latents, reqs, samples, pl_module.device)
            finally:
                model.train(was_training)
        step = trainer.global_step
        if _sharded(trainer) and not trainer.is_global_zero:
            return samples
        out_dir = self._root(trainer) / f"step{step:07d}"
        paths = [
            write_sample(s, out_dir, settings={"source": "validation_sampling"}, extra={"global_step": step})
            for s in samples
        ]
        self.written.extend(paths)
        self._log(trainer, samples, paths, step, leakage)
        return samples

    def _log(
        self,
        trainer: Trainer,
        samples: list[GeneratedSample],
        paths: list[Path],
        step: int,
        leakage: dict[str, float] | None = None,
    ) -> None:
        metrics: dict[str, float] = dict(leakage or {})
        for i, s in enumerate(samples):
            metrics[f"val_samples/{i}_video_latent_std"] = float(s.video_latents.std())
            metrics[f"val_samples/{i}_audio_latent_std"] = float(s.audio_latents.std())
            metrics[f"val_samples/{i}_video_latent_mean"] = float(s.video_latents.mean())
            metrics[f"val_samples/{i}_audio_latent_mean"] = float(s.audio_latents.mean())
        metrics["val_samples/seconds_per_step"] = float(samples[0].timings.get("seconds_per_step", 0.0))
        metrics.update(
            sample_offset_metrics(samples)
        )  # A/V sync audit of the decoded samples (val/av_offset_ms)
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)
            if isinstance(lg, WandbLogger):
                import wandb

                media = {
                    f"val_samples/{i}": wandb.Video(
                        str(p), format="mp4", caption=f"[{s.request.mode}] {s.request.prompt[:200]}"
                    )
                    for i, (s, p) in enumerate(zip(samples, paths, strict=True))
                }
                lg.experiment.log({**media, "trainer/global_step": step})
        logger.info("validation samples at step %d: %s", step, ", ".join(p.name for p in paths))


def _relative_change(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm().clamp_min(1e-12))


def _leakage(
    model: Any, generator: MovaGenerator, reqs: list[Request], samples: list[GeneratedSample], device: Any
) -> dict[str, float]:
    """Relative latent change of each stream with the audio-side, then the video-side LoRA groups off."""
    from mova_train.models.lora import AUDIO_SIDE_GROUPS, VIDEO_SIDE_GROUPS, scaled_lora_groups

    out: dict[str, float] = {}
    for side, groups in (("audio", AUDIO_SIDE_GROUPS), ("video", VIDEO_SIDE_GROUPS)):
        with scaled_lora_groups(model, dict.fromkeys(groups, 0.0)):
            off = generator.generate(reqs, device=device)
        for i, (s, o) in enumerate(zip(samples, off, strict=True)):
            prefix = f"val_leakage/{i}_{s.request.mode}_{side}_side_off"
            out[f"{prefix}_video_change"] = _relative_change(o.video_latents, s.video_latents)
            out[f"{prefix}_audio_change"] = _relative_change(o.audio_latents, s.audio_latents)
    return out


def _sharded(trainer: Trainer) -> bool:
    """True under FSDP2 (``ModelParallelStrategy``): a forward on one rank alone would wait for its peers."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(trainer.strategy, ModelParallelStrategy) and trainer.world_size > 1
