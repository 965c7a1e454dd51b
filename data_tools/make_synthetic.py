"""Generate a small real dataset of mp4 clips (H.264 + AAC) with captions, in upstream MOVA's format
(`make_dataset` of `mova_train.data.synthetic`).

Usage::

    python -m data_tools.make_synthetic OUT_DIR --count 8 --width 64 --height 48 --fps 24 --seconds 1

writes `OUT_DIR/clip_000000.mp4`, ... plus `OUT_DIR/metadata.json` (a list of `{"video_path", "caption"}`).
`--audio-offset-ms 80` makes clips that flash at irregular times with a click 80 ms after each flash (a known A/V
offset for the audit of `build_shards --max-av-offset-ms`).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from mova_train.data.synthetic import make_dataset


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.make_synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("out_dir", type=Path, help="folder to write clips and metadata.json into")
    parser.add_argument("--count", type=int, default=8, help="number of clips")
    parser.add_argument("--width", type=int, default=64, help="frame width (even)")
    parser.add_argument("--height", type=int, default=48, help="frame height (even)")
    parser.add_argument(
        "--fps", type=Fraction, default=Fraction(24), help="frame rate, e.g. 24 or 30000/1001"
    )
    parser.add_argument("--seconds", type=float, default=1.0, help="clip length")
    parser.add_argument("--sample-rate", type=int, default=48000, help="audio sample rate in Hz")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--index-barcode", action="store_true", help="draw the frame index as a barcode")
    parser.add_argument(
        "--audio-offset-ms",
        type=float,
        default=None,
        help="flash at irregular times with a click this much later (negative: earlier)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    make_dataset(
        args.out_dir,
        count=args.count,
        width=args.width,
        height=args.height,
        fps=args.fps,
        seconds=args.seconds,
        sample_rate=args.sample_rate,
        seed=args.seed,
        index_barcode=args.index_barcode,
        audio_offset_ms=args.audio_offset_ms,
    )


if __name__ == "__main__":
    main()
