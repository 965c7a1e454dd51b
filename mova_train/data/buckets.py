"""Automatic buckets (`data.buckets: auto`): resolution x frame-count buckets proposed from the clips' records, and
a batch size per bucket from a token budget.

Proposal (`propose_buckets`), from every clip's `width`, `height`, `duration` (and `cuts`):

1. Aspect groups: clips whose aspect ratios round to the same step of `ASPECT_STEP` on a log scale form one group;
   its resolution keeps the group's median aspect at about `pixels` pixels per frame (never more, never more than
   the group's smallest clip), both sides multiples of 16 (VAE 8x, patch 2).
2. Length tiers: each clip's longest window is the most `4k + 1` frames (at most `max_frames`) that fit in its
   longest scene; up to `lengths` tiers are the quantiles of those counts (the shortest always among them).
3. A group gets every tier from its shortest clip's to its longest clip's; each clip then goes where
   `pipeline.assign_bucket` sends it at training time (nearest aspect, then most frames) and buckets that receive
   no clip are dropped. Every clip with at least one frame in a scene is assigned.

Batch sizes (`TokenCost`, `batch_sizes`): a sample of `F` frames at `H x W` is `((F - 1) / 4 + 1) * (H / 16) *
(W / 16)` video tokens (VAE 4x temporal, 8x spatial; DiT patch (1, 2, 2)) plus `ceil(S / hop)` audio tokens
(`S` samples of the window; DAC hop 960 at 48 kHz, audio patch 1). A bucket's batch size is the most samples within
the token budget.
"""

from __future__ import annotations

import json
import math
import statistics
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mova_train.data.decode import audio_num_samples
from mova_train.data.options import DataConfigError, DataOptions
from mova_train.data.windows import longest_scene

Bucket = tuple[int, int, int]  # (height, width, num_frames)
VAE_STRIDE = (4, 8, 8)  # Wan2.1 VAE compression (time, height, width)
PATCH = (1, 2, 2)  # video DiT patch (time, height, width)
SIDE_MULTIPLE = VAE_STRIDE[1] * PATCH[1]  # 16: output sides are multiples of it
ASPECT_STEP = 0.1  # log-aspect width of one aspect group (about 10 % in aspect ratio)


