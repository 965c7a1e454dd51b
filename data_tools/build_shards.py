"""Probe every input clip once and pack the usable ones into webdataset tar shards (`build_shards` of
`mova_train.data.shard_builder`).

Inputs: upstream MOVA's `metadata.json`, a folder of clips with same-named `.txt` captions, or a JSONL manifest.

Usage::

    python -m data_tools.build_shards /data/metadata.json /data/shards --max-count 500 --workers 8
    python -m data_tools.build_shards /data/metadata.json /data/shards --detect-cuts --split-scenes
    python -m data_tools.build_shards /data/metadata.json /data/shards --max-av-offset-ms 60 --skip-av-offset
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
    parser.add_argument(
        "--detect-cuts", action="store_true", help="find scene cuts and store them in the record"
    )
    parser.add_argument(
        "--split-scenes", action="store_true", help="write one sample per scene (implies --detect-cuts)"
    )
    parser.add_argument(
        "--av-audit", action="store_true", help="estimate every clip's A/V offset (record only)"
    )
    parser.add_argument(
        "--max-av-offset-ms", type=float, default=None, help="flag clips whose sound is further off (ms)"
    )
    parser.add_argument("--skip-av-offset", action="store_true", help="skip those clips instead of flagging")
    parser.add_argument(
        "--min-av-confidence", type=float, default=0.3, help="audit estimates below this never flag or skip"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    policy = ProbePolicy(
        require_audio=args.require_audio,
        min_frames=args.min_frames,
        min_duration=args.min_duration,
        skip_variable_frame_rate=args.skip_vfr,
        skip_empty_caption=args.skip_empty_caption,
        detect_cuts=args.detect_cuts or args.split_scenes,
        av_audit=args.av_audit,
        max_av_offset_ms=args.max_av_offset_ms,
        skip_av_offset=args.skip_av_offset,
        min_av_confidence=args.min_av_confidence,
    )
    if args.skip_av_offset and args.max_av_offset_ms is None:
        parser.error("--skip-av-offset needs --max-av-offset-ms (the offset above which clips are skipped)")
    build_shards(
        args.source,
        args.out_dir,
        max_count=args.max_count,
        max_bytes=args.max_bytes,
        workers=args.workers,
        policy=policy,
        split_scenes=args.split_scenes,
    )


if __name__ == "__main__":
    main()
