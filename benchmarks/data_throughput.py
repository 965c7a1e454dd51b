"""Data-loading throughput: mova_train's raw shard stream vs an upstream-style loader vs the ffmpeg CLI.

Writes 8.3 s, 24 fps H.264 + AAC clips with `mova_train.data.synthetic.make_clip` at 1080p and 720p (`--unique`
distinct clips per resolution, repeated to `--clips` shard samples: decoding cost depends on the bytes' kind, not
on their identity, and 1080p synthesis takes ~40 s per clip on 2 cores), packs them into shards, then decodes 193
frames at 352x640 plus 386000 mono 48 kHz samples per clip with `--workers` DataLoader workers and prints clips/s
and decoded MB/s (output tensor bytes: uint8 video + float32 audio, 131.9 MB per clip). Each rate is the best of
`--repeats` passes (`--upstream-repeats` for the slow upstream-style loader), timed from the loader's creation to its
last clip (worker start-up included): `--measure` clips from our endless training stream, one clip per worker from
the upstream-style loader. CPU s/clip counts this process and its children (workers, ffmpeg), a figure that other
load on the machine does not inflate much.

References on the same clips, one after the other (`ffmpeg` picks its own threads, all cores):

- `ffmpeg -i clip -f null -`: packet decoding only (no colour conversion, no scaling), the practical limit;
- `ffmpeg -i clip -vf crop=..,scale=640:352:flags=bilinear -pix_fmt rgb24 -f rawvideo /dev/null`: the same
  output as ours (centre crop, bilinear, RGB), the limit including conversion and scaling.

    python benchmarks/data_throughput.py --clips 4 --workers 2 --repeats 2 --upstream-repeats 2
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from mova_train.data.decode import crop_size
from mova_train.data.pipeline import StreamConfig, TrainStream, resolve_shards
from mova_train.data.shard_builder import build_shards
from mova_train.data.synthetic import make_clip

logger = logging.getLogger("data_throughput")
FRAMES, FPS, H, W, SR = 193, 24.0, 352, 640, 48000
SOURCE_FRAMES = 200  # 8.33 s: the 193-frame window (8.04 s) fits
SOURCES = {"1080p": (1920, 1080), "720p": (1280, 720)}
CLIP_MB = (3 * FRAMES * H * W + 4 * round(SR * FRAMES / FPS)) / 1e6


def make_sources(folder: Path, width: int, height: int, count: int, unique: int) -> Path:
    """Write `unique` synthetic clips, repeat them to `count` metadata entries; return the metadata path."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        path = folder / f"clip{i}.mp4"
        if i < unique:
            make_clip(path, width=width, height=height, fps=24, num_frames=SOURCE_FRAMES, seed=i)
        else:
            shutil.copyfile(folder / f"clip{i % unique}.mp4", path)
        entries.append({"video_path": path.name, "caption": f"synthetic clip {i}"})
    (folder / "metadata.json").write_text(json.dumps(entries))
    return folder / "metadata.json"


