"""Resume an FSDP2 distributed checkpoint under another topology (DDP, one process, another world size).

``strategy=fsdp2`` writes distributed-checkpoint (DCP) folders: ``<name>.ckpt/`` with one ``__<rank>_0.distcp``
file per rank plus Lightning's ``meta.pt`` (loops, schedulers, callbacks, the module's extra keys). Only the
trainable state is in them (LoRA weights, EMA, optimizer state), so they are small.

- Under FSDP2 with any world size: pass the folder as ``ckpt_path`` (DCP reshards on load).
- Under ``strategy=ddp`` / ``single_gpu_offload`` (this package's factories): pass the folder as ``ckpt_path``;
  their :class:`TopologyCheckpointIO` converts it in memory.
- Under Lightning's plain strategies (``strategy=auto``): add ``TopologyCheckpointIO()`` to ``trainer.plugins``,
  or convert once with ``python -m mova_train.strategies.checkpoint_convert SRC.ckpt/ DST.ckpt`` and resume from
  the file.

The optimizer state in a DCP folder is keyed by parameter name; :func:`dcp_to_full` renumbers it in the
order of the saved parameter groups, which is the order a torch optimizer's ``state_dict`` uses, so the
optimizer built by the same ``configure_optimizers`` loads it.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

log = logging.getLogger(__name__)

__all__ = ["TopologyCheckpointIO", "convert_dcp_checkpoint", "dcp_to_full", "is_dcp_checkpoint"]

META_FILENAME = "meta.pt"  # Lightning's metadata file inside a DCP folder


def is_dcp_checkpoint(path: str | Path) -> bool:
    """True for a folder with DCP metadata (``.metadata``) and Lightning's ``meta.pt``."""
    p = Path(path)
    return p.is_dir() and (p / ".metadata").is_file() and (p / META_FILENAME).is_file()


def _optimizer_state_by_index(state: dict[str, Any]) -> dict[str, Any]:
    """Rekey a name-keyed optimizer state dict (``torch.distributed.checkpoint.state_dict`` format) by index."""
    index: dict[str, int] = {}
    groups = []
    for group in state["param_groups"]:
        ids = []
        for name in group["params"]:
            index[name] = len(index)
            ids.append(index[name])
        groups.append({**group, "params": ids})
    unknown = set(state["state"]) - set(index)
    if unknown:
        raise ValueError(f"optimizer state has entries for parameters in no group: {sorted(unknown)[:3]}")
    return {"state": {index[n]: v for n, v in state["state"].items()}, "param_groups": groups}


def dcp_to_full(path: str | Path) -> dict[str, Any]:
    """Read a Lightning FSDP2 DCP folder into an ordinary Lightning checkpoint dict (one process, no group).

    Args:
        path: the ``.ckpt`` folder written by ``strategy=fsdp2``.

    Returns:
        the checkpoint dict: ``state_dict`` (full, unsharded CPU tensors), ``optimizer_states`` (index-keyed),
        and everything from ``meta.pt`` (``global_step``, ``loops``, ``lr_schedulers``, ...).
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    src = Path(path)
    if not is_dcp_checkpoint(src):
        raise FileNotFoundError(
            f"{src} is not a distributed checkpoint folder (expected .metadata and {META_FILENAME} inside); "
            f"pass the .ckpt folder written by strategy=fsdp2"
        )
    with tempfile.TemporaryDirectory() as tmp:
        flat = Path(tmp) / "full.pt"
        dcp_to_torch_save(src, flat)
        tensors = torch.load(flat, map_location="cpu", weights_only=False)
    checkpoint = torch.load(src / META_FILENAME, map_location="cpu", weights_only=False)
    checkpoint["state_dict"] = tensors.pop("state_dict", {})
    n_opt = sum(1 for k in tensors if k.startswith("optimizer_"))
    checkpoint["optimizer_states"] = [
        _optimizer_state_by_index(tensors[f"optimizer_{i}"]) for i in range(n_opt)
    ]
    log.info(
        "read distributed checkpoint %s: %d tensors, %d optimizer(s), global_step %s",
        src,
        len(checkpoint["state_dict"]),
        n_opt,
        checkpoint.get("global_step"),
    )
    return checkpoint


def convert_dcp_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Write :func:`dcp_to_full` of ``src`` as a single-file checkpoint ``dst``; returns ``dst``."""
    out = Path(dst)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dcp_to_full(src), out)
    return out


class TopologyCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` that also loads FSDP2 DCP folders (converted with :func:`dcp_to_full`)."""

    def load_checkpoint(
        self, path: str | Path, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        """Load a single-file checkpoint, or convert a DCP folder."""
        if is_dcp_checkpoint(path):
            return dcp_to_full(path)
        if map_location is None:
            return super().load_checkpoint(path, weights_only=weights_only)
        return super().load_checkpoint(path, map_location=map_location, weights_only=weights_only)


def main(argv: list[str] | None = None) -> None:
    """``python -m mova_train.strategies.checkpoint_convert SRC DST``."""
    parser = argparse.ArgumentParser(description="Convert an FSDP2 DCP checkpoint folder to a single file.")
    parser.add_argument("src", help="the .ckpt folder written by strategy=fsdp2")
    parser.add_argument("dst", help="the single-file checkpoint to write")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    convert_dcp_checkpoint(args.src, args.dst)


if __name__ == "__main__":
    main()
