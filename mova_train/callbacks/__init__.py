"""Lightning callbacks: the predict-loop `SampleWriter`, the training-time `ValidationSampling`, and the
checkpoint plumbing (`AtomicCheckpointIO`, `LoraExport`, `SigtermCheckpoint` in `callbacks.checkpointing`)."""

from mova_train.callbacks.checkpointing import AtomicCheckpointIO, LoraExport, SigtermCheckpoint

__all__ = ["AtomicCheckpointIO", "LoraExport", "SigtermCheckpoint"]
