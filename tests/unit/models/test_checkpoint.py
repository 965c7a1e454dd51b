"""Release-layout checkpoint folders: round trips (single file and sharded) and broken folders."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.tiny import tiny_inputs
from safetensors.torch import load_file, save_file

from mova_train.codecs.configs import DACConfig, VideoVAEConfig
from mova_train.codecs.dac import DAC
from mova_train.codecs.video_vae import WanVideoVAE
from mova_train.models import mova_tiny
from mova_train.models.checkpoint import (
    INDEX_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    load_component,
    load_dual_tower,
    save_component,
    save_dual_tower,
)


@pytest.fixture(scope="module")
def tiny():
    return mova_tiny().eval()


@pytest.fixture
def folder(tmp_path, tiny):
    save_dual_tower(tiny, tmp_path)
    return tmp_path


@pytest.mark.parametrize("max_shard_bytes", [None, 20_000])
def test_round_trip_identical_outputs(tmp_path, tiny, max_shard_bytes):
    save_dual_tower(tiny, tmp_path, max_shard_bytes=max_shard_bytes)
    sharded = (tmp_path / "video_dit" / INDEX_NAME).is_file()
    assert sharded == (max_shard_bytes is not None)
    assert (tmp_path / "model_index.json").is_file()
    loaded = load_dual_tower(tmp_path, dtype=torch.float32)
    with torch.no_grad():
        for expert in ("video_dit", "video_dit_2"):
            x = tiny_inputs(expert=expert, audio_len=9, text_len=5, timestep=930.0, seed=3)
            for a, b in zip(tiny(**x), loaded(**x), strict=True):
                assert torch.equal(a, b)


def test_default_dtype_is_bf16_with_fp32_time_mlps(folder):
    model = load_dual_tower(folder, experts=("video_dit",))
    assert model.video_dit_2 is None
    assert model.video_dit.blocks[0].self_attn.q.weight.dtype == torch.bfloat16
    assert model.audio_dit.time_projection[1].weight.dtype == torch.float32
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(t.is_meta for t in model.state_dict().values())


def test_codec_components_round_trip(tmp_path):
    dac_cfg = DACConfig(
        encoder_dim=4, encoder_rates=[2, 3], latent_dim=8, decoder_dim=16, decoder_rates=[3, 2]
    )
    vae_cfg = VideoVAEConfig(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2, 2],
        num_res_blocks=1,
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )
    for name, module in (("audio_vae", DAC(dac_cfg)), ("video_vae", WanVideoVAE(vae_cfg))):
        save_component(module, tmp_path, name, max_shard_bytes=50_000)
        loaded = load_component(tmp_path, name, dtype=torch.float32)
        ref = module.state_dict()
        got = loaded.state_dict()
        assert ref.keys() == got.keys()
        assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_model_index_with_foreign_entries_is_tolerated(folder):
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "MOVA", "audio_vae": ["x", "DAC"]}))
    load_component(folder, "audio_dit")


def _rewrite(folder, name, edit):
    path = folder / name / WEIGHTS_NAME
    state = load_file(str(path))
    edit(state)
    save_file(state, str(path))


def test_missing_component(folder):
    with pytest.raises(CheckpointError, match=r"component 'audio_vae'.*config.json not found"):
        load_component(folder, "audio_vae")


def test_missing_key_names_component_key_and_shape(folder):
    _rewrite(folder, "audio_dit", lambda s: s.pop("blocks.1.ffn.0.weight"))
    with pytest.raises(
        CheckpointError,
        match=r"'audio_dit'.*missing key 'blocks.1.ffn.0.weight' \(expected shape \[64, 32\]\)",
    ):
        load_component(folder, "audio_dit")


def test_unexpected_key(folder):
    _rewrite(folder, "dual_tower_bridge", lambda s: s.update({"extra.weight": torch.zeros(3)}))
    with pytest.raises(
        CheckpointError, match=r"'dual_tower_bridge'.*unexpected key 'extra.weight' \(found shape \[3\]\)"
    ):
        load_component(folder, "dual_tower_bridge")


def test_wrong_shape(folder):
    _rewrite(folder, "video_dit", lambda s: s.update({"head.head.bias": torch.zeros(7)}))
    with pytest.raises(
        CheckpointError, match=r"'video_dit'.*key 'head.head.bias': expected shape \[16\], found \[7\]"
    ):
        load_component(folder, "video_dit")


def test_missing_weights_and_missing_shard(tmp_path, tiny):
    save_dual_tower(tiny, tmp_path, max_shard_bytes=20_000)
    next((tmp_path / "audio_dit").glob("*-00002-of-*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match=r"'audio_dit'.*shard .* is missing"):
        load_component(tmp_path, "audio_dit")
    for path in (tmp_path / "video_dit").glob("diffusion_pytorch_model*"):
        path.unlink()
    with pytest.raises(CheckpointError, match=r"'video_dit'.*neither"):
        load_component(tmp_path, "video_dit")


def test_bad_config_names_the_file(folder):
    path = folder / "audio_dit" / "config.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "vae_type": "oobleck"}))
    with pytest.raises(CheckpointError, match=r"audio_dit/config.json.*oobleck"):
        load_component(folder, "audio_dit")


def test_model_index_has_upstream_library_strings_and_loads_in_diffusers(folder):
    from diffusers import DiffusionPipeline
    from diffusers.pipelines.pipeline_loading_utils import _maybe_raise_warning_for_inpainting
    from packaging import version

    index = json.loads((folder / "model_index.json").read_text())
    # docs/model.md §1.2 (what diffusers' save_pretrained writes for upstream's MOVA pipeline)
    assert index["video_dit"] == index["video_dit_2"] == ["mova.diffusion.models.wan_video_dit", "WanModel"]
    assert index["audio_dit"] == ["mova.diffusion.models.wan_audio_dit", "WanAudioModel"]
    assert index["dual_tower_bridge"] == ["mova.diffusion.models.interactionv2", "DualTowerConditionalBridge"]
    assert index["_class_name"] == "MOVA" and index["boundary_ratio"] == 0.9
    config = DiffusionPipeline.load_config(str(folder))  # diffusers' own model_index parsing
    assert version.parse(config["_diffusers_version"]) >= version.parse("0.30")
    _maybe_raise_warning_for_inpainting(DiffusionPipeline, str(folder), config)  # reads _diffusers_version
    components = {k: v for k, v in config.items() if not k.startswith("_") and isinstance(v, list)}
    assert set(components) == {
        "video_dit",
        "video_dit_2",
        "audio_dit",
        "dual_tower_bridge",
    }  # what the folder has
    assert all(len(v) == 2 and all(isinstance(s, str) for s in v) for v in components.values())
    sub = json.loads((folder / "video_dit" / "config.json").read_text())
    assert sub["_class_name"] == "WanModel" and "_diffusers_version" in sub


def test_model_index_merges_into_a_release_copy(folder, tiny):
    release = {
        "_class_name": "MOVA",
        "_diffusers_version": "0.35.1",
        "video_vae": ["diffusers", "AutoencoderKLWan"],
        "audio_vae": ["mova.diffusion.models.dac_vae", "DAC"],
        "scheduler": ["mova.diffusion.schedulers.flow_match_pair", "FlowMatchPairScheduler"],
        "video_dit": ["mova.diffusion.models.wan_video_dit", "WanModel"],
        "boundary_ratio": 0.9,
        "audio_vae_type": "dac",
    }
    (folder / "model_index.json").write_text(json.dumps(release))
    save_dual_tower(tiny, folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert {k: index[k] for k in release} == release  # nothing the release wrote was overwritten
    assert index["video_dit_2"] == ["mova.diffusion.models.wan_video_dit", "WanModel"]
    (folder / "model_index.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="model_index.json is not valid JSON"):
        save_dual_tower(tiny, folder)


def test_component_override_loads_an_exported_component(tmp_path, tiny):
    from mova_train.models.checkpoint import load_component_into

    save_dual_tower(tiny, tmp_path / "release")
    tuned = mova_tiny(seed=5)
    save_component(tuned.dual_tower_bridge, tmp_path / "export", "dual_tower_bridge")
    folder = tmp_path / "export" / "dual_tower_bridge"
    loaded = load_dual_tower(
        tmp_path / "release", dtype=torch.float32, components={"dual_tower_bridge": folder}
    )
    small = mova_tiny(components={"dual_tower_bridge": str(folder)})
    for model in (loaded, small):
        for k, v in tuned.dual_tower_bridge.state_dict().items():
            assert torch.equal(model.dual_tower_bridge.state_dict()[k], v), k
        assert torch.equal(
            model.audio_dit.state_dict()["head.head.weight"], tiny.audio_dit.state_dict()["head.head.weight"]
        )
    with pytest.raises(CheckpointError, match="not loaded components"):
        load_dual_tower(tmp_path / "release", components={"text_encoder": folder})
    with pytest.raises(CheckpointError, match="another architecture"):
        load_component_into(mova_tiny(num_layers=3).dual_tower_bridge, folder, "dual_tower_bridge")
