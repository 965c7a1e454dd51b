"""Framework overhead: a Lightning training step against a bare PyTorch loop, and peak host memory.

Both loops train the same dual tower (``tiny_config``) with the same LoRA spec, the same
``FlowMatchingObjective``, the same pre-generated in-memory batches, the same per-step generator seeds and
``torch.optim.AdamW``:

* ``bare``: ``zero_grad``, objective, ``backward``, ``step`` in a Python ``for`` loop;
* ``lightning``: ``MovaLitModule`` under ``lightning.Trainer(accelerator="cpu", devices=1, logger=False,
  enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)``, fed by a
  ``DataLoader(batch_size=None, num_workers=0)`` over the same list of batches;
* ``lightning-nolog`` (diagnostic): the same module with ``self.log`` made a no-op, to isolate its cost.

The step time is the interval between the starts of consecutive iterations (``on_train_batch_start`` of a
callback for Lightning), so it includes data fetching, hooks and logging. The first ``--warmup`` steps are
dropped. Modes run interleaved for ``--rounds`` rounds (fresh model each run); the table shows the lowest
per-round median and the best single step (robust on a shared, loaded machine). Torch runs with
``--threads`` intra-op threads (1 by default) and 1 inter-op thread.

Peak host memory (``VmHWM``, the RSS high-water mark; see :func:`hwm_kib` for why not ``ru_maxrss``) is
measured per run in a fresh subprocess, so each high-water mark is its own.

    python benchmarks/framework_overhead.py --sizes tiny small --rounds 3
    python benchmarks/framework_overhead.py --sizes tiny --profile   # where Lightning spends its time
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from mova_train.codecs.encoders import latents_from_cached
from mova_train.models.builders import build_dual_tower, tiny_config
from mova_train.models.lora import LoraSpec, inject_lora, set_trainable
from mova_train.models.mova import MovaDualTower
from mova_train.objectives.flow_matching import FlowMatchingObjective

logger = logging.getLogger("framework_overhead")
LR = 1e-4
LORA = LoraSpec(rank=16, alpha=16.0, preset="upstream")
MODES = ("bare", "lightning", "lightning-nolog")


@dataclass(frozen=True)
class Size:
    """A model preset and the shape of its batches (one batch per step)."""

    name: str
    batch: int
    frames: int
    hw: int
    audio_len: int
    text_len: int
    steps: int
    warmup: int
    model: dict[str, Any] = field(default_factory=dict)

    def video_tokens(self) -> int:
        """Video tokens per sample with the default (1, 2, 2) patch."""
        return self.frames * (self.hw // 2) * (self.hw // 2)


SIZES = {
    "tiny": Size("tiny", batch=2, frames=2, hw=4, audio_len=8, text_len=8, steps=40, warmup=5),
    "small": Size(
        "small",
        batch=1,
        frames=2,
        hw=32,
        audio_len=128,
        text_len=64,
        steps=10,
        warmup=2,
        model=dict(video_dim=256, audio_dim=256, head_dim=64, num_layers=4, text_dim=128),
    ),
}


def load() -> str:
    """The 1/5/15-minute load averages as text."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def make_batches(size: Size, count: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """``count`` batches in the objective's layout (``latents_from_cached`` passes them through) that fit
    ``tiny_config(**size.model)``.
    """
    cfg = tiny_config(**size.model)
    cv, ca, dt = cfg.video_dit.out_dim, cfg.audio_dit.in_dim, cfg.video_dit.text_dim
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        b, f, hw = size.batch, size.frames, size.hw
        cond = torch.randn(b, 4 + cv, f, hw, hw, generator=g)
        cond[:, :4] = 0.0
        cond[:, :4, 0] = 1.0
        out.append(
            {
                "video_latents": torch.randn(b, cv, f, hw, hw, generator=g),
                "cond": cond,
                "audio_latents": torch.randn(b, ca, size.audio_len, generator=g),
                "context": torch.randn(b, size.text_len, dt, generator=g),
                "audio_mask": torch.ones(b, dtype=torch.bool),
            }
        )
    return out


def build_model(size: Size) -> MovaDualTower:
    """The dual tower (both video experts), seed 0."""
    return build_dual_tower(tiny_config(**size.model), seed=0)


def intervals(marks: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(wall, process CPU) seconds between consecutive marks."""
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:], strict=False)]


