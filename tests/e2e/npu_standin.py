"""`python -m mova_train` with a CPU stand-in for the Ascend NPU accelerator (no torch_npu, no CANN here).

Usage (what tests/e2e/test_train_recipes.py runs; every argument goes to the real entry point)::

    python tests/e2e/npu_standin.py +recipe=lora_npu8 ... trainer.devices=2 strategy.process_group_backend=gloo

The stand-in replaces `mova_train.strategies.npu.NPUAccelerator` (the class the recipe's
`trainer.accelerator._target_` names) by a subclass with only the device-facing methods replaced: its devices are
CPU devices and the ``torch_npu`` device module is a stub. So the recipe's config, its strategy class, the
accelerator's instantiation and the whole fit run for real; only HCCL (replaced by gloo through the override above)
and the NPU kernels are absent. Lightning's launcher re-runs this script for the other ranks, which patch again.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

import mova_train.strategies.npu as npu
from mova_train.__main__ import main
from mova_train.strategies import NPUAccelerator

DEVICES = 2


class CPUStandInNPU(NPUAccelerator):
    """`NPUAccelerator` on CPU devices (every NPU-specific call goes to a stub)."""

    def setup_device(self, device: torch.device) -> None:
        """CPU devices need no selection."""

    @staticmethod
    def get_parallel_devices(devices: list[int]) -> list[torch.device]:
        """One CPU device per requested NPU."""
        return [torch.device("cpu")] * len(devices)


def _stub() -> Any:
    return SimpleNamespace(
        device_count=lambda: DEVICES,
        is_available=lambda: True,
        set_device=lambda index: None,
        memory_stats=lambda device: {},
        empty_cache=lambda: None,
    )


if __name__ == "__main__":
    npu._npu = _stub
    npu.NPUAccelerator = CPUStandInNPU  # what `_target_: mova_train.strategies.npu.NPUAccelerator` finds
    main()
