"""Every recipe and every option of every config group composes and instantiates (model swapped to tiny).

Composition goes through the same `conf/` folder the entry point uses (`mova_train.config.CONF_DIR`).
"""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import DictConfig, OmegaConf, open_dict

from mova_train.config import CONF_DIR, DataConfig, TrainerConfig

CONF = Path(CONF_DIR)
# groups with one option per file; `hydra` and `local` are infrastructure, `recipe` is tested separately
GROUPS = [
    "model",
    "lora",
    "data",
    "strategy",
    "optimizer",
    "lr_scheduler",
    "objective",
    "trainer",
    "logger",
    "callbacks",
    "paths",
    "debug",
    "hparams_search",
]
# `predict_*` recipes belong to the predict entry point (conf/predict.yaml) and are composed by its own tests
RECIPES = sorted(p.stem for p in (CONF / "recipe").glob("*.yaml") if not p.stem.startswith("predict_"))
OPTIONS = [(g, p.stem) for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def _compose(tmp_path: Path, overrides: list[str], conf_dir: Path = CONF) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"paths.output_dir={tmp_path / 'out'}",
                f"paths.data_dir={tmp_path / 'data'}",
                f"paths.checkpoint_dir={tmp_path / 'ckpt'}",
                *overrides,
            ],
        )


def _force_tiny(cfg: DictConfig) -> DictConfig:
    """Swap the denoiser (and encoders) for the tiny ones, keeping the chosen experts; CPU trainer."""
    experts = list(OmegaConf.select(cfg, "model.denoiser.experts", default=["video_dit", "video_dit_2"]))
    with open_dict(cfg):
        cfg.model.denoiser = {"_target_": "mova_train.models.builders.mova_tiny", "experts": experts}
        cfg.model.meta_denoiser = None
        cfg.model.encoders = {"_target_": "mova_train.codecs.encoders.tiny_encoders"}
        cfg.model.scheduler = {"_target_": "mova_train.schedulers.flow_match.FlowMatchScheduler"}
        cfg.model.boundary_timestep = 900.0
        cfg.model.pop("root", None)
        cfg.trainer.accelerator = "cpu"
        cfg.trainer.devices = 1
        cfg.trainer.num_nodes = 1
        cfg.trainer.precision = "32-true"
    return cfg


def _instantiate_all(cfg: DictConfig) -> dict:
    """Build every part `train()` builds, without fitting."""
    from hydra.utils import instantiate

    from mova_train.config.instantiate import build_module, build_strategy, instantiate_mapping
    from mova_train.train import build_datamodule

    parts = {
        "datamodule": build_datamodule(cfg.data),
        "module": build_module(cfg),
        "callbacks": instantiate_mapping(cfg.get("callbacks"), "callbacks"),
        "loggers": instantiate_mapping(cfg.get("logger"), "logger"),
        "plugins": instantiate_mapping(cfg.get("plugins"), "plugins"),
        "strategy": build_strategy(cfg.strategy),
    }
    if cfg.get("lr_scheduler"):
        opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
        parts["lr_scheduler"] = instantiate(cfg.lr_scheduler)(opt)
    trainer_kwargs = {"logger": False, "callbacks": parts["callbacks"], "plugins": parts["plugins"] or None}
    # accelerator-specific strategies (cuda:0, hccl, model parallel) are checked as objects above; the Trainer
    # itself is built on the CPU with Lightning's default strategy
    parts["trainer"] = instantiate(cfg.trainer, strategy="auto", **trainer_kwargs, _convert_="all")
    return parts


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_instantiates(recipe: str, tmp_path: Path) -> None:
    cfg = _compose(tmp_path, [f"+recipe={recipe}"])
    assert cfg.task_name == recipe
    parts = _instantiate_all(_force_tiny(cfg))
    assert parts["module"].lora is not None
    assert int(parts["trainer"].max_steps) == int(cfg.trainer.max_steps)


