"""`conf/predict.yaml` with every predict recipe composes, instantiates and predicts (model swapped to tiny).

The release recipes keep their `_partial_` denoiser (a factory the module calls in `configure_model`): the tiny
model is swapped in as a partial too, so the path that used to fail with
`'_DeferredTarget' object has no attribute 'eval'` (issue 9 item 1) runs here, through the real Trainer.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from mova_train.config import CONF_DIR

CONF = Path(CONF_DIR)
REPO = CONF.parent
PREDICT_RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("predict_*.yaml"))


def _compose(tmp_path: Path, overrides: list[str]) -> DictConfig:
    GlobalHydra.instance().clear()
    paths = [
        f"paths.{key}={tmp_path / sub}" for key, sub in (("output_dir", "out"), ("checkpoint_dir", "ckpt"))
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("predict", overrides=[*paths, *overrides])


def _force_tiny(cfg: DictConfig) -> DictConfig:
    """The tiny model in place of the recipe's (a partial where the recipe's denoiser is one), CPU, tiny clips."""
    partial = bool(cfg.model.denoiser.get("_partial_", False))
    with open_dict(cfg):
        cfg.model.denoiser = {
            "_target_": "mova_train.models.builders.mova_tiny",
            "_partial_": partial,
            "experts": "${mova.experts:${expert}}",  # the recipe's resolver, through module.denoiser's interpolation
        }
        cfg.model.encoders = {"_target_": "mova_train.codecs.encoders.tiny_encoders"}
        cfg.model.scheduler = {"_target_": "mova_train.schedulers.flow_match.FlowMatchScheduler"}
        cfg.model.boundary_timestep = 900.0
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.devices = 1
        cfg.trainer.precision = "32-true"
        cfg.predict.model_dtype = None
        cfg.requests = None
        cfg.prompt = "a red ball"
        cfg.sampling.update(num_frames=5, height=32, width=32, fps=8.0, steps=1)
    return cfg


def test_predict_recipes_exist() -> None:
    assert {"predict_tiny_cpu", "predict_release_360p"} <= set(PREDICT_RECIPES)


@pytest.mark.parametrize("recipe", PREDICT_RECIPES)
def test_predict_recipe_composes_instantiates_and_predicts(recipe: str, tmp_path: Path) -> None:
    from mova_train.predict import predict

    cfg = _compose(tmp_path, [f"+recipe={recipe}"])
    assert cfg.task_name == recipe
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if recipe.startswith("predict_release"):
        assert cfg.model.denoiser._partial_  # the case of issue 9 item 1
    written = predict(_force_tiny(cfg))
    assert len(written) == 1 and written[0].stat().st_size > 0


def test_module_builds_a_partial_denoiser_in_configure_model(tmp_path: Path) -> None:
    cfg = _force_tiny(_compose(tmp_path, ["+recipe=predict_release_360p"]))
    module = instantiate(cfg.module, _convert_="all")
    assert module.denoiser is None  # nothing built at instantiation
    module.configure_model()
    assert module.denoiser is not None and not module.denoiser.training
    assert module.settings()["first_frame_mode"] == "white"


def test_mova_predict_console_script_is_the_entry_point() -> None:
    from mova_train.predict import main

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts["mova-predict"].split(":")
    assert module == "mova_train.predict" and func == "main" and callable(main)
