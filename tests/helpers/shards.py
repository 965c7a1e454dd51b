"""Test-only shard writers: small tar shards and safetensors payloads built in memory."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from mova_train.data.schema import add_member


def encode_safetensors(tensors: dict[str, torch.Tensor]) -> bytes:
    """Bytes of a safetensors file holding `tensors` (a cache member)."""
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def write_tar(path: str | Path, samples: Iterable[dict[str, Any]]) -> None:
    """Write samples `{"__key__": str, <ext>: bytes | dict}` to a tar shard (dicts become JSON)."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext, value in sample.items():
                if ext == "__key__":
                    continue
                data = json.dumps(value).encode("utf-8") if isinstance(value, dict) else value
                add_member(tar, f"{key}.{ext}", data)
