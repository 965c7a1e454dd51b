"""Lightning callbacks: the predict-loop `SampleWriter`, the training-time `ValidationSampling`, the checkpoint
plumbing (`MovaModelCheckpoint`, `SigtermCheckpoint` in `callbacks.checkpointing`), the exports of what a run trained
(`LoraExport` in `callbacks.lora_export`) and per-group LoRA gradient norms (`LoraGradNorms`).
"""

from mova_train.callbacks.checkpointing import MovaModelCheckpoint, SigtermCheckpoint
from mova_train.callbacks.lora_export import LoraExport
from mova_train.callbacks.lora_grad_norms import LoraGradNorms

__all__ = ["LoraExport", "LoraGradNorms", "MovaModelCheckpoint", "SigtermCheckpoint"]
