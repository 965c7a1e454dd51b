"""``strategy=single_gpu_offload``: one device, frozen weights streamed block by block from host memory.

The strategy installs a :class:`~mova_train.strategies.offload.BlockStreamer` on the LightningModule's model
(attribute ``model_attr``, ``"model"`` for :class:`~mova_train.lit.MovaLitModule`) when the model is moved to
the device: only the resident part (embeddings, heads, trainable LoRA weights, buffers) is moved, the frozen
block weights stay in (pinned) host memory and are streamed with prefetch. It turns on non-reentrant gradient
checkpointing of every unit (so the backward recomputation re-streams) and can move the tensors saved for the
backward pass (the checkpoint inputs) to host memory with ``torch.autograd.graph.save_on_cpu``.

Pair it with ``optimizer=adamw8bit`` (bitsandbytes ``AdamW8bit``) and the latent cache (``encoders: null``:
the text encoder and VAEs are then never built). Checkpoints hold the trainable state only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn

from mova_train.strategies.common import target_model
from mova_train.strategies.offload import BlockStreamer
from mova_train.strategies.single_device import MovaSingleDeviceStrategy

log = logging.getLogger(__name__)

__all__ = ["SingleGPUOffloadStrategy"]


class SingleGPUOffloadStrategy(MovaSingleDeviceStrategy):
    """:class:`SingleDeviceStrategy` that streams the frozen block weights (see the module docstring).

    ``conf/strategy/single_gpu_offload.yaml`` holds upstream's low-resource defaults (docs/model.md §10.3): checkpointing
    with activation offload, one unit prefetched, lossless storage (upstream stores fp8: ``storage: fp8``).

    Args:
        device: the compute device (``"cuda:0"``; ``"cpu"`` runs the same code path for tests).
        prefetch: units copied ahead of the running one.
        storage: host storage of frozen weights: ``"native"`` (lossless), ``"int8"`` or ``"fp8"`` (lossy).
        gradient_checkpointing: recompute every unit in the backward pass (needed for the memory saving).
        offload_activations: keep the tensors saved for backward in (pinned) host memory.
        model_attr: attribute of the LightningModule holding the model with ``block_classes``.
        block_classes: override of the model's unit classes.
        pin_memory: pin the host store (default: on non-CPU devices).
        **kwargs: passed to :class:`MovaSingleDeviceStrategy` (``accelerator``, ``precision_plugin``, ...).
    """

    strategy_name = "single_gpu_offload"

    def __init__(
        self,
        device: str | torch.device = "cuda:0",
        prefetch: int = 1,
        storage: str = "native",
        gradient_checkpointing: bool = True,
        offload_activations: bool = False,
        model_attr: str = "model",
        block_classes: Sequence[type[nn.Module]] | None = None,
        pin_memory: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(device=device, offload_activations=offload_activations, **kwargs)
        self.prefetch = prefetch
        self.storage = storage
        self.gradient_checkpointing = gradient_checkpointing
        self.model_attr = model_attr
        self.block_classes = block_classes
        self.pin_memory = pin_memory
        self.streamer: BlockStreamer | None = None
        self.stream_stats = None  # the last streamer's StreamStats, kept after teardown

    def _target_model(self) -> nn.Module:
        return target_model(self.lightning_module, self.model_attr, "single_gpu_offload")

    def model_to_device(self) -> None:
        """Install the streamer (frozen block weights to the host store), then move the rest."""
        assert self.model is not None
        if self.streamer is None:
            model = self._target_model()
            self.streamer = BlockStreamer(
                model,
                self.root_device,
                block_classes=self.block_classes,
                prefetch=self.prefetch,
                storage=self.storage,
                pin_memory=self.pin_memory,
            )
            if self.gradient_checkpointing:
                if hasattr(model, "set_gradient_checkpointing"):
                    model.set_gradient_checkpointing(True)
                else:
                    log.warning(
                        "%s has no set_gradient_checkpointing(); streamed weights stay alive until backward",
                        type(model).__name__,
                    )
        self.model.to(self.root_device)

    def estimator_shape(self, devices: Any = 1, num_nodes: Any = 1) -> dict[str, Any]:
        """This strategy in the memory estimator's vocabulary (fp8/int8 host storage counts as fp8 weights)."""
        return {
            "strategy": "offload",
            "weight_dtype": "fp8" if self.storage in ("fp8", "int8") else "bf16",
            "activation_offload": self.offload_activations,
        }

    def _streamed_keys(self) -> set[str]:
        if self.streamer is None:
            return set()
        return {f"{self.model_attr}.{n}" for n in self.streamer.streamed_names}

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The module's state dict without the streamed (frozen) weights, whose device copies are empty."""
        drop = self._streamed_keys()
        return {k: v for k, v in super().lightning_module_state_dict().items() if k not in drop}

    def load_model_state_dict(self, checkpoint: Mapping[str, Any], strict: bool = True) -> None:
        """Load a checkpoint; frozen weights in it (from a full checkpoint) are ignored with a log line."""
        drop = self._streamed_keys()
        state = checkpoint["state_dict"]
        skipped = [k for k in state if k in drop]
        if skipped:
            log.info("single_gpu_offload: ignoring %d frozen weights in the checkpoint", len(skipped))
        kept = {k: v for k, v in state.items() if k not in drop}
        assert self.lightning_module is not None
        self.lightning_module.load_state_dict(kept, strict=strict and not skipped)

    def teardown(self) -> None:
        """Restore ordinary (CPU) parameters so the model can be used or saved after fitting."""
        super().teardown()
        if self.streamer is not None:
            self.stream_stats = self.streamer.stats
            self.streamer.remove()
            self.streamer = None
