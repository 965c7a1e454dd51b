"""Issue 9 item 8 / issue 10 item 2 through the entry point: an FSDP2 run on 2 gloo processes writes a
distributed-checkpoint folder; `python -m mova_train ckpt_path=<folder>` resumes it under `strategy=ddp` (2
processes) and under one process with bit-identical trainable weights and optimizer state. Before the one
checkpoint IO, `strategy=ddp` stopped with "checkpoint_io set through both strategy class and plugins".
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from faults import runner
from mova_train.checkpoints.dcp import read_dcp_folder

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

TINY = [*runner.QUIET, "data.synthetic.count=4", "callbacks.checkpoint.every_n_train_steps=1"]


def _saved_matches(record: dict, saved: dict) -> None:
    weights = {k: v for k, v in saved["state_dict"].items() if k in record["weights"]}
    assert weights.keys() == record["weights"].keys()
    assert runner.max_diff(record["weights"], weights) == 0.0
    state = saved["optimizer_states"][0]["state"]
    assert state.keys() == record["optimizer"].keys() and state
    for i, moments in record["optimizer"].items():
        for k, v in moments.items():
            assert torch.equal(v, state[i][k].to(v.dtype)), (i, k)


def test_fsdp2_folder_resumes_under_ddp_and_one_process(tmp_path: Path) -> None:
    data = [f"paths.data_dir={tmp_path / 'data'}", f"paths.output_root={tmp_path / 'outputs'}"]
    fsdp = tmp_path / "fsdp2"
    runner.run(
        [
            *TINY,
            *data,
            "strategy=fsdp2",
            "strategy.mixed_precision=null",
            "trainer.devices=2",
            "trainer.max_steps=2",
            f"hydra.run.dir={fsdp}",
        ],
        cwd=tmp_path,
    )
    folder = fsdp / "checkpoints" / "last.ckpt"
    assert folder.is_dir() and (folder / "mova_manifest.json").is_file()
    saved = read_dcp_folder(folder)
    assert saved["global_step"] == 2
    for name, topology in {
        "ddp": ["strategy=ddp", "trainer.devices=2"],
        "one": ["trainer.devices=1"],
    }.items():
        out = tmp_path / name
        proc = runner.run(
            [
                *TINY,
                *data,
                *topology,
                "trainer.max_steps=3",
                f"ckpt_path={folder}",
                f"hydra.run.dir={out}",
                runner.RECORD,
                f"+callbacks.record.dirpath={out / 'record'}",
            ],
            cwd=tmp_path,
        )
        assert "checkpoint_io set through both" not in proc.stdout + proc.stderr
        start = runner.load(out / "record" / "start.pt")
        assert start["global_step"] == 2, name
        _saved_matches(start, saved)
        assert runner.load(out / "record" / "end.pt")["global_step"] == 3
