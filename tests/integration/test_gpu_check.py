"""``benchmarks/gpu_check.py --dry-run``: the one-shot GPU check runs its code paths on a CPU at tiny width.

The script is what a lent GPU runs once (docs/performance.md); this test keeps it from rotting while no GPU is
there: every section runs, the table names every quantity the check reports, and CUDA-only rows say so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

QUANTITIES = [
    "fwd+bwd no checkpointing: time",
    "fwd+bwd with checkpointing: time",
    "fwd+bwd with checkpointing: achieved",
    "fwd+bwd with checkpointing: MFU",
    "fwd+bwd with checkpointing: peak memory measured / estimated",
    "video block saved activations measured / estimated",
    "video self-attention: backend taken by SDPA",
    "video self-attention: flash_attention",
    "video self-attention: cudnn_attention",
    "video self-attention: efficient_attention",
    "bridge A2V (video q, audio k/v): fwd+bwd default",
    "pinned host->device copy",
    "streamed bf16: step",
    "streamed fp8: step",
    "streamed int8: step",
    "streamed int8: host->device per step",
    "streamed int8: copy/compute overlap",
    "AdamW: step",
    "AdamW: state",
    "AdamW8bit (bitsandbytes): step",
    "AdamW8bit (bitsandbytes): state",
    "paired unit fwd+bwd (ckpt): eager vs compiled",
    "max |compiled - eager| of the video output",
    "1-layer slice step, batched CFG (batch 2)",
    "full model step at this rate (× FLOPs) vs upstream 9.0 s (H100)",
    "24 GB: projected step / device memory",
    "8xH100: projected step / device memory",
    "8xH100: upstream",
]


def _run(tmp_path: Path, *args: str) -> tuple[str, dict]:
    out = tmp_path / "gpu_check.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


@pytest.mark.slow
def test_dry_run_names_every_quantity(tmp_path: Path) -> None:
    table, data = _run(tmp_path)
    rows = {r["quantity"]: str(r["value"]) for r in data["rows"]}
    missing = [q for q in QUANTITIES if not any(q in name for name in rows)]
    assert not missing, f"gpu_check table lacks {missing}"
    errors = [r for r in data["rows"] if r["quantity"] in ("error", "skipped")]
    assert not errors, errors
    for q in QUANTITIES:
        assert q in table  # the markdown table says the same as the JSON
    assert rows["fwd+bwd with checkpointing: MFU"] == "n/a on CPU"
    assert rows["video self-attention: cudnn_attention"] == "n/a on CPU"
    assert "flash_attention_for_cpu" in rows["video self-attention: backend taken by SDPA"]
    assert rows["max |compiled - eager| of the video output"] == "0"  # aot_eager: same kernels as eager


def test_budget_stops_sections_cleanly(tmp_path: Path) -> None:
    table, data = _run(tmp_path, "--budget-s", "0")
    skipped = [r["section"] for r in data["rows"] if r["quantity"] == "skipped"]
    assert skipped == ["unit", "attention", "offload", "optimizer", "sampling", "compile", "recipes"]
    assert "| total | wall time |" in table