@dataclass(frozen=True)
class TokenCost:
    """DiT tokens of one sample, from the VAE/DAC compression and the patch sizes.

    Attributes:
        fps: Target frame rate (sets the audio window).
        sample_rate: Audio rate in Hz.
        audio_hop: Audio samples per audio latent frame (= token, audio patch 1).
    """

    fps: float
    sample_rate: int
    audio_hop: int = 960

    def video_tokens(self, bucket: Bucket) -> int:
        """Video tokens `T' * (H / 16) * (W / 16)` with `T' = (F - 1) / 4 + 1`."""
        height, width, frames = bucket
        latent_frames = (frames - 1) // VAE_STRIDE[0] + 1
        return (
            (latent_frames // PATCH[0])
            * (height // (VAE_STRIDE[1] * PATCH[1]))
            * (width // (VAE_STRIDE[2] * PATCH[2]))
        )

    def audio_tokens(self, bucket: Bucket) -> int:
        """Audio tokens `ceil(S / hop)` of the bucket's window."""
        return math.ceil(audio_num_samples(bucket[2], self.fps, self.sample_rate) / self.audio_hop)

    def sample_tokens(self, bucket: Bucket) -> int:
        """Video + audio tokens of one sample of `bucket`."""
        return self.video_tokens(bucket) + self.audio_tokens(bucket)


@dataclass
class BucketPlan:
    """Buckets, their batch sizes and (for a proposal) how many clips fall in each.

    Attributes:
        buckets: `(height, width, num_frames)` in a stable order.
        batch_sizes: Samples per batch of each bucket.
        token_budget: Tokens per batch the batch sizes were made for (None: fixed `batch_size`).
        cost: The token counter.
        counts: Clips per bucket (a proposal's assignment).
        unassigned: Clips that fit no bucket (no scene holds one frame).
    """

    buckets: list[Bucket]
    batch_sizes: dict[Bucket, int]
    token_budget: int | None
    cost: TokenCost
    counts: dict[Bucket, int] = field(default_factory=dict)
    unassigned: int = 0

    def rows(self) -> list[dict[str, Any]]:
        """One dict per bucket: size, batch size, tokens per sample and per batch, clips."""
        return [
            {
                "height": b[0],
                "width": b[1],
                "num_frames": b[2],
                "batch_size": self.batch_sizes[b],
                "tokens_per_sample": self.cost.sample_tokens(b),
                "tokens_per_batch": self.batch_sizes[b] * self.cost.sample_tokens(b),
                "clips": self.counts.get(b, 0),
            }
            for b in self.buckets
        ]

    def table(self) -> str:
        """The plan as a text table (what `inspect_shards` prints)."""
        head = f"{'bucket HxWxF':<16} {'batch':>5} {'tokens/sample':>13} {'tokens/batch':>12} {'clips':>6}"
        lines = [head]
        for r in self.rows():
            size = f"{r['height']}x{r['width']}x{r['num_frames']}"
            lines.append(
                f"{size:<16} {r['batch_size']:>5} {r['tokens_per_sample']:>13} {r['tokens_per_batch']:>12} "
                f"{r['clips']:>6}"
            )
        budget = "fixed batch size" if self.token_budget is None else f"token budget {self.token_budget}"
        lines.append(f"{budget}; clips that fit no bucket: {self.unassigned}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ records


def iter_records(urls: Sequence[str]) -> Iterator[dict[str, Any]]:
    """The `json` record of every sample of the given tar shards (the clip bytes are skipped, not read).

    Raises:
        tarfile.TarError, OSError: A shard is not a readable tar (named in the message by tarfile).
    """
    for url in urls:
        with tarfile.open(url) as tar:
            for member in tar:
                if member.isreg() and member.name.partition(".")[2] == "json":
                    handle = tar.extractfile(member)
                    assert handle is not None
                    yield json.loads(handle.read())


# ------------------------------------------------------------------------------------------------ proposal


def clip_frames(record: Mapping[str, Any], fps: float, max_frames: int) -> int:
    """The most `4k + 1` frames (at most `max_frames`) whose window fits in the clip's longest scene; 0 if none."""
    fit = math.floor(longest_scene(record) * fps + 1e-6)
    frames = min(fit, max_frames)
    return 0 if frames < 1 else (frames - 1) // 4 * 4 + 1


def resolution(aspect: float, pixels: int) -> tuple[int, int]:
    """`(height, width)`, multiples of 16 and at most `pixels` pixels, that best keep the aspect `width / height`
    and the pixel count: the least `2 |log(aspect error)| + |log(pixels lost)|` (exact for 352x640 at 16:9; at
    tiny sizes the 16-pixel grid forces a compromise).
    """
    side = SIDE_MULTIPLE
    h0 = math.sqrt(pixels / aspect)
    best: tuple[float, int, int, int] | None = None
    for h in range(max(side, int(h0 // side - 2) * side), int(h0 // side + 3) * side + 1, side):
        w0 = h * aspect
        for w in range(max(side, int(w0 // side - 2) * side), int(w0 // side + 3) * side + 1, side):
            if h * w > pixels and (h, w) != (side, side):
                continue
            score = 2 * abs(math.log(w / h / aspect)) + abs(math.log(pixels / (h * w)))
            key = (round(score, 9), -h * w, h, w)
            best = key if best is None or key < best else best
    assert best is not None
    return best[2], best[3]


def _tiers(frames: Sequence[int], lengths: int) -> list[int]:
    values = sorted(frames)
    if len(set(values)) <= lengths:
        return sorted(set(values))
    return sorted({values[j * len(values) // lengths] for j in range(lengths)})


def batch_sizes(buckets: Iterable[Bucket], cost: TokenCost, token_budget: int) -> dict[Bucket, int]:
    """The most samples of each bucket within `token_budget` tokens.

    Raises:
        DataConfigError: One sample of a bucket is over the budget (names the bucket and the keys to change).
    """
    out = {}
    for bucket in buckets:
        tokens = cost.sample_tokens(bucket)
        if tokens > token_budget:
            raise DataConfigError(
                f"data.bucket_tokens={token_budget} is below one sample of bucket {list(bucket)} ({tokens} "
                "tokens); raise data.bucket_tokens or lower data.height/width/num_frames"
            )
        out[bucket] = token_budget // tokens
    return out


def propose_buckets(
    records: Iterable[Mapping[str, Any]],
    *,
    pixels: int,
    max_frames: int,
    fps: float,
    lengths: int,
    cost: TokenCost,
    token_budget: int,
    preferred: tuple[int, int] | None = None,
) -> BucketPlan:
    """Buckets for a set of clips (see the module docstring).

    Args:
        records: Clip records (`width`, `height`, `duration`, optional `cuts`, `fps`).
        pixels: Pixel budget per frame (e.g. 352 * 640).
        max_frames: Longest window, `4k + 1`.
        fps: Target frame rate.
        lengths: Frame-count tiers.
        cost: Token counter.
        token_budget: Tokens per batch.
        preferred: `(height, width)` used as it is for a group within half an aspect step of its aspect (the
            configured training size, e.g. 352x640 for 16:9 clips) when the group's clips are that large.

    Returns:
        The plan, with clips per bucket.

    Raises:
        DataConfigError: No clip holds one frame, or a sample is over the token budget.
    """
    from mova_train.data.pipeline import assign_bucket

    clips = [(dict(r), clip_frames(r, fps, max_frames)) for r in records]
    usable = [(r, f) for r, f in clips if f > 0]
    if not usable:
        raise DataConfigError(
            f"data.buckets=auto: none of the {len(clips)} clips holds one frame at {fps:g} fps in a scene; "
            "check data.shards / data.sources"
        )
    tiers = _tiers([f for _, f in usable], lengths)
    groups: dict[int, list[tuple[dict[str, Any], int]]] = {}
    for r, f in usable:
        groups.setdefault(round(math.log(r["width"] / r["height"]) / ASPECT_STEP), []).append((r, f))
    candidates: set[Bucket] = set()
    for members in groups.values():
        aspect = statistics.median(r["width"] / r["height"] for r, _ in members)
        smallest = min(int(r["width"]) * int(r["height"]) for r, _ in members)
        height, width = resolution(aspect, min(pixels, smallest))
        if preferred and abs(math.log(preferred[1] / preferred[0] / aspect)) < ASPECT_STEP / 2:
            if preferred[0] * preferred[1] <= min(pixels, smallest):
                height, width = preferred
        shortest = max(t for t in tiers if t <= min(f for _, f in members))
        longest = max(t for t in tiers if t <= max(f for _, f in members))
        candidates |= {(height, width, t) for t in tiers if shortest <= t <= longest}
    ordered = sorted(candidates)
    counts: Counter[Bucket] = Counter()
    unassigned = len(clips) - len(usable)
    for r, _ in usable:
        bucket = assign_bucket(r, ordered, fps, cached=False)
        if bucket is None:
            unassigned += 1
        else:
            counts[bucket] += 1
    used = [b for b in ordered if counts[b]]
    return BucketPlan(
        used, batch_sizes(used, cost, token_budget), token_budget, cost, dict(counts), unassigned
    )


def default_token_budget(options: DataOptions, cost: TokenCost) -> int:
    """`bucket_tokens`, or `batch_size` samples of `height x width x num_frames`."""
    if options.bucket_tokens is not None:
        return options.bucket_tokens
    return options.batch_size * cost.sample_tokens((options.height, options.width, options.num_frames))


def plan_buckets(options: DataOptions, urls: Sequence[str], cached: bool) -> BucketPlan | None:
    """The bucket plan of a stream: None for fixed buckets with a fixed batch size.

    Raw `auto`: proposed from the shards' records. Cached `auto`: the sizes the cache was encoded at. A bucket list
    with `bucket_tokens`: that list with token-budget batch sizes.
    """
    cost = TokenCost(options.fps, options.sample_rate, options.audio_hop)
    budget = default_token_budget(options, cost)
    if options.buckets == "auto" and not cached:
        return propose_buckets(
            iter_records(urls),
            pixels=options.height * options.width,
            max_frames=options.num_frames,
            fps=options.fps,
            lengths=options.bucket_lengths,
            cost=cost,
            token_budget=budget,
            preferred=(options.height, options.width),
        )
    if options.buckets == "auto":
        counts = Counter(
            (int(r["height"]), int(r["width"]), int(r["num_frames"])) for r in iter_records(urls)
        )
        buckets = sorted(counts)
        return BucketPlan(buckets, batch_sizes(buckets, cost, budget), budget, cost, dict(counts))
    if options.bucket_tokens is None:
        return None
    buckets = list(options.buckets or [(options.height, options.width, options.num_frames)])
    return BucketPlan(buckets, batch_sizes(buckets, cost, budget), budget, cost)
