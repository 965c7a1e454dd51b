"""Continuous DAC audio VAE (the MOVA `audio_vae`, from HunyuanVideo-Foley), docs/model.md §5.2.

Plain fused convolutions (the released weights are stored with weight norm removed), Snake activations and no
quantizer. Module names reproduce the checkpoint keys: `encoder.block.{i}...`, `quant_conv`, `post_quant_conv`,
`decoder.model.{i}...`; transposed-conv weights are `[in, out, k]`.

The latent the DiTs work on is the posterior mean of `quant_conv(encoder(wave))` with no normalization.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mova_train.codecs.configs import DACConfig

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


class Snake1d(nn.Module):
    """Snake activation `x + 1/(alpha + 1e-9) * sin(alpha * x)^2` with one alpha per channel.

    Args:
        channels: number of channels C; `alpha` has shape [1, C, 1].
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply Snake to x [B, C, T] -> [B, C, T]."""
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """Snake -> conv k7 (dilated) -> Snake -> conv k1, plus the (center-cropped) input.

    Args:
        dim: channels (in = out).
        dilation: dilation of the k7 conv (padding 3 * dilation keeps the length).
    """

    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim),
            nn.Conv1d(dim, dim, kernel_size=7, dilation=dilation, padding=3 * dilation),
            Snake1d(dim),
            nn.Conv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """X [B, dim, T] -> [B, dim, T]."""
        y = self.block(x)
        crop = (x.shape[-1] - y.shape[-1]) // 2
        if crop > 0:
            x = x[..., crop:-crop]
        return x + y


class EncoderBlock(nn.Module):
    """Three residual units at `dim // 2` (dilations 1, 3, 9), Snake, strided conv to `dim`.

    Args:
        dim: output channels (input channels are `dim // 2`).
        stride: downsampling factor (kernel 2 * stride, padding ceil(stride / 2)).
    """

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__()
        half = dim // 2
        self.block = nn.Sequential(
            ResidualUnit(half, dilation=1),
            ResidualUnit(half, dilation=3),
            ResidualUnit(half, dilation=9),
            Snake1d(half),
            nn.Conv1d(half, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """X [B, dim // 2, T] -> [B, dim, T / stride]."""
        return self.block(x)


class DecoderBlock(nn.Module):
    """Snake, transposed conv (upsampling by `stride`), three residual units (dilations 1, 3, 9).

    Args:
        in_dim: input channels.
        out_dim: output channels.
        stride: upsampling factor (kernel 2 * stride, padding ceil(stride / 2), output_padding stride % 2).
    """

    def __init__(self, in_dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(in_dim),
            nn.ConvTranspose1d(
                in_dim,
                out_dim,
                kernel_size=2 * stride,
                stride=stride,
                padding=math.ceil(stride / 2),
                output_padding=stride % 2,
            ),
            ResidualUnit(out_dim, dilation=1),
            ResidualUnit(out_dim, dilation=3),
            ResidualUnit(out_dim, dilation=9),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """X [B, in_dim, T] -> [B, out_dim, T * stride]."""
        return self.block(x)


class DACEncoder(nn.Module):
    """conv k7 -> EncoderBlocks (channels doubling) -> Snake -> conv k3 to `latent_dim` (`encoder.block.*`)."""

    def __init__(self, dim: int, rates: list[int], latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(1, dim, kernel_size=7, padding=3)]
        for stride in rates:
            dim *= 2
            layers.append(EncoderBlock(dim, stride))
        layers += [Snake1d(dim), nn.Conv1d(dim, latent_dim, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """X [B, 1, T] (T a multiple of the hop) -> [B, latent_dim, T / hop]."""
        return self.block(x)


class DACDecoder(nn.Module):
    """conv k7 -> DecoderBlocks (channels halving) -> Snake -> conv k7 to 1 channel -> tanh (`decoder.model.*`)."""

    def __init__(self, latent_dim: int, dim: int, rates: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(latent_dim, dim, kernel_size=7, padding=3)]
        out_dim = dim
        for i, stride in enumerate(rates):
            in_dim, out_dim = dim // 2**i, dim // 2 ** (i + 1)
            layers.append(DecoderBlock(in_dim, out_dim, stride))
        layers += [Snake1d(out_dim), nn.Conv1d(out_dim, 1, kernel_size=7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Z [B, latent_dim, L] -> waveform [B, 1, L * hop] in [-1, 1]."""
        return self.model(z)


class DAC(nn.Module):
    """Continuous DAC-VAE: waveform [B, 1, T] <-> latent [B, latent_dim, ceil(T / hop)].

    Args:
        cfg: the `audio_vae/config.json` values.
    """

    def __init__(self, cfg: DACConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = DACEncoder(cfg.encoder_dim, cfg.encoder_rates, cfg.latent_dim)
        self.quant_conv = nn.Conv1d(cfg.latent_dim, 2 * cfg.latent_dim, kernel_size=1)
        self.post_quant_conv = nn.Conv1d(cfg.latent_dim, cfg.latent_dim, kernel_size=1)
        self.decoder = DACDecoder(cfg.latent_dim, cfg.decoder_dim, cfg.decoder_rates)

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame."""
        return self.cfg.hop_length

    @property
    def sample_rate(self) -> int:
        """Waveform sample rate in Hz."""
        return self.cfg.sample_rate

    @property
    def latent_dim(self) -> int:
        """Latent channels."""
        return self.cfg.latent_dim

    def preprocess(self, wave: torch.Tensor) -> torch.Tensor:
        """Right-pad with zeros to a multiple of the hop length.

        Args:
            wave: mono waveform [B, 1, T].

        Returns:
            [B, 1, ceil(T / hop) * hop].
        """
        if wave.ndim != 3 or wave.shape[1] != 1:
            raise ValueError(f"DAC expects a mono waveform [B, 1, T], got shape {tuple(wave.shape)}")
        pad = -wave.shape[-1] % self.hop_length
        if pad:
            wave = nn.functional.pad(wave, (0, pad))
        return wave

    def encode_posterior(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode to the diagonal-Gaussian posterior.

        Args:
            wave: mono waveform [B, 1, T].

        Returns:
            (mean, logvar), each [B, latent_dim, ceil(T / hop)]; logvar clamped to [-30, 20].
        """
        moments = self.quant_conv(self.encoder(self.preprocess(wave)))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        """Encode to the posterior mean (the audio latent MOVA uses, unnormalized).

        Args:
            wave: mono waveform [B, 1, T].

        Returns:
            latent [B, latent_dim, ceil(T / hop)].
        """
        return self.encode_posterior(wave)[0]

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode a latent to a waveform (not trimmed to any original length).

        Args:
            latent: [B, latent_dim, L].

        Returns:
            waveform [B, 1, L * hop] in [-1, 1].
        """
        if latent.ndim != 3 or latent.shape[1] != self.latent_dim:
            raise ValueError(
                f"DAC.decode expects a latent [B, {self.latent_dim}, L], got shape {tuple(latent.shape)}"
            )
        return self.decoder(self.post_quant_conv(latent))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Reconstruct: decode(encode(wave)) -> [B, 1, ceil(T / hop) * hop]."""
        return self.decode(self.encode(wave))
