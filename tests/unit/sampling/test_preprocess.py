"""First-frame preprocessing: centre crop to the target aspect, bicubic resize, [-1, 1]; white T2AV frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mova_train.sampling.preprocess import center_crop_to_aspect, first_frame_tensor, load_first_frame


def _three_bands(path, width=90, height=30):
    """Red | green | blue vertical thirds."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, : width // 3, 0] = 255
    arr[:, width // 3 : 2 * width // 3, 1] = 255
    arr[:, 2 * width // 3 :, 2] = 255
    Image.fromarray(arr).save(path)


def test_center_crop_keeps_the_middle(tmp_path):
    path = tmp_path / "bands.png"
    _three_bands(path)
    img = Image.open(path)
    cropped = center_crop_to_aspect(img, 16, 16)  # square from a 3:1 image: the green middle third
    assert cropped.size == (30, 30)
    frame = load_first_frame(path, 16, 16)
    assert frame.shape == (3, 16, 16) and frame.dtype == torch.float32
    assert frame.min() >= -1.0 and frame.max() <= 1.0
    assert torch.allclose(frame[:, 4:12, 4:12].mean(dim=(1, 2)), torch.tensor([-1.0, 1.0, -1.0]), atol=1e-3)


def test_tall_crop_and_exact_resize(tmp_path):
    arr = np.zeros((100, 20, 3), dtype=np.uint8)
    arr[40:60] = 255  # white band in the vertical middle
    Image.fromarray(arr).save(tmp_path / "tall.png")
    assert center_crop_to_aspect(Image.fromarray(arr), 32, 16).size == (20, 10)
    frame = load_first_frame(tmp_path / "tall.png", 32, 16)  # crop 20x10 from rows 45..55: all white
    assert frame.shape == (3, 16, 32) and torch.allclose(frame, torch.ones_like(frame))


def test_rgba_and_palette_images_are_converted(tmp_path):
    Image.new("RGBA", (8, 8), (255, 0, 0, 10)).save(tmp_path / "a.png")
    Image.new("P", (8, 8)).save(tmp_path / "p.png")
    assert load_first_frame(tmp_path / "a.png", 16, 16)[0].min() == 1.0
    assert load_first_frame(tmp_path / "p.png", 16, 16).shape == (3, 16, 16)


def test_t2av_white_frame_and_errors(tmp_path):
    white = first_frame_tensor(None, 32, 16, mode="white")
    assert first_frame_tensor(None, 32, 16) is None  # default: the no-frame condition, built by the caller
    assert white.shape == (3, 16, 32) and bool((white == 1.0).all())
    with pytest.raises(ValueError, match="first_frame_mode"):
        first_frame_tensor(None, 32, 16, mode="zeros")
    with pytest.raises(FileNotFoundError, match="first_frame"):
        load_first_frame(tmp_path / "missing.png", 16, 16)
    (tmp_path / "junk.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not a readable image"):
        load_first_frame(tmp_path / "junk.png", 16, 16)
