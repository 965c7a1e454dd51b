"""Every predict recipe with the LoRA that training wrote (and with a high-noise + low-noise pair), ending in an
mp4 whose video and audio streams ffprobe reads.
"""

from __future__ import annotations

import pytest
import torch
from e2e import journey as j
from e2e.workspace import Runs, check_sample
from safetensors.torch import load_file

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _param(step: str) -> pytest.param:
    return pytest.param(step, marks=pytest.mark.e2e_runs(*j.PREDICT_RUNS[step][1]), id=step)


@pytest.mark.parametrize("step", [_param(s) for s in j.PREDICT_RUNS])
def test_predict_recipe_with_trained_lora(runs: Runs, step: str) -> None:
    parts, trained, frames = j.PREDICT_RUNS[step]
    for name in trained:
        runs.train(name).check()
    runs.workspace.run(*parts).check()
    sidecar = check_sample(runs.dir(step) / "samples", frames)
    loaded = sorted((runs.workspace.root / entry["path"]).resolve() for entry in sidecar["lora"])
    assert loaded == sorted((runs.dir(name) / "lora" / "lora.safetensors").resolve() for name in trained)
    if step != "predict_tiny_cpu":
        assert sidecar["request"]["first_frame"].endswith("media/single_person.jpg")


@pytest.mark.e2e_runs("low_noise", "high_noise")
def test_expert_pair_shares_one_audio_and_bridge_adapter(runs: Runs) -> None:
    """The second single-expert run (README: `lora.init_from` + `freeze_groups=[shared]`) keeps the first run's
    audio/bridge adapters: the pair carries one shared set, and each file one video expert.
    """
    for name in ("low_noise", "high_noise"):
        runs.train(name).check()
    low, high = (load_file(runs.dir(n) / "lora" / "lora.safetensors") for n in ("low_noise", "high_noise"))
    shared = sorted(k for k in low.keys() & high.keys() if k.startswith(("audio_dit.", "dual_tower_bridge.")))
    assert shared, "the pair's files share no audio/bridge adapter tensors"
    different = [k for k in shared if not torch.equal(low[k], high[k])]
    assert not different, f"{len(different)} shared adapter tensors differ, e.g. {different[:3]}"
    assert not any(k.startswith("video_dit_2.") for k in high) and any(
        k.startswith("video_dit.") for k in high
    )
    assert not any(k.startswith("video_dit.") for k in low) and any(k.startswith("video_dit_2.") for k in low)
