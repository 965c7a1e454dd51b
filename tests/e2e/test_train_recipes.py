"""Every training recipe in conf/recipe/, run as users type it on the release-layout folder and the cache, with
only device and size overrides; multi-process recipes on 2 gloo processes with their own strategies."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from e2e import journey as j
from e2e.known_issues import known
from e2e.workspace import Runs, Workspace
from safetensors import safe_open

from mova_train.config import CONF_DIR

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TOWERS = {"audio_dit", "dual_tower_bridge"}
# run -> (LoRA components it must write, issue-9 items it fails on today)
TRAINING = {
    "tiny_cpu": ({"video_dit", "video_dit_2", *TOWERS}, ()),
    "low_noise": ({"video_dit_2", *TOWERS}, ()),
    "high_noise": ({"video_dit", *TOWERS}, ()),
    "lora_ddp": ({"video_dit_2", *TOWERS}, ()),
    "lora_fsdp8": ({"video_dit", "video_dit_2", *TOWERS}, (2,)),
    "lora_fsdp8_cp3": ({"video_dit", "video_dit_2", *TOWERS}, (2,)),
    "lora_low_resource": ({"video_dit_2", *TOWERS}, ()),
    "lora_npu8": ({"video_dit_2", *TOWERS}, ()),
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


def test_npu_recipe_composes_and_builds(workspace: Workspace, cache: Path) -> None:
    result = workspace.run(j.SHOW_NPU, j.TINY_TRAIN).check()
    assert "memory per device" in result.output and "Ascend 910B" in result.output
