"""Release folders other tools load: SGLang's folder rules, and a LoRA merged into a copy of a release.

``_sglang_load_errors`` re-implements what SGLang checks before and while loading a MOVA folder, from
sgl-project/sglang ``python/sglang/multimodal_gen``:

* ``runtime/utils/hf_diffusers_utils.py`` ``verify_model_config_and_directory`` (``model_index.json`` exists and has
  ``_diffusers_version``; every ``[library, class]`` entry has its folder), ``_verify_diffusers_model_complete`` /
  ``_get_missing_declared_weight_components`` (weight-bearing entries, i.e. all but names containing tokenizer /
  scheduler / processor / feature_extractor, hold ``*.safetensors`` / ``*.bin`` / ``*.pt`` / ``*.pth`` / ``*.ckpt``)
  and ``_check_index_files_for_missing_shards`` (every shard of a ``*.safetensors.index.json`` exists);
* ``runtime/pipelines/mova_pipeline.py``: ``MOVAPipeline`` (``pipeline_name`` ``MOVA``, alias ``MOVAPipeline``) and
  its ``_required_config_modules``; ``pipelines_core/composed_pipeline_base.py`` ``load_modules`` pops
  ``_class_name`` / ``_diffusers_version`` / ``boundary_ratio`` and indexes ``model_index[module]`` for each
  required module, which must be a ``[library, architecture]`` pair;
* ``runtime/loader/component_loaders/transformer_loader.py`` and ``bridge_loader.py``: ``config.json``'s
  ``_class_name`` is resolved in the model registry (``WanModel`` and ``WanAudioModel``: the ``EntryClass`` of
  ``runtime/models/dits/mova_video_dit.py`` / ``mova_audio_dit.py``; the bridge's ``DualTowerConditionalBridge``)
  and ``configs/models/dits/mova_video.py`` asserts ``not has_image_input``.

The library strings are upstream's (docs/model.md §1.2): upstream's ``MOVA.from_pretrained`` (diffusers'
``DiffusionPipeline``) imports them.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from helpers.lora_exports import max_diff, peft_merged, random_lora, reference_merged, write_tiny_release
from safetensors import safe_open

from mova_train.models.checkpoint import INDEX_NAME, CheckpointError, load_component, save_component
from mova_train.models.lora_formats import split_modules
from mova_train.models.release_folder import component_folder_problems, export_merged, release_folder_problems

SGLANG_REQUIRED = [
    "video_vae",
    "audio_vae",
    "text_encoder",
    "tokenizer",
    "scheduler",
    "video_dit",
    "video_dit_2",
    "audio_dit",
    "dual_tower_bridge",
]
SGLANG_REGISTRY = {"WanModel", "WanAudioModel", "DualTowerConditionalBridge"}


def _sglang_load_errors(root: Path) -> list[str]:
    """The errors SGLang raises for ``root`` (empty: it loads); rules from the module docstring."""
    index_path = root / "model_index.json"
    if not index_path.is_file():
        return ["does not contain model_index.json"]
    index = json.loads(index_path.read_text())
    if "_diffusers_version" not in index:
        return ["model_index.json does not contain _diffusers_version"]
    entries = {
        k: v
        for k, v in index.items()
        if isinstance(v, list) and len(v) == 2 and all(isinstance(i, str) for i in v)
    }
    missing = [k for k in entries if not (root / k).exists()]
    if missing:
        return [f"missing required component directories: {missing}"]
    errors = []
    for key in entries:
        if key.startswith("_") or any(
            h in key.lower() for h in ("tokenizer", "scheduler", "processor", "feature_extractor")
        ):
            continue
        if not any(any((root / key).glob(p)) for p in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")):
            errors.append(f"{key}/<weights> missing")
    for folder in [root, *(p for p in root.iterdir() if p.is_dir())]:
        for idx in folder.glob("*.safetensors.index.json"):
            for shard in set(json.loads(idx.read_text())["weight_map"].values()):
                if not (folder / shard).exists():
                    errors.append(f"shard {folder.name}/{shard} missing")
    if errors:
        return errors
    if index.get("_class_name") not in ("MOVA", "MOVAPipeline"):
        return [f"no pipeline registered for {index.get('_class_name')!r}"]
    for module in SGLANG_REQUIRED:
        if module not in index:
            return [f"KeyError: {module!r}"]
        if not isinstance(index[module], list) or len(index[module]) != 2:
            return [f"Module {module!r} must be a [library, architecture] pair"]
    for module in ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge"):
        config = json.loads((root / module / "config.json").read_text())
        if config.get("_class_name") not in SGLANG_REGISTRY:
            return [f"{module}: model class {config.get('_class_name')!r} not registered"]
        if module.startswith("video_dit") and config.get("has_image_input", False):
            return [f"{module}: has_image_input must be False"]
    return []


@pytest.fixture
def release(tmp_path):
    base, _, _ = random_lora(4, 6.0)
    return write_tiny_release(tmp_path / "base", base)


def _break(root: Path, defect: str) -> None:
    index = json.loads((root / "model_index.json").read_text())
    if defect == "no _diffusers_version":
        index.pop("_diffusers_version")
    elif defect == "no video_dit_2 entry":
        index.pop("video_dit_2")
    elif defect == "mova_train library strings":
        index["video_dit"] = ["mova_train", "WanModel"]
    elif defect == "missing shard":
        next((root / "video_dit").glob("diffusion_pytorch_model-00001-*.safetensors")).unlink()
    elif defect == "missing audio_vae folder":
        shutil.rmtree(root / "audio_vae")
    elif defect == "wrong config class":
        config = json.loads((root / "audio_dit" / "config.json").read_text())
        (root / "audio_dit" / "config.json").write_text(json.dumps({**config, "_class_name": "AudioDiT"}))
    elif defect == "no bridge weights":
        (root / "dual_tower_bridge" / "diffusion_pytorch_model.safetensors").unlink()
    (root / "model_index.json").write_text(json.dumps(index))


SGLANG_DEFECTS = [
    "no _diffusers_version",
    "no video_dit_2 entry",
    "missing shard",
    "missing audio_vae folder",
    "wrong config class",
    "no bridge weights",
]


def test_a_release_folder_passes_sglangs_rules_and_ours(release):
    assert (release / "video_dit" / INDEX_NAME).is_file()  # sharded, like the release
    assert _sglang_load_errors(release) == []
    assert release_folder_problems(release) == []


@pytest.mark.parametrize("defect", [*SGLANG_DEFECTS, "mova_train library strings"])
def test_every_defect_sglang_or_upstream_refuses_is_reported(release, defect):
    _break(release, defect)
    if defect in SGLANG_DEFECTS:
        assert _sglang_load_errors(release), defect
    problems = release_folder_problems(release)
    assert problems, defect
    with pytest.raises(CheckpointError, match="not a complete release folder"):
        export_merged({}, {}, release, release.parent / "out")


def _load_all(root: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    out = {}
    for comp in ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge"):
        out |= {f"{comp}.{k}": v for k, v in load_component(root, comp, dtype=dtype).state_dict().items()}
    return out


def test_merged_export_equals_peft_merge_exactly_and_keeps_the_layout(release, tmp_path):
    _, tensors, alphas = random_lora(4, 6.0)
    out = export_merged(
        tensors, alphas, release, tmp_path / "merged", provenance={"lora": "lora.safetensors"}
    )
    assert _sglang_load_errors(out) == [] and release_folder_problems(out) == []
    assert max_diff(_load_all(out, torch.float32), reference_merged(4, 6.0)) == 0.0
    base_files = sorted(p.relative_to(release) for p in release.rglob("*") if p.is_file())
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == sorted(
        [*base_files, Path("mova_lora_merge.json")]
    )
    assert (out / "video_dit" / INDEX_NAME).read_text() == (release / "video_dit" / INDEX_NAME).read_text()
    targets = {f"{m}.weight" for m in split_modules(tensors)}
    for rel in base_files:  # files without a LoRA target are hard links, the others new files
        touched = rel.suffix == ".safetensors" and any(
            f"{rel.parts[0]}.{k}" in targets for k in safe_open(str(release / rel), framework="pt").keys()
        )
        assert (os.stat(out / rel).st_ino == os.stat(release / rel).st_ino) != touched, rel
    record = json.loads((out / "mova_lora_merge.json").read_text())
    assert record["lora"] == "lora.safetensors" and record["lora_modules"] == len(alphas)


def test_merged_export_of_a_bf16_release_rounds_once(tmp_path):
    base, tensors, alphas = random_lora(4, 8.0)
    root = write_tiny_release(tmp_path / "base", base, dtype=torch.bfloat16)
    out = export_merged(tensors, alphas, root, tmp_path / "merged", copy=True)
    merged = _load_all(out, torch.bfloat16)
    base_bf16 = _load_all(root, torch.bfloat16)
    pairs = split_modules(tensors)
    for key, value in merged.items():
        module = key.removesuffix(".weight")
        if module in pairs:
            a, b = pairs[module]
            expected = (base_bf16[key].float() + (b @ a) * (8.0 / 4)).to(torch.bfloat16)
            assert torch.equal(value, expected), key
        else:
            assert torch.equal(value, base_bf16[key]), key
    assert not any(os.stat(p).st_nlink > 1 for p in out.rglob("*") if p.is_file())  # copy=True: no hard links


def test_merged_export_refuses_before_writing(release, tmp_path):
    _, tensors, alphas = random_lora(4, 6.0)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    with pytest.raises(CheckpointError, match="is not empty"):
        export_merged(tensors, alphas, release, tmp_path / "busy")
    with pytest.raises(CheckpointError, match="inside the base"):
        export_merged(tensors, alphas, release, release / "merged")
    wrong = {k: torch.cat([v, v], dim=1) if k.endswith("lora_A.weight") else v for k, v in tensors.items()}
    with pytest.raises(CheckpointError, match="is this the base the LoRA was trained on"):
        export_merged(wrong, alphas, release, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_merged_tensor_bytes_land_on_their_keys(release, tmp_path):
    _, tensors, alphas = random_lora(4, 6.0)
    out = export_merged(tensors, alphas, release, tmp_path / "merged")
    shard = next((out / "video_dit").glob("diffusion_pytorch_model-00001-*.safetensors"))
    with (
        safe_open(str(shard), framework="pt") as f,
        safe_open(str(release / shard.relative_to(out)), framework="pt") as g,
    ):
        assert list(f.keys()) == list(g.keys()) and f.metadata() == g.metadata()


def test_full_finetune_component_folders_follow_the_loader_rules(release, tmp_path):
    """What ``LoraExport`` writes for ``module.full_finetune`` (``save_component(None, ..., state=...)``)."""
    base, _, _ = random_lora(4, 6.0)
    state = {k: v + 1.0 for k, v in base.dual_tower_bridge.state_dict().items()}
    folder = save_component(
        None, tmp_path / "components", "dual_tower_bridge", config=base.dual_tower_bridge.config, state=state
    )
    assert component_folder_problems(folder, "dual_tower_bridge") == []
    assert json.loads((folder / "config.json").read_text())["_class_name"] in SGLANG_REGISTRY
    out = export_merged({}, {}, release, tmp_path / "merged", components={"dual_tower_bridge": state})
    merged = load_component(out, "dual_tower_bridge", dtype=torch.float32).state_dict()
    assert max_diff(merged, state) == 0.0
    assert _sglang_load_errors(out) == [] and json.loads((out / "mova_lora_merge.json").read_text())[
        "full_finetune"
    ] == ["dual_tower_bridge"]


def test_lora_and_full_finetune_merge_on_top_of_each_other(release, tmp_path):
    base, tensors, alphas = random_lora(4, 6.0)
    audio = {k: v * 0.5 for k, v in base.audio_dit.state_dict().items()}
    out = export_merged(tensors, alphas, release, tmp_path / "merged", components={"audio_dit": audio})
    replaced = copy.deepcopy(base)
    replaced.audio_dit.load_state_dict(audio)
    expected = {
        k.removeprefix("audio_dit."): v
        for k, v in peft_merged(replaced, tensors, alphas).items()
        if k.startswith("audio_dit.")
    }
    assert max_diff(load_component(out, "audio_dit", dtype=torch.float32).state_dict(), expected) == 0.0


@pytest.mark.slow
def test_a_folder_written_like_the_release_passes_and_merges(tmp_path, golden_dir):
    """The e2e tier's release folder (diffusers / transformers ``save_pretrained``, bf16 shards + index)."""
    from helpers.release_folder import write_release_folder

    from mova_train.models.checkpoint import load_dual_tower
    from mova_train.models.lora import LoraSpec, inject_lora, lora_state_dict

    root = write_release_folder(tmp_path / "MOVA-360p", golden_dir)
    assert _sglang_load_errors(root) == [] and release_folder_problems(root) == []
    model = load_dual_tower(root, dtype=torch.float32)
    inject_lora(model, LoraSpec(rank=2, alpha=3.0, preset="attn"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    tensors = {k: v.clone() for k, v in lora_state_dict(model).items()}
    pairs = split_modules(tensors)
    out = export_merged(tensors, {m: 3.0 for m in pairs}, root, tmp_path / "merged")
    assert _sglang_load_errors(out) == [] and release_folder_problems(out) == []
    for comp in ("video_dit", "dual_tower_bridge"):
        base = load_component(root, comp, dtype=torch.bfloat16).state_dict()
        merged = load_component(out, comp, dtype=torch.bfloat16).state_dict()
        for key, value in merged.items():
            module = f"{comp}.{key.removesuffix('.weight')}"
            expected = base[key]
            if module in pairs:
                a, b = pairs[module]
                expected = (base[key].float() + (b @ a) * (3.0 / 2)).to(torch.bfloat16)
            assert torch.equal(value, expected), key