def run_bare(size: Size, batches: list[dict[str, torch.Tensor]]) -> list[tuple[float, float]]:
    """Plain PyTorch loop; returns the ``len(batches) - 1`` start-to-start iteration times in seconds."""
    model = build_model(size)
    inject_lora(model, LORA)
    set_trainable(model, LORA)
    model.train()
    objective = FlowMatchingObjective()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=LR, weight_decay=0.0)
    marks = []
    for i, batch in enumerate(batches):
        marks.append((time.perf_counter(), time.process_time()))
        gen = torch.Generator().manual_seed(i)
        opt.zero_grad(set_to_none=True)
        out = objective(model, latents_from_cached(batch), step=i, generator=gen)
        out.loss.backward()
        opt.step()
    return intervals(marks)


def run_lightning(
    size: Size, batches: list[dict[str, torch.Tensor]], no_log: bool = False, profiler: str | None = None
) -> list[tuple[float, float]]:
    """``MovaLitModule`` under ``lightning.Trainer``; returns the per-iteration wall times in seconds.

    Like :func:`run_bare`, the last batch only closes the previous interval (``len(batches) - 1`` times).
    """
    from lightning.pytorch import Callback, Trainer

    from mova_train.lit.mova_module import MovaLitModule

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.marks: list[tuple[float, float]] = []

        def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
            self.marks.append((time.perf_counter(), time.process_time()))

    class NoLogModule(MovaLitModule):
        def log(self, *args: Any, **kwargs: Any) -> None:
            return None

    cls = NoLogModule if no_log else MovaLitModule
    module = cls(
        model=build_model(size),
        objective=FlowMatchingObjective(),
        optimizer=functools.partial(torch.optim.AdamW, lr=LR, weight_decay=0.0),
        lora=LORA,
    )
    timer = StepTimer()
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=len(batches),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
        profiler=profiler,
    )
    loader = torch.utils.data.DataLoader(batches, batch_size=None, shuffle=False, num_workers=0)
    trainer.fit(module, train_dataloaders=loader)
    if profiler is not None:
        print(trainer.profiler.summary())
    return intervals(timer.marks)


def run_mode(mode: str, size: Size, batches: list[dict[str, torch.Tensor]]) -> list[tuple[float, float]]:
    """Per-step times of one run (warmup included)."""
    if mode == "bare":
        return run_bare(size, batches)
    return run_lightning(size, batches, no_log=mode == "lightning-nolog")


# ------------------------------------------------------------------------------------------- memory


