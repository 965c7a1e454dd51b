"""``python -m mova_train.export_lora`` as the README's "Use the LoRA elsewhere" section runs it.

The commands below are the README's, run verbatim (in a folder holding ``outputs/run/lora/lora.safetensors`` and
the release folder ``MOVA-360p``); every ``exports/...`` path the section names must exist afterwards.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.lora_exports import lora_model, max_diff, random_lora, reference_merged, write_tiny_release
from safetensors import safe_open

from mova_train.models.checkpoint import load_component
from mova_train.models.lora_file import LoraExportData, save_lora
from mova_train.models.lora_formats import read_foreign_lora
from mova_train.models.lora_upstream import read_upstream_lora
from mova_train.models.release_folder import release_folder_problems

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"
LORA = "outputs/run/lora/lora.safetensors"
COMMANDS = [
    f"python -m mova_train.export_lora {LORA} --format diffsynth --out exports/diffsynth",
    f"python -m mova_train.export_lora {LORA} --format comfyui --out exports/comfyui --checkpoint MOVA-360p",
    f"python -m mova_train.export_lora {LORA} --format comfyui_wan --out exports/comfyui_wan",
    f"python -m mova_train.export_lora {LORA} --format upstream --out exports/upstream",
    f"python -m mova_train.export_lora {LORA} --format merged --out exports/merged --checkpoint MOVA-360p",
]


def _run(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(cmd)
    assert argv[0] == "python"
    return subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )


def _section() -> str:
    text = README.read_text()
    start = text.index("## Use the LoRA elsewhere")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("journey")
    base, tensors, alphas = random_lora(4, 6.0)
    save_lora(root / LORA, lora_model(base, tensors, alphas), lora_model(base, tensors, alphas).lora_spec)
    write_tiny_release(root / "MOVA-360p", base)
    for cmd in COMMANDS:
        done = _run(cmd, root)
        assert done.returncode == 0, f"{cmd}\n{done.stderr[-3000:]}"
    return root, base, tensors, alphas


def test_readme_section_holds_exactly_these_commands_and_its_paths_exist(exported):
    root = exported[0]
    section = _section()
    for cmd in COMMANDS:
        assert cmd in section, f"README 'Use the LoRA elsewhere' lacks: {cmd}"
    named = set(re.findall(r"exports/[\w./-]*\w", section))
    assert named, "the section names no exported file"
    for rel in named:
        assert (root / rel).exists(), f"README names {rel}, which the commands did not write"


def test_exports_load_back_to_the_same_lora(exported):
    root, base, tensors, alphas = exported
    for source, expected in [
        ("exports/diffsynth", tensors),
        ("exports/comfyui/mova_prism.safetensors", tensors),
        ("exports/comfyui_wan", {k: v for k, v in tensors.items() if k.startswith("video_dit")}),
    ]:
        read = read_foreign_lora(root / source, base)
        back, back_alphas = read.tensors, read.alphas
        assert back.keys() == expected.keys() and set(back_alphas.values()) == {6.0}, source
        assert all(torch.equal(back[k], expected[k]) for k in expected), source
    upstream = read_upstream_lora(root / "exports/upstream")
    assert upstream.tensors.keys() == tensors.keys() and set(upstream.alphas.values()) == {6.0}
    assert all(torch.equal(upstream.tensors[k], tensors[k]) for k in tensors)
    with safe_open(str(root / "exports/comfyui/mova_prism.safetensors"), framework="pt") as f:
        assert f.metadata()["mova_train.fused_layers"] == "2"  # read from MOVA-360p (3 video, 2 audio blocks)
        assert any(k.startswith("diffusion_model.remaining_video_blocks.0.") for k in f.keys())


def test_merged_folder_is_a_release_folder_with_the_lora_merged(exported):
    root = exported[0]
    merged = root / "exports/merged"
    assert release_folder_problems(merged) == []
    state = {}
    for comp in ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge"):
        state |= {
            f"{comp}.{k}": v
            for k, v in load_component(merged, comp, dtype=torch.float32).state_dict().items()
        }
    assert max_diff(state, reference_merged(4, 6.0)) == 0.0


def test_bad_invocations_name_the_fix(exported, tmp_path):
    root = exported[0]
    done = _run(f"python -m mova_train.export_lora {LORA} --format merged --out {tmp_path / 'm'}", root)
    assert done.returncode == 2 and "needs --checkpoint" in done.stderr
    done = _run(
        f"python -m mova_train.export_lora {root / 'MOVA-360p/model_index.json'} --format diffsynth --out {tmp_path / 'd'}",
        root,
    )
    assert done.returncode != 0 and "model_index.json" in done.stderr


def test_lora_export_writers_of_the_default_config_write_every_format(tmp_path):
    """``callbacks.lora_export.formats=[...]``: the writers of conf/callbacks/default.yaml, called as LoraExport does."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    base, tensors, alphas = random_lora(4, 6.0)
    trained = lora_model(base, tensors, alphas)
    conf = OmegaConf.load(README.parent / "conf" / "callbacks" / "default.yaml").lora_export.writers
    conf.merged.checkpoint = str(write_tiny_release(tmp_path / "MOVA-360p", base))
    conf.comfyui.fused_layers = 2
    writers = {name: instantiate(node) for name, node in conf.items()}
    export = LoraExportData(tensors, trained.lora_spec, None)
    written = {name: writer(tmp_path / "lora", export) for name, writer in writers.items()}
    assert sorted(written) == ["comfyui", "comfyui_wan", "diffsynth", "merged", "upstream"]
    assert (tmp_path / "lora/comfyui/mova_prism.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "lora/diffsynth").iterdir()) == [
        "audio_dit.safetensors",
        "dual_tower_bridge.safetensors",
        "video_dit.safetensors",
        "video_dit_2.safetensors",
    ]
    assert release_folder_problems(tmp_path / "lora/merged") == []
    writers["merged"](tmp_path / "lora", export)  # a later export replaces merged/
    assert (
        not (tmp_path / "lora/merged.tmp").exists()
        and release_folder_problems(tmp_path / "lora/merged") == []
    )
