"""The tier's model folder is a release folder: the libraries that write the release read it back with their own
loaders, and its files are laid out as docs/model.md §1 describes (so the journey runs on what users download).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from mova_train.models.release_folder import release_folder_problems

pytestmark = pytest.mark.e2e

COMPONENTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge", "audio_vae", "video_vae")


def test_layout_and_configs(release: Path, golden_dir: Path) -> None:
    index = json.loads((release / "model_index.json").read_text())
    assert index["_class_name"] == "MOVA" and index["_diffusers_version"]
    assert index["video_vae"] == ["diffusers", "AutoencoderKLWan"]
    assert index["text_encoder"] == ["transformers", "UMT5EncoderModel"]
    assert index["boundary_ratio"] == 0.9 and index["audio_vae_type"] == "dac"
    scheduler = json.loads((release / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "FlowMatchPairScheduler"
    assert scheduler["shift"] == 5.0 and scheduler["extra_one_step"] is True
    for name in COMPONENTS:
        config = json.loads((release / name / "config.json").read_text())
        assert {"_class_name", "_diffusers_version"} <= set(config), name
    golden = json.loads((golden_dir / "sampling.json").read_text())["config"]
    assert (
        json.loads((release / "video_dit" / "config.json").read_text())["dim"] == golden["video_dit"]["dim"]
    )
    # the rules SGLang and upstream's pipeline check, as mova_train writes them down (written independently here)
    assert release_folder_problems(release) == []


@pytest.mark.parametrize("name", ["video_dit", "video_dit_2"])
def test_experts_are_sharded_with_an_index(release: Path, golden_dir: Path, name: str) -> None:
    folder = release / name
    assert not (folder / "diffusion_pytorch_model.safetensors").exists()
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert shards == [f"diffusion_pytorch_model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    with safe_open(str(golden_dir / "sampling.safetensors"), framework="pt") as g:
        expected = {k.split(".", 2)[2] for k in g.keys() if k.startswith(f"weights.{name}.")}
        key = sorted(expected)[0]
        with safe_open(str(folder / index["weight_map"][key]), framework="pt") as f:
            stored = f.get_tensor(key)
            assert stored.dtype == torch.bfloat16  # as released
            assert torch.equal(stored, g.get_tensor(f"weights.{name}.{key}").to(torch.bfloat16))
    assert set(index["weight_map"]) == expected


def test_libraries_read_their_own_folders(release: Path, golden_dir: Path) -> None:
    from diffusers import AutoencoderKLWan
    from transformers import AutoTokenizer, UMT5EncoderModel

    vae = AutoencoderKLWan.from_pretrained(str(release / "video_vae"))
    with safe_open(str(golden_dir / "sampling.safetensors"), framework="pt") as g:
        ref = g.get_tensor("weights.video_vae.decoder.conv_out.weight")
    assert torch.equal(vae.state_dict()["decoder.conv_out.weight"], ref)
    tokenizer = AutoTokenizer.from_pretrained(str(release / "tokenizer"))
    assert type(tokenizer).__name__ in ("T5Tokenizer", "T5TokenizerFast")
    ids = tokenizer("a cat plays with a ball of blue yarn")["input_ids"]
    assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
    encoder = UMT5EncoderModel.from_pretrained(str(release / "text_encoder"))
    golden = json.loads((golden_dir / "sampling.json").read_text())["config"]
    assert encoder.config.d_model == golden["video_dit"]["text_dim"]
