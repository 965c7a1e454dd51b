"""Wan video VAE wrapper: golden sampling parity (conditioning, y, decode), release key manifest, key names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from mova_train.codecs.configs import VideoVAEConfig
from mova_train.codecs.video_vae import MASK_CHANNELS, WanVideoVAE

TOL = 1e-4
PREFIX = "weights.video_vae."


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module", params=["sampling", "sampling_cfg1"])
def golden(
    request: pytest.FixtureRequest, golden_dir: Path
) -> tuple[dict, dict[str, torch.Tensor], WanVideoVAE]:
    name = request.param
    meta = json.loads((golden_dir / f"{name}.json").read_text())
    tensors = load_file(str(golden_dir / f"{name}.safetensors"))
    model = WanVideoVAE(VideoVAEConfig.from_dict(meta["config"]["video_vae"])).eval()
    weights = {k[len(PREFIX) :]: v for k, v in tensors.items() if k.startswith(PREFIX)}
    model.load_state_dict(weights, strict=True)
    return meta, tensors, model


def test_golden_condition_latent_and_y(golden: tuple) -> None:
    meta, t, model = golden
    call = meta["call"]
    first = t["inputs.first_frame"]
    num_frames = call["num_frames"]
    video = torch.cat(
        [first.unsqueeze(2), first.new_zeros(*first.shape[:2], num_frames - 1, *first.shape[2:])], 2
    )
    with torch.no_grad():
        cond = model.encode_raw(video)
        y = model.encode_first_frame_condition(first, num_frames)
    assert list(cond.shape) == call["video_latent_shape"]
    assert _max_err(cond, t["intermediates.condition_latent"]) <= TOL
    assert _max_err(y, t["intermediates.y"]) <= TOL
    assert torch.equal(y[:, :MASK_CHANNELS, 0], torch.ones_like(y[:, :MASK_CHANNELS, 0]))
    assert not y[:, :MASK_CHANNELS, 1:].any()
    assert _max_err(model.normalize(cond), y[:, MASK_CHANNELS:]) <= 1e-6


def test_golden_decode(golden: tuple) -> None:
    meta, t, model = golden
    latents = t["outputs.video_latents"]
    denorm = t["intermediates.video_latents_denormalized"]
    assert _max_err(model.denormalize(latents), denorm) <= 1e-5
    with torch.no_grad():
        raw = model.decode_raw(denorm)
        video = model.decode(latents)
    assert raw.shape[2] == meta["call"]["num_frames"]
    assert _max_err(raw, t["outputs.video"]) <= TOL
    assert _max_err(video, t["outputs.video"]) <= TOL
    assert video.abs().max() <= 1.0


def test_normalize_is_reciprocal_std_and_inverts(golden: tuple) -> None:
    meta, t, model = golden
    cfg = meta["config"]["video_vae"]
    z = t["intermediates.condition_latent"]
    shape = (1, len(cfg["latents_mean"]), 1, 1, 1)
    mean = torch.tensor(cfg["latents_mean"]).view(shape)
    inv_std = 1.0 / torch.tensor(cfg["latents_std"]).view(shape)
    assert torch.equal(model.normalize(z), (z - mean) * inv_std)
    assert _max_err(model.denormalize(model.normalize(z)), z) <= 1e-5


def test_state_dict_uses_diffusers_keys_also_when_nested(golden: tuple) -> None:
    _, t, model = golden
    golden_keys = {k[len(PREFIX) :] for k in t if k.startswith(PREFIX)}
    assert set(model.state_dict()) == golden_keys
    assert set(model.vae.state_dict()) == golden_keys

    class Parent(nn.Module):
        def __init__(self, child: WanVideoVAE) -> None:
            super().__init__()
            self.video_vae = child

    parent = Parent(WanVideoVAE(model.cfg))
    sd = parent.state_dict()
    assert set(sd) == {f"video_vae.{k}" for k in golden_keys}
    parent.load_state_dict({f"video_vae.{k}": v for k, v in model.state_dict().items()}, strict=True)
    for k, v in model.state_dict().items():
        assert torch.equal(parent.state_dict()[f"video_vae.{k}"], v), k
    with pytest.raises(RuntimeError, match="Missing"):
        parent.load_state_dict({}, strict=True)


def test_release_meta_matches_manifest(golden_dir: Path) -> None:
    entry = json.loads((golden_dir / "key_manifest_release.json").read_text())["components"]["video_vae"]
    cfg = VideoVAEConfig.from_dict(entry["config"])
    assert cfg == VideoVAEConfig(), "release defaults drifted from the manifest config"
    with torch.device("meta"):
        model = WanVideoVAE(cfg)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == entry["keys"]
    assert len(shapes) == entry["num_tensors"]
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"]
    assert (model.temporal_factor, model.spatial_factor) == (4, 8)


def test_bad_inputs_raise(golden: tuple) -> None:
    _, _, model = golden
    with pytest.raises(ValueError, match="4k \\+ 1"):
        model.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="divisible"):
        model.encode(torch.zeros(1, 3, 1, 12, 16))
    with pytest.raises(ValueError, match="latents"):
        model.decode(torch.zeros(1, model.z_dim + 1, 1, 2, 2))


def test_config_round_trip_and_validation() -> None:
    d = {"_class_name": "AutoencoderKLWan", "_diffusers_version": "0.42.1", **VideoVAEConfig().to_dict()}
    cfg = VideoVAEConfig.from_dict(d)
    assert cfg == VideoVAEConfig()
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()
    with pytest.raises(ValueError, match="latents_mean"):
        VideoVAEConfig(z_dim=8)
    with pytest.raises(ValueError, match="positive"):
        VideoVAEConfig(latents_std=[0.0] * 16)
