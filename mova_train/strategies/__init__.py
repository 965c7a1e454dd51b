"""Training strategies: factories that ``conf/strategy/*.yaml`` point ``_target_`` at, the block streamer of
single-GPU offload, the NPU accelerator, and checkpoint conversion between topologies.

Importing this package registers the ``"npu"`` accelerator with Lightning; it never imports ``torch_npu``.
"""

from mova_train.strategies.checkpoint_convert import (
    convert_dcp_checkpoint,
    dcp_to_full,
    is_dcp_checkpoint,
)
from mova_train.strategies.ddp import MovaDDPStrategy, ddp_strategy
from mova_train.strategies.fsdp2 import MovaFSDP2Strategy, fsdp2_strategy, shard_model
from mova_train.strategies.npu import (
    NPUAccelerator,
    npu_ddp_strategy,
    npu_fsdp2_strategy,
    register_npu_accelerator,
)
from mova_train.strategies.offload import BlockStreamer, StreamStats
from mova_train.strategies.single_gpu_offload import SingleGPUOffloadStrategy, single_gpu_offload

register_npu_accelerator()

__all__ = [
    "BlockStreamer",
    "MovaDDPStrategy",
    "MovaFSDP2Strategy",
    "NPUAccelerator",
    "SingleGPUOffloadStrategy",
    "StreamStats",
    "convert_dcp_checkpoint",
    "dcp_to_full",
    "ddp_strategy",
    "fsdp2_strategy",
    "is_dcp_checkpoint",
    "npu_ddp_strategy",
    "npu_fsdp2_strategy",
    "register_npu_accelerator",
    "shard_model",
    "single_gpu_offload",
]
