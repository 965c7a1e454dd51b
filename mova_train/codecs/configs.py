"""Config dataclasses of the two codecs: the DAC audio VAE and the Wan2.1 video VAE.

Defaults are the released MOVA values (docs/model.md §1.6 and §1.7). `configs.py` re-exports both classes.
Each class reads a checkpoint `config.json` dict with `from_dict` (unknown keys such as `_class_name` or
`_diffusers_version` are ignored) and writes one back with `to_dict`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Any, Self

logger = logging.getLogger(__name__)

_WAN21_LATENTS_MEAN = [
    -0.7571,
    -0.7089,
    -0.9113,
    0.1075,
    -0.1745,
    0.9653,
    -0.1517,
    1.5508,
    0.4134,
    -0.0715,
    0.5517,
    -0.3632,
    -0.1922,
    -0.9497,
    0.2503,
    -0.2921,
]
_WAN21_LATENTS_STD = [
    2.8184,
    1.4541,
    2.3275,
    2.6558,
    1.2196,
    1.7708,
    2.6052,
    2.0743,
    3.2687,
    2.1526,
    2.8652,
    1.5579,
    1.6382,
    1.1253,
    2.8251,
    1.9160,
]


class _ConfigMixin:
    """`from_dict` / `to_dict` shared by the codec config dataclasses."""

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Build the config from a `config.json` dict, ignoring keys this class does not define.

        Args:
            d: mapping of field name to value (e.g. a parsed `config.json`).

        Returns:
            The config; fields missing from `d` keep their release defaults.
        """
        if not isinstance(d, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict (a parsed config.json), got {type(d)}")
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        ignored = sorted(k for k in d if k not in names and not k.startswith("_"))
        if ignored:
            logger.debug("%s.from_dict ignores unknown keys %s", cls.__name__, ignored)
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a plain JSON-serializable dict (lists, not tuples)."""
        return dataclasses.asdict(self)  # type: ignore[call-overload]


@dataclass
class DACConfig(_ConfigMixin):
    """Continuous DAC audio VAE (`audio_vae/config.json`, docs/model.md §1.6).

    Attributes:
        encoder_dim: channels of the first encoder conv; doubled by every encoder block.
        encoder_rates: strides of the encoder blocks; their product is the hop length (960 for the release).
        latent_dim: channels of the latent (posterior mean).
        decoder_dim: channels of the first decoder conv; halved by every decoder block.
        decoder_rates: strides of the decoder blocks (product must equal the hop length).
        n_codebooks: unused (no quantizer is built in continuous mode); kept for round trips.
        codebook_size: unused, see `n_codebooks`.
        codebook_dim: unused, see `n_codebooks`.
        quantizer_dropout: unused, see `n_codebooks`.
        sample_rate: waveform sample rate in Hz.
        continuous: must be true (the VQ variant is not implemented).
        use_weight_norm: must be false (weights are stored fused).
    """

    encoder_dim: int = 128
    encoder_rates: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 8])
    latent_dim: int = 128
    decoder_dim: int = 2048
    decoder_rates: list[int] = field(default_factory=lambda: [8, 5, 4, 3, 2])
    n_codebooks: int = 9
    codebook_size: int = 1024
    codebook_dim: int = 8
    quantizer_dropout: bool | float = False
    sample_rate: int = 48000
    continuous: bool = True
    use_weight_norm: bool = False

    def __post_init__(self) -> None:
        self.encoder_rates = [int(r) for r in self.encoder_rates]
        self.decoder_rates = [int(r) for r in self.decoder_rates]
        if not self.continuous:
            raise ValueError("DACConfig.continuous=false (VQ DAC) is not supported; set `continuous: true`")
        if self.use_weight_norm:
            raise ValueError(
                "DACConfig.use_weight_norm=true is not supported: fuse the weights (weight_g/weight_v -> weight) "
                "and set `use_weight_norm: false`"
            )
        if math.prod(self.encoder_rates) != math.prod(self.decoder_rates):
            raise ValueError(
                f"DACConfig: prod(encoder_rates)={math.prod(self.encoder_rates)} must equal "
                f"prod(decoder_rates)={math.prod(self.decoder_rates)}; fix `encoder_rates` / `decoder_rates`"
            )

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame (product of the encoder rates)."""
        return math.prod(self.encoder_rates)


@dataclass
class VideoVAEConfig(_ConfigMixin):
    """Wan2.1 video VAE, i.e. diffusers `AutoencoderKLWan` (`video_vae/config.json`, docs/model.md §1.7).

    The field names and defaults are those of `AutoencoderKLWan.__init__` (so `to_dict()` can be passed to it
    as keyword arguments). `temperal_downsample` keeps the upstream spelling.
    """

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: list[int] = field(default_factory=lambda: [1, 2, 4, 4])
    num_res_blocks: int = 2
    attn_scales: list[float] = field(default_factory=list)
    temperal_downsample: list[bool] = field(default_factory=lambda: [False, True, True])
    dropout: float = 0.0
    latents_mean: list[float] = field(default_factory=lambda: list(_WAN21_LATENTS_MEAN))
    latents_std: list[float] = field(default_factory=lambda: list(_WAN21_LATENTS_STD))
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int | None = 4
    scale_factor_spatial: int | None = 8

    def __post_init__(self) -> None:
        for name in ("latents_mean", "latents_std"):
            values = getattr(self, name)
            if len(values) != self.z_dim:
                raise ValueError(
                    f"VideoVAEConfig.{name} has {len(values)} values but z_dim is {self.z_dim}; "
                    f"give one value per latent channel"
                )
        if any(float(s) <= 0.0 for s in self.latents_std):
            raise ValueError("VideoVAEConfig.latents_std must be positive in every channel")
