"""Checks of a composed config that run right after composition, before data, weights or a model are touched.

Hydra's structured schemas (`mova_train.config.schema`) already refuse misspelled keys in the top level, `data`
and `trainer`, and values of the wrong type. What they cannot see is checked here:

- a plain settings node of the primary config file (`sampling`, `predict`, ...) may only hold the keys
  that file gives it;
- every node with a `_target_` (model, lora, strategy, optimizer, lr_scheduler, objective, module, callbacks,
  loggers, plugins, and nested ones) may only hold keys its target accepts: a typo in a YAML file of such a group
  (`optimizer: {lrr: 1e-4}`) is merged silently by Hydra and would fail, or be ignored, only much later;
- value ranges: `data.*` (`DataOptions.validate`: batch size, fps, sample rate, skip rate, ...), the learning
  rate, gradient accumulation and clipping, `trainer.max_steps`;
- `data.shards` that is not the embedded synthetic folder must name shard files that exist (a glob, a `.tar`, a
  folder with `index.json` or a list of them), so a typo fails here and not when the first shard is drawn.

Every error is a `ConfigError` naming the key, the bad value and the fix.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "ConfigError",
    "check_ranges",
    "check_settings_nodes",
    "check_shards",
    "check_target_keys",
    "validate_config",
]

# keys Hydra's `instantiate` reads itself (never passed to the target)
_HYDRA_KEYS = frozenset({"_target_", "_partial_", "_convert_", "_recursive_", "_args_"})
# the primary config file of each entry point (its plain settings nodes are the schema of those nodes)
PRIMARY = {"fit": "train.yaml", "predict": "predict.yaml"}


class ConfigError(ValueError):
    """A composed config cannot work; the message names the key, the bad value and the fix."""


def validate_config(cfg: DictConfig, entry: str = "fit") -> None:
    """Check a composed config before anything heavy happens (called by the fit and predict entry points).

    Args:
        cfg: The composed config (`conf/train.yaml` or `conf/predict.yaml` plus overrides).
        entry: `fit` or `predict` (the ranges of training-only keys are checked for `fit` only).

    Raises:
        ConfigError: naming the key, its value and the fix.
    """
    container = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(container, dict)
    check_target_keys(container)
    check_settings_nodes(container, entry)
    if entry == "fit":
        check_ranges(cfg)
        if not cfg.get("show"):  # `show=true` reads no data
            check_shards(cfg)


# --------------------------------------------------------------------------------------------- unknown keys


def _target_nodes(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every mapping with a `_target_` below `node` (a plain container), with its dotted key path."""
    if isinstance(node, Mapping):
        if "_target_" in node:
            yield path, node  # type: ignore[misc]
        for key, value in node.items():
            yield from _target_nodes(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _target_nodes(value, f"{path}[{i}]")


def _named(fn: Any) -> tuple[set[str], str | None] | None:
    """The keyword names of `fn` and the name of its `**kwargs` (None: no readable signature)."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    var = next((p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None)
    return names, var


def _forwards_to_super(init: Any, var: str) -> bool:
    """Whether `init`'s source passes its `**var` on to `super().__init__` (and nowhere else matters)."""
    try:
        source = inspect.getsource(init)
    except (OSError, TypeError):
        return False
    return re.search(rf"super\(\)\.__init__\([^)]*\*\*{re.escape(var)}\b", source) is not None


def _accepted(target: Any) -> set[str] | None:
    """The keyword names `target` accepts, or None when that is open-ended.

    A class whose `__init__` passes its `**kwargs` to `super().__init__` (e.g. a `ModelCheckpoint` subclass) accepts
    its bases' arguments too: they are added, up the MRO, until an `__init__` takes no `**kwargs`.
    """
    if not inspect.isclass(target):
        named = _named(target)
        return None if named is None or named[1] else named[0]
    accepted: set[str] = set()
    for cls in inspect.getmro(target):
        if cls is object or "__init__" not in vars(cls):
            continue
        init = vars(cls)["__init__"]
        named = _named(init)
        if named is None:
            return None
        accepted |= named[0] - {"self"}
        if named[1] is None:
            return accepted
        if not _forwards_to_super(init, named[1]):
            return None
    return None


def check_target_keys(container: Mapping[str, Any]) -> None:
    """Refuse a key that the node's `_target_` does not accept (a typo a YAML file slipped past Hydra).

    Args:
        container: The composed config as a plain container (interpolations unresolved; they are checked at
            the node they point to).

    Raises:
        ConfigError: the target cannot be imported, or a key is not one of its arguments.
    """
    from hydra.utils import get_object

    for path, node in _target_nodes(container):
        name = node["_target_"]
        if not isinstance(name, str) or name.startswith("${"):
            continue
        try:
            target = get_object(name)
        except Exception as err:  # noqa: BLE001 - Hydra wraps every import failure in its own exception types
            raise ConfigError(
                f"{path}._target_={name!r} cannot be imported ({err.__class__.__name__}: {err}); fix the dotted "
                "path (module.Class) or install the package it needs"
            ) from err
        accepted = _accepted(target)
        if accepted is None:
            continue
        unknown = sorted(k for k in node if k not in _HYDRA_KEYS and k not in accepted)
        if unknown:
            where = f"{path}.{unknown[0]}" if path else unknown[0]
            raise ConfigError(
                f"{where}={node[unknown[0]]!r}: {name} has no argument {unknown[0]!r} (a typo in a YAML file or "
                f"recipe?); its arguments are {sorted(accepted)}"
            )


def check_settings_nodes(container: Mapping[str, Any], entry: str) -> None:
    """Refuse a key in a plain settings node that the entry point's primary config file does not define.

    A settings node is a top-level mapping of the primary file (`conf/train.yaml`, `conf/predict.yaml`) with no
    `_target_` whose values are all plain values (e.g. predict's `sampling`, `predict` and `lora`): Hydra
    refuses a new key there from the command line, but a recipe's YAML merges it silently.

    Raises:
        ConfigError: naming the key and the keys the node has.
    """
    from mova_train.config import conf_dir

    path = Path(conf_dir()) / PRIMARY.get(entry, "")
    if not path.is_file():
        return
    primary = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    assert isinstance(primary, dict)
    for name, node in primary.items():
        if (
            not isinstance(node, dict)
            or not node  # an empty mapping (`plugins: {}`) is a slot for `_target_` entries, not settings
            or "_target_" in node
            or any(isinstance(v, dict) for v in node.values())
        ):
            continue
        value = container.get(name)
        if not isinstance(value, Mapping):
            continue
        unknown = sorted(set(value) - set(node))
        if unknown:
            raise ConfigError(
                f"{name}.{unknown[0]}={value[unknown[0]]!r} is not a key of `{name}` (a typo in a recipe?); "
                f"its keys are {sorted(node)} ({path.name})"
            )


# --------------------------------------------------------------------------------------------- ranges


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def check_ranges(cfg: DictConfig) -> None:
    """Value ranges of the fit config: data options, learning rate, accumulation, clipping, steps.

    Raises:
        ConfigError: naming the key, the value and a valid example.
    """
    from mova_train.data.options import DataConfigError, DataOptions

    data = cfg.get("data")
    if data is not None:
        try:
            DataOptions.from_mapping(OmegaConf.to_container(data, resolve=True))  # type: ignore[arg-type]
        except DataConfigError as err:
            raise ConfigError(str(err)) from err
    trainer = cfg.get("trainer") or {}
    accumulate = trainer.get("accumulate_grad_batches", 1)
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches={accumulate!r} must be an integer >= 1 (1: no accumulation)"
        )
    clip = trainer.get("gradient_clip_val")
    if clip is not None and (_number(clip) is None or not math.isfinite(float(clip)) or float(clip) < 0):
        raise ConfigError(
            f"trainer.gradient_clip_val={clip!r} must be >= 0 (e.g. 1.0), or null for no clipping"
        )
    max_steps = trainer.get("max_steps", -1)
    if isinstance(max_steps, int) and (max_steps == 0 or max_steps < -1):
        raise ConfigError(f"trainer.max_steps={max_steps!r} must be > 0 (or -1 with trainer.max_epochs)")
    optimizer = cfg.get("optimizer") or {}
    if "lr" in optimizer:
        lr = _number(optimizer.get("lr"))
        if lr is None or not math.isfinite(lr) or lr <= 0:
            raise ConfigError(
                f"optimizer.lr={optimizer.get('lr')!r} must be a positive learning rate (e.g. 1e-4)"
            )
    module = cfg.get("module") or {}
    limit = module.get("max_nonfinite_steps")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ConfigError(
            f"module.max_nonfinite_steps={limit!r} must be an integer >= 0 (0: stop at the first non-finite batch)"
        )


