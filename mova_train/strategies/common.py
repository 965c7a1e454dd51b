"""Small pieces shared by the strategies: the wrapped model lookup, activation offload, the estimator shape."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn


def target_model(lightning_module: object, model_attr: str, strategy: str) -> nn.Module:
    """The model a strategy wraps (``lightning_module.<model_attr>``, the dual tower with ``block_classes``).

    Raises:
        ValueError: the attribute is missing or not a module, naming the strategy and the config key to set.
    """
    module = getattr(lightning_module, model_attr, None)
    if not isinstance(module, nn.Module):
        raise ValueError(
            f"{strategy}: the LightningModule has no model at attribute {model_attr!r} (after configure_model); "
            f"set strategy.model_attr to the attribute holding the model with block_classes"
        )
    return module


class ActivationOffload:
    """Strategy mixin: ``offload_activations=True`` keeps the tensors autograd saves for the backward pass (with
    gradient checkpointing: the block inputs) in host memory (``torch.autograd.graph.save_on_cpu``), trading PCIe
    traffic for device memory. The one owner of that knob; the estimator reads it through `estimator_shape`.
    """

    offload_activations: bool = False
    root_device: torch.device

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        """The LightningModule's training step, with the saved tensors in (pinned) host memory if asked."""
        if not self.offload_activations:
            return super().training_step(*args, **kwargs)  # type: ignore[misc]
        with torch.autograd.graph.save_on_cpu(pin_memory=self.root_device.type == "cuda"):
            return super().training_step(*args, **kwargs)  # type: ignore[misc]
