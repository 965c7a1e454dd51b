"""The LightningModule of MOVA training: a thin shell over the model, the objective and the optimizer.

Randomness: every (micro-)step draws timesteps, noise and caption dropout from a fresh generator seeded by
``(seed, global rank, micro-step counter)``. The counter is the only RNG state; it is saved in checkpoints,
so a resumed run draws exactly what the uninterrupted run would have drawn, on every rank.

Checkpoints hold only what changes: the trainable parameters (LoRA and/or fully fine-tuned components), the
EMA copy (the ``ema`` callback's ``ema_weights.*`` buffers), the counter, plus what Lightning adds (optimizer,
scheduler, loops, datamodule state). The frozen base is rebuilt from its own source and never written
(``strict_loading = False``; every trainable key is checked on load).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn
from lightning.pytorch import LightningModule

from mova_train.callbacks.ema import EMA_PREFIX
from mova_train.codecs.encoders import MovaEncoders, latents_from_cached
from mova_train.lit.nonfinite import NonFiniteGuard, nonfinite_names
from mova_train.lit.optim import build_param_groups
from mova_train.models.compile import COMPILE_MODES, compile_blocks
from mova_train.models.lora import (
    LoraSpec,
    base_fingerprint,
    component_fingerprints,
    inject_lora,
    set_trainable,
)
from mova_train.models.lora_file import warm_start_lora
from mova_train.models.mova import MovaDualTower
from mova_train.objectives.flow_matching import FlowMatchingObjective, LossOutput

log = logging.getLogger(__name__)

__all__ = ["MovaLitModule"]

CKPT_KEY = "mova_train"


def _seed_for(seed: int, rank: int, counter: int) -> int:
    return (seed * 0x9E3779B1 + rank * 0x85EBCA77 + counter) % (2**63 - 1)


class MovaLitModule(LightningModule):
    """Flow-matching training of the MOVA dual tower (LoRA or full fine-tuning of chosen components).

    Args:
        model: the dual tower, or a zero-argument factory (called in ``configure_model``).
        objective: the flow-matching objective.
        optimizer: ``functools.partial`` taking the parameters (or parameter groups).
        lr_scheduler: ``functools.partial`` taking the optimizer; stepped once per optimizer step.
        lora: LoRA spec, or None for no LoRA.
        full_finetune: components whose base weights train.
        param_groups: component -> group options (``lr_scale``, ``weight_decay``, ...).
        encoders: frozen codecs for raw batches (None: batches carry latents).
        gradient_checkpointing: recompute DiT blocks and bridge layers in the backward pass.
        compile: ``"none"`` (eager) or ``"blocks"``: regional ``torch.compile`` of every DiT block and bridge
            conditioner, static shapes (:func:`~mova_train.models.compile.compile_blocks`), after LoRA injection.
        video_fps: pixel frame rate of the training clips (bridge time alignment).
        seed: base seed of the objective's randomness.
        timestep_buckets: number of equal t buckets for ``train/loss_t{k}``.
        max_nonfinite_steps: training steps that may be skipped for a non-finite batch or loss (counted as
            ``train/skipped_nonfinite``); one more stops the run with ``NonFiniteError``.
    """

    def __init__(
        self,
        model: MovaDualTower | Callable[[], MovaDualTower],
        objective: FlowMatchingObjective,
        optimizer: Callable[..., torch.optim.Optimizer],
        lr_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        lora: LoraSpec | None = None,
        full_finetune: Sequence[str] = (),
        param_groups: dict[str, dict[str, Any]] | None = None,
        encoders: MovaEncoders | None = None,
        gradient_checkpointing: bool = False,
        compile: str = "none",
        video_fps: float = 24.0,
        seed: int = 0,
        timestep_buckets: int = 4,
        max_nonfinite_steps: int = 10,
    ) -> None:
        super().__init__()
        if timestep_buckets < 1:
            raise ValueError(f"timestep_buckets must be >= 1, got {timestep_buckets}")
        if compile not in COMPILE_MODES:
            raise ValueError(f"module.compile={compile!r} unknown; choose one of {COMPILE_MODES}")
        self.strict_loading = False
        self.objective = objective
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.lora = lora
        self.full_finetune = list(full_finetune)
        self.param_groups = param_groups
        self.encoders = encoders
        self.gradient_checkpointing = gradient_checkpointing
        self.compile = compile
        self.video_fps = float(video_fps)
        self.seed = int(seed)
        self.timestep_buckets = int(timestep_buckets)
        self.micro_step = 0
        self.nonfinite = NonFiniteGuard(max_nonfinite_steps)
        self._val_sums = torch.zeros(4, dtype=torch.float64)
        self.trainable_names: list[str] = []
        self._fingerprint: str | None = None
        self.base_fingerprints: dict[str, str] = {}
        if isinstance(model, nn.Module):
            self.model: MovaDualTower | None = model
            self._model_factory = None
            self._prepare_model()
        else:
            self.model = None
            self._model_factory = model

    # --------------------------------------------------------------------------------------- model setup

    def configure_model(self) -> None:
        """Build the model from its factory (once), inject LoRA and set what trains."""
        if self.model is None:
            assert self._model_factory is not None
            self.model = self._model_factory()
            self._prepare_model()

    def _prepare_model(self) -> None:
        model = self.model
        assert model is not None
        for expert in self.objective.experts:
            model.expert(expert)  # raises a clear error if the expert this run trains is not loaded
        self.base_fingerprints = component_fingerprints(model)
        self._fingerprint = base_fingerprint(self.base_fingerprints)
        if self.lora is not None:
            inject_lora(model, self.lora)
            if self.lora.init_from:  # e.g. the second expert's run from the first one's file
                warm_start_lora(model, self.lora, self.base_fingerprints)
        set_trainable(model, self.lora, self.full_finetune)
        self.trainable_names = [f"model.{n}" for n, p in model.named_parameters() if p.requires_grad]
        if self.gradient_checkpointing:
            model.set_gradient_checkpointing(True)
        compile_blocks(model, self.compile)
        if self.encoders is not None:
            self.objective.null_context = self.encoders.null_context()
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in model.parameters())
        log.info("trainable parameters: %d of %d (%.3f%%)", n_train, n_all, 100.0 * n_train / max(1, n_all))

    @property
    def base_fingerprint(self) -> str:
        """Fingerprint of the base weights, taken before LoRA injection."""
        return self._fingerprint or ""

    # ------------------------------------------------------------------------------------------- steps

    def _generator(self, counter: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_seed_for(self.seed, self._data_rank(), counter))
        return gen

    def _data_rank(self) -> int:
        """The data-parallel rank: context-parallel ranks of one group share batch, noise and timesteps."""
        strategy = self._trainer.strategy if self._trainer is not None else None
        kwargs = getattr(strategy, "distributed_sampler_kwargs", None) or {}
        return int(kwargs.get("rank", self.global_rank))

    def latents(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The objective's latent dict from a raw (encoders) or cached batch."""
        if self.encoders is not None:
            return self.encoders.encode_batch(batch, empty_latents=self.objective.needs_empty_latents)
        return latents_from_cached(batch)

    def _step(
        self, batch: dict[str, Any], step: int, generator: torch.Generator, lat: dict | None = None
    ) -> tuple[LossOutput, dict]:
        assert self.model is not None, "configure_model() was not called"
        lat = self.latents(batch) if lat is None else lat
        out = self.objective(self.model, lat, step=step, generator=generator, video_fps=self.video_fps)
        return out, lat

    def _tokens_per_sample(self, lat: dict[str, torch.Tensor]) -> int:
        v = lat["video_latents"]
        pt, ph, pw = self._video_patch()
        return (v.shape[2] // pt) * (v.shape[3] // ph) * (v.shape[4] // pw) + lat["audio_latents"].shape[-1]

    def _video_patch(self) -> tuple[int, int, int]:
        tower = self.model.video_dit if self.model.video_dit is not None else self.model.video_dit_2
        return tuple(tower.patch_size)  # type: ignore[return-value]

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any] | None:
        """One micro-batch: loss every step; detail metrics every ``trainer.log_every_n_steps`` steps.

        ``self.log`` costs a few milliseconds per call on CPU, so only ``train/loss`` is logged on every step;
        per-modality losses and timestep buckets are logged on the steps Lightning writes to the loggers anyway.
        The learning rates are the ``lr_monitor`` callback's, the throughput the ``throughput`` callback's (from
        the ``samples`` and ``tokens`` returned here).

        Returns None (Lightning then skips the backward pass and the optimizer step) for a batch whose latents
        hold NaN/Inf or a step whose loss is not finite; see `mova_train.lit.nonfinite`.
        """
        generator = self._generator(self.micro_step)
        self.micro_step += 1
        lat = self.latents(batch)
        bsz = int(lat["video_latents"].shape[0])
        if self.nonfinite.should_skip(nonfinite_names(lat), "batch", self.global_step, self.device):
            return self._skipped(bsz)
        out, lat = self._step(batch, self.global_step, generator, lat=lat)
        loss_bad = [] if bool(torch.isfinite(out.loss.detach()).all()) else ["loss"]
        if self.nonfinite.should_skip(loss_bad, "loss", self.global_step, self.device):
            return self._skipped(bsz)
        self.log("train/loss", out.loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=bsz)
        result = {"loss": out.loss, "samples": bsz, "tokens": bsz * self._tokens_per_sample(lat)}
        if not self._detail_step():
            return result
        kw = dict(on_step=True, on_epoch=False, batch_size=bsz)
        self.log("train/loss_video", out.loss_video.detach(), **kw)
        self.log("train/loss_audio", out.loss_audio.detach(), **kw)
        if self.objective.mix.single != "i2av":
            for name, (value, count) in out.mode_losses().items():
                self.log(f"train/{name}", value, on_step=True, on_epoch=False, batch_size=count)
        self._log_buckets(out, bsz)
        return result

    def _skipped(self, bsz: int) -> None:
        """Log the skip count; returning None makes Lightning skip the backward pass and optimizer step."""
        self.log(
            "train/skipped_nonfinite",
            float(self.nonfinite.skipped),
            on_step=True,
            on_epoch=False,
            batch_size=bsz,
        )
        return None

    def _detail_step(self) -> bool:
        every = self._trainer.log_every_n_steps if self._trainer is not None else 1
        return every <= 1 or (self.global_step + 1) % every == 0 or self.global_step == 0

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Validation loss with fixed randomness per batch index (comparable across evaluations).

        The losses are summed here and reduced once over the ranks in `on_validation_epoch_end`, which every rank
        reaches: a rank with no validation batch (a validation set smaller than ranks x workers) then contributes
        nothing instead of leaving the others waiting in a per-metric reduction.
        """
        gen = torch.Generator(device=self.device)
        gen.manual_seed(_seed_for(self.seed + 1, self.global_rank, batch_idx))
        out, lat = self._step(batch, batch_idx, gen)
        bsz = float(lat["video_latents"].shape[0])
        losses = torch.stack([out.loss.detach(), out.loss_video.detach(), out.loss_audio.detach()]).double()
        self._val_sums = self._val_sums.to(losses.device) + torch.cat(
            [losses * bsz, losses.new_tensor([bsz])]
        )
        return out.loss

    def on_validation_epoch_start(self) -> None:
        """Reset the validation sums (`val/loss`, `val/loss_video`, `val/loss_audio` times samples, samples)."""
        self._val_sums = torch.zeros(4, dtype=torch.float64)

    def on_validation_epoch_end(self) -> None:
        """Log the sample-weighted mean validation losses over every rank (one all-reduce, every rank joins)."""
        sums = self._val_sums.to(self.device)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            on_cpu = torch.distributed.get_backend() == "gloo"
            reduced = sums.cpu() if on_cpu else sums
            torch.distributed.all_reduce(reduced)
            sums = reduced.to(self.device)
        if float(sums[3]) == 0:
            return  # no rank had a validation batch
        means = (sums[:3] / sums[3]).float()
        kw = dict(on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=False)
        self.log("val/loss", means[0], prog_bar=True, **kw)
        self.log("val/loss_video", means[1], **kw)
        self.log("val/loss_audio", means[2], **kw)

    def _log_buckets(self, out: LossOutput, bsz: int) -> None:
        n = self.timestep_buckets
        per = (out.per_sample_video + out.per_sample_audio).float()
        bucket = (out.timesteps.float() / self.objective.num_train * n).long().clamp(0, n - 1)
        for k in sorted(set(bucket.tolist())):
            sel = bucket == k
            self.log(
                f"train/loss_t{k}", per[sel].mean(), on_step=True, on_epoch=False, batch_size=int(sel.sum())
            )

    # -------------------------------------------------------------------------------------- optimizer

    def configure_optimizers(self) -> Any:
        """The optimizer over trainable parameters (grouped per component) and a per-step LR scheduler."""
        assert self.model is not None
        base_lr = None
        if isinstance(self.optimizer_factory, functools.partial):
            base_lr = self.optimizer_factory.keywords.get("lr")
        if base_lr is None and self.param_groups:
            raise ValueError("param_groups need the optimizer's lr to be set (e.g. optimizer.lr=1e-4)")
        if base_lr is not None:
            params: Any = build_param_groups(self.model, float(base_lr), self.param_groups)
        else:
            params = [p for p in self.model.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.lr_scheduler_factory is None:
            return optimizer
        scheduler = self.lr_scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # ------------------------------------------------------------------------------------- checkpoints

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Keep only trainable weights and the EMA in the checkpoint's state dict; add the RNG counter."""
        keep = set(self.trainable_names)
        checkpoint["state_dict"] = {
            k: v for k, v in checkpoint["state_dict"].items() if k in keep or k.startswith(EMA_PREFIX)
        }
        checkpoint[CKPT_KEY] = {
            "version": 1,
            "micro_step": self.micro_step,
            "trainable": list(self.trainable_names),
            "lora": self.lora.to_dict() if self.lora is not None else None,
            "full_finetune": list(self.full_finetune),
            "base_fingerprint": self.base_fingerprint,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Check the checkpoint holds every trainable weight of this run and restore the RNG counter."""
        state = checkpoint.get("state_dict", {})
        missing = [k for k in self.trainable_names if k not in state]
        if missing:
            raise KeyError(
                f"checkpoint lacks {len(missing)} trainable weights (e.g. {missing[:3]}); it was written by a run "
                f"with other lora/full_finetune settings"
            )
        meta = checkpoint.get(CKPT_KEY, {})
        self.micro_step = int(meta.get("micro_step", 0))
        saved_fp = meta.get("base_fingerprint")
        if saved_fp and self.base_fingerprint and saved_fp != self.base_fingerprint:
            log.warning(
                "checkpoint was trained on another base (fingerprint %s, now %s)", saved_fp, self._fingerprint
            )
