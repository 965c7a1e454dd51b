"""Resume an FSDP2 distributed checkpoint under another topology (DDP, one process, another world size).

``strategy=fsdp2`` writes distributed-checkpoint (DCP) folders (:mod:`mova_train.checkpoints.dcp`): one
``__<rank>_0.distcp`` file per rank, torch's ``.metadata``, Lightning's ``meta.pt`` and our manifest. Only the
trainable state is in them (LoRA weights, EMA, optimizer state), so they are small.

- Under FSDP2 with any world size: pass the folder as ``ckpt_path`` (DCP reshards on load).
- Under any other strategy (``ddp``, ``single_gpu_offload``, ``auto``): pass the folder as ``ckpt_path``; the
  run's :class:`~mova_train.checkpoints.io.MovaCheckpointIO` converts it in memory.
- Or convert once: ``python -m mova_train.strategies.checkpoint_convert SRC.ckpt/ DST.ckpt``.

Only folders written by mova_train (with ``mova_manifest.json`` matching every file) are read: ``.metadata``
is a pickle.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from mova_train.checkpoints.dcp import is_dcp_checkpoint, read_dcp_folder
from mova_train.checkpoints.io import MovaCheckpointIO

log = logging.getLogger(__name__)

__all__ = ["convert_dcp_checkpoint", "dcp_to_full", "is_dcp_checkpoint"]


def dcp_to_full(path: str | Path) -> dict[str, Any]:
    """Read a Lightning FSDP2 DCP folder into an ordinary Lightning checkpoint dict (one process, no group).

    Raises:
        FileNotFoundError: ``path`` is not a DCP folder.
        CheckpointError: the folder was not written by mova_train or a file differs from its manifest.
    """
    src = Path(path)
    if not is_dcp_checkpoint(src):
        raise FileNotFoundError(
            f"{src} is not a distributed checkpoint folder (expected .metadata and meta.pt inside); "
            f"pass the .ckpt folder written by strategy=fsdp2"
        )
    return read_dcp_folder(src)


def convert_dcp_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Write :func:`dcp_to_full` of ``src`` as a single-file checkpoint ``dst`` (with its manifest)."""
    out = Path(dst)
    MovaCheckpointIO().save_checkpoint(dcp_to_full(src), out)
    return out


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
