"""Data-loading throughput: mova_train's raw shard stream vs an upstream-style loader vs `ffmpeg -f null`.

Generates 8 s, 24 fps H.264 + AAC clips at 1080p and 720p (FFmpeg `testsrc2` + a sine tone) in a temp folder,
packs them into shards, then decodes 193 frames at 352x640 plus 386000 audio samples per clip with 2 DataLoader
workers and prints clips/s and decoded MB/s (output tensor bytes: uint8 video + float32 audio).

    python benchmarks/data_throughput.py --clips 6 --workers 2
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from data_tools.build_shards import build_shards
from mova_train.data.decode import crop_size
from mova_train.data.pipeline import StreamConfig, TrainStream, resolve_shards

logger = logging.getLogger("data_throughput")
FRAMES, FPS, H, W, SR = 193, 24.0, 352, 640, 48000


def make_sources(folder: Path, width: int, height: int, count: int) -> Path:
    """Write `count` clips of 8 s and a metadata.json; return the metadata path."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(count):
        path = folder / f"clip{i}.mp4"
        cmd = [
            "ffmpeg", "-loglevel", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={width}x{height}:rate=24:duration=8.2",
            "-f", "lavfi", "-i", f"sine=frequency={300 + 50 * i}:sample_rate=48000:duration=8.2",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "48",
            "-c:a", "aac", "-ac", "1", "-shortest", str(path),
        ]  # fmt: skip
        subprocess.run(cmd, check=True)
        entries.append({"video_path": path.name, "caption": f"test pattern {i}"})
    (folder / "metadata.json").write_text(json.dumps(entries))
    return folder / "metadata.json"


class UpstreamStyle(Dataset):
    """Upstream MOVA's loader: all frames at source resolution, then crop + F.interpolate; file opened twice."""

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
        return {"video": video.to(torch.uint8), "audio": audio}


def _measure(loader, n: int) -> tuple[float, float]:
    """(clips/s, MB/s) over the first `n` clips of `loader` (after one warm-up batch)."""
    it = iter(loader)
    next(it)
    t0, clips, nbytes = time.perf_counter(), 0, 0
    for batch in it:
        v, a = batch["video"], batch["audio"]
        b = v.shape[0] if v.dim() == 5 else 1
        clips += b
        nbytes += v.numel() * v.element_size() + a.numel() * a.element_size()
        if clips >= n:
            break
    dt = time.perf_counter() - t0
    return clips / dt, nbytes / dt / 1e6


def main() -> None:
    """Run the benchmark and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--measure", type=int, default=8, help="clips timed per loader (after a warm-up)")
    parser.add_argument(
        "--upstream-measure", type=int, default=2, help="clips timed for the (slow) upstream loader"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows: list[tuple] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (w, h) in {"1080p": (1920, 1080), "720p": (1280, 720)}.items():
            src = Path(tmp) / name
            meta = make_sources(src, w, h, args.clips)
            build_shards(meta, Path(tmp) / f"{name}_shards", max_count=2)
            cfg = StreamConfig(
                shards=resolve_shards(Path(tmp) / f"{name}_shards"),
                num_frames=FRAMES,
                fps=FPS,
                height=H,
                width=W,
                batch_size=1,
                shuffle_buffer=1,
            )
            ours = DataLoader(TrainStream(cfg), batch_size=None, num_workers=args.workers)
            rows.append((name, "mova_train shards", *_measure(ours, args.measure)))
            print(rows[-1], flush=True)  # noqa: T201
            paths = sorted(src.glob("*.mp4")) * 4
            upstream = DataLoader(UpstreamStyle(paths), batch_size=None, num_workers=args.workers)
            rows.append((name, "upstream-style", *_measure(upstream, args.upstream_measure)))
            print(rows[-1], flush=True)  # noqa: T201
            t0 = time.perf_counter()
            for p in sorted(src.glob("*.mp4")):
                subprocess.run(["ffmpeg", "-loglevel", "error", "-i", str(p), "-f", "null", "-"], check=True)
            rate = args.clips / (time.perf_counter() - t0)
            rows.append((name, "ffmpeg -f null (full decode)", rate, float("nan")))
    lines = [f"{'source':<7} {'loader':<30} {'clips/s':>8} {'MB/s':>8}"]
    lines += [f"{r[0]:<7} {r[1]:<30} {r[2]:>8.2f} {r[3]:>8.1f}" for r in rows]
    print("\n".join(lines))  # noqa: T201 (benchmark output)


if __name__ == "__main__":
    main()