def hwm_kib() -> int:
    """This process's RSS high-water mark in KiB: ``VmHWM`` where /proc exists, else ``ru_maxrss``.

    On Linux ``ru_maxrss`` survives ``fork`` + ``exec``: a child started by a large parent reports the
    parent's RSS until it exceeds it. ``VmHWM`` belongs to the address space, which ``exec`` replaces.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def memory_child(size: Size, mode: str) -> None:
    """Run one short training in this process and print its RSS high-water marks (JSON, KiB)."""
    base = hwm_kib()
    if mode != "bare":
        import lightning.pytorch  # noqa: F401  (count the framework import in this mode's baseline)

        import mova_train.lit.mova_module  # noqa: F401

        base = hwm_kib()
    batches = make_batches(size, size.warmup + 4)
    run_mode(mode, size, batches)
    peak = hwm_kib()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"import_kib": base, "peak_kib": peak, "ru_maxrss_kib": maxrss}))


def measure_memory(size: Size, mode: str, threads: int) -> dict[str, int]:
    """Peak RSS of one run of ``mode`` in a fresh interpreter."""
    cmd = [sys.executable, __file__, "--memory-child", size.name, mode, "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"memory child {size.name}/{mode} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------- main


def quiet() -> None:
    """Silence Lightning's info banners and the DataLoader-worker suggestion."""
    for name in (
        "lightning",
        "lightning.pytorch",
        "lightning.fabric",
        "lightning.pytorch.utilities.rank_zero",
        "mova_train",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*`validation_step` but have no `val_dataloader`.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def trainable_counts(size: Size) -> tuple[int, int]:
    """(trainable, total) parameter counts with the benchmark's LoRA."""
    model = build_model(size)
    inject_lora(model, LORA)
    set_trainable(model, LORA)
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(
        p.numel() for p in model.parameters()
    )


def summarize(runs: list[list[float]]) -> dict[str, float]:
    """Lowest per-round median, best single step and pooled median of per-step seconds."""
    return {
        "round_median": min(statistics.median(t) for t in runs),
        "best": min(min(t) for t in runs),
        "pooled_median": statistics.median([x for t in runs for x in t]),
    }


def benchmark_size(size: Size, rounds: int, modes: tuple[str, ...]) -> dict[str, dict[str, dict[str, float]]]:
    """Interleaved rounds of every mode; per mode and clock (``wall``, ``cpu``) the :func:`summarize` stats."""
    batches = make_batches(size, size.warmup + size.steps + 1)
    wall: dict[str, list[list[float]]] = {m: [] for m in modes}
    cpu: dict[str, list[list[float]]] = {m: [] for m in modes}
    for r in range(rounds):
        order = modes if r % 2 == 0 else tuple(reversed(modes))
        for mode in order:
            t = run_mode(mode, size, batches)[size.warmup :]
            wall[mode].append([w for w, _ in t])
            cpu[mode].append([c for _, c in t])
            logger.info(
                "%s round %d %-16s wall median %.1f ms min %.1f ms | cpu median %.1f ms min %.1f ms (load %s)",
                size.name,
                r,
                mode,
                1e3 * statistics.median(wall[mode][-1]),
                1e3 * min(wall[mode][-1]),
                1e3 * statistics.median(cpu[mode][-1]),
                1e3 * min(cpu[mode][-1]),
                load(),
            )
    return {m: {"wall": summarize(wall[m]), "cpu": summarize(cpu[m])} for m in modes}


def pct(a: float, b: float) -> str:
    """``a`` relative to ``b`` as a signed percentage (``+3.2 %``)."""
    return f"{100.0 * (a / b - 1.0):+.1f} %"


def main() -> None:
    """Run the bare / Lightning timing and peak-RSS comparisons and print the table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(SIZES))
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs per mode")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--no-timing", action="store_true", help="only the peak-RSS runs")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocess runs")
    ap.add_argument("--profile", action="store_true", help="one Lightning run per size with SimpleProfiler")
    ap.add_argument("--memory-child", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    quiet()
    if args.memory_child:
        memory_child(SIZES[args.memory_child[0]], args.memory_child[1])
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("framework_overhead").setLevel(logging.INFO)
    load_start = load()

    if args.profile:
        for name in args.sizes:
            size = SIZES[name]
            run_lightning(size, make_batches(size, size.warmup + size.steps), profiler="simple")
        return

    results = {} if args.no_timing else {n: benchmark_size(SIZES[n], args.rounds, MODES) for n in args.sizes}
    memory = {}
    if not args.no_memory:
        for name in args.sizes:
            for mode in ("bare", "lightning"):
                memory[(name, mode)] = measure_memory(SIZES[name], mode, args.threads)
                logger.info("memory %s %s: %s", name, mode, memory[(name, mode)])
    load_end = load()

    print(
        f"\ntorch {torch.__version__}, {args.threads} intra-op thread(s), 1 inter-op thread, "
        f"{os.cpu_count()} CPUs, load average (1/5/15 min) {load_start} at start, {load_end} at end; "
        f"{args.rounds} interleaved rounds of (warmup + steps) per mode: "
        + ", ".join(f"{n} {SIZES[n].warmup} + {SIZES[n].steps}" for n in args.sizes)
        + f"; LoRA r{LORA.rank} 'upstream' preset; AdamW lr {LR}\n"
    )
    print(
        "| size | trainable / total params | tokens/sample (video + audio) | batch | mode | "
        "CPU ms/step: best-round median / best | overhead | wall ms/step: best-round median / best | overhead |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, res in results.items():
        size = SIZES[name]
        n_train, n_all = trainable_counts(size)
        for mode in MODES:
            cells = []
            for clock in ("cpu", "wall"):
                r, b = res[mode][clock], res["bare"][clock]
                cells.append(f"{1e3 * r['round_median']:.1f} / {1e3 * r['best']:.1f}")
                cells.append(
                    "-"
                    if mode == "bare"
                    else f"{pct(r['round_median'], b['round_median'])} / {pct(r['best'], b['best'])}"
                )
            print(
                f"| {name} | {n_train / 1e6:.3f} M / {n_all / 1e6:.2f} M | "
                f"{size.video_tokens()} + {size.audio_len} | {size.batch} | {mode} | "
                + " | ".join(cells)
                + " |"
            )
    if memory:
        print("\n| size | mode | RSS after imports (MiB) | peak RSS, VmHWM (MiB) | peak - imports (MiB) |")
        print("| --- | --- | --- | --- | --- |")
        for (name, mode), m in memory.items():
            imp, peak = m["import_kib"] / 1024, m["peak_kib"] / 1024
            print(f"| {name} | {mode} | {imp:.0f} | {peak:.0f} | {peak - imp:.0f} |")


if __name__ == "__main__":
    main()
