"""The journey's last step: the trained LoRA exported for other tools (`python -m mova_train.export_lora`), and
the merged release-layout folder sampled by our own predict as a model folder.
"""

from __future__ import annotations

import json

import pytest
from e2e import journey as j
from e2e.workspace import Runs, check_sample
from safetensors import safe_open

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.e2e_runs("low_noise")]


def test_exports_for_diffsynth_and_comfyui(runs: Runs) -> None:
    runs.train("low_noise").check()
    for result in runs.workspace.run_all((j.EXPORT_DIFFSYNTH,), (j.EXPORT_COMFYUI,)):
        result.check()
    exports = runs.workspace.root / "exports"
    # DiffSynth: one file per component, keys without the component prefix (only what the run trained)
    files = sorted(p.name for p in (exports / "diffsynth").glob("*.safetensors"))
    assert files == ["audio_dit.safetensors", "dual_tower_bridge.safetensors", "video_dit_2.safetensors"]
    with safe_open(str(exports / "diffsynth" / "video_dit_2.safetensors"), "pt") as f:
        assert all(k.startswith("blocks.") for k in f.keys())
    (prism,) = (exports / "comfyui").glob("*.safetensors")
    with safe_open(str(prism), "pt") as f:
        assert all(k.startswith("diffusion_model.") for k in f.keys())


def test_merged_release_folder_is_a_model_folder(runs: Runs) -> None:
    runs.train("low_noise").check()
    runs.workspace.run(j.EXPORT_MERGED).check()
    merged = runs.workspace.root / "exports" / "merged"
    index = json.loads((merged / "model_index.json").read_text())
    assert "_diffusers_version" in index and index["video_dit_2"][1] == "WanModel"
    runs.workspace.run(j.PREDICT_MERGED, *j.RELEASE_PREDICT).check()
    check_sample(runs.dir("predict_merged") / "samples", j.FRAMES)