class UpstreamStyle(Dataset):
    """Upstream MOVA's loader: all frames at source resolution, then crop + float F.interpolate; file opened twice."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        from torchcodec.decoders import AudioDecoder, VideoDecoder

        path = str(self.paths[i])
        vd = VideoDecoder(path, num_ffmpeg_threads=1)
        frames = vd.get_frames_at(list(range(min(FRAMES, vd.metadata.num_frames)))).data  # [T, 3, h, w] uint8
        ch, cw = crop_size(frames.shape[2], frames.shape[3], H, W)
        top, left = (frames.shape[2] - ch) // 2, (frames.shape[3] - cw) // 2
        crop = frames[:, :, top : top + ch, left : left + cw].float()
        video = F.interpolate(crop, size=(H, W), mode="bilinear", antialias=True) / 127.5 - 1
        audio = (
            AudioDecoder(path, sample_rate=SR, num_channels=1)
            .get_samples_played_in_range(0, FRAMES / FPS)
            .data
        )
        return {"video": ((video + 1) * 127.5).round().to(torch.uint8), "audio": audio}


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (DataLoader workers, ffmpeg)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _time_loader(make_loader, n: int) -> tuple[float, float]:
    """(clips/s, CPU s/clip) of one pass of `n` clips, from loader creation until its workers have exited."""
    t0, c0 = time.perf_counter(), _cpu_seconds()
    it = iter(make_loader())
    clips = 0
    while clips < n:
        v = next(it)["video"]
        clips += v.shape[0] if v.dim() == 5 else 1
    dt = time.perf_counter() - t0
    del it  # joins the workers, so that their CPU time is counted
    gc.collect()
    return clips / dt, (_cpu_seconds() - c0) / clips


def _time_ffmpeg(paths: list[Path], args_for: list[str]) -> tuple[float, float]:
    """(clips/s, CPU s/clip) of `ffmpeg -i clip <args_for>` run on each clip in turn."""
    t0, c0 = time.perf_counter(), _cpu_seconds()
    for p in paths:
        cmd = ["ffmpeg", "-loglevel", "error", "-y", "-i", str(p), *args_for]
        subprocess.run(cmd, check=True)
    return len(paths) / (time.perf_counter() - t0), (_cpu_seconds() - c0) / len(paths)


Row = tuple[str, str, float, float]


def run(args: argparse.Namespace, tmp: Path) -> list[Row]:
    """Measure every loader on both resolutions; rows of (source, loader, clips/s, CPU s/clip).

    Passes alternate between our loader and the ffmpeg references so that they share the machine's load; each
    keeps its best pass (highest clips/s).
    """
    rows: list[Row] = []
    for name, (w, h) in SOURCES.items():
        src = tmp / name
        t0 = time.perf_counter()
        meta = make_sources(src, w, h, args.clips, min(args.unique, args.clips))
        build_shards(meta, tmp / f"{name}_shards", max_count=2)
        logger.info("%s sources and shards ready in %.0f s", name, time.perf_counter() - t0)
        cfg = StreamConfig(
            shards=resolve_shards(tmp / f"{name}_shards"),
            num_frames=FRAMES,
            fps=FPS,
            height=H,
            width=W,
            batch_size=1,
            shuffle_buffer=1,
        )
        paths = sorted(src.glob("*.mp4"))
        ch, cw = crop_size(h, w, H, W)
        scale = ["-an", "-vf", f"crop={cw}:{ch},scale={W}:{H}:flags=bilinear"]
        scale += ["-pix_fmt", "rgb24", "-f", "rawvideo", os.devnull]
        measures = {
            "mova_train shards (raw)": lambda: _time_loader(
                lambda: DataLoader(TrainStream(cfg), batch_size=None, num_workers=args.workers), args.measure
            ),
            "ffmpeg crop+scale+rgb24": lambda: _time_ffmpeg(paths, scale),
            "ffmpeg -f null (decode only)": lambda: _time_ffmpeg(paths, ["-f", "null", "-"]),
        }
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeats):
            for label, measure in measures.items():
                rate, cpu = measure()
                best[label] = max(best.get(label, (0.0, 0.0)), (rate, cpu))
                logger.info("%s %s: %.3f clips/s, %.2f CPU s/clip", name, label, rate, cpu)
        upstream = (0.0, 0.0)
        for _ in range(args.upstream_repeats):
            loader = lambda: DataLoader(UpstreamStyle(paths), batch_size=None, num_workers=args.workers)  # noqa: E731
            upstream = max(upstream, _time_loader(loader, args.workers))
            logger.info("%s upstream-style: %.3f clips/s, %.2f CPU s/clip", name, *upstream)
        rows.append((name, "mova_train shards (raw)", *best["mova_train shards (raw)"]))
        rows.append((name, "upstream-style", *upstream))
        rows += [(name, label, *best[label]) for label in list(measures)[1:]]
    return rows


def table(rows: list[Row]) -> str:
    """Markdown table: each loader's rate, CPU cost and our rate relative to it."""
    lines = [
        "| source | loader | clips/s | MB/s | CPU s/clip | ours vs this (clips/s) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name in SOURCES:
        group = [r for r in rows if r[0] == name]
        ours = group[0][2]
        for _, loader, rate, cpu in group:
            rel = "-" if loader.startswith("mova_train") else f"{ours / rate:.2f}x"
            lines.append(f"| {name} | {loader} | {rate:.3f} | {rate * CLIP_MB:.1f} | {cpu:.2f} | {rel} |")
    return "\n".join(lines)


def main() -> None:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=4, help="shard samples per resolution (timed per pass)")
    parser.add_argument("--unique", type=int, default=1, help="distinct synthetic clips per resolution")
    parser.add_argument("--measure", type=int, default=8, help="clips timed per pass of our (endless) stream")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument(
        "--repeats", type=int, default=2, help="passes of ours and ffmpeg; the best one counts"
    )
    parser.add_argument(
        "--upstream-repeats", type=int, default=2, help="passes of the slow upstream-style loader"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("mova_train").setLevel(logging.WARNING)
    logging.getLogger("data_tools").setLevel(logging.WARNING)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run(args, Path(tmp))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(table(rows))  # noqa: T201 (benchmark output)
    print(  # noqa: T201
        f"\n{cores} cores, load average {os.getloadavg()[0]:.2f}, {args.workers} workers, "
        f"{args.clips} clips ({args.unique} distinct), best of {args.repeats} (upstream {args.upstream_repeats}); "
        f"{time.perf_counter() - t0:.0f} s total"
    )


if __name__ == "__main__":
    main()
