"""The frozen encoders of online (raw-clip) training: video VAE, audio VAE (DAC) and text encoder.

:class:`MovaEncoders` turns a raw batch from the datamodule (``video``, ``first_frame``, ``audio``,
``caption``) into the latent dict the objective consumes; in cached mode the datamodule already yields
latents (same names, ``mova_train.data.schema.Batch``) and :func:`latents_from_cached` only checks them.
Every encoder is frozen and runs without gradients (docs/model.md §7.4).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

if TYPE_CHECKING:  # the codecs pull in diffusers / transformers: import them only when built
    from mova_train.codecs.dac import DAC
    from mova_train.codecs.text_encoder import MovaTextEncoder
    from mova_train.codecs.video_vae import WanVideoVAE

log = logging.getLogger(__name__)

__all__ = ["MovaEncoders", "latents_from_cached", "tiny_encoders"]


def latents_from_cached(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The latent fields of a batch in the objective's layout (``video_latents``, ``cond`` (mask + condition
    latent), ``audio_latents``, ``context``, ``audio_mask``, ``empty_latents``; the names of
    ``mova_train.data.schema.Batch``, which the cached datamodule already uses), checked for completeness.
    """
    names = ("video_latents", "cond", "audio_latents", "context", "audio_mask", "empty_latents")
    out: dict[str, torch.Tensor] = {name: batch[name] for name in names if name in batch}
    missing = {"video_latents", "cond", "audio_latents", "context"} - set(out)
    if missing:
        raise KeyError(
            f"batch lacks {sorted(missing)} (has {sorted(batch)}); a raw batch (video/audio/caption) needs "
            f"`encoders` on the module, a cached batch needs video_latents/cond/audio_latents/context"
        )
    return out


class MovaEncoders(nn.Module):
    """Frozen video VAE, audio VAE and text encoder (each optional).

    Args:
        video_vae: encodes ``video [B, 3, F, H, W]`` and the first-frame condition.
        audio_vae: DAC; encodes ``audio [B, 1, S]`` to its posterior mean.
        text_encoder: encodes the captions to ``[B, Lt, D]``.
    """

    def __init__(
        self,
        video_vae: WanVideoVAE | None = None,
        audio_vae: DAC | None = None,
        text_encoder: MovaTextEncoder | None = None,
    ) -> None:
        super().__init__()
        self.video_vae = video_vae
        self.audio_vae = audio_vae
        self.text_encoder = text_encoder
        self._empty: dict[tuple[Any, ...], torch.Tensor] = {}
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> MovaEncoders:
        """The encoders always stay in eval mode."""
        return super().train(False)

    def _need(self, name: str, field: str) -> nn.Module:
        module = getattr(self, name)
        if module is None:
            raise ValueError(f"batch field {field!r} needs encoders.{name}, which is not configured")
        return module

    @torch.no_grad()
    def null_context(self) -> torch.Tensor | None:
        """The encoded empty prompt ``[Lt, D]`` (unconditional context for caption dropout), or None."""
        if self.text_encoder is None:
            return None
        return self.text_encoder.encode([""])[0]

    @torch.no_grad()
    def empty_latents(self, num_frames: int, height: int, width: int) -> torch.Tensor:
        """The normalized latent of an all-zero clip ``[1, z, T', H/8, W/8]`` (computed once per size)."""
        vae = self._need("video_vae", "empty_latents")
        param = next(vae.parameters())
        key = (num_frames, height, width, param.device, param.dtype)
        if key not in self._empty:
            self._empty[key] = vae.encode_empty(num_frames, height, width)
        return self._empty[key]

    @torch.no_grad()
    def encode_batch(self, batch: dict[str, Any], empty_latents: bool = False) -> dict[str, torch.Tensor]:
        """Encode a raw batch; latent fields already present are kept as they are.

        Args:
            batch: ``video [B, 3, F, H, W]`` in [-1, 1], optional ``first_frame [B, 3, H, W]`` (default: frame 0),
                ``audio [B, 1, S]``, ``caption`` list of B strings, optional ``audio_mask`` bool ``[B]``; or the
                cached-mode fields (see :func:`latents_from_cached`).
            empty_latents: also return the latent of an all-zero clip of the batch's size (the no-frame
                condition of text-to-audio+video).

        Returns:
            ``video_latents [B, z, T', H/8, W/8]``, ``cond [B, 4 + z, T', H/8, W/8]``, ``audio_latents [B, Ca, L]``,
            ``context [B, Lt, D]``, ``audio_mask`` when given and ``empty_latents [B, z, T', H/8, W/8]`` when asked.
        """
        out = dict(batch)
        if "video" in batch and "video_latents" not in batch:
            vae = self._need("video_vae", "video")
            video = batch["video"]
            out["video_latents"] = vae.encode(video)
            first = batch.get("first_frame", video[:, :, 0])
            out["cond"] = vae.encode_first_frame_condition(first, video.shape[2])
            if empty_latents and "empty_latents" not in batch:
                b, _, f, h, w = video.shape
                out["empty_latents"] = self.empty_latents(f, h, w).expand(b, -1, -1, -1, -1)
        if "audio" in batch and "audio_latents" not in batch:
            dac = self._need("audio_vae", "audio")
            out["audio_latents"] = dac.encode(batch["audio"])
        if "caption" in batch and "context" not in batch:
            te = self._need("text_encoder", "caption")
            context = te.encode(list(batch["caption"]))
            ref = out.get("video_latents")
            out["context"] = context if ref is None else context.to(ref.device)
        return latents_from_cached(out)


def tiny_encoders(seed: int = 0, text_len: int = 16) -> MovaEncoders:
    """Random tiny codecs whose latents fit ``mova_tiny()``: video z = 4, audio latent 8, text dim 32.

    The video VAE compresses 4x in time and 8x in space; the DAC hop is 8 samples (sample rate 1600).
    """
    from mova_train.codecs.configs import DACConfig, VideoVAEConfig
    from mova_train.codecs.dac import DAC
    from mova_train.codecs.text_encoder import MovaTextEncoder
    from mova_train.codecs.video_vae import WanVideoVAE

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        video_vae = WanVideoVAE(
            VideoVAEConfig(
                base_dim=8,
                z_dim=4,
                dim_mult=[1, 2, 2, 2],
                num_res_blocks=1,
                latents_mean=[0.0] * 4,
                latents_std=[1.0] * 4,
            )
        )
        audio_vae = DAC(
            DACConfig(
                encoder_dim=4,
                encoder_rates=[2, 4],
                latent_dim=8,
                decoder_dim=16,
                decoder_rates=[4, 2],
                sample_rate=1600,
            )
        )
    text_encoder = MovaTextEncoder.tiny(d_model=32, max_length=text_len, seed=seed)
    return MovaEncoders(video_vae=video_vae, audio_vae=audio_vae, text_encoder=text_encoder)
