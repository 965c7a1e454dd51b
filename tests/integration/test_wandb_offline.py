"""W&B through `conf/logger/wandb.yaml`, offline in a temporary folder: a run appears with the resolved config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from mova_train.config import CONF_DIR


def test_wandb_logger_offline_logs_resolved_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "logger=wandb",
                "logger.wandb.offline=true",
                f"paths.output_dir={tmp_path}",
                "tags=[ci,tiny]",
                "task_name=wandb_test",
            ],
        )
    from mova_train.config.instantiate import build_trainer, instantiate_mapping

    (logger,) = instantiate_mapping(cfg.logger, "logger")
    assert logger.__class__.__name__ == "WandbLogger"
    assert logger._wandb_init["project"] == "mova_train"
    assert logger._wandb_init["group"] == "wandb_test"
    assert list(logger._wandb_init["tags"]) == ["ci", "tiny"]
    try:
        trainer = build_trainer(cfg)  # logs the resolved config as the run config
        run = trainer.logger.experiment
        assert run.config["task_name"] == "wandb_test"
        assert run.config["optimizer"]["lr"] == pytest.approx(1e-4)
        assert run.config["paths"]["output_dir"] == str(tmp_path)  # resolved, not ${...}
    finally:
        wandb.finish()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))  # the record file `wandb sync` uploads later
