"""2 ranks x 2 DataLoader workers: a finite validation epoch yields every sample exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mova_train.data.pipeline import iter_shard, resolve_shards
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_dataset

RANK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from mova_train.data.datamodule import MovaDataModule

    dm = MovaDataModule(sys.argv[1], val_shards=sys.argv[1], num_frames=5, fps=24.0, height=32, width=48,
                        batch_size=2, num_workers=2)
    dm.setup("validate")
    keys = []
    for batch in dm.val_dataloader():
        batch = dm.finalize_batch(batch)
        assert batch["video"].shape[1:] == (3, 5, 32, 48)
        keys.extend(batch["key"])
    print("KEYS=" + json.dumps(keys))
    """
)


@pytest.mark.distributed
def test_two_ranks_two_workers_cover_every_sample_once(tmp_path):
    # 11 samples in 4 shards of 3 (uneven on purpose): slices of 2-3 samples per (rank, worker)
    metadata = make_dataset(tmp_path / "src", count=11, width=64, height=48, seconds=0.5)
    build_shards(metadata, tmp_path / "shards", max_count=3)
    expected = sorted(s["__key__"] for url in resolve_shards(tmp_path / "shards") for s in iter_shard(url))
    assert len(expected) == 11

    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)}
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", RANK_SCRIPT, str(tmp_path / "shards")],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    per_rank = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        line = [x for x in out.splitlines() if x.startswith("KEYS=")][-1]
        per_rank.append(json.loads(line[5:]))
    got = per_rank[0] + per_rank[1]
    assert sorted(got) == expected  # all of them, none twice
    assert {len(k) for k in per_rank} <= {5, 6}  # balanced across ranks
