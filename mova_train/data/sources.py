"""Dataset mixing (`data.sources`): several shard sets streamed together with sampling weights.

`data.sources: [{shards: data/cache/talks, weight: 3}, {shards: data/cache/scenes, weight: 1}]` makes about 3 in 4
training samples come from the first set. Without any `weight`, each source's share is its sample count times its
`repeats` (a source listed `repeats` times); with weights on every source, the share is `weight * repeats`. The
training stream draws the source of every next sample with these shares from its own seeded RNG
(`pipeline.TrainStream`), so the mix, like the rest of the stream, resumes exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mova_train.data.options import DataConfigError
from mova_train.data.pipeline import resolve_shards, shard_counts

SOURCE_KEYS = ("shards", "weight", "repeats")


@dataclass
class DataSource:
    """One entry of `data.sources`.

    Attributes:
        shards: A shard folder with `index.json`, a glob, a brace pattern or a list (see `resolve_shards`).
        weight: Sampling weight (relative to the other sources'); None on every source: by sample count.
        repeats: Multiplies the source's share (sample count or weight), like listing it `repeats` times.
    """

    shards: Any = None
    weight: float | None = None
    repeats: int = 1


@dataclass
class ResolvedSources:
    """The shards of every source, concatenated, with each shard's source and each source's share.

    Attributes:
        shards: Shard paths of all sources, source after source.
        shard_sources: Source index of every shard.
        weights: Sampling share of every source (not normalized).
        counts: Samples of every source.
    """

    shards: list[str]
    shard_sources: list[int]
    weights: list[float]
    counts: list[int]


def _entry(i: int, raw: Any) -> DataSource:
    where = f"data.sources[{i}]"
    if not isinstance(raw, Mapping):
        raise DataConfigError(f"{where}={raw!r} must be a mapping {{shards, weight, repeats}}")
    unknown = sorted(set(raw) - set(SOURCE_KEYS))
    if unknown:
        raise DataConfigError(f"{where} has unknown keys {unknown}; the keys are {list(SOURCE_KEYS)}")
    source = DataSource(**dict(raw))
    if source.shards in (None, "", []):
        raise DataConfigError(f"{where}.shards is missing: give a shard folder, glob or list")
    weight = source.weight
    if weight is not None and (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or weight <= 0
    ):
        raise DataConfigError(f"{where}.weight={weight!r} must be a positive number (or left out)")
    repeats = source.repeats
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise DataConfigError(f"{where}.repeats={repeats!r} must be a positive integer")
    return source


def check_sources(sources: Any) -> list[DataSource]:
    """Check `data.sources` without reading any shard.

    Raises:
        DataConfigError: Not a non-empty list of `{shards, weight, repeats}`, a bad value, or weights on some
            sources only.
    """
    if isinstance(sources, str | bytes) or not isinstance(sources, Sequence) or not sources:
        raise DataConfigError(
            f"data.sources={sources!r} must be a non-empty list of {{shards, weight, repeats}}"
        )
    entries = [_entry(i, raw) for i, raw in enumerate(sources)]
    weighted = [e.weight is not None for e in entries]
    if any(weighted) and not all(weighted):
        missing = [i for i, w in enumerate(weighted) if not w]
        raise DataConfigError(
            f"data.sources: weight is set on some sources but not on {missing}; give a weight on every source or "
            "on none (then shares follow sample counts)"
        )
    return entries


def resolve_sources(sources: Any) -> ResolvedSources:
    """Resolve every source's shards and its sampling share.

    Raises:
        DataConfigError: See `check_sources`, or a source holds no sample.
        FileNotFoundError: A source's shards do not exist.
    """
    entries = check_sources(sources)
    shards: list[str] = []
    shard_sources: list[int] = []
    weights: list[float] = []
    counts: list[int] = []
    for i, entry in enumerate(entries):
        urls = resolve_shards(entry.shards)
        count = sum(shard_counts(urls))
        if count == 0:
            raise DataConfigError(
                f"data.sources[{i}].shards={entry.shards!r} holds no sample; drop it or fix it"
            )
        shards += urls
        shard_sources += [i] * len(urls)
        counts.append(count)
        base = float(entry.weight) if entry.weight is not None else float(count)
        weights.append(base * entry.repeats)
    return ResolvedSources(shards, shard_sources, weights, counts)
