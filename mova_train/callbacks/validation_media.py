"""Validation requests in the run's conditioning modes, with media taken from a training clip.

A validation request is a prompt (and maybe a first frame, an audio or a video file). To sample it in every mode
the run trains (`objective.mode`), each mode gets its variant of the request: ``t2av`` drops all media, ``i2av``
needs a first frame, ``a2v`` an audio track, ``v2a`` a video. What a request does not carry comes from the first
training clip the callback sees, written once per output folder as ``media/clip.mp4`` (frames + audio, through
the release codecs in cached mode) and ``media/clip.png`` (its first frame), so a resumed run keeps sampling
the same clip.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from mova_train.sampling.mux import write_mp4
from mova_train.sampling.requests import Request, make_request

logger = logging.getLogger(__name__)

__all__ = ["ClipMedia", "request_in_mode", "write_clip_media"]

NEEDS = {"i2av": "first_frame", "a2v": "audio", "v2a": "video"}
"""The request field each mode needs (t2av needs none)."""


@dataclasses.dataclass(frozen=True)
class ClipMedia:
    """A training clip on disk: ``mp4`` (frames + audio) and ``png`` (its first frame)."""

    mp4: Path
    png: Path

    def for_field(self, name: str) -> str:
        """The file that stands in for request field ``name``."""
        return str(self.png if name == "first_frame" else self.mp4)


def _uint8(video: torch.Tensor) -> torch.Tensor:
    """``[3, F, H, W]`` in [-1, 1] (or uint8) -> uint8 ``[F, 3, H, W]``."""
    if video.dtype != torch.uint8:
        video = ((video.float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)
    return video.permute(1, 0, 2, 3).contiguous().cpu()


@torch.no_grad()
def write_clip_media(folder: Path, batch: dict[str, Any], encoders: Any, fps: float) -> ClipMedia:
    """Write the first sample of a training batch as ``folder/clip.mp4`` + ``folder/clip.png`` (kept if present).

    Args:
        folder: Where the files go.
        batch: A raw batch (``video [B, 3, F, H, W]``, ``audio [B, 1, S]``) or a cached one (``video_latents``,
            ``audio_latents``: decoded with ``encoders``).
        encoders: Holds ``video_vae`` and ``audio_vae`` (cached batches only).
        fps: The clips' frame rate.

    Returns:
        The two paths.
    """
    media = ClipMedia(folder / "clip.mp4", folder / "clip.png")
    if media.mp4.is_file() and media.png.is_file():
        return media
    if "video" in batch:
        frames = _uint8(batch["video"][0])
        wave = batch["audio"][0].float().cpu()
        rate = round(wave.shape[-1] * fps / frames.shape[0])  # S = round(rate * F / fps)
    else:
        vae, dac = encoders.video_vae, encoders.audio_vae
        vdtype = next(vae.parameters()).dtype
        frames = _uint8(vae.decode(batch["video_latents"][:1].to(vdtype))[0])
        adtype = next(dac.parameters()).dtype
        wave = dac.decode(batch["audio_latents"][:1].to(adtype))[0].float().cpu()
        rate = int(dac.sample_rate)
        wave = wave[:, : int(rate * frames.shape[0] / fps)]
    folder.mkdir(parents=True, exist_ok=True)
    write_mp4(media.mp4, frames, wave.clamp(-1, 1), fps, rate)
    Image.fromarray(frames[0].permute(1, 2, 0).numpy()).save(media.png)
    logger.info("validation media from a training clip: %s", media.mp4)
    return media


def request_in_mode(
    req: Request, mode: str, media: ClipMedia | None, a2v_first_frame: bool, spatial_multiple: int = 16
) -> Request | None:
    """The variant of ``req`` sampled in ``mode``, or None when the mode needs media neither provides.

    Args:
        req: A resolved validation request.
        mode: ``i2av``, ``t2av``, ``a2v`` or ``v2a``.
        media: The training clip's files (None before one was seen).
        a2v_first_frame: Give a2v variants a first frame (the run's a2v samples always keep theirs).
        spatial_multiple: Height/width multiple.
    """
    entry = {k: v for k, v in req.to_dict().items() if k != "id"}
    keep = {"i2av": ("first_frame",), "t2av": (), "a2v": ("audio", "first_frame"), "v2a": ("video",)}[mode]
    for name in ("first_frame", "audio", "video"):
        if name not in keep:
            entry[name] = None
    wanted = [NEEDS[mode]] if mode in NEEDS else []
    if mode == "a2v" and a2v_first_frame:
        wanted.append("first_frame")
    for name in wanted:
        if entry[name] is None:
            if media is None:
                return None
            entry[name] = media.for_field(name)
    return make_request(
        entry, source=f"validation request {req.id} in mode {mode}", spatial_multiple=spatial_multiple
    )
