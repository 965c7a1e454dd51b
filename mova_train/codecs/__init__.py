"""The frozen codecs of MOVA in plain PyTorch: the DAC audio VAE, the Wan2.1 video VAE, the UMT5 text encoder,
their configs, and `MovaEncoders`, which bundles them for raw-mode batches and sampling.
"""

from mova_train.codecs.configs import DACConfig, VideoVAEConfig
from mova_train.codecs.encoders import MovaEncoders, latents_from_cached, tiny_encoders

__all__ = ["DACConfig", "MovaEncoders", "VideoVAEConfig", "latents_from_cached", "tiny_encoders"]
