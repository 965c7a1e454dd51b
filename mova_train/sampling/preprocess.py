"""First-frame preprocessing for image-conditioned sampling (docs/model.md §2.5).

An image is centre-cropped to the target aspect ratio (integer box), resized to (W, H) with PIL's bicubic filter
(the default of ``Image.resize``) and mapped to [-1, 1].

Text-to-audio+video (no image): a model fine-tuned with `objective.mode` t2av (or a mix holding it) knows the
"no frame" condition (all mask channels 0 and the latent of an empty clip; `first_frame_mode="none"`, the
default, for which `first_frame_tensor` returns None). The released model has no unconditional path, so upstream
feeds a **pure white frame** (workflow README; `first_frame_mode="white"`). Users report that about 40 % of such
samples collapse to a flat colour (upstream issue #38).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "FIRST_FRAME_MODES",
    "center_crop_to_aspect",
    "first_frame_tensor",
    "load_first_frame",
    "white_frame",
]

FIRST_FRAME_MODES = ("none", "white")


def center_crop_to_aspect(image: Image.Image, width: int, height: int) -> Image.Image:
    """Crop the centred largest box with the aspect ratio ``width / height`` (integer pixel box).

    Args:
        image: Source image of any size.
        width: Target width (only the ratio matters).
        height: Target height.

    Returns:
        The cropped image (the input itself when the aspect already matches).
    """
    src_w, src_h = image.size
    if src_w * height > src_h * width:  # too wide: crop the width
        new_w, new_h = max(1, round(src_h * width / height)), src_h
    else:  # too tall (or equal): crop the height
        new_w, new_h = src_w, max(1, round(src_w * height / width))
    if (new_w, new_h) == (src_w, src_h):
        return image
    left, top = (src_w - new_w) // 2, (src_h - new_h) // 2
    return image.crop((left, top, left + new_w, top + new_h))


def _to_tensor(image: Image.Image) -> torch.Tensor:
    arr = np.asarray(image, dtype=np.uint8)  # [H, W, 3]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 127.5 - 1.0


def load_first_frame(path: str | Path, width: int, height: int) -> torch.Tensor:
    """Load an image, crop it to the target aspect, resize (bicubic) and scale to [-1, 1].

    Args:
        path: Image file (anything PIL reads; alpha and palette images are converted to RGB).
        width: Target width W.
        height: Target height H.

    Returns:
        [3, H, W] float32 in [-1, 1].

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: PIL cannot read it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"first_frame {path} does not exist; fix the request's 'first_frame' path")
    try:
        with Image.open(path) as img:
            image = img.convert("RGB")
    except OSError as err:
        raise ValueError(f"first_frame {path}: not a readable image ({err})") from err
    image = center_crop_to_aspect(image, width, height)
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    return _to_tensor(image)


def white_frame(width: int, height: int) -> torch.Tensor:
    """A pure white frame, [3, H, W] of ones (upstream's T2AV input)."""
    return torch.ones(3, height, width)


def first_frame_tensor(
    path: str | Path | None, width: int, height: int, mode: str = "none"
) -> torch.Tensor | None:
    """The conditioning frame of one request: the image, or the T2AV substitute when ``path`` is None.

    Args:
        path: Image path or None.
        width: Target width.
        height: Target height.
        mode: Without an image: ``"none"`` (no frame: returns None, the caller builds the no-frame condition)
            or ``"white"`` (see the module docstring).

    Returns:
        [3, H, W] float32 in [-1, 1], or None for the no-frame condition.
    """
    if mode not in FIRST_FRAME_MODES:
        raise ValueError(f"first_frame_mode={mode!r}; supported: {FIRST_FRAME_MODES}")
    if path is not None:
        return load_first_frame(path, width, height)
    return white_frame(width, height) if mode == "white" else None
