"""Lightning callbacks: the predict-loop `SampleWriter`, the training-time `ValidationSampling`, the checkpoint
plumbing (`AtomicCheckpointIO`, `SigtermCheckpoint` in `callbacks.checkpointing`), the exports of what a run trained
(`LoraExport` in `callbacks.lora_export`) and per-group LoRA gradient norms (`LoraGradNorms`)."""

from mova_train.callbacks.checkpointing import AtomicCheckpointIO, SigtermCheckpoint
from mova_train.callbacks.lora_export import LoraExport
from mova_train.callbacks.lora_grad_norms import LoraGradNorms

__all__ = ["AtomicCheckpointIO", "LoraExport", "LoraGradNorms", "SigtermCheckpoint"]