# --------------------------------------------------------------------------------------------- shards


def check_shards(cfg: DictConfig) -> None:
    """`data.shards` / `data.val_shards` must name existing shards unless `shards` is the synthetic folder the
    datamodule makes (a glob, a `.tar`, a list then trains on those files, never on synthetic clips).

    Raises:
        ConfigError: the spec matches no file.
    """
    from mova_train.data.pipeline import resolve_shards

    data = cfg.get("data")
    if data is None or "shards" not in data:
        return
    values = OmegaConf.to_container(data, resolve=True)
    assert isinstance(values, dict)
    keys = ["shards", "val_shards"]
    synthetic = values.get("synthetic")
    if synthetic is not None and isinstance(values["shards"], str):
        from mova_train.data.synthetic import SyntheticSpec

        spec = SyntheticSpec.from_any(synthetic)
        if (
            spec is not None
            and Path(values["shards"]).resolve() == spec.target(str(values["mode"])).resolve()
        ):
            keys.remove("shards")  # made by prepare_data when missing
    for key in keys:
        value = values.get(key)
        if value is None:
            continue
        try:
            resolve_shards(value)
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"data.{key}={value!r}: {err}") from err
    for i, source in enumerate(values.get("sources") or []):  # data.sources (mixing): each set must exist
        try:
            resolve_shards(source.get("shards") or [])
        except (FileNotFoundError, ValueError) as err:
            raise ConfigError(f"data.sources[{i}].shards={source.get('shards')!r}: {err}") from err
