"""Inference as Lightning's predict loop: `PredictDataModule` (requests) + `MovaPredictModule` (sampling).

``trainer.predict(MovaPredictModule(...), datamodule=PredictDataModule(...))`` returns (or hands to a
`SampleWriter` callback) one `GeneratedSample` per request. The module does no file I/O.

Distribution: each rank gets the requests ``i`` with ``i % world_size == rank`` (`RankSplitSampler`, no padding
duplicates), so under DDP every request is generated exactly once. Since each request seeds its own noise, the
output does not depend on the world size or on the batch it lands in.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from mova_train.config import torch_dtype
from mova_train.models.lora import base_fingerprint
from mova_train.models.lora_apply import apply_loras
from mova_train.sampling.generator import GeneratedSample, MovaGenerator
from mova_train.sampling.requests import Request, SamplingSettings, load_requests, make_request
from mova_train.schedulers.flow_match import FlowMatchScheduler
from mova_train.utils.dist import rank_world

logger = logging.getLogger(__name__)

__all__ = ["MovaPredictModule", "PredictDataModule", "RankSplitSampler", "RequestDataset"]


class RequestDataset(Dataset):
    """A list of `Request`s as a map-style dataset."""

    def __init__(self, requests: Sequence[Request]) -> None:
        self.requests = list(requests)

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, index: int) -> Request:
        return self.requests[index]


class RankSplitSampler(DistributedSampler):
    """Indices ``rank, rank + world, ...`` in order: every index exactly once across ranks, no padding.

    Subclasses `DistributedSampler` so Lightning does not wrap it again; ranks may get different counts (the
    predict loop has no collective per step).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return max(0, math.ceil((len(self.dataset) - self.rank) / self.num_replicas))


def _collate(batch: list[Request]) -> list[Request]:
    return list(batch)


class PredictDataModule(LightningDataModule):
    """Requests from a JSONL/YAML file or one prompt given on the command line.

    Args:
        requests: Path of a requests file (see `mova_train.sampling.requests`).
        prompt: A single prompt (used when ``requests`` is None); ``first_frame``, ``audio``, ``video`` and
            ``seed`` may go with it.
        first_frame: Image for the single prompt (None: text-to-audio+video, see ``first_frame_mode``).
        audio: Audio file to generate video for (a2v), for the single prompt.
        video: Video file to generate audio for (v2a), for the single prompt.
        seed: Seed of the single prompt (default: ``sampling.seed``).
        sampling: Defaults for every request field (a `SamplingSettings` or a mapping).
        batch_size: Requests per predict step (requests with different settings are sub-batched).
        num_workers: DataLoader workers (0: requests are tiny).
        spatial_multiple: Height/width multiple (16 for the release; 16 for the tiny codecs too).
    """

    def __init__(
        self,
        requests: str | Path | None = None,
        prompt: str | None = None,
        first_frame: str | None = None,
        audio: str | None = None,
        video: str | None = None,
        seed: int | None = None,
        sampling: SamplingSettings | dict[str, Any] | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        spatial_multiple: int = 16,
    ) -> None:
        super().__init__()
        if (requests is None) == (prompt is None):
            raise ValueError("PredictDataModule: give exactly one of requests=<file> or prompt='...'")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.requests_path = requests
        self.prompt = prompt
        self.first_frame = first_frame
        self.media = {"audio": audio, "video": video}
        self.seed = seed
        self.settings = (
            sampling if isinstance(sampling, SamplingSettings) else SamplingSettings.from_dict(sampling)
        )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.spatial_multiple = spatial_multiple
        self.requests: list[Request] = []

    def setup(self, stage: str | None = None) -> None:
        """Parse and validate the requests (cheap; errors name the file, line and field)."""
        if self.requests:
            return
        if self.requests_path is not None:
            self.requests = load_requests(
                self.requests_path, self.settings, spatial_multiple=self.spatial_multiple
            )
        else:
            entry: dict[str, Any] = {"prompt": self.prompt}
            if self.first_frame is not None:
                entry["first_frame"] = str(self.first_frame)
            entry.update({k: str(v) for k, v in self.media.items() if v is not None})
            if self.seed is not None:
                entry["seed"] = int(self.seed)
            self.requests = [
                make_request(entry, self.settings, source="prompt=", spatial_multiple=self.spatial_multiple)
            ]
        logger.info("%d request(s)", len(self.requests))

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return trainer.global_rank, trainer.world_size
        return rank_world()

    def predict_dataloader(self) -> DataLoader:
        """Requests of this rank, ``batch_size`` at a time, as lists of `Request`."""
        self.setup("predict")
        dataset = RequestDataset(self.requests)
        rank, world = self._rank_world()
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=RankSplitSampler(dataset, num_replicas=world, rank=rank),
            collate_fn=_collate,
            num_workers=self.num_workers,
        )


