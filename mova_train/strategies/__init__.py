"""Training strategies that ``conf/strategy/*.yaml`` point ``_target_`` at, the block streamer of single-GPU
offload, the NPU accelerator (``trainer.accelerator: {_target_: ...NPUAccelerator}``), and checkpoint conversion
between topologies. Importing this package registers nothing and never imports ``torch_npu``.
"""

from mova_train.strategies.checkpoint_convert import (
    convert_dcp_checkpoint,
    dcp_to_full,
    is_dcp_checkpoint,
)
from mova_train.strategies.ddp import MovaDDPStrategy
from mova_train.strategies.fsdp2 import MovaFSDP2Strategy, shard_model
from mova_train.strategies.npu import NPUAccelerator
from mova_train.strategies.offload import BlockStreamer, StreamStats
from mova_train.strategies.single_device import MovaSingleDeviceStrategy
from mova_train.strategies.single_gpu_offload import SingleGPUOffloadStrategy

__all__ = [
    "BlockStreamer",
    "MovaDDPStrategy",
    "MovaFSDP2Strategy",
    "MovaSingleDeviceStrategy",
    "NPUAccelerator",
    "SingleGPUOffloadStrategy",
    "StreamStats",
    "convert_dcp_checkpoint",
    "dcp_to_full",
    "is_dcp_checkpoint",
    "shard_model",
]
