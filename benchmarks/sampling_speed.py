"""Seconds per sampling step on the CPU: tiny and a small dual-tower config, with and without batched CFG.

Usage: ``python benchmarks/sampling_speed.py [--steps 4] [--repeats 2] [--threads N]``. Prints a Markdown table.
Only the denoiser loop is timed (no text encoder, no VAEs): random context, condition and noise.
"""

from __future__ import annotations

import argparse
import time

import torch

from mova_train.models.builders import build_dual_tower, tiny_config
from mova_train.sampling.sampler import sample
from mova_train.schedulers.flow_match import FlowMatchScheduler

CONFIGS = {
    # name: (tiny_config kwargs, video latent [C, T', H', W'], audio latent length L, text rows)
    "tiny": ({}, (4, 3, 8, 8), 63, 16),
    "small": (
        {"video_dim": 256, "audio_dim": 128, "head_dim": 64, "num_layers": 4, "video_latent_channels": 16,
         "audio_latent_channels": 128, "text_dim": 256},
        (16, 5, 16, 16),
        101,
        64,
    ),
}  # fmt: skip


def bench(name: str, steps: int, repeats: int, batch_cfg: bool) -> float:
    """Best-of-``repeats`` seconds per step for one config."""
    kwargs, vshape, audio_len, text_len = CONFIGS[name]
    cfg = tiny_config(**kwargs)
    model = build_dual_tower(cfg, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    c = vshape[0]
    video = torch.randn(1, *vshape, generator=g)
    audio = torch.randn(1, cfg.audio_dit.in_dim, audio_len, generator=g)
    y = torch.randn(1, c + 4, *vshape[1:], generator=g)
    ctx = torch.randn(1, text_len, cfg.video_dit.text_dim, generator=g)
    sched = FlowMatchScheduler()
    best = float("inf")
    for _ in range(repeats + 1):  # first run warms up
        t0 = time.perf_counter()
        sample(model, sched, video_noise=video, audio_noise=audio, y=y, context_pos=ctx, context_neg=ctx.clone(),
               num_steps=steps, cfg_scale=5.0, batch_cfg=batch_cfg)  # fmt: skip
        best = min(best, (time.perf_counter() - t0) / steps)
    return best


def main() -> None:
    """Time a sampling step with CFG as two passes vs batched and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in CONFIGS:
        two = bench(name, args.steps, args.repeats, batch_cfg=False)
        one = bench(name, args.steps, args.repeats, batch_cfg=True)
        rows.append(f"| {name} | {two:.4f} | {one:.4f} | {two / one:.2f}x |")
    print(f"threads={torch.get_num_threads()} steps={args.steps} (CFG 5: 2 passes per step)")  # noqa: T201
    print("| config | s/step, CFG as 2 passes | s/step, batched CFG | speed-up |")  # noqa: T201
    print("| --- | --- | --- | --- |")  # noqa: T201
    print("\n".join(rows))  # noqa: T201


if __name__ == "__main__":
    main()
