r"""Encode raw shards into a latent cache: the command line of `mova_train.data.cache_writer.encode_cache`.

Per clip: video latents, first-frame conditioning latents, DAC audio latents and text states (bf16), from the
model's own components (`--checkpoint`) or random tiny ones (`--tiny-seed`, for tests).

Example:
    python -m data_tools.encode --shards data/raw --out data/cache --checkpoint MOVA-360p \
        --num-frames 193 --height 352 --width 640 --fps 24 --batch-size 1
    # every clip at its automatic bucket, back-to-back windows of long clips (none across a scene cut)
    python -m data_tools.encode --shards data/raw --out data/cache --checkpoint MOVA-360p --buckets auto \
        --windows stride
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mova_train.data.cache import CacheSettings
from mova_train.data.cache_writer import (
    check_dac_rate,
    checkpoint_hashes,
    encode_cache,
    load_checkpoint_encoders,
    module_hashes,
)
from mova_train.data.windows import parse_policy
from mova_train.utils.dist import local_rank as dist_local_rank
from mova_train.utils.dist import rank_world

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def _resolve_device(name: str) -> torch.device:
    """cpu, or this process's GPU (`cuda:LOCAL_RANK` under torchrun, so that each rank uses its own device)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA device is visible; use --device cpu or auto")
    local_rank = dist_local_rank() % torch.cuda.device_count()
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.encode",
        description="Encode raw shards into a latent cache (video, first-frame, audio latents and text states).",
    )
    parser.add_argument(
        "--shards", required=True, help="raw shard folder (with index.json), glob or .tar file"
    )
    parser.add_argument("--out", required=True, type=Path, help="cache folder to write")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--checkpoint", type=Path, help="MOVA checkpoint folder (video_vae, audio_vae, text_encoder)"
    )
    source.add_argument("--tiny-seed", type=int, help="random tiny encoders (tests) with this seed")
    parser.add_argument("--num-frames", type=int, default=193, help="frames per clip (4k + 1)")
    parser.add_argument("--height", type=int, default=352, help="frame height")
    parser.add_argument("--width", type=int, default=640, help="frame width")
    parser.add_argument("--fps", type=float, default=24.0, help="target frame rate")
    parser.add_argument("--sample-rate", type=int, default=48000, help="audio rate in Hz")
    parser.add_argument("--window-start", type=float, default=0.0, help="fixed window start in seconds")
    parser.add_argument(
        "--windows",
        type=parse_policy,
        default=None,
        help="several windows per clip: stride (back to back), slide (every half window) or N (evenly spaced); "
        "none crosses a scene cut (default: one window at --window-start)",
    )
    parser.add_argument(
        "--buckets",
        choices=("auto",),
        default=None,
        help="auto: encode each clip at its automatic bucket (about --height x --width pixels, at most "
        "--num-frames frames; mova_train.data.buckets)",
    )
    parser.add_argument(
        "--bucket-lengths", type=int, default=None, help="frame-count tiers of --buckets auto"
    )
    parser.add_argument("--resize-mode", choices=("crop", "stretch"), default="crop")
    parser.add_argument("--missing-audio", choices=("skip", "silence"), default="skip")
    parser.add_argument("--text-len", type=int, default=None, help="text rows (default 512; tiny: 16)")
    parser.add_argument("--batch-size", type=int, default=1, help="clips per encoder call")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 on GPU")
    rank, world = rank_world()
    parser.add_argument("--rank", type=int, default=rank)
    parser.add_argument("--world-size", type=int, default=world)
    parser.add_argument(
        "--resume", action="store_true", help="keep finished cache shards with the same settings"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command-line entry point; returns the summary of `encode_cache`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = _resolve_device(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    dtype = DTYPES[dtype_name]
    if args.checkpoint is not None:
        hashes = checkpoint_hashes(args.checkpoint)
        encoders = load_checkpoint_encoders(args.checkpoint, dtype, device)
        check_dac_rate(encoders, args.sample_rate, where=f"{args.checkpoint}/audio_vae/config.json")
        if args.text_len is not None:
            encoders.text_encoder.max_length = args.text_len
    else:
        from mova_train.codecs.encoders import tiny_encoders

        encoders = tiny_encoders(args.tiny_seed, text_len=args.text_len or 16)
        hashes = module_hashes(encoders)
    settings = CacheSettings(
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        fps=args.fps,
        sample_rate=args.sample_rate,
        window_start=args.window_start,
        resize_mode=args.resize_mode,
        missing_audio=args.missing_audio,
        text_len=int(encoders.text_encoder.max_length),
        compute_dtype=dtype_name,
        buckets=args.buckets,
        bucket_lengths=args.bucket_lengths,
        windows=args.windows,
    )
    return encode_cache(
        args.shards,
        args.out,
        encoders,
        hashes,
        settings,
        batch_size=args.batch_size,
        device=device,
        dtype=dtype,
        rank=args.rank,
        world_size=args.world_size,
        resume=args.resume,
        progress=not args.no_progress,
    )


if __name__ == "__main__":
    main()
