"""``strategy=fsdp2``: FSDP2 (``fully_shard``) per DiT block and bridge layer through Lightning's
``ModelParallelStrategy``, optionally composed with context parallelism on a ``(dp, cp)`` mesh.

Lightning's ``FSDPStrategy`` (FSDP1) is not used: it cannot run on CPU, so CI could not test it
(docs/environment.md gotcha 3). FSDP2 works on gloo and is what upstream's accelerate config uses.

Units. Every instance of ``model.block_classes`` (``DiTBlock``, ``ConditionalCrossAttentionBlock``) becomes
one FSDP unit; each tower's ``keep_in_fp32_modules`` (the time MLPs) become units whose parameters stay
float32; the root ``fully_shard`` on the model takes the rest (patch and text embeddings, heads).

Frozen and trainable weights in one unit. LoRA weights live inside the same blocks as the frozen base
weights. That does not inflate memory under FSDP2, unlike FSDP1's flat parameters: FSDP2 shards each parameter
individually as a ``DTensor`` (dim-0 shards, so the memory of a block is ``1/N`` of it on each rank whatever
mix of ``requires_grad`` it holds), gradients are allocated and reduce-scattered only for parameters with
``requires_grad=True``, and the optimizer only ever sees the trainable shards. The frozen shards are only
all-gathered (in ``param_dtype``) for the forward pass and for the recomputation in the backward pass.

Precision. ``mixed_precision="bf16"``: parameters are all-gathered and computed in bf16, gradients are
reduced in float32 (``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=float32)``), sharded parameters and
optimizer state stay in their storage dtype. ``None`` (CPU tests): everything in the storage dtype.

Mesh. World = ``hsdp_replicate x dp_shard x cp``. Parameters are sharded over the flattened ``(dp_shard, cp)``
ranks (context-parallel ranks hold the same parameters; averaging gradients over them is what
:mod:`mova_train.parallel.context_parallel` expects) and, with ``hsdp_replicate > 1`` (HSDP, one replica per
node or group of nodes), replicated over ``hsdp_replicate``. The mesh is ``init_device_mesh(device_type,
(dp, cp), mesh_dim_names=("data_parallel", "context_parallel"))`` (a leading ``"data_parallel_replicate"``
dimension with HSDP); the data loader shards over the data-parallel ranks only.

Checkpoints. Distributed checkpoints (DCP folders) hold the trainable state only: the model state dict is
taken with ``ignore_frozen_params=True`` and loading reads just the keys present in the folder, so frozen
weights are never written nor expected. Such a folder resumes under FSDP2 with another world size, and under
DDP or one process through :mod:`mova_train.strategies.checkpoint_convert`. A folder is written under a
temporary name, gets its manifest (:mod:`mova_train.checkpoints.dcp`) and only then replaces the old one; a
folder is read only after its manifest is verified.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn as nn
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy

from mova_train.checkpoints.dcp import (
    SafeFileSystemReader,
    SafeLoadPlanner,
    is_dcp_checkpoint,
    read_dcp_meta,
    replace_folder,
)
from mova_train.checkpoints.io import MovaCheckpointIO, state_is_finite
from mova_train.checkpoints.manifest import verify_manifest
from mova_train.models.files import unique_tmp
from mova_train.strategies.common import ActivationOffload, target_model
from mova_train.utils.dist import planned_world

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from torch.distributed.device_mesh import DeviceMesh

log = logging.getLogger(__name__)

__all__ = ["MovaFSDP2Strategy", "shard_model"]

_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def _mp_policy(mixed_precision: str | None, keep_fp32: bool = False) -> Any:
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if mixed_precision is None:
        return MixedPrecisionPolicy()
    if mixed_precision not in _DTYPES:
        raise ValueError(
            f"strategy.mixed_precision must be one of {sorted(_DTYPES)} or null, got {mixed_precision!r}"
        )
    param_dtype = torch.float32 if keep_fp32 else _DTYPES[mixed_precision]
    return MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)


def shard_model(
    model: nn.Module,
    mesh: DeviceMesh,
    mixed_precision: str | None = "bf16",
    cpu_offload: bool = False,
    reshard_after_forward: bool = True,
    block_classes: tuple[type[nn.Module], ...] | None = None,
) -> int:
    """Apply ``fully_shard`` to every unit of ``model`` and then to ``model`` itself (in place).

    Args:
        model: a model exporting ``block_classes`` (e.g. ``MovaDualTower``).
        mesh: 1-D (FSDP) or 2-D (HSDP: replicate, shard) device mesh.
        mixed_precision: ``"bf16"``, ``"fp16"`` or None (see the module docstring).
        cpu_offload: keep sharded parameters, gradients and optimizer state in host memory.
        reshard_after_forward: free the gathered weights after each unit's forward (re-gather in backward).
        block_classes: override of ``model.block_classes``.

    Returns:
        the number of units (not counting the root).
    """
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, OffloadPolicy, fully_shard

    if isinstance(model, FSDPModule):
        return 0
    classes = tuple(block_classes or getattr(model, "block_classes", ()))
    if not classes:
        raise ValueError(f"{type(model).__name__} exports no block_classes; cannot choose FSDP units")
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    common = dict(mesh=mesh, offload_policy=offload, reshard_after_forward=reshard_after_forward)
    units = 0
    fp32_units = [
        getattr(sub, name) for sub in model.modules() for name in getattr(sub, "keep_in_fp32_modules", ())
    ]
    for unit in fp32_units:
        fully_shard(unit, mp_policy=_mp_policy(mixed_precision, keep_fp32=True), **common)
        units += 1
    for module in list(model.modules()):
        if isinstance(module, classes):
            fully_shard(module, mp_policy=_mp_policy(mixed_precision), **common)
            units += 1
    fully_shard(model, mp_policy=_mp_policy(mixed_precision), **common)
    log.info("FSDP2: %d units + root over mesh %s (mixed precision %s)", units, mesh, mixed_precision)
    return units


class MovaFSDP2Strategy(ActivationOffload, ModelParallelStrategy):
    """``ModelParallelStrategy`` that shards the MOVA model itself (see the module docstring).

    The LightningModule needs a ``configure_model`` override (Lightning requires one; building the model there
    is enough: :class:`~mova_train.lit.MovaLitModule` does) and its model at attribute ``model_attr``.

    Args:
        data_parallel_size: sharded data-parallel size per replica, or ``"auto"`` (world / (replicas * cp)).
        context_parallel_size: Ulysses context-parallel size (1: off).
        hsdp_replicate: number of HSDP replicas (1: plain FSDP).
        cpu_offload: FSDP2 ``CPUOffloadPolicy``.
        reshard_after_forward: see :func:`shard_model`.
        mixed_precision: ``"bf16"`` or None.
        model_attr: attribute of the LightningModule holding the model.
        save_distributed_checkpoint: write DCP folders (True) or one gathered file (False).
        process_group_backend: None (nccl / gloo), ``"hccl"`` on Ascend, ...
        timeout: process-group timeout.
        offload_activations: keep the tensors saved for backward in host memory (see `ActivationOffload`).
    """

    def __init__(
        self,
        data_parallel_size: int | Literal["auto"] = "auto",
        context_parallel_size: int = 1,
        hsdp_replicate: int = 1,
        cpu_offload: bool = False,
        reshard_after_forward: bool = True,
        mixed_precision: str | None = "bf16",
        model_attr: str = "model",
        save_distributed_checkpoint: bool = True,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        offload_activations: bool = False,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self._checkpoint_io = MovaCheckpointIO()  # single-file saves (save_distributed_checkpoint=false)
        if context_parallel_size < 1 or hsdp_replicate < 1:
            raise ValueError(
                f"strategy.context_parallel_size and strategy.hsdp_replicate must be >= 1, got "
                f"{context_parallel_size} and {hsdp_replicate}"
            )
        self.context_parallel_size = int(context_parallel_size)
        self.hsdp_replicate = int(hsdp_replicate)
        self.cpu_offload = cpu_offload
        self.reshard_after_forward = reshard_after_forward
        self.mixed_precision = mixed_precision
        self.model_attr = model_attr
        self.offload_activations = offload_activations
        self._fsdp_mesh: DeviceMesh | None = None

    def estimator_shape(self, devices: Any = 1, num_nodes: Any = 1) -> dict[str, Any]:
        """This strategy in the memory estimator's vocabulary: FSDP2 shards over the flattened (dp, cp) mesh, so
        every device holds 1/world of the weights (``dp`` is the sharding degree dp x cp).
        """
        cp = self.context_parallel_size
        dp = self._data_parallel_size
        dp = max(planned_world(devices, num_nodes) // cp, 1) if dp in (None, "auto") else int(dp)
        return {"strategy": "fsdp2", "dp": dp * cp, "cp": cp, "activation_offload": self.offload_activations}

    # -------------------------------------------------------------------------------------------- mesh

    def setup_environment(self) -> None:
        """Start the process group and build the ``(replicate?, dp, cp)`` mesh."""
        from torch.distributed.device_mesh import init_device_mesh

        self._setup_distributed()
        cp, rep, world = self.context_parallel_size, self.hsdp_replicate, self.world_size
        dp = self._data_parallel_size
        if dp == "auto":
            if world % (cp * rep):
                raise ValueError(
                    f"world size {world} is not divisible by context_parallel_size {cp} x hsdp_replicate {rep}"
                )
            dp = world // (cp * rep)
        if rep * int(dp) * cp != world:
            raise ValueError(
                f"strategy: hsdp_replicate {rep} x data_parallel_size {dp} x context_parallel_size {cp} must "
                f"equal the world size {world} (devices x num_nodes)"
            )
        self._data_parallel_size = int(dp)
        device_type = self.root_device.type
        if rep > 1:
            mesh = init_device_mesh(
                device_type,
                (rep, int(dp), cp),
                mesh_dim_names=("data_parallel_replicate", "data_parallel", "context_parallel"),
            )
        else:
            mesh = init_device_mesh(
                device_type, (int(dp), cp), mesh_dim_names=("data_parallel", "context_parallel")
            )
        self._device_mesh = mesh
        shard = (
            mesh["data_parallel", "context_parallel"]._flatten("dp_shard_cp")
            if cp > 1
            else mesh["data_parallel"]
        )
        self._fsdp_mesh = (
            mesh["data_parallel_replicate", "dp_shard_cp" if cp > 1 else "data_parallel"]
            if rep > 1
            else shard
        )
        assert self.lightning_module is not None
        self.lightning_module._device_mesh = mesh

    @property
    def distributed_sampler_kwargs(self) -> dict[str, Any]:
        """Shard the data over the data-parallel ranks (replicas x shards); cp ranks share a batch."""
        mesh = self.device_mesh
        dp = mesh["data_parallel"]
        if self.hsdp_replicate > 1:
            rep = mesh["data_parallel_replicate"]
            return {
                "num_replicas": rep.size() * dp.size(),
                "rank": rep.get_local_rank() * dp.size() + dp.get_local_rank(),
            }
        return {"num_replicas": dp.size(), "rank": dp.get_local_rank()}

    # ------------------------------------------------------------------------------------------- setup

    def _target_model(self) -> nn.Module:
        return target_model(self.lightning_module, self.model_attr, "fsdp2")

    def setup(self, trainer: pl.Trainer) -> None:
        """Apply context parallelism and ``fully_shard`` to the model, then Lightning's setup."""
        model = self._target_model()
        if self.context_parallel_size > 1 and getattr(model, "sequence_parallel", None) is None:
            from mova_train.parallel.context_parallel import apply_context_parallel, build_cp_group

            apply_context_parallel(model, build_cp_group(self.device_mesh, dim="context_parallel"))
        assert self._fsdp_mesh is not None
        shard_model(
            model,
            self._fsdp_mesh,
            mixed_precision=self.mixed_precision,
            cpu_offload=self.cpu_offload,
            reshard_after_forward=self.reshard_after_forward,
        )
        super().setup(trainer)

    # ------------------------------------------------------------------------------------- checkpoints

    def lightning_module_state_dict(self) -> dict[str, Any]:
        """The module state without frozen parameters (sharded, or full on rank 0 when not distributed)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(
            full_state_dict=not self._save_distributed_checkpoint, cpu_offload=True, ignore_frozen_params=True
        )
        assert self.model is not None
        return get_model_state_dict(self.model, options=options)

    def save_checkpoint(
        self, checkpoint: dict[str, Any], filepath: str | Path, storage_options: Any | None = None
    ) -> None:
        """Write a DCP folder under a temporary name, add its manifest, then move it over ``filepath``."""
        if not self._save_distributed_checkpoint:
            super().save_checkpoint(checkpoint, filepath, storage_options)
            return
        import torch.distributed as dist

        path = Path(self.broadcast(str(filepath)))
        tmp = Path(self.broadcast(str(unique_tmp(path))))
        finite = torch.tensor(float(state_is_finite(checkpoint.get("state_dict", {}))))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        step = int(checkpoint.get("global_step", 0))
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("dcp_saved")
        if self.global_rank == 0:
            replace_folder(tmp, path, step, bool(finite.item()))
        self.barrier("dcp_renamed")

    def load_checkpoint(
        self, checkpoint_path: str | Path, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load the trainable state of a DCP folder (any world size); other paths go to Lightning."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        path = Path(self.broadcast(checkpoint_path))
        if not is_dcp_checkpoint(path):
            return super().load_checkpoint(path, weights_only=weights_only)
        assert self.model is not None
        verify_manifest(path, required=True)  # before torch unpickles .metadata
        saved = set(SafeFileSystemReader(path).read_metadata().state_dict_metadata)
        model_sd = get_model_state_dict(self.model, options=StateDictOptions(ignore_frozen_params=True))
        model_sd = {k: v for k, v in model_sd.items() if f"state_dict.{k}" in saved}
        dcp.load(
            {"state_dict": model_sd}, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner()
        )
        set_model_state_dict(self.model, model_sd, options=StateDictOptions(strict=False))
        for idx, optimizer in enumerate(self.optimizers):
            key = f"optimizer_{idx}"
            optim_sd = {key: get_optimizer_state_dict(self.model, optimizer)}
            dcp.load(optim_sd, storage_reader=SafeFileSystemReader(path), planner=SafeLoadPlanner())
            set_optimizer_state_dict(
                self.model,
                optimizer,
                optim_state_dict=optim_sd[key],
                options=StateDictOptions(cpu_offload=True),
            )
        metadata = read_dcp_meta(path)
        # The LightningModule's on_load_checkpoint sees which weights the folder held.
        metadata["state_dict"] = model_sd
        return metadata
