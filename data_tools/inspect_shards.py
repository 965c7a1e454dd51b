"""Summarize a folder of raw shards and draw a contact sheet of a few samples.

Usage::

    python -m data_tools.inspect_shards /data/shards                 # table
    python -m data_tools.inspect_shards /data/shards --json          # the same numbers as JSON
    python -m data_tools.inspect_shards /data/shards --contact-sheet sheet.png --samples 6
    python -m data_tools.inspect_shards /data/shards --height 480 --width 832 --num-frames 121 --bucket-tokens 80000
    python -m data_tools.inspect_shards /data/shards --contact-sheet sheet.png --av-audit   # + sheet_av_offsets.png

The report ends with the automatic buckets (`data.buckets: auto`) of these clips for the given data options (the
defaults of `DataOptions`: 352x640 pixels, 193 frames at 24 fps) and how many clips fall in each.
With a contact sheet, the A/V offsets of the clips (from `build_shards --av-audit` records; `--av-audit` measures
the clips that lack one) are drawn as a histogram next to it (`<sheet>_av_offsets.png`).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mova_train.data.inspection import (
    BUCKET_OPTIONS,
    av_offsets,
    bucket_report,
    contact_sheet,
    format_table,
    offset_histogram,
    summarize,
)
from mova_train.data.options import DataOptions


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: the report goes to stdout."""
    parser = argparse.ArgumentParser(
        prog="python -m data_tools.inspect_shards", description=__doc__.split("\n")[0]
    )
    parser.add_argument("folder", type=Path, help="shard folder holding index.json")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    parser.add_argument(
        "--contact-sheet", type=Path, default=None, help="also write a PNG contact sheet here"
    )
    parser.add_argument("--samples", type=int, default=4, help="samples on the contact sheet")
    parser.add_argument("--frames", type=int, default=4, help="frames per sample on the contact sheet")
    defaults = DataOptions()
    for name in BUCKET_OPTIONS:
        value = getattr(defaults, name)
        kind = float if isinstance(value, float) else int
        parser.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value, help=f"data.{name}")
    parser.add_argument(
        "--av-audit", action="store_true", help="measure A/V offsets missing from the records"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = summarize(args.folder)
    options = DataOptions(buckets="auto", **{n: getattr(args, n) for n in BUCKET_OPTIONS}).validate()
    plan = bucket_report(args.folder, options)
    summary["buckets"] = plan.rows()
    summary["unbucketed"] = plan.unassigned
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")
    else:
        table = format_table({k: v for k, v in summary.items() if k not in ("buckets", "unbucketed")})
        sys.stdout.write(f"{table}\n\nautomatic buckets (data.buckets: auto)\n{plan.table()}\n")
    if args.contact_sheet is not None:
        contact_sheet(
            args.folder, args.contact_sheet, num_samples=args.samples, frames_per_sample=args.frames
        )
        offsets = av_offsets(args.folder, measure=args.av_audit)
        histogram = args.contact_sheet.with_name(f"{args.contact_sheet.stem}_av_offsets.png")
        offset_histogram(offsets, histogram)
        spread = sorted(abs(o) for o in offsets)
        typical = (
            f"median |offset| {spread[len(spread) // 2]:.0f} ms, max {spread[-1]:.0f} ms; " if spread else ""
        )
        sys.stdout.write(f"A/V offsets of {len(offsets)} confident clips: {typical}histogram {histogram}\n")


if __name__ == "__main__":
    main()
