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
from mova_train.strategies.common import ActivationOffload
from mova_train.utils.dist import planned_world

log = logging.getLogger(__name__)

__all__ = ["MovaDDPStrategy", "frozen_parameter_names"]


def frozen_parameter_names(module: nn.Module) -> list[str]:
    """Names of the parameters of ``module`` with ``requires_grad=False``."""
    return [n for n, p in module.named_parameters() if not p.requires_grad]


def _has_two_experts(module: nn.Module) -> bool:
    model = getattr(module, "model", None)
    return model is not None and all(
        getattr(model, e, None) is not None for e in ("video_dit", "video_dit_2")
    )


class MovaDDPStrategy(ActivationOffload, DDPStrategy):
    """:class:`DDPStrategy` that ignores frozen parameters and loads FSDP2 DCP checkpoints.

    ``conf/strategy/ddp.yaml`` and ``conf/strategy/npu.yaml`` (``process_group_backend: hccl``) target this class.

    Args:
        find_unused_parameters: bool, or ``"auto"`` (True when the model holds both video experts).
        ignore_frozen: register frozen parameters as ignored by DDP (no start-up broadcast, no buckets).
        offload_activations: keep the tensors saved for backward in host memory (see `ActivationOffload`).
        **kwargs: passed to :class:`DDPStrategy` (``static_graph``, ``process_group_backend`` (None: nccl on
            CUDA, gloo on CPU; ``"hccl"`` on Ascend), ``timeout``; others such as ``gradient_as_bucket_view`` go
            to ``DistributedDataParallel``).
    """

    def __init__(
        self,
        find_unused_parameters: bool | Literal["auto"] = "auto",
        ignore_frozen: bool = True,
        offload_activations: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("checkpoint_io", MovaCheckpointIO())
        self._find_unused_setting = find_unused_parameters
        super().__init__(**kwargs)
        self.ignore_frozen = ignore_frozen
        self.offload_activations = offload_activations

    def estimator_shape(self, devices: Any = 1, num_nodes: Any = 1) -> dict[str, Any]:
        """This strategy in the memory estimator's vocabulary (`mova_train.estimate.estimate_run` keywords)."""
        shape: dict[str, Any] = {"strategy": "ddp", "dp": planned_world(devices, num_nodes)}
        return {**shape, "activation_offload": self.offload_activations}

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
