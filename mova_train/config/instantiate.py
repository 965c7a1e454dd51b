"""Objects from a composed config, shared by the fit (`mova_train.train`) and predict (`mova_train.predict`) entry
points: the LightningModule of training, the strategy, the loggers, callbacks and plugins, and the Trainer.

Every object comes from a `_target_` node (Hydra's `instantiate`); this module only decides which nodes go where
(e.g. a `strategy` node without `_target_` is a Lightning strategy name such as `auto`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mova_train.utils.logging import RankedLogger

log = RankedLogger(__name__, rank_zero_only=True)

__all__ = ["build_module", "build_strategy", "build_trainer", "instantiate_mapping", "lora_spec"]


def lora_spec(cfg: DictConfig) -> Any:
    """The run's `LoraSpec`, or None for `lora=none`.

    A recipe that sets `lora.rank`/`lora.alpha` leaves those keys behind when the command line says `lora=none`
    (the recipe is merged after the group choice): a `lora` node without `_target_` is that case, not a spec.
    """
    node = cfg.get("lora")
    if not node:
        return None
    if "_target_" not in node:
        log.info("lora=none: ignoring %s set by the recipe", sorted(node))
        return None
    return instantiate(node, _convert_="all")


def build_module(cfg: DictConfig, denoiser: Any = None) -> Any:
    """The training LightningModule (`cfg.module`) with the model, objective, optimizer, scheduler, LoRA, encoders.

    Args:
        cfg: The composed fit config.
        denoiser: An already built denoiser (default: instantiate `cfg.model.denoiser`, a model or a factory).
    """
    model = denoiser if denoiser is not None else instantiate(cfg.model.denoiser, _convert_="all")
    encoders = None
    if cfg.data.mode == "raw" and cfg.model.get("encoders"):
        encoders = instantiate(cfg.model.encoders, _convert_="all")
    # Objects go in through a partial: Hydra would turn dataclass kwargs (LoraSpec) back into configs.
    factory = instantiate(cfg.module, _partial_=True, _convert_="all")
    return factory(
        model=model,
        objective=instantiate(cfg.objective, _convert_="all"),
        optimizer=instantiate(cfg.optimizer),
        lr_scheduler=instantiate(cfg.lr_scheduler) if cfg.get("lr_scheduler") else None,
        lora=lora_spec(cfg),
        encoders=encoders,
    )


def instantiate_mapping(node: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every non-null `_target_` entry of a name -> config mapping (callbacks, loggers, plugins).

    Raises:
        ValueError: an entry is neither null nor a config with a `_target_` (names `<what>.<name>`).
    """
    out: list[Any] = []
    if not node:
        return out
    for name, sub in node.items():
        if sub is None:
            continue
        if not isinstance(sub, DictConfig) or "_target_" not in sub:
            raise ValueError(
                f"{what}.{name} must be a config with a _target_ (or null to drop it), got {sub!r}"
            )
        log.debug("instantiating %s.%s <%s>", what, name, sub._target_)
        out.append(instantiate(sub, _convert_="all"))
    return out


def build_strategy(node: DictConfig | None) -> Any:
    """A strategy object from a `_target_` config, or the Lightning strategy name in `name` (e.g. `auto`)."""
    if node is None:
        return "auto"
    if "_target_" in node:
        return instantiate(node, _convert_="all")
    return str(node.get("name", "auto"))


def build_trainer(cfg: DictConfig, callbacks: Sequence[Any] = ()) -> Any:
    """The Lightning Trainer of `cfg.trainer` with the strategy, loggers, callbacks and plugins of their groups
    (and `MovaCheckpointIO` when the strategy brings no checkpoint IO of its own, e.g. `auto`).

    Args:
        cfg: A composed fit or predict config (groups it lacks count as empty).
        callbacks: Callbacks added after those of `cfg.callbacks` (predict: its sample writer).
    """
    from lightning.pytorch.callbacks import LearningRateMonitor

    from mova_train.checkpoints.io import checkpoint_plugins

    loggers = instantiate_mapping(cfg.get("logger"), "logger")
    made = instantiate_mapping(cfg.get("callbacks"), "callbacks")
    if not loggers:  # Lightning refuses a LearningRateMonitor without a logger
        made = [c for c in made if not isinstance(c, LearningRateMonitor)]
    plugins = instantiate_mapping(cfg.get("plugins"), "plugins")
    strategy = build_strategy(cfg.get("strategy"))
    plugins += checkpoint_plugins(strategy)  # the strategies of mova_train.strategies bring their own
    if loggers:  # the resolved config is the run's config in W&B / hparams in TensorBoard and CSV
        resolved = OmegaConf.to_container(cfg, resolve=True)
        for lg in loggers:
            lg.log_hyperparams(resolved)
    return instantiate(
        cfg.trainer,
        strategy=strategy,
        logger=loggers or False,
        callbacks=[*made, *callbacks],
        plugins=plugins or None,
        _convert_="all",
    )
