"""Small pieces shared by the strategies."""

from __future__ import annotations

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
