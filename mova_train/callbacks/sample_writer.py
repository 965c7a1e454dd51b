"""Writes predicted samples: ``<out>/<slug(prompt)[:40]>-<sha8(request)>-s<seed>.mp4`` + ``.json`` sidecar.

The names depend only on the request, so re-running a requests file overwrites the same files, and each rank
writes only its own requests (no collisions under DDP).
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import BasePredictionWriter

from mova_train.sampling.generator import GeneratedSample
from mova_train.sampling.mux import write_mp4

logger = logging.getLogger(__name__)

__all__ = ["SampleWriter", "sidecar", "write_sample"]


def sidecar(
    sample: GeneratedSample,
    *,
    mp4: Path,
    settings: dict[str, Any] | None = None,
    model_fingerprint: str | None = None,
    lora: list[dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON sidecar of one sample: request, settings, fingerprints, timings, what the mp4 holds."""
    req = sample.request
    out: dict[str, Any] = {
        "file": mp4.name,
        "request": req.to_dict(),
        "request_sha256": req.sha(),
        "mode": req.mode,
        "settings": settings or {},
        "model_fingerprint": model_fingerprint,
        "lora": lora or [],
        "timings": sample.timings,
        "video": {"num_frames": req.num_frames, "fps": req.fps, "height": req.height, "width": req.width},
        "audio": {
            "sample_rate": sample.sample_rate,
            "samples": None if sample.audio is None else int(sample.audio.shape[-1]),
            "mp4_sample_rate": 48000,
        },
        "latents": {
            "video_shape": list(sample.video_latents.shape),
            "video_std": float(sample.video_latents.std()),
            "audio_shape": list(sample.audio_latents.shape),
            "audio_std": float(sample.audio_latents.std()),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "host": platform.node(),
        "torch": torch.__version__,
    }
    out.update(extra or {})
    return out


def write_sample(
    sample: GeneratedSample, out_dir: str | Path, *, save_latents: bool = False, **sidecar_kwargs: Any
) -> Path:
    """Write one sample's mp4 (+ ``.json`` sidecar, + ``.latents.pt`` if asked); returns the mp4 path."""
    if sample.video is None:
        raise ValueError(f"request {sample.request.id}: no decoded video (the module ran with decode=False)")
    out_dir = Path(out_dir)
    mp4 = out_dir / f"{sample.request.id}.mp4"
    t0 = time.perf_counter()
    write_mp4(mp4, sample.video, sample.audio, fps=sample.request.fps, sample_rate=sample.sample_rate)
    sample.timings = {**sample.timings, "mux": time.perf_counter() - t0}
    meta = sidecar(sample, mp4=mp4, **sidecar_kwargs)
    tmp = mp4.with_name(f".{mp4.stem}.{os.getpid()}.json.tmp")
    tmp.write_text(json.dumps(meta, indent=2, ensure_ascii=False))
    tmp.replace(mp4.with_suffix(".json"))
    if save_latents:
        torch.save(
            {"video_latents": sample.video_latents, "audio_latents": sample.audio_latents},
            mp4.with_suffix(".latents.pt"),
        )
    return mp4


class SampleWriter(BasePredictionWriter):
    """Writes every `GeneratedSample` of each predict batch as it finishes.

    Args:
        output_dir: Folder of the mp4s and sidecars (created).
        save_latents: Also write the final latents (``<name>.latents.pt``).
    """

    def __init__(self, output_dir: str | Path, save_latents: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.save_latents = save_latents
        self.written: list[Path] = []

    def write_on_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        prediction: list[GeneratedSample],
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        """Write the batch's samples (called on every rank for that rank's own requests)."""
        settings = pl_module.settings() if hasattr(pl_module, "settings") else {}
        for sample in prediction:
            t0 = time.perf_counter()
            path = write_sample(
                sample,
                self.output_dir,
                save_latents=self.save_latents,
                settings=settings,
                model_fingerprint=getattr(pl_module, "model_fingerprint", None),
                lora=getattr(pl_module, "lora_info", None),
                extra={"rank": trainer.global_rank, "world_size": trainer.world_size, "batch_idx": batch_idx},
            )
            self.written.append(path)
            logger.info("rank %d wrote %s (%.2fs)", trainer.global_rank, path, time.perf_counter() - t0)
