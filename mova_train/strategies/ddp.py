"""``strategy=ddp``: Lightning DDP where only the trainable parameters are synchronised.

DDP's reducer only all-reduces gradients of parameters with ``requires_grad=True``; in addition this strategy
registers the frozen parameters as *ignored*, so DDP neither broadcasts them at start-up (every rank builds
the same frozen base from the same checkpoint or seed) nor allocates reducer buckets for them. Trainable
parameters (LoRA, EMA buffers) are broadcast from rank 0 once and all-reduced every step.

``find_unused_parameters="auto"`` turns DDP's unused-parameter search on when the model holds both video
experts: an expert-alternating step uses only one expert, so the other expert's LoRA weights get no gradient.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch.nn as nn
from lightning.pytorch.strategies import DDPStrategy
from torch.nn.parallel import DistributedDataParallel

from mova_train.checkpoints.io import MovaCheckpointIO

log = logging.getLogger(__name__)

__all__ = ["MovaDDPStrategy", "ddp_strategy", "frozen_parameter_names"]


def frozen_parameter_names(module: nn.Module) -> list[str]:
    """Names of the parameters of ``module`` with ``requires_grad=False``."""
    return [n for n, p in module.named_parameters() if not p.requires_grad]


def _has_two_experts(module: nn.Module) -> bool:
    model = getattr(module, "model", None)
    return model is not None and all(
        getattr(model, e, None) is not None for e in ("video_dit", "video_dit_2")
    )


class MovaDDPStrategy(DDPStrategy):
    """:class:`DDPStrategy` that ignores frozen parameters and loads FSDP2 DCP checkpoints.

    Args:
        find_unused_parameters: bool, or ``"auto"`` (True when the model holds both video experts).
        ignore_frozen: register frozen parameters as ignored by DDP (no start-up broadcast, no buckets).
        **kwargs: passed to :class:`DDPStrategy`.
    """

    def __init__(
        self,
        find_unused_parameters: bool | Literal["auto"] = "auto",
        ignore_frozen: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("checkpoint_io", MovaCheckpointIO())
        self._find_unused_setting = find_unused_parameters
        super().__init__(**kwargs)
        self.ignore_frozen = ignore_frozen

    def _setup_model(self, model: nn.Module) -> DistributedDataParallel:
        if self._find_unused_setting == "auto":
            self._ddp_kwargs["find_unused_parameters"] = _has_two_experts(model)
        else:
            self._ddp_kwargs["find_unused_parameters"] = bool(self._find_unused_setting)
        if self.ignore_frozen:
            frozen = frozen_parameter_names(model)
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen)
            log.info("DDP: %d frozen parameters are not synchronised", len(frozen))
        return super()._setup_model(model)


def ddp_strategy(
    find_unused_parameters: bool | Literal["auto"] = "auto",
    static_graph: bool = False,
    gradient_as_bucket_view: bool = True,
    ignore_frozen: bool = True,
    process_group_backend: str | None = None,
    **kwargs: Any,
) -> MovaDDPStrategy:
    """Factory for ``conf/strategy/ddp.yaml`` (``_target_: mova_train.strategies.ddp_strategy``).

    Args:
        find_unused_parameters: see :class:`MovaDDPStrategy`.
        static_graph: DDP's static-graph optimisation (only with a fixed set of used parameters).
        gradient_as_bucket_view: gradients are views into the all-reduce buckets (saves one copy).
        ignore_frozen: see :class:`MovaDDPStrategy`.
        process_group_backend: ``None`` (nccl on CUDA, gloo on CPU), ``"hccl"`` on Ascend, ...
        **kwargs: passed to :class:`DDPStrategy` (e.g. ``timeout``, ``accelerator``).
    """
    return MovaDDPStrategy(
        find_unused_parameters=find_unused_parameters,
        ignore_frozen=ignore_frozen,
        static_graph=static_graph,
        gradient_as_bucket_view=gradient_as_bucket_view,
        process_group_backend=process_group_backend,
        **kwargs,
    )