class MovaPredictModule(LightningModule):
    """Samples requests with the dual tower and the codecs; ``predict_step`` returns `GeneratedSample`s.

    Args:
        denoiser: The `MovaDualTower`, or a zero-argument factory of it (a release folder's `_partial_` loader),
            called in ``configure_model`` as `MovaLitModule` does.
        encoders: A `MovaEncoders` with the video VAE (`WanVideoVAE`), the audio VAE (`DAC`) and the text
            encoder (`MovaTextEncoder`).
        scheduler: Flow-matching scheduler (default: the release config).
        loras: LoRA adapters ``[{"path", "strength", "alpha"}]`` (our ``.safetensors`` or upstream folders).
        merge_lora: Merge the adapters into the base weights (several adapters are always merged).
        batch_cfg: Positive and negative prompt in one forward.
        model_dtype: Denoiser input dtype (e.g. ``torch.bfloat16`` or ``"bfloat16"`` with bf16 weights).
        release_high_noise: ``"none"``, ``"offload"`` or ``"delete"`` (see `mova_train.sampling.generator`).
        first_frame_mode: Condition of requests without an image: ``"none"`` (no frame, what t2av training
            teaches) or ``"white"`` (upstream's white frame, for the released model).
        boundary_timestep: Expert switch of the two-expert sampler (None: the generator's default, 900).
        decode: Decode to frames and audio (False: latents only).
        model_fingerprint: Identity of the base weights for the sidecars (default: computed from the model
            before any LoRA is loaded).
    """

    def __init__(
        self,
        denoiser: nn.Module | Callable[[], nn.Module],
        encoders: nn.Module,
        scheduler: FlowMatchScheduler | None = None,
        loras: Sequence[dict[str, Any] | str] = (),
        merge_lora: bool = False,
        batch_cfg: bool = True,
        model_dtype: torch.dtype | str | None = None,
        release_high_noise: str = "none",
        first_frame_mode: str = "none",
        boundary_timestep: float | None = None,
        decode: bool = True,
        model_fingerprint: str | None = None,
    ) -> None:
        super().__init__()
        missing = [
            n for n in ("video_vae", "audio_vae", "text_encoder") if getattr(encoders, n, None) is None
        ]
        if missing:
            raise ValueError(
                f"MovaPredictModule needs encoders with {missing} (model.encoders in the config)"
            )
        self.video_vae = encoders.video_vae.eval().requires_grad_(False)
        self.audio_vae = encoders.audio_vae.eval().requires_grad_(False)
        self.text_encoder = encoders.text_encoder.eval().requires_grad_(False)
        self.scheduler = scheduler if scheduler is not None else FlowMatchScheduler()
        self.loras = [{"path": e} if isinstance(e, (str, Path)) else dict(e) for e in loras]
        self.merge_lora = merge_lora
        self.generator_options: dict[str, Any] = dict(
            batch_cfg=batch_cfg,
            model_dtype=torch_dtype(model_dtype) if isinstance(model_dtype, str) else model_dtype,
            release_high_noise=release_high_noise,
            first_frame_mode=first_frame_mode,
            decode=decode,
        )
        if boundary_timestep is not None:
            self.generator_options["boundary_timestep"] = float(boundary_timestep)
        self.model_fingerprint = model_fingerprint
        self.lora_info: list[Any] = []
        self.denoiser: nn.Module | None = None
        self.generator: MovaGenerator | None = None
        if isinstance(denoiser, nn.Module):
            self._prepare(denoiser)
            self._denoiser_factory = None
        else:
            self._denoiser_factory = denoiser

    def configure_model(self) -> None:
        """Build the denoiser from its factory (once), then load the LoRA adapters and make the generator."""
        if self.denoiser is None:
            assert self._denoiser_factory is not None
            self._prepare(self._denoiser_factory())

    def _prepare(self, denoiser: nn.Module) -> None:
        self.denoiser = denoiser.eval().requires_grad_(False)
        self.model_fingerprint = self.model_fingerprint or base_fingerprint(denoiser)
        self.lora_info = apply_loras(self.denoiser, self.loras, merge=self.merge_lora) if self.loras else []
        self.generator = MovaGenerator(
            self.denoiser,
            self.scheduler,
            self.video_vae,
            self.audio_vae,
            self.text_encoder,
            **self.generator_options,
        )

    def _generator(self) -> MovaGenerator:
        if self.generator is None:
            raise RuntimeError(
                "MovaPredictModule: configure_model() was not called (the denoiser is a factory)"
            )
        return self.generator

    def settings(self) -> dict[str, Any]:
        """Module-level sampling settings, for the sidecars."""
        g = self._generator()
        return {
            "batch_cfg": g.batch_cfg,
            "model_dtype": None if g.model_dtype is None else str(g.model_dtype),
            "release_high_noise": g.release_high_noise,
            "first_frame_mode": g.first_frame_mode,
            "boundary_timestep": g.boundary_timestep,
            "scheduler": self.scheduler.cfg.to_dict(),
            "exact_euler_steps": self.scheduler.exact_euler_steps,
        }

    def predict_step(
        self, batch: list[Request], batch_idx: int, dataloader_idx: int = 0
    ) -> list[GeneratedSample]:
        """Sample one batch of requests (no file I/O; a `SampleWriter` writes the results)."""
        return self._generator().generate(batch, device=self.device)
