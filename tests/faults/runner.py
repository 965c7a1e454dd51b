"""Running ``python -m mova_train`` as a user does, for the fault tests: a subprocess in its own process group
(so a kill reaches every process it started), the tiny default config, one thread per process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TIMEOUT = 900
RECORD = "+callbacks.record._target_=helpers.record_state.RecordState"
# Only what the fault tests compare: no logger, no LoRA export, no sampling, data in the main process.
QUIET = [
    "logger=none",
    "callbacks.lora_export=null",
    "++callbacks.validation_sampling=null",
    "data.num_workers=0",
]


def env() -> dict[str, str]:
    """The subprocess environment: offline, the repository and tests/ importable, one thread."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("MOVA_")}
    out.update(
        WANDB_MODE="offline",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]),
    )
    return out


def command(*args: str) -> list[str]:
    """``python -m mova_train ARGS``."""
    return [sys.executable, "-m", "mova_train", *args]


def free_port() -> int:
    """A free TCP port on localhost (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str) -> list[str]:
    """``torchrun --nproc_per_node NPROC -m mova_train ARGS`` (as ``python -m torch.distributed.run``)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    return [*launcher, f"--master_port={free_port()}", "-m", "mova_train", *args]


def start(args: list[str], cwd: Path, log: Path, argv: list[str] | None = None) -> subprocess.Popen:
    """Start a training run (``argv``, default ``python -m mova_train ARGS``) in a new session; output to ``log``."""
    fh = open(log, "ab")  # noqa: SIM115 - closed by the child's exit
    return subprocess.Popen(
        argv or command(*args),
        cwd=cwd,
        env=env(),
        stdout=fh,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run(args: list[str], cwd: Path, expect_rc: int | None = 0) -> subprocess.CompletedProcess:
    """Run to the end; check the exit code (None: any)."""
    proc = subprocess.run(command(*args), cwd=cwd, env=env(), capture_output=True, text=True, timeout=TIMEOUT)
    if expect_rc is not None:
        assert proc.returncode == expect_rc, (
            f"exit {proc.returncode} (expected {expect_rc})\nSTDOUT:\n{proc.stdout[-3000:]}\n"
            f"STDERR:\n{proc.stderr[-6000:]}"
        )
    return proc


def load(path: Path) -> dict:
    """A state written by helpers.record_state (written by the tests' own callback)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference over the shared keys (keys must match and be non-empty)."""
    assert a.keys() == b.keys() and a, (sorted(a)[:3], sorted(b)[:3])
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def same_state(a: dict, b: dict) -> bool:
    """Bit-identical trainable weights and optimizer state."""
    if a["weights"].keys() != b["weights"].keys() or a["optimizer"].keys() != b["optimizer"].keys():
        return False
    if any(not torch.equal(a["weights"][k], b["weights"][k]) for k in a["weights"]):
        return False
    for i, st in a["optimizer"].items():
        other = b["optimizer"][i]
        if st.keys() != other.keys() or any(not torch.equal(st[k], other[k]) for k in st):
            return False
    return True
