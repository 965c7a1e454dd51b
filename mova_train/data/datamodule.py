"""`MovaDataModule`: raw or cached shards -> bucketed batches, with a resumable training stream.

The training stream position is part of the checkpoint: `state_dict()` stores, for every rank and DataLoader
worker, how many batches that worker had delivered to training, and `load_state_dict()` makes the next
`train_dataloader` iteration continue right after them (no repeats, no gaps; see `pipeline.TrainStream`).

Video travels from the workers as uint8 (4x less inter-process traffic than float32) and becomes float in [-1, 1]
in `on_after_batch_transfer`, i.e. on the training device. Do not override `on_after_batch_transfer` in the
LightningModule: Lightning then skips the datamodule's hook, which also records the stream position.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from mova_train.data.buckets import BucketPlan, plan_buckets
from mova_train.data.decode import to_model_range
from mova_train.data.options import DataConfigError, DataOptions
from mova_train.data.pipeline import STREAM_KEY, StreamConfig, TrainStream, ValStream, resolve_shards
from mova_train.data.sources import check_sources, resolve_sources
from mova_train.data.synthetic import SyntheticSpec, prepare_synthetic
from mova_train.utils.dist import rank_world

logger = logging.getLogger(__name__)


class StreamTracker:
    """Per-worker stream positions of one rank: batches received from the loader and batches consumed."""

    def __init__(self) -> None:
        self.received: dict[int, int] = {}
        self.consumed: dict[int, int] = {}
        self.counters: dict[int, dict[str, Any]] = {}
        self.consumed_counters: dict[int, dict[str, Any]] = {}
        self.num_received = 0
        self.num_consumed = 0
        self.hook_active = False

    def record(self, info: dict[str, Any], consumed: bool) -> None:
        """Note that a worker's batch number `info["batch"]` was received (or consumed by a training step)."""
        worker = int(info["worker"])
        counters = {"seen": int(info["seen"]), "skipped": dict(info["skipped"])}
        if consumed:
            self.hook_active = True
            self.num_consumed += 1
            self.consumed[worker] = int(info["batch"]) + 1
            self.consumed_counters[worker] = counters
        else:
            self.num_received += 1
            self.received[worker] = int(info["batch"]) + 1
            self.counters[worker] = counters

    def position(self) -> tuple[dict[int, int], dict[int, dict[str, Any]], int]:
        """(next batch index per worker, skip counters per worker, batches delivered) to resume from."""
        if self.hook_active:
            return dict(self.consumed), dict(self.consumed_counters), self.num_consumed
        return dict(self.received), dict(self.counters), self.num_received

    def load(self, batches: dict[int, int], counters: dict[int, dict[str, Any]], delivered: int) -> None:
        """Restore positions (from a checkpoint)."""
        self.num_received = self.num_consumed = delivered
        self.received = dict(batches)
        self.consumed = dict(batches)
        self.counters = dict(counters)
        self.consumed_counters = dict(counters)


class TrackedLoader(DataLoader):
    """DataLoader over a `TrainStream` that starts every iteration at the tracked position.

    Args:
        dataset: The training stream.
        tracker: Where positions are read and (on receipt) recorded.
        batches_per_epoch: Stop an iteration after this many batches (None: never stop).
        **kwargs: DataLoader arguments.
    """

    def __init__(
        self, dataset: TrainStream, tracker: StreamTracker, batches_per_epoch: int | None, **kwargs: Any
    ):
        super().__init__(dataset, batch_size=None, persistent_workers=False, **kwargs)
        self.tracker = tracker
        self.batches_per_epoch = batches_per_epoch

    def __len__(self) -> int:
        if self.batches_per_epoch is None:
            raise TypeError(
                "the training stream is infinite; set data.batches_per_epoch or trainer.max_steps"
            )
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches, counters, delivered = self.tracker.position()
        self.dataset.start_batches = batches
        self.dataset.start_counters = counters
        self.dataset.worker_offset = delivered % max(1, self.num_workers)
        iterator = super().__iter__()
        if self.batches_per_epoch is not None:
            iterator = itertools.islice(iterator, self.batches_per_epoch)
        for batch in iterator:
            self.tracker.record(batch[STREAM_KEY], consumed=False)
            yield batch