def test_expected_recipes_exist() -> None:
    expected = {"tiny_cpu", "lora_low_resource", "lora_1gpu_80gb", "lora_ddp", "lora_fsdp8", "lora_npu8"}
    assert expected <= set(RECIPES)
    for name in RECIPES:
        text = (CONF / "recipe" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name
        for field in ("Purpose:", "Hardware:", "Expected:", "Command:", "Override:"):
            assert field in text, f"recipe {name} documents no {field}"


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_group_option_composes_and_instantiates(group: str, option: str, tmp_path: Path) -> None:
    # LR schedules warm up for 100 steps: give them a real run length (the tiny default stops at 30)
    extra = ["trainer.max_steps=1000"] if group == "lr_scheduler" else []
    cfg = _compose(tmp_path, [f"{group}={option}", *extra])
    if group == "lora" and option == "none":
        assert cfg.lora is None
        with open_dict(cfg):
            cfg.module.full_finetune = ["dual_tower_bridge"]
    parts = _instantiate_all(_force_tiny(cfg))
    if group == "logger":
        assert len(parts["loggers"]) == (0 if option == "none" else 1)
    if group == "strategy":
        from lightning.pytorch.strategies import Strategy

        assert parts["strategy"] == "auto" if option == "auto" else isinstance(parts["strategy"], Strategy)


def test_default_is_tiny_cpu(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, [])
    recipe = _compose(tmp_path, ["+recipe=tiny_cpu"])
    for key in ("model", "data", "strategy", "objective"):
        assert cfg[key] == recipe[key], key
    assert cfg.trainer.accelerator == "cpu"


@pytest.mark.parametrize(
    "override",
    ["seeed=1", "trainer.max_stpes=3", "data.batch_sise=2", "lora.rnak=8", "optimizer=adamw9bit", "seed=abc"],
)
def test_typo_fails_at_composition(override: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigCompositionException) as err:
        _compose(tmp_path, [override])
    assert "Could not" in str(err.value) or "Error merging" in str(err.value) or "not found" in str(err.value)


def test_typo_in_a_recipe_file_fails(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "recipe" / "broken.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /trainer: cpu\ntrainer:\n  max_stpes: 3\n"
    )
    with pytest.raises(ConfigCompositionException, match="max_stpes"):
        _compose(tmp_path, ["+recipe=broken"], conf_dir=conf)


def test_schemas_match_the_classes() -> None:
    from lightning.pytorch import Trainer

    from mova_train.data.datamodule import MovaDataModule
    from mova_train.data.options import DataOptions
    from mova_train.lit.mova_module import MovaLitModule

    data_params = set(inspect.signature(MovaDataModule.__init__).parameters) - {"self", "options"}
    data_fields = set(DataConfig.__dataclass_fields__) - {"_target_"}
    assert data_fields == data_params | set(DataOptions.names())
    trainer_params = set(inspect.signature(Trainer.__init__).parameters)
    assert set(TrainerConfig.__dataclass_fields__) - {"_target_"} <= trainer_params
    cfg = OmegaConf.load(CONF / "train.yaml")
    module_params = set(inspect.signature(MovaLitModule.__init__).parameters)
    assert set(cfg.module) - {"_target_"} <= module_params


def test_show_reports_release_size_on_meta(tmp_path: Path) -> None:
    from mova_train.show import model_report

    cfg = _compose(tmp_path, ["+recipe=lora_fsdp8", "show=true"])
    report = model_report(cfg)
    assert 30e9 < report["params_total"] < 40e9  # 2 x 14.3B experts + 1.4B audio + 2.7B bridge
    assert 0 < report["params_trainable"] < 0.01 * report["params_total"]
    assert report["weights_gib"] > 55  # bf16


def test_config_checks_fail_early(tmp_path: Path) -> None:
    from mova_train.train import ConfigError, check_config

    with pytest.raises(ConfigError, match="4k \\+ 1"):
        check_config(_compose(tmp_path, ["data.num_frames=16"]))
    with pytest.raises(ConfigError, match="divisible by 16"):
        check_config(_compose(tmp_path, ["data.height=40"]))
    with pytest.raises(ConfigError, match="model.root"):
        check_config(_compose(tmp_path, ["model=release_360p", "data=shards_cached"]))


@pytest.mark.parametrize(
    ("overrides", "experts", "mode"),
    [
        ([], ["video_dit", "video_dit_2"], "alternate"),
        (["expert=video_dit"], ["video_dit"], "single"),
        (["objective=per_sample"], ["video_dit", "video_dit_2"], "by_timestep"),
        (["objective=per_sample", "expert=video_dit_2"], ["video_dit_2"], "single"),
        (["+recipe=lora_low_resource"], ["video_dit_2"], "single"),
        (["+recipe=lora_low_resource", "expert=video_dit"], ["video_dit"], "single"),
    ],
)
def test_one_expert_key_sets_model_objective_and_lora(
    overrides: list[str], experts: list[str], mode: str, tmp_path: Path
) -> None:
    cfg = _compose(tmp_path, overrides)
    assert list(cfg.model.denoiser.experts) == experts
    assert cfg.objective.expert_mode == mode
    assert cfg.objective.expert == (experts[0] if mode == "single" else None)
    module = _instantiate_all(_force_tiny(cfg))["module"]
    module.configure_model()
    loaded = [e for e in ("video_dit", "video_dit_2") if getattr(module.model, e) is not None]
    assert loaded == experts
    lora_experts = {n.split(".")[1] for n in module.trainable_names if ".lora_" in n} & {
        "video_dit",
        "video_dit_2",
    }
    assert lora_experts == set(experts)


def test_bad_expert_is_refused(tmp_path: Path) -> None:
    from mova_train.train import ConfigError, check_config

    with pytest.raises(Exception, match="video_dit_3"):
        OmegaConf.to_container(_compose(tmp_path, ["expert=video_dit_3"]).model, resolve=True)
    with pytest.raises(ConfigError, match="expert_mode"):
        check_config(_compose(tmp_path, ["expert=video_dit", "objective.expert_mode=alternate"]))


def test_lora_options_name_targets_and_take_rank_alpha(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, ["lora=attn_ffn", "lora.rank=8", "lora.alpha=4"])
    from hydra.utils import instantiate

    spec = instantiate(cfg.lora)
    assert (spec.rank, spec.alpha) == (8, 4.0)
    assert "ffn.0" in spec.components["audio_dit"]
    assert {p.stem for p in (CONF / "lora").glob("*.yaml")} == {
        "attn",
        "attn_ffn",
        "upstream",
        "bridge",
        "none",
    }
