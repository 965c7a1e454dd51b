"""data_tools.encode with several windows per clip (none across a scene cut) and automatic buckets, then cached
training that mixes both caches and resumes bit-identically (acceptance of issue 12, items 1, 2 and 6).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
import torch
from helpers.shards import write_tar
from helpers.streams import take_batches
from helpers.tiny_latents import tiny_module
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

import data_tools.encode as encode_tool
from mova_train.data.buckets import TokenCost, plan_buckets
from mova_train.data.datamodule import MovaDataModule
from mova_train.data.options import DataOptions
from mova_train.data.pipeline import iter_shard, resolve_shards
from mova_train.data.scenes import window_crosses_cut
from mova_train.data.schema import read_index
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_clip
from mova_train.models.lora import LoraSpec

pytestmark = pytest.mark.slow

FPS, FRAMES, HEIGHT, WIDTH, RATE = 8.0, 21, 48, 64, 1600  # 2.625 s windows; the tiny DAC's rate
CUTS = [7.0, 19.0]
CLI = [
    "--tiny-seed",
    "0",
    "--num-frames",
    str(FRAMES),
    "--fps",
    "8",
    "--height",
    str(HEIGHT),
    "--width",
    str(WIDTH),
]
CLI += ["--sample-rate", str(RATE), "--no-progress"]
SIZES = {"landscape": (112, 64), "portrait": (64, 112), "square": (64, 64)}


def _records(folder: Path) -> list[dict]:
    out = []
    for shard in read_index(folder)["shards"]:
        with tarfile.open(folder / shard["name"]) as tar:
            out += [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    return out


def _add_cuts(folder: Path, cuts: list[float]) -> None:
    """Write `cuts` into the records of a raw shard folder (what build_shards --detect-cuts stores)."""
    index = json.loads((folder / "index.json").read_text())
    for shard in index["shards"]:
        path = folder / shard["name"]
        samples = [
            {"__key__": s["__key__"], "mp4": s["mp4"], "json": {**json.loads(s["json"]), "cuts": cuts}}
            for s in iter_shard(str(path))
        ]
        write_tar(path, samples)
        shard["bytes"] = path.stat().st_size
    (folder / "index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def talk(tmp_path_factory) -> Path:
    """One real 30 s clip (64x48, 8 fps, AAC) whose record has cuts at 7 s and 19 s, encoded with --windows
    stride.
    """
    root = tmp_path_factory.mktemp("talk")
    clip = make_clip(root / "talk.mp4", width=64, height=48, fps=8, num_frames=240, sample_rate=16000)
    (root / "metadata.json").write_text(
        json.dumps([{"video_path": clip.path.name, "caption": "a long talk"}])
    )
    build_shards(root / "metadata.json", root / "raw")
    _add_cuts(root / "raw", CUTS)
    encode_tool.main(
        ["--shards", str(root / "raw"), "--out", str(root / "cache"), "--windows", "stride", *CLI]
    )
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """Landscape, portrait and square clips of 1, 2 and 3 s, encoded with --buckets auto."""
    root = tmp_path_factory.mktemp("mixed")
    entries = []
    for name, (w, h) in SIZES.items():
        for seconds in (1, 2, 3):
            clip = make_clip(root / f"{name}{seconds}.mp4", width=w, height=h, fps=8, num_frames=8 * seconds)
            entries.append({"video_path": clip.path.name, "caption": f"{name} for {seconds} seconds"})
    (root / "metadata.json").write_text(json.dumps(entries))
    build_shards(root / "metadata.json", root / "raw", max_count=4)
    encode_tool.main(["--shards", str(root / "raw"), "--out", str(root / "cache"), "--buckets", "auto", *CLI])
    return root


def test_a_30s_clip_gives_the_expected_windows_none_across_a_cut(talk):
    records = sorted(_records(talk / "cache"), key=lambda r: r["window_start"])
    # scenes of 7, 12 and 11 s hold 2, 4 and 4 windows of 2.625 s back to back (11 without the cuts)
    assert [r["window_start"] for r in records] == [
        0.0,
        2.625,
        7.0,
        9.625,
        12.25,
        14.875,
        19.0,
        21.625,
        24.25,
        26.875,
    ]
    assert [r["window_index"] for r in records] == list(range(10))
    assert len({r["key"] for r in records}) == 10 and {r["clip_key"] for r in records} == {
        records[0]["clip_key"]
    }
    for r in records:
        assert r["cuts"] == CUTS and not window_crosses_cut(r["window_start"], FRAMES / FPS, CUTS, r["fps"])
        assert r["cache"]["start"] == r["window_start"] and r["cache"]["windows"] == "stride"
        assert (r["height"], r["width"], r["num_frames"]) == (HEIGHT, WIDTH, FRAMES)
    assert read_index(talk / "cache")["total"] == 10


def test_the_cache_encodes_each_clip_at_its_bucket(mixed):
    options = DataOptions(
        buckets="auto", num_frames=FRAMES, fps=FPS, height=HEIGHT, width=WIDTH, sample_rate=RATE
    )
    plan = plan_buckets(options, resolve_shards(mixed / "raw"), cached=False)
    records = _records(mixed / "cache")
    assert len(records) == 9 and plan.unassigned == 0
    by_source = {r["source_path"]: (r["height"], r["width"], r["num_frames"]) for r in records}
    assert sorted(by_source.values()) == sorted(b for b, n in plan.counts.items() for _ in range(n))
    for path, (h, w, f) in by_source.items():
        name = Path(path).stem
        assert f == {"1": 5, "2": 13, "3": 21}[name[-1]]  # the most 4k + 1 frames of its length
        src_w, src_h = SIZES[name[:-1]]
        assert (w > h) == (src_w > src_h) and (w == h) == (src_w == src_h)  # aspect kept
    from mova_train.data.cache import read_empty_latents

    assert len(read_empty_latents(mixed / "cache")) == len(plan.buckets)  # t2av "no frame" latent per bucket


def _mixed_datamodule(talk: Path, mixed: Path, weights: tuple[float, float], **kw) -> MovaDataModule:
    """Cached training on both caches (windows of the talk, buckets of the mixed set) with automatic buckets."""
    sources = [{"shards": str(f / "cache"), "weight": w} for f, w in zip((talk, mixed), weights, strict=True)]
    sizes = dict(num_frames=FRAMES, fps=FPS, height=HEIGHT, width=WIDTH, sample_rate=RATE, audio_hop=8)
    stream = dict(batch_size=2, shuffle_buffer=4, text_len=16, **kw)
    return MovaDataModule(sources=sources, mode="cached", buckets="auto", **sizes, **stream)


def test_mixed_bucketed_windowed_training_resumes_bit_identically(talk, mixed):
    def make() -> MovaDataModule:
        dm = _mixed_datamodule(talk, mixed, (1.0, 1.0), num_workers=2, seed=5)
        dm.setup("fit")
        return dm

    reference = make()
    cost = TokenCost(FPS, RATE, 8)
    budget = 2 * cost.sample_tokens((HEIGHT, WIDTH, FRAMES))
    ref = take_batches(reference, 8)
    for batch in ref:
        z = batch["video_latents"]
        bucket = (z.shape[3] * 8, z.shape[4] * 8, (z.shape[2] - 1) * 4 + 1)
        assert z.shape[0] * cost.sample_tokens(bucket) <= budget
    assert any(
        k.startswith(tuple(r["clip_key"] for r in _records(talk / "cache"))) for b in ref for k in b["key"]
    )

    first = make()
    head = take_batches(first, 5, consume=4)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make()
    resumed.load_state_dict(state)
    got = head[:4] + take_batches(resumed, 4)
    for a, b in zip(got, ref, strict=True):
        assert a["key"] == b["key"]
        for name, value in b.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(a[name], value), name


def test_training_on_the_mixed_stream_resumes_bit_identically(talk, mixed, tmp_path):
    """The tiny model trained 4 steps straight == 2 steps, checkpoint, 2 resumed steps (weights and optimizer
    state of the LoRA, with windows, mixing and automatic buckets in the stream).
    """
    quiet = dict(logger=False, enable_progress_bar=False, enable_model_summary=False)

    def fit(name: str, steps: int, ckpt_path: Path | None = None, callbacks=()):
        module = tiny_module(lr=5e-3, lora=LoraSpec(rank=4, alpha=4, preset="attn"))
        where = dict(default_root_dir=tmp_path / name, enable_checkpointing=bool(callbacks))
        trainer = Trainer(
            accelerator="cpu",
            deterministic=True,
            max_steps=steps,
            callbacks=list(callbacks),
            **quiet,
            **where,
        )
        datamodule = _mixed_datamodule(talk, mixed, (2.0, 1.0), num_workers=1, seed=9)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
        params = dict(module.named_parameters())
        return {n: params[n].detach().clone() for n in module.trainable_names}

    straight = fit("straight", 4)
    every = ModelCheckpoint(
        dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}"
    )
    fit("first", 2, callbacks=[every])
    resumed = fit("resumed", 4, ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")
    assert straight.keys() == resumed.keys()
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name