class MovaDataModule(LightningDataModule):
    """Raw (decode clips) or cached (read latents) webdataset shards for MOVA training.

    Args:
        shards: Training shards: a folder with `index.json`, a glob, a brace pattern or a list (None with
            `sources`).
        val_shards: Validation shards (same forms); None disables validation.
        synthetic: A `SyntheticSpec` (or its dict): `prepare_data` makes the embedded synthetic dataset when
            `shards` is the spec's own folder and has no `index.json` yet.
        sources: Several training shard sets mixed with sampling weights, `[{shards, weight, repeats}]`
            (`mova_train.data.sources`), instead of `shards`.
        **options: `DataOptions` fields (`mode`, `num_frames`, `fps`, `batch_size`, ...), checked here, before
            any data is read.
    """

    def __init__(
        self,
        shards: str | Sequence[str] | None = None,
        val_shards: str | Sequence[str] | None = None,
        synthetic: SyntheticSpec | Mapping[str, Any] | None = None,
        sources: Sequence[Mapping[str, Any]] | None = None,
        **options: Any,
    ):
        super().__init__()
        unknown = sorted(set(options) - set(DataOptions.names()))
        if unknown:
            raise DataConfigError(
                f"unknown data options {unknown}; the options are {list(DataOptions.names())}"
            )
        self.options = DataOptions(**options).validate()
        if (shards is None) == (sources is None):
            raise DataConfigError(
                "give data.shards or data.sources, not both (set data.shards=null to mix data.sources)"
                if sources is not None
                else "data.shards is missing: give a shard folder, glob or list (or data.sources)"
            )
        self.sources = None if sources is None else [dataclasses.asdict(s) for s in check_sources(sources)]
        self.shards_spec = shards
        self.val_shards_spec = val_shards
        self.synthetic = SyntheticSpec.from_any(synthetic)
        self.num_workers = self.options.num_workers
        self.batches_per_epoch = self.options.batches_per_epoch
        self.epoch = 0
        self.val_batch_size = self.options.val_batch_size or self.options.batch_size
        self.tracker = StreamTracker()
        self.val_stats: dict[int, dict[str, Any]] = {}
        self.rank, self.world_size = 0, 1
        self.plan: BucketPlan | None = None
        self._train: TrainStream | None = None
        self._val: ValStream | None = None

    def prepare_data(self) -> None:
        """Make the embedded synthetic dataset if this run asks for it and it is missing.

        Lightning calls this on one process per node and makes the other ranks wait at a barrier; the dataset is
        written to a private folder and renamed into place, so concurrent writers (nodes sharing a filesystem)
        cannot corrupt each other.
        """
        if self.synthetic is not None:
            prepare_synthetic(self.synthetic, self.shards_spec, self.options)

    def setup(self, stage: str | None = None) -> None:
        """Resolve shards and build the streams for this rank."""
        if self.trainer is not None:
            # Shard over data-parallel ranks (context-parallel ranks of one group must read the same batch).
            kwargs = getattr(self.trainer.strategy, "distributed_sampler_kwargs", None) or {}
            self.rank = int(kwargs.get("rank", self.trainer.global_rank))
            self.world_size = int(kwargs.get("num_replicas", self.trainer.world_size))
        else:
            self.rank, self.world_size = rank_world()
        options = self.options.options()
        mix: dict[str, Any] = {}
        if self.sources is not None:
            resolved = resolve_sources(self.sources)
            train_shards = resolved.shards
            mix = {"shard_sources": resolved.shard_sources, "source_weights": resolved.weights}
            shares = [w / sum(resolved.weights) for w in resolved.weights]
            logger.info(
                "data.sources: %d sources, samples %s, shares %s", len(shares), resolved.counts, shares
            )
        else:
            train_shards = resolve_shards(self.shards_spec)
        cached = self.options.mode == "cached"
        if cached:
            self._check_caches(train_shards)
        self.plan = plan_buckets(self.options, train_shards, cached)
        if self.plan is not None:
            options["buckets"] = self.plan.buckets
            logger.info("bucket plan of the training shards:\n%s", self.plan.table())
        train_cfg = StreamConfig(
            shards=train_shards,
            epoch=self.epoch,
            bucket_batch=None if self.plan is None else self.plan.batch_sizes,
            **mix,
            **options,
        )
        self._train = TrainStream(train_cfg, self.rank, self.world_size)
        if self.val_shards_spec is not None:
            val_cfg = StreamConfig(
                shards=resolve_shards(self.val_shards_spec), **{**options, "batch_size": self.val_batch_size}
            )
            self._val = ValStream(val_cfg, self.rank, self.world_size)

    def stream_layout(self) -> dict[str, Any]:
        """What the training batches are made of besides seeds and positions (checked on resume): the bucket plan
        (buckets with their token-budget batch sizes) and the source shares, None when not used (so checkpoints
        from before either existed still resume). Call after `setup`.
        """
        cfg = self._train.cfg if self._train is not None else None
        buckets = None
        if cfg is not None and cfg.bucket_batch:
            buckets = [[*b, cfg.bucket_batch[b]] for b in cfg.bucket_list()]
        weights = list(cfg.source_weights) if cfg is not None and cfg.source_weights else None
        return {"buckets": buckets, "source_weights": weights}

    def _check_caches(self, shards: Sequence[str]) -> None:
        """Refuse a latent cache encoded with other settings than this run's (before any training starts)."""
        from mova_train.data.cache import check_cache

        names = ("num_frames", "height", "width", "fps", "sample_rate", "text_len", "missing_audio")
        wanted = {k: getattr(self.options, k) for k in names}
        for folder in sorted({str(Path(s).parent) for s in shards}):
            if (Path(folder) / "index.json").is_file():
                check_cache(folder, settings=wanted)

    def _ensure_setup(self) -> None:
        if self._train is None:
            self.setup()

    def train_dataloader(self) -> TrackedLoader:
        """Infinite (or `batches_per_epoch`-long) loader over the resumable training stream."""
        self._ensure_setup()
        assert self._train is not None
        self._train.cfg.epoch = self.epoch
        return TrackedLoader(self._train, self.tracker, self.batches_per_epoch, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        """Finite loader: every validation sample once across ranks and workers."""
        self._ensure_setup()
        if self._val is None:
            return []  # type: ignore[return-value]
        return DataLoader(self._val, batch_size=None, num_workers=self.num_workers)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Record the stream position of training batches and map uint8 video to float in [-1, 1]."""
        return self.finalize_batch(batch, consumed=True)

    def finalize_batch(self, batch: dict[str, Any], consumed: bool = True) -> dict[str, Any]:
        """Strip the bookkeeping entry (recording it) and convert uint8 pixels to the model range.

        Args:
            batch: A batch from either loader.
            consumed: Count a training batch as consumed by a training step.

        Returns:
            The batch in the layout the model expects (video float `[B, 3, F, H, W]` in [-1, 1]).
        """
        info = batch.pop(STREAM_KEY, None)
        if info is not None:
            if info.get("split") == "train":
                self.tracker.record(info, consumed=consumed)
            else:
                self.val_stats[int(info["worker"])] = info
        for name in ("video", "first_frame"):
            if name in batch and batch[name].dtype == torch.uint8:
                batch[name] = to_model_range(batch[name])
        return batch

    def skip_stats(self) -> dict[str, Any]:
        """Training-stream counters of this rank so far: `seen`, `skipped`, `by_reason` and the data-parallel
        `rank` (logged by the `DataStats` callback as `data/seen`, `data/skipped`, `data/skip_rate`,
        `data/skipped/<reason>`).
        """
        _, counters, _ = self.tracker.position()
        by_reason: dict[str, int] = {}
        for c in counters.values():
            for reason, n in c["skipped"].items():
                by_reason[reason] = by_reason.get(reason, 0) + int(n)
        return {
            "rank": self.rank,
            "seen": sum(int(c["seen"]) for c in counters.values()),
            "skipped": sum(by_reason.values()),
            "by_reason": dict(sorted(by_reason.items())),
        }

    # ------------------------------------------------------------------------------------------- state

    def _local_state(self) -> dict[str, Any]:
        batches, counters, delivered = self.tracker.position()
        return {"batches": batches, "counters": counters, "delivered": delivered}

    def state_dict(self) -> dict[str, Any]:
        """Stream positions of every rank (gathered when torch.distributed is initialized)."""
        local = self._local_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, local)
            ranks = dict(enumerate(gathered))
        else:
            ranks = {self.rank: local}
        return {
            "version": 1,
            "epoch": self.epoch,
            "seed": self.options.seed,
            "batch_size": self.options.batch_size,
            "world_size": self.world_size,
            "num_workers": self.num_workers,
            "layout": self.stream_layout(),
            "ranks": ranks,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the training stream where the checkpoint left it.

        A checkpoint from another world size, worker count, seed, bucket plan or source mix cannot be continued
        exactly: the stream then restarts with the next stream epoch (fresh seeds) and a warning.

        Raises:
            DataConfigError: the checkpoint was trained with another `data.batch_size` (positions count batches:
                continuing would silently skip or repeat samples).
        """
        saved_bs = state_dict.get("batch_size")
        if saved_bs is not None and int(saved_bs) != self.options.batch_size:
            raise DataConfigError(
                f"data.batch_size={self.options.batch_size} but the checkpoint was trained with "
                f"data.batch_size={saved_bs}: its stream position counts batches, so resuming would skip or repeat "
                f"samples; resume with data.batch_size={saved_bs}, or start a new run (lora.init_from=...)"
            )
        self.epoch = int(state_dict.get("epoch", 0))
        rank, world = (self.rank, self.world_size)
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        self._ensure_setup()
        layout = json.loads(json.dumps(self.stream_layout()))
        saved_layout = state_dict.get("layout", {"buckets": None, "source_weights": None})
        same_layout = (
            state_dict.get("world_size") == world
            and state_dict.get("num_workers") == self.num_workers
            and state_dict.get("seed") == self.options.seed
            and json.loads(json.dumps(saved_layout)) == layout
        )
        if not same_layout:
            logger.warning(
                "data state was saved with world_size=%s num_workers=%s seed=%s layout=%s, now %s/%s/%s/%s: the "
                "training stream restarts with fresh seeds (stream epoch %d) instead of continuing exactly",
                state_dict.get("world_size"),
                state_dict.get("num_workers"),
                state_dict.get("seed"),
                saved_layout,
                world,
                self.num_workers,
                self.options.seed,
                layout,
                self.epoch + 1,
            )
            self.epoch += 1
            self.tracker.load({}, {}, 0)
            return
        ranks = state_dict["ranks"]
        local = ranks.get(rank, ranks.get(str(rank)))
        if local is None:
            raise ValueError(
                f"data state has no entry for rank {rank} (ranks {sorted(ranks)}); checkpoint is corrupt"
            )
        batches = {int(k): int(v) for k, v in local["batches"].items()}
        counters = {int(k): v for k, v in local["counters"].items()}
        self.tracker.load(batches, counters, int(local.get("delivered", 0)))
        if self._train is not None:
            self._train.cfg.epoch = self.epoch
