"""The NPU accelerator against a stand-in ``torch_npu`` (no Ascend stack here), in a fresh interpreter:
the stand-in renames torch's privateuse1 backend to ``npu`` as the real one does, which cannot be undone.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys, types
    import torch
    import mova_train, mova_train.strategies
    out = {"imported_before": "torch_npu" in sys.modules}

    calls = []
    npu = types.SimpleNamespace(
        device_count=lambda: 2,
        is_available=lambda: True,
        set_device=lambda i: calls.append(int(i)),
        memory_stats=lambda device=None: {"allocated_bytes.all.current": 0},
        empty_cache=lambda: calls.append("empty_cache"),
    )
    fake = types.ModuleType("torch_npu")
    fake.npu = npu
    torch.utils.rename_privateuse1_backend("npu")
    sys.modules["torch_npu"] = fake

    import lightning.pytorch as pl
    from mova_train.strategies import MovaDDPStrategy, MovaFSDP2Strategy, NPUAccelerator

    def ddp():
        return MovaDDPStrategy(process_group_backend="hccl")

    t = pl.Trainer(accelerator=NPUAccelerator(), devices=2, strategy=ddp(), logger=False)
    out["accelerator"] = type(t.accelerator).__name__
    out["parallel_devices"] = [str(d) for d in t.strategy.parallel_devices]
    out["root_device"] = str(t.strategy.root_device)
    out["backend"] = t.strategy._get_process_group_backend()
    t1 = pl.Trainer(accelerator=NPUAccelerator(), devices=1, strategy=ddp(), logger=False)
    out["single_root"] = str(t1.strategy.root_device)
    out["single_strategy"] = type(t1.strategy).__name__
    acc = NPUAccelerator()
    acc.setup_device(torch.device("npu", 1))
    out["set_device_calls"] = list(calls)
    out["auto_count"] = NPUAccelerator.auto_device_count()
    out["parse_auto"] = NPUAccelerator.parse_devices("auto")
    out["parse_list"] = NPUAccelerator.parse_devices("0,1")
    out["is_available"] = NPUAccelerator.is_available()
    out["fsdp2_backend"] = MovaFSDP2Strategy(process_group_backend="hccl")._process_group_backend
    print("RESULT" + json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def npu_run() -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


@pytest.mark.slow
def test_import_does_not_load_torch_npu(npu_run: dict) -> None:
    assert npu_run["imported_before"] is False


@pytest.mark.slow
def test_trainer_selects_npu_accelerator_and_devices(npu_run: dict) -> None:
    assert npu_run["accelerator"] == "NPUAccelerator"
    assert npu_run["parallel_devices"] == ["npu:0", "npu:1"]
    assert npu_run["root_device"] == "npu:0"
    assert npu_run["single_root"] == "npu:0" and npu_run["single_strategy"] == "MovaDDPStrategy"


@pytest.mark.slow
def test_npu_strategies_use_hccl_and_place_on_device(npu_run: dict) -> None:
    assert npu_run["backend"] == "hccl" and npu_run["fsdp2_backend"] == "hccl"
    assert npu_run["set_device_calls"] == [1]
    assert npu_run["auto_count"] == 2 and npu_run["is_available"] is True
    assert npu_run["parse_auto"] == [0, 1] and npu_run["parse_list"] == [0, 1]
