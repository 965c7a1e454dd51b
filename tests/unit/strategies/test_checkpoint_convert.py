"""Checkpoint conversion helpers (the full FSDP2 -> DDP / one-process resume is in tests/integration)."""

from __future__ import annotations

import pytest
import torch

from mova_train.checkpoints.dcp import _optimizer_state_by_index
from mova_train.strategies.checkpoint_convert import dcp_to_full, is_dcp_checkpoint
from mova_train.strategies.fsdp2 import MovaFSDP2Strategy


def test_optimizer_state_is_rekeyed_in_group_order() -> None:
    a, b, c = (
        torch.nn.Parameter(torch.ones(2)),
        torch.nn.Parameter(torch.ones(3)),
        torch.nn.Parameter(torch.ones(1)),
    )
    opt = torch.optim.AdamW([{"params": [a, b]}, {"params": [c], "lr": 0.5}])
    (a.sum() + 2 * b.sum() + 3 * c.sum()).backward()
    opt.step()
    by_index = opt.state_dict()
    names = {0: "x.a", 1: "x.b", 2: "x.c"}
    by_name = {
        "state": {names[i]: s for i, s in by_index["state"].items()},
        "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in by_index["param_groups"]],
    }
    back = _optimizer_state_by_index(by_name)
    assert back["param_groups"] == by_index["param_groups"]
    for i in range(3):
        torch.testing.assert_close(back["state"][i]["exp_avg"], by_index["state"][i]["exp_avg"])
    fresh = torch.optim.AdamW([{"params": [a, b]}, {"params": [c], "lr": 0.5}])
    fresh.load_state_dict(back)
    assert torch.equal(fresh.state[c]["exp_avg"], opt.state[c]["exp_avg"])


def test_not_a_dcp_folder(tmp_path) -> None:
    (tmp_path / "x.ckpt").write_bytes(b"")
    assert not is_dcp_checkpoint(tmp_path / "x.ckpt") and not is_dcp_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="strategy=fsdp2"):
        dcp_to_full(tmp_path)


def test_fsdp2_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="context_parallel_size"):
        MovaFSDP2Strategy(context_parallel_size=0)
