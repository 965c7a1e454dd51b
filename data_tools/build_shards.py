"""Probe every input clip once and pack the usable ones into webdataset tar shards (`build_shards` of
`mova_train.data.shard_builder`).

Inputs: upstream MOVA's `metadata.json`, a folder of clips with same-named `.txt` captions, or a JSONL manifest.

Usage::

    python -m data_tools.build_shards /data/metadata.json /data/shards --max-count 500 --workers 8
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from mova_train.data.probe import ProbePolicy
from mova_train.data.shard_builder import build_shards


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.build_shards", description=__doc__.split("\n")[0]
    )
    parser.add_argument("source", type=Path, help="metadata.json, a .jsonl manifest, or a folder of clips")
    parser.add_argument("out_dir", type=Path, help="output folder for shard-*.tar and index.json")
    parser.add_argument("--max-count", type=int, default=1000, help="most samples per shard")
    parser.add_argument("--max-bytes", type=int, default=1 << 30, help="most bytes per shard")
    parser.add_argument("--workers", type=int, default=1, help="probe processes")
    parser.add_argument("--require-audio", action="store_true", help="skip clips without an audio stream")
    parser.add_argument("--min-frames", type=int, default=1, help="skip clips with fewer frames (e.g. 193)")
    parser.add_argument(
        "--min-duration", type=float, default=0.0, help="skip clips shorter than this (seconds)"
    )
    parser.add_argument("--skip-vfr", action="store_true", help="skip variable-frame-rate clips")
    parser.add_argument("--skip-empty-caption", action="store_true", help="skip clips with an empty caption")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    policy = ProbePolicy(
        require_audio=args.require_audio,
        min_frames=args.min_frames,
        min_duration=args.min_duration,
        skip_variable_frame_rate=args.skip_vfr,
        skip_empty_caption=args.skip_empty_caption,
    )
    build_shards(
        args.source,
        args.out_dir,
        max_count=args.max_count,
        max_bytes=args.max_bytes,
        workers=args.workers,
        policy=policy,
    )


if __name__ == "__main__":
    main()
