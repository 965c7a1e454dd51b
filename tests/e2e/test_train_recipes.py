"""Every training recipe in conf/recipe/, run as users type it on the release-layout folder and the cache, with
only device and size overrides; multi-process recipes on 2 gloo processes with their own strategies.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from e2e import journey as j
from e2e.known_issues import known
from e2e.workspace import Runs, Workspace
from safetensors import safe_open

from mova_train.config import CONF_DIR
from mova_train.models.lora import lora_group
from mova_train.models.lora_file import module_of, read_lora

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOWERS = {"audio_dit", "dual_tower_bridge"}
# run -> (LoRA components it must write, issue-9 items it fails on today)
TRAINING = {
    "tiny_cpu": ({"video_dit", "video_dit_2", *TOWERS}, ()),
    "low_noise": ({"video_dit_2", *TOWERS}, ()),
    "high_noise": ({"video_dit", *TOWERS}, ()),
    "lora_ddp": ({"video_dit_2", *TOWERS}, ()),
    "lora_fsdp8": ({"video_dit", "video_dit_2", *TOWERS}, ()),
    "lora_fsdp8_cp3": ({"video_dit", "video_dit_2", *TOWERS}, ()),
    "lora_low_resource": ({"video_dit_2", *TOWERS}, ()),
    "lora_npu8": ({"video_dit_2", *TOWERS}, ()),
    "lora_lipsync": ({"video_dit_2", *TOWERS}, ()),
}


def _param(name: str) -> pytest.param:
    items = TRAINING[name][1]
    marks = [pytest.mark.e2e_runs(name), *([known(*items)] if items else [])]
    if name in j.MULTI_PROCESS:
        marks.append(pytest.mark.distributed)
    return pytest.param(name, marks=marks, id=name)


def test_every_recipe_is_run() -> None:
    recipes = {p.stem for p in (Path(CONF_DIR) / "recipe").glob("*.yaml")}
    assert recipes == set(j.RECIPE_STEPS), (
        "add each new recipe to journey.RECIPE_STEPS and run it in tests/e2e"
    )
    trained = {parts[0].split("+recipe=")[1].split()[0] for parts in j.TRAIN_RUNS.values()}
    assert trained == {r for r in recipes if not r.startswith("predict_")}
    predicted = {parts[0].split("+recipe=")[1].split()[0] for parts, _, _ in j.PREDICT_RUNS.values()}
    assert predicted == {r for r in recipes if r.startswith("predict_")}


def _lora_components(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as f:
        return {key.split(".")[0] for key in f.keys()}


@pytest.mark.parametrize("name", [_param(n) for n in TRAINING])
def test_recipe_trains_and_exports_its_lora(runs: Runs, name: str) -> None:
    expected, items = TRAINING[name]
    runs.train(name).check(*items)
    run = runs.dir(name)
    assert _lora_components(run / "lora" / "lora.safetensors") == expected
    last = run / "checkpoints" / "last.ckpt"
    if last.is_file():  # one process (FSDP2 writes a distributed-checkpoint folder)
        assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == 2
    else:
        assert last.is_dir() and any(last.glob("*.distcp"))


@pytest.mark.e2e_runs("lora_lipsync")
def test_lipsync_recipe_trains_the_video_side_only(runs: Runs) -> None:
    """The lip-sync recipe's claims: the audio-side LoRA groups (audio tower, bridge video->audio) never train
    (their B stays zero, the file lists them frozen) while the video side does, and validation at the end of fit
    samples each trained mode (a2v, i2av, t2av) with the first training clip's media.
    """
    runs.train("lora_lipsync").check()
    run = runs.dir("lora_lipsync")
    lora = read_lora(run / "lora" / "lora.safetensors")
    assert lora.meta is not None and set(lora.meta.frozen_groups) == {"audio", "bridge_v2a"}
    b_by_group: dict[str, list[torch.Tensor]] = {}
    for key, tensor in lora.tensors.items():
        if ".lora_B." in key:
            b_by_group.setdefault(lora_group(module_of(key)), []).append(tensor)
    assert set(b_by_group) == {"video", "audio", "bridge_a2v", "bridge_v2a"}
    for group in ("audio", "bridge_v2a"):
        assert not any(t.any() for t in b_by_group[group]), f"frozen group {group} trained"
    assert any(t.any() for t in b_by_group["video"]), "the video side did not train"
    sidecars = sorted((run / "validation_samples").glob("step*/*.json"))
    assert sorted(json.loads(p.read_text())["mode"] for p in sidecars) == ["a2v", "i2av", "t2av"]


def test_npu_recipe_composes_and_builds(workspace: Workspace, cache: Path) -> None:
    result = workspace.run(j.SHOW_NPU, j.TINY_TRAIN).check()
    assert "memory per device" in result.output and "Ascend 910B" in result.output
