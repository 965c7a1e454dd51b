"""Ascend NPU support: a Lightning accelerator for ``torch.device("npu", i)``.

``torch_npu`` is imported lazily, inside the accelerator's methods, so nothing here (nor importing
``mova_train`` / ``mova_train.strategies``) imports it unless an NPU run asks for it: installed without the
Ascend CANN toolkit, ``torch_npu`` breaks ``import torch`` itself (docs/environment.md gotcha 7).

The config instantiates it: ``trainer.accelerator: {_target_: mova_train.strategies.npu.NPUAccelerator}`` (what
``+recipe=lora_npu8`` sets), together with ``strategy=npu`` (`MovaDDPStrategy` over HCCL) or ``strategy=fsdp2``
with ``strategy.process_group_backend=hccl``. Lightning's own ``FSDPStrategy`` admits only CUDA, so NPU sharding
goes through FSDP2. Nothing is registered with Lightning by name.

Always give an NPU strategy, also on one NPU: with ``strategy=auto`` and one device Lightning places the
model on the CPU for any accelerator that is not CUDA/MPS. ``strategy=npu`` with ``trainer.devices=1`` runs DDP
with a world of one, which costs nothing.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from lightning.pytorch.accelerators import Accelerator

log = logging.getLogger(__name__)

__all__ = ["NPUAccelerator"]


def _npu() -> Any:
    """The ``torch_npu.npu`` device module (imports ``torch_npu`` on first use)."""
    try:
        import torch_npu
    except ImportError as err:  # pragma: no cover - depends on the host
        raise RuntimeError(
            "accelerator=npu needs torch_npu and the Ascend CANN toolkit: `pip install -e '.[npu]'` on an Ascend "
            "host and `source /usr/local/Ascend/ascend-toolkit/set_env.sh` (see recipes/README_strategies.md)"
        ) from err
    return torch_npu.npu


class NPUAccelerator(Accelerator):
    """Lightning accelerator for Ascend NPUs (``torch.device("npu", i)``)."""

    def setup_device(self, device: torch.device) -> None:
        """Make ``device`` the current NPU of this process."""
        if device.type != "npu":
            raise ValueError(f"NPUAccelerator got device {device}; expected an npu device")
        _npu().set_device(device.index or 0)

    def setup(self, trainer: Any) -> None:
        """Upstream's NPU settings (docs/model.md §11.3): deterministic HCCL unless the user set it."""
        os.environ.setdefault("HCCL_DETERMINISTIC", "TRUE")

    def get_device_stats(self, device: Any) -> dict[str, Any]:
        """``torch_npu.npu.memory_stats`` of ``device`` (empty if unavailable)."""
        stats = getattr(_npu(), "memory_stats", None)
        return dict(stats(device)) if callable(stats) else {}

    def teardown(self) -> None:
        """Release cached NPU memory."""
        empty = getattr(_npu(), "empty_cache", None)
        if callable(empty):
            empty()

    @staticmethod
    def parse_devices(devices: int | str | list[int]) -> list[int]:
        """Device indices from ``trainer.devices`` (an int count, ``"0,1"``, a list, or ``-1``/``"auto"``)."""
        if isinstance(devices, str):
            devices = devices.strip()
            if devices in ("auto", "-1"):
                return list(range(NPUAccelerator.auto_device_count()))
            if "," in devices:
                return [int(x) for x in devices.split(",") if x.strip()]
            devices = int(devices)
        if isinstance(devices, int):
            count = NPUAccelerator.auto_device_count() if devices == -1 else devices
            return list(range(count))
        return [int(x) for x in devices]

    @staticmethod
    def get_parallel_devices(devices: list[int]) -> list[torch.device]:
        """``torch.device("npu", i)`` for each index."""
        return [torch.device("npu", i) for i in devices]

    @staticmethod
    def auto_device_count() -> int:
        """Number of visible NPUs."""
        return int(_npu().device_count())

    @staticmethod
    def is_available() -> bool:
        """True when ``torch_npu`` imports and sees at least one NPU."""
        try:
            return bool(_npu().is_available())
        except RuntimeError:
            return False

    @staticmethod
    def name() -> str:
        """The accelerator's name, ``"npu"`` (for Lightning's messages; nothing is registered under it)."""
        return "npu"
