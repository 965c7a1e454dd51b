"""Every default negative prompt is upstream's (Wan's Chinese one), defined once (issue 9 item 10)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from mova_train.config import CONF_DIR
from mova_train.sampling.requests import WAN_NEGATIVE_PROMPT, SamplingSettings


def test_negative_prompt_defaults_to_upstreams_everywhere(tmp_path: Path) -> None:
    assert (
        WAN_NEGATIVE_PROMPT.startswith("色调艳丽")
        and SamplingSettings().negative_prompt == WAN_NEGATIVE_PROMPT
    )
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for recipe in ("predict_tiny_cpu", "predict_release_360p"):
            cfg = compose("predict", overrides=[f"+recipe={recipe}", f"paths.output_dir={tmp_path}"])
            assert OmegaConf.select(cfg, "sampling.negative_prompt") == WAN_NEGATIVE_PROMPT, recipe
        train = compose("train", overrides=["callbacks=with_sampling", f"paths.output_dir={tmp_path}"])
    sampling = OmegaConf.to_container(train.callbacks.validation_sampling.sampling, resolve=True)
    assert "negative_prompt" not in sampling  # validation sampling falls back to SamplingSettings' default
    for path in (Path(CONF_DIR)).rglob("*.yaml"):
        assert "色调艳丽" not in path.read_text(), f"{path} repeats the negative prompt"
