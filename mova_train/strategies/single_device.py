"""``strategy=single_device``: Lightning's one-device strategy with activation offload.

What `strategy=auto` gives on one device, plus ``offload_activations`` (the tensors autograd saves, with gradient
checkpointing the block inputs, live in host memory; `lora_1gpu_80gb` fits 80 GB with it), and our own
`MovaCheckpointIO` like every strategy of `mova_train.strategies`.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import SingleDeviceStrategy

from mova_train.checkpoints.io import MovaCheckpointIO
from mova_train.strategies.common import ActivationOffload

__all__ = ["MovaSingleDeviceStrategy"]


class MovaSingleDeviceStrategy(ActivationOffload, SingleDeviceStrategy):
    """`SingleDeviceStrategy` with ``offload_activations`` and `MovaCheckpointIO`.

    Args:
        device: The compute device (``"cuda:1"``), or ``"auto"``: the accelerator's first device (``cuda:0`` with
            ``trainer.accelerator=gpu``, the CPU with ``trainer.accelerator=cpu``).
        offload_activations: Keep the tensors saved for backward in (pinned) host memory.
        **kwargs: Passed to `SingleDeviceStrategy` (``accelerator``, ``precision_plugin``, ...).
    """

    strategy_name = "single_device"

    def __init__(
        self, device: str | torch.device = "auto", offload_activations: bool = False, **kwargs: Any
    ) -> None:
        kwargs.setdefault("checkpoint_io", MovaCheckpointIO())
        self._device_from_accelerator = str(device) == "auto"
        super().__init__(device="cpu" if self._device_from_accelerator else device, **kwargs)
        self.offload_activations = offload_activations

    @property
    def root_device(self) -> torch.device:
        """The compute device (with ``device="auto"``: the accelerator's first one, once it is known)."""
        if self._device_from_accelerator and self.accelerator is not None:
            acc = self.accelerator
            self._root_device = acc.get_parallel_devices(acc.parse_devices(1))[0]
            self._device_from_accelerator = False
        return self._root_device

    def estimator_shape(self, devices: Any = 1, num_nodes: Any = 1) -> dict[str, Any]:
        """This strategy in the memory estimator's vocabulary (`mova_train.estimate.estimate_run` keywords)."""
        return {"strategy": "single", "activation_offload": self.offload_activations}
