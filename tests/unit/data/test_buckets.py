"""Automatic buckets: a mixed set (landscape, portrait, square; 3 durations) is fully assigned, keeps its aspect
ratios, and every training batch stays within the token budget (raw mode, real clips).
"""

from __future__ import annotations

import json
import math

import pytest

import data_tools.inspect_shards as inspect_tool
from mova_train.data.buckets import TokenCost, clip_frames, propose_buckets, resolution
from mova_train.data.datamodule import MovaDataModule
from mova_train.data.options import DataConfigError
from mova_train.data.pipeline import STREAM_KEY
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_clip

FPS = 8.0
SIZES = {"landscape": (112, 64), "portrait": (64, 112), "square": (64, 64)}
SECONDS = (1, 2, 3)
OPTIONS = dict(
    mode="raw",
    buckets="auto",
    height=48,
    width=64,
    num_frames=21,
    fps=FPS,
    sample_rate=16000,
    audio_hop=320,
    batch_size=2,
    num_workers=0,
    shuffle_buffer=2,
)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """9 clips: every orientation at 1, 2 and 3 s (8 fps), in shards of 4."""
    root = tmp_path_factory.mktemp("mixed")
    entries = []
    for name, (w, h) in SIZES.items():
        for seconds in SECONDS:
            clip = make_clip(
                root / f"{name}{seconds}.mp4",
                width=w,
                height=h,
                fps=8,
                num_frames=8 * seconds,
                sample_rate=16000,
            )
            entries.append({"video_path": clip.path.name, "caption": f"{name} {seconds} s"})
    (root / "metadata.json").write_text(json.dumps(entries))
    build_shards(root / "metadata.json", root / "shards", max_count=4)
    return root / "shards"


def _orientation(width: int, height: int) -> str:
    return "square" if width == height else ("landscape" if width > height else "portrait")


def test_every_clip_is_assigned_keeping_its_aspect(mixed):
    dm = MovaDataModule(mixed, **OPTIONS)
    dm.setup("fit")
    plan = dm.plan
    assert plan is not None and plan.unassigned == 0 and sum(plan.counts.values()) == 9
    # 3 aspect groups x 3 length tiers (5, 13, 21 frames = the most 4k + 1 frames of 1, 2, 3 s)
    assert sorted({b[2] for b in plan.buckets}) == [5, 13, 21] and len(plan.buckets) == 9
    for h, w, _ in plan.buckets:
        assert h % 16 == 0 and w % 16 == 0 and h * w <= 48 * 64
    assert {_orientation(w, h) for h, w, _ in plan.buckets} == set(SIZES)
    for b, n in plan.counts.items():
        assert n == 1, (b, plan.counts)  # one clip per orientation and duration


def test_training_batches_stay_within_the_token_budget(mixed):
    dm = MovaDataModule(mixed, **OPTIONS)
    dm.setup("fit")
    cost = TokenCost(FPS, 16000, 320)
    budget = 2 * cost.sample_tokens((48, 64, 21))  # batch_size samples of the configured size
    assert dm.plan.token_budget == budget
    seen = set()
    loader = dm.train_dataloader()
    for i, batch in enumerate(loader):
        bucket = tuple(batch["video"].shape[3:5]) + (batch["video"].shape[2],)
        n = batch["video"].shape[0]
        assert bucket in dm.plan.batch_sizes and n == dm.plan.batch_sizes[bucket]
        assert n * cost.sample_tokens(bucket) <= budget
        assert batch["audio"].shape[-1] == round(16000 * bucket[2] / FPS)
        seen.add(bucket)
        assert STREAM_KEY in batch
        if i == 5:
            break
    assert len(seen) >= 2
    assert dm.plan.batch_sizes[(48, 64, 5)] > dm.plan.batch_sizes[(48, 64, 21)]  # short clips batch larger


def test_inspect_shards_prints_the_buckets_and_their_clips(mixed, capsys):
    inspect_tool.main([str(mixed), "--height", "48", "--width", "64", "--num-frames", "21", "--fps", "8"])
    out = capsys.readouterr().out
    assert "automatic buckets" in out and "48x64x21" in out and "clips that fit no bucket: 0" in out
    inspect_tool.main(
        [str(mixed), "--json", "--height", "48", "--width", "64", "--num-frames", "21", "--fps", "8"]
    )
    rows = json.loads(capsys.readouterr().out)["buckets"]
    assert sum(r["clips"] for r in rows) == 9 and all(r["tokens_per_batch"] > 0 for r in rows)


def test_release_sizes_and_records_only():
    assert resolution(9 / 16, 352 * 640) == (624, 352)  # 9:16 at the 360p budget
    assert resolution(352 / 640, 352 * 640) == (640, 352)
    assert resolution(1.0, 352 * 640) == (464, 464)
    cost = TokenCost(24.0, 48000, 960)
    assert cost.video_tokens((352, 640, 193)) == 49 * 22 * 40 and cost.audio_tokens((352, 640, 193)) == 403
    records = [
        {"width": w, "height": h, "duration": d, "fps": 24.0}
        for w, h in ((1920, 1080), (1080, 1920), (1080, 1080), (1440, 1080))
        for d in (2.0, 5.0, 8.5, 30.0)
    ]
    budget = 2 * cost.sample_tokens((352, 640, 193))
    plan = propose_buckets(
        records,
        pixels=352 * 640,
        max_frames=193,
        fps=24.0,
        lengths=3,
        cost=cost,
        token_budget=budget,
        preferred=(352, 640),
    )
    assert plan.unassigned == 0 and sum(plan.counts.values()) == len(records)
    assert (352, 640, 193) in plan.buckets  # the configured size for 16:9 clips
    for r in records:
        (bucket,) = [
            b for b in plan.buckets if abs(math.log(b[1] / b[0] / (r["width"] / r["height"]))) < 0.08
        ][:1]
        assert bucket  # every aspect has its own resolution
    for row in plan.rows():
        assert row["tokens_per_batch"] <= budget and row["batch_size"] >= 1
    assert clip_frames({"duration": 2.0}, 24.0, 193) == 45
    assert clip_frames({"duration": 30.0, "cuts": [4.0, 25.0]}, 24.0, 1000) == 501  # longest scene: 21 s


def test_a_budget_below_one_sample_is_refused(mixed):
    dm = MovaDataModule(mixed, **{**OPTIONS, "bucket_tokens": 10})
    with pytest.raises(DataConfigError, match=r"data.bucket_tokens=10 is below one sample of bucket"):
        dm.setup("fit")
