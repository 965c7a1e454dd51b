"""DAC audio VAE: golden parity (dac + sampling files), release key manifest, padding and batching."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mova_train.codecs.configs import DACConfig
from mova_train.codecs.dac import DAC

TOL = 1e-4


def _load_golden(golden_dir: Path, name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = json.loads((golden_dir / f"{name}.json").read_text())
    return meta, load_file(str(golden_dir / f"{name}.safetensors"))


def _weights(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _golden_dac(golden_dir: Path) -> tuple[dict, dict[str, torch.Tensor], DAC]:
    meta, tensors = _load_golden(golden_dir, "dac")
    model = DAC(DACConfig.from_dict(meta["config"])).eval()
    model.load_state_dict(_weights(tensors, "weights."), strict=True)
    return meta, tensors, model


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def test_golden_dac_outputs_and_intermediates(golden_dir: Path) -> None:
    meta, t, model = _golden_dac(golden_dir)
    assert model.hop_length == meta["call"]["hop_length"]
    assert model.sample_rate == meta["config"]["sample_rate"]
    with torch.no_grad():
        wave = t["inputs.waveform"]
        padded = model.preprocess(wave)
        enc = model.encoder(padded)
        moments = model.quant_conv(enc)
        mean, logvar = model.encode_posterior(wave)
        latent = model.encode(wave)
        ours = {
            "intermediates.padded_waveform": padded,
            "intermediates.encoder_out": enc,
            "intermediates.quant_conv_out": moments,
            "intermediates.posterior_logvar": logvar,
            "outputs.latent": latent,
            "intermediates.post_quant_conv_out": model.post_quant_conv(latent),
            "outputs.waveform": model.decode(latent),
        }
    expected = {**meta["outputs"], **meta["intermediates"]}
    assert set(expected) == set(ours), "golden file lists tensors this test does not check"
    for name, spec in expected.items():
        assert list(ours[name].shape) == spec["shape"], name
        assert _max_err(ours[name], t[name]) <= TOL, name
    assert torch.equal(mean, latent)


@pytest.mark.parametrize("name", ["sampling", "sampling_cfg1"])
def test_golden_sampling_audio_decode(golden_dir: Path, name: str) -> None:
    meta, t = _load_golden(golden_dir, name)
    model = DAC(DACConfig.from_dict(meta["config"]["audio_vae"])).eval()
    model.load_state_dict(_weights(t, "weights.audio_vae."), strict=True)
    latents = t["outputs.audio_latents"]
    assert list(latents.shape) == meta["call"]["audio_latent_shape"]
    with torch.no_grad():
        audio = model.decode(latents)
    assert audio.shape[-1] == latents.shape[-1] * model.hop_length
    assert _max_err(audio, t["outputs.audio"]) <= TOL


def test_release_meta_matches_manifest(golden_dir: Path) -> None:
    entry = json.loads((golden_dir / "key_manifest_release.json").read_text())["components"]["audio_vae"]
    cfg = DACConfig.from_dict(entry["config"])
    assert cfg == DACConfig(), "release defaults drifted from the manifest config"
    with torch.device("meta"):
        model = DAC(cfg)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == entry["keys"]
    assert len(shapes) == entry["num_tensors"]
    assert sum(p.numel() for p in model.parameters()) == entry["num_params"]
    assert model.hop_length == 960


def test_encode_right_pads_with_zeros(golden_dir: Path) -> None:
    _, _, model = _golden_dac(golden_dir)
    hop = model.hop_length
    length = 5 * hop + 1
    wave = torch.rand(2, 1, length) * 1.6 - 0.8
    with torch.no_grad():
        latent = model.encode(wave)
        padded = torch.cat([wave, wave.new_zeros(2, 1, math.ceil(length / hop) * hop - length)], dim=-1)
        assert latent.shape == (2, model.latent_dim, math.ceil(length / hop))
        assert torch.equal(latent, model.encode(padded))
        out = model.decode(latent)
    assert out.shape == (2, 1, latent.shape[-1] * hop)
    assert out.abs().max() <= 1.0


def test_batch_equals_singles(golden_dir: Path) -> None:
    _, _, model = _golden_dac(golden_dir)
    wave = torch.rand(2, 1, 7 * model.hop_length) - 0.5
    with torch.no_grad():
        both = model.encode(wave)
        singles = torch.cat([model.encode(wave[i : i + 1]) for i in range(2)])
        dec_both = model.decode(both)
        dec_singles = torch.cat([model.decode(both[i : i + 1]) for i in range(2)])
    assert _max_err(both, singles) <= 1e-5
    assert _max_err(dec_both, dec_singles) <= 1e-5


def test_bad_inputs_raise(golden_dir: Path) -> None:
    _, _, model = _golden_dac(golden_dir)
    with pytest.raises(ValueError, match="mono"):
        model.encode(torch.zeros(1, 2, 12))
    with pytest.raises(ValueError, match="latent"):
        model.decode(torch.zeros(1, model.latent_dim + 1, 3))


def test_config_round_trip_and_validation() -> None:
    d = {"_class_name": "DAC", "_diffusers_version": "0.35.0", **DACConfig().to_dict()}
    d.update(encoder_rates=[2, 3], decoder_rates=[3, 2])
    cfg = DACConfig.from_dict(d)
    assert cfg.hop_length == 6
    assert DACConfig.from_dict(cfg.to_dict()) == cfg
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()
    with pytest.raises(ValueError, match="use_weight_norm"):
        DACConfig(use_weight_norm=True)
    with pytest.raises(ValueError, match="decoder_rates"):
        DACConfig(encoder_rates=[2, 3])
