"""Issue 14.9/14.10: nonsense in a composed config fails at composition time, naming the key, the value and the fix.

The configs are composed from the real `conf/` folder (as the entry point does); nothing is built.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from mova_train.config import CONF_DIR
from mova_train.config.validate import ConfigError, validate_config

# (override, words the message must hold): each was accepted, hung or failed late before the check
BAD_FIT = [
    ("data.batch_size=0", "data.batch_size=0"),
    ("data.val_batch_size=-2", "data.val_batch_size=-2"),
    ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0"),
    ("optimizer.lr=0", "optimizer.lr=0"),
    ("optimizer.lr=-1e-4", "optimizer.lr=-0.0001"),
    ("trainer.gradient_clip_val=-1", "trainer.gradient_clip_val=-1"),
    ("data.max_skip_rate=1.5", "data.max_skip_rate=1.5"),
    ("data.fps=0", "data.fps=0"),
    ("data.sample_rate=0", "data.sample_rate=0"),
    ("trainer.max_steps=0", "trainer.max_steps=0"),
    ("data.shards=/nowhere/*.tar", "data.shards='/nowhere/*.tar'"),
    ("data.shards=/nowhere/train-000000.tar", "matches no shard file"),
    ("data.val_shards=/nowhere/val", "data.val_shards"),
    ("data.sources=[{shards: /nowhere/*.tar}]", "data.sources[0].shards='/nowhere/*.tar'"),
    ("data.bucket_tokens=0", "data.bucket_tokens=0"),
    ("data.buckets=automatic", "data.buckets='automatic'"),
]


def _compose(tmp_path: Path, overrides: list[str], name: str = "train") -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            name,
            overrides=[
                f"paths.output_dir={tmp_path / 'out'}",
                f"paths.data_dir={tmp_path / 'data'}",
                f"paths.checkpoint_dir={tmp_path / 'ckpt'}",
                *overrides,
            ],
        )


def test_the_default_config_and_tiny_recipes_pass(tmp_path: Path) -> None:
    validate_config(_compose(tmp_path, []), "fit")
    validate_config(_compose(tmp_path, ["+recipe=tiny_cpu"]), "fit")
    validate_config(_compose(tmp_path, ["+recipe=predict_tiny_cpu"], name="predict"), "predict")


@pytest.mark.parametrize(("override", "words"), BAD_FIT)
def test_bad_value_is_refused_naming_key_and_value(tmp_path: Path, override: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate_config(_compose(tmp_path, [override]), "fit")
    assert words in str(info.value)


def test_existing_glob_and_tar_are_accepted_with_the_synthetic_data_group(tmp_path: Path) -> None:
    """A glob or one `.tar` under `data=synthetic_cached` names real shards: accepted (the datamodule then makes
    no synthetic data, see `prepare_synthetic`).
    """
    shards = tmp_path / "mine"
    shards.mkdir()
    (shards / "train-000000.tar").write_bytes(b"")
    validate_config(_compose(tmp_path, [f"data.shards={shards}/*.tar"]), "fit")
    validate_config(_compose(tmp_path, [f"data.shards={shards}/train-000000.tar"]), "fit")


@pytest.mark.parametrize(
    ("group", "node", "key"),
    [
        ("optimizer", "optimizer", "lrr"),
        ("lora", "lora", "rnak"),
        ("objective", "objective", "shfit"),
        ("module", "module", "ema_decy"),
        ("callbacks", "callbacks.checkpoint", "every_n_train_step"),
        ("lr_scheduler", "lr_scheduler", "warmup"),
        ("model", "model.encoders", "text_lenn"),
    ],
)
def test_a_yaml_typo_in_a_target_group_is_refused(tmp_path: Path, group: str, node: str, key: str) -> None:
    """A key merged from a YAML file (no struct check there) that the node's `_target_` does not take."""
    cfg = _compose(tmp_path, ["lr_scheduler=warmup_cosine"])
    validate_config(cfg, "fit")
    with open_dict(cfg):
        target = cfg
        for part in node.split("."):
            target = target[part]
        target[key] = 1
    with pytest.raises(ConfigError, match=rf"{node}\.{key}=1: .* has no argument '{key}'"):
        validate_config(cfg, "fit")


def test_a_typo_in_the_sample_node_and_a_bad_target_are_refused(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, [])
    with open_dict(cfg):
        if "sample" in cfg:
            cfg.sample.num_step = 8
    if "sample" in cfg:  # the after-fit sample's settings, when conf/train.yaml has them
        with pytest.raises(ConfigError, match="sample.num_step=8 is not a key of `sample`"):
            validate_config(cfg, "fit")
    cfg = _compose(tmp_path, [])
    with open_dict(cfg):
        cfg.optimizer._target_ = "torch.optim.AdamWW"
    with pytest.raises(ConfigError, match="optimizer._target_='torch.optim.AdamWW' cannot be imported"):
        validate_config(cfg, "fit")


def test_every_recipe_passes_the_key_check(tmp_path: Path) -> None:
    """No recipe of conf/recipe/ holds a key its targets refuse (shards of the real-data recipes do not exist here,
    so only the key check runs).
    """
    from omegaconf import OmegaConf

    from mova_train.config.validate import check_settings_nodes, check_target_keys

    for path in sorted((Path(CONF_DIR) / "recipe").glob("*.yaml")):
        name = "predict" if path.stem.startswith("predict_") else "train"
        cfg = _compose(tmp_path, [f"+recipe={path.stem}"], name=name)
        container = OmegaConf.to_container(cfg, resolve=False)
        check_target_keys(container)  # type: ignore[arg-type]
        check_settings_nodes(container, "predict" if name == "predict" else "fit")  # type: ignore[arg-type]


def test_predict_config_typo_in_a_target_node_is_refused(tmp_path: Path) -> None:
    cfg = _compose(tmp_path, ["+recipe=predict_tiny_cpu"], name="predict")
    with open_dict(cfg):
        cfg.model.encoders.sed = 3
    with pytest.raises(ConfigError, match="model.encoders.sed=3"):
        validate_config(cfg, "predict")


@pytest.mark.parametrize("node", ["sampling", "predict", "lora"])
def test_predict_settings_typo_from_a_recipe_is_refused(tmp_path: Path, node: str) -> None:
    """`predict: {batch_cfgg: false}` in a recipe YAML is merged by Hydra without a word; refused here."""
    cfg = _compose(tmp_path, ["+recipe=predict_tiny_cpu"], name="predict")
    with open_dict(cfg):
        cfg[node].stpes = 4
    with pytest.raises(ConfigError, match=rf"{node}.stpes=4 is not a key of `{node}`"):
        validate_config(cfg, "predict")
