"""This process's place in a distributed job: one helper for every module that needs the rank or world size.

`rank_world` asks ``torch.distributed`` when a process group is up, else the launcher's environment (torchrun's
``RANK``/``WORLD_SIZE``, SLURM's ``SLURM_PROCID``/``SLURM_NTASKS``), else a single process. `local_rank` is the
device index on this node (``LOCAL_RANK``/``SLURM_LOCALID``). `planned_world` is the world a config asks for
(``trainer.devices x trainer.num_nodes``), before anything is launched. `any_rank` is a decision every rank takes
together (true when it is true on one of them).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["any_rank", "global_rank", "local_rank", "planned_world", "rank_world"]

_RANK_VARS = ("RANK", "SLURM_PROCID", "LOCAL_RANK")
_WORLD_VARS = ("WORLD_SIZE", "SLURM_NTASKS")


def _first_env(names: tuple[str, ...], default: int) -> int:
    for name in names:
        if os.environ.get(name, "") != "":
            return int(os.environ[name])
    return default


def rank_world() -> tuple[int, int]:
    """``(global rank, world size)``: torch.distributed if initialised, else the launcher's environment, else
    ``(0, 1)``.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size())
    return _first_env(_RANK_VARS, 0), _first_env(_WORLD_VARS, 1)


def global_rank() -> int:
    """This process's global rank (see `rank_world`)."""
    return rank_world()[0]


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK`` under torchrun, ``SLURM_LOCALID`` under srun, else 0)."""
    return _first_env(("LOCAL_RANK", "SLURM_LOCALID"), 0)


def planned_world(devices: Any, num_nodes: Any = 1) -> int:
    """Process count of ``trainer.devices`` x ``trainer.num_nodes`` (``auto``, a list or a string count as 1)."""
    count = devices if isinstance(devices, int) and devices > 0 else 1
    return count * int(num_nodes or 1)


def any_rank(flag: bool, device: Any = "cpu") -> bool:
    """True when ``flag`` is true on any rank (an all-reduce max; the local flag without a process group).

    Every rank must call it at the same point. ``device`` holds the flag for the reduction (gloo always
    reduces on the CPU, NCCL/HCCL on the device).
    """
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device="cpu" if dist.get_backend() == "gloo" else device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)
