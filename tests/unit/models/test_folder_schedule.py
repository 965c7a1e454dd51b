"""The noise schedule and the expert switch come from a release folder's own files, and a config value that
disagrees with them is refused (issue 9 item 10).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from mova_train.config import CONF_DIR
from mova_train.models.checkpoint import CheckpointError
from mova_train.models.release_folder import folder_boundary_timestep, folder_scheduler


def _folder(tmp_path: Path, shift: float = 3.0, extra_one_step: bool = False, ratio: float = 0.875) -> Path:
    root = tmp_path / "MOVA-360p"
    (root / "scheduler").mkdir(parents=True)
    config = {"_class_name": "FlowMatchPairScheduler", "num_train_timesteps": 1000, "shift": shift,
              "extra_one_step": extra_one_step}  # fmt: skip
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    (root / "model_index.json").write_text(json.dumps({"_class_name": "MOVA", "boundary_ratio": ratio}))
    return root


def test_scheduler_and_boundary_are_the_folders(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    scheduler = folder_scheduler(root)
    assert scheduler.cfg.shift == 3.0 and scheduler.cfg.extra_one_step is False
    assert folder_boundary_timestep(root) == 875.0
    assert folder_scheduler(root, shift=3.0).cfg.shift == 3.0  # an agreeing value is fine


def test_a_disagreeing_config_value_is_refused_naming_file_and_key(tmp_path: Path) -> None:
    root = _folder(tmp_path)
    with pytest.raises(
        CheckpointError, match=r"scheduler_config.json: model.scheduler.shift=5.0 but the folder"
    ):
        folder_scheduler(root, shift=5.0)
    with pytest.raises(
        CheckpointError, match=r"model_index.json: model.boundary_timestep=900.0 but the folder"
    ):
        folder_boundary_timestep(root, boundary_timestep=900.0)
    (root / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(CheckpointError, match="scheduler_config.json is missing"):
        folder_scheduler(root)


def test_release_model_config_reads_the_folder(tmp_path: Path) -> None:
    root = _folder(tmp_path, shift=4.0, ratio=0.9)
    node = OmegaConf.load(Path(CONF_DIR) / "model" / "release_360p.yaml")
    cfg = OmegaConf.create({"model": {"root": str(root), "scheduler": node.scheduler,
                                      "boundary_timestep": node.boundary_timestep}})  # fmt: skip
    assert instantiate(cfg.model.scheduler).cfg.shift == 4.0
    assert instantiate(cfg.model.boundary_timestep) == 900.0
    cfg.model.scheduler.shift = 5.0
    with pytest.raises(InstantiationException, match="model.scheduler.shift=5.0 but the folder has 4.0"):
        instantiate(cfg.model.scheduler)
