"""FLOP and memory model of the released MOVA config, and a measured CPU FLOP/s fraction.

Run: ``python benchmarks/flops_memory.py`` (about a minute on 2 CPU cores). Prints markdown tables that
``docs/performance.md`` reproduces. Assumptions: H100 SXM 989 TFLOP/s and RTX 4090 165 TFLOP/s dense bf16,
40 % MFU, 25 GB/s host-to-device; LoRA r16.
"""

from __future__ import annotations

import time

import torch

from mova_train.estimate.flops import COMPONENTS, component_params, token_counts, training_step_flops
from mova_train.estimate.memory import GIB, _weight_bytes
from mova_train.estimate.report import estimate_run
from mova_train.models.builders import build_dual_tower, release_config, tiny_config
from mova_train.models.lora import LoraSpec

H100, RTX4090, MFU = 989.0, 165.0, 0.4
RES = {"360p": (352, 640), "720p": (720, 1280)}


def targets(preset: str) -> dict:
    """LoRA targets (component -> module patterns) of a ``LoraSpec`` preset."""
    return dict(LoraSpec(preset=preset).components)


def recipes(height: int, width: int) -> list[tuple[str, dict, float | None]]:
    """The recipes at one resolution: ``(label, estimate_run kwargs, upstream's figure or None)``."""
    common = {"frames": 193, "height": height, "width": width, "lora_rank": 16}
    return [
        (
            "24 GB: 1 GPU, block swap (2 units), fp8 weights, 8-bit AdamW, LoRA attn, act. offload",
            dict(
                common,
                experts=("video_dit_2",),
                lora_targets=targets("attn"),
                strategy="offload",
                weight_dtype="fp8",
                optimizer="adamw8bit",
                activation_offload=True,
                peak_tflops=RTX4090,
            ),
            600.0,
        ),
        (
            "80 GB: 1 H100, one expert bf16, LoRA upstream set, act. offload",
            dict(
                common,
                experts=("video_dit_2",),
                lora_targets=targets("upstream"),
                activation_offload=True,
                peak_tflops=H100,
            ),
            None,
        ),
        (
            "8xH100: FSDP2 shard 8 x CP 4 (2 samples/step), both experts, LoRA upstream set",
            dict(common, lora_targets=targets("upstream"), strategy="fsdp2", dp=8, cp=4, peak_tflops=H100),
            22.2,
        ),
    ]


def model_tables() -> None:
    """Print the release model's FLOP and memory tables per resolution and per recipe."""
    cfg = release_config()
    print(
        "| resolution | video tokens | audio tokens | train step LoRA (PFLOP) | full FT (PFLOP) | "
        "sampling step w/ CFG (PFLOP) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, (h, w) in RES.items():
        tok = token_counts(193, h, w)
        lora = training_step_flops(cfg, tok, lora_rank=16, lora_targets=targets("upstream"))
        full = training_step_flops(cfg, tok, full_finetune=COMPONENTS)
        est = estimate_run(cfg, height=h, width=w, lora_rank=16, lora_targets=targets("upstream"))
        print(
            f"| {name} | {tok.video:,} | {tok.audio} | {lora.total / 1e15:.1f} | {full.total / 1e15:.1f} | "
            f"{est.sampling_flops / 1e15:.1f} |"
        )
    print("\n| component | parameters | bf16 GiB | fp8 GiB |")
    print("| --- | ---: | ---: | ---: |")
    for comp in ("video_dit", "audio_dit", "dual_tower_bridge"):
        n = component_params(cfg, comp)[0]
        print(
            f"| {comp}{' (each of 2)' if comp == 'video_dit' else ''} | {n:,} | "
            f"{_weight_bytes(cfg, comp, 'bf16') / GIB:.2f} | {_weight_bytes(cfg, comp, 'fp8') / GIB:.2f} |"
        )
    for name, (h, w) in RES.items():
        print(f"\n{name}, 193 frames: memory plan per recipe (MFU {MFU:.0%})\n")
        print("| recipe | device GiB | host GiB | step s (est.) | upstream s | speed-up |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for label, kw, upstream in recipes(h, w):
            est = estimate_run(cfg, mfu=MFU, **kw)
            up = f"{upstream:g}" if upstream and name == "360p" else "-"
            sp = f"{upstream / est.step_time_s:.1f}x" if upstream and name == "360p" else "-"
            print(
                f"| {label} | {est.memory.device_total / GIB:.1f} | {est.memory.host_total / GIB:.1f} | "
                f"{est.step_time_s:.1f} | {up} | {sp} |"
            )


def best_of(fn, n: int) -> float:
    """Best wall time in seconds of ``n`` calls of ``fn``."""
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def measured() -> None:
    """Print the float32 matmul peak and the achieved FLOP/s of a small dual tower's fwd+bwd on this CPU."""
    torch.manual_seed(0)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.matmul(a, b)
    peak = 2 * 2048**3 / best_of(lambda: torch.matmul(a, b), 10)
    cfg = tiny_config(video_dim=256, audio_dim=256, head_dim=64, num_layers=4, text_dim=256)
    model = build_dual_tower(cfg, experts=("video_dit",), seed=0)
    frames, h, w = 17, 256, 384
    tok = token_counts(frames, h, w)
    c = cfg.video_dit.out_dim
    lat = torch.randn(1, c, tok.latent_frames, tok.latent_height, tok.latent_width)
    y = torch.randn(1, c + 4, tok.latent_frames, tok.latent_height, tok.latent_width)
    audio = torch.randn(1, cfg.audio_dit.in_dim, tok.audio)
    ctx = torch.randn(1, 512, cfg.video_dit.text_dim)
    t = torch.tensor([500.0])

    def step() -> None:
        model.zero_grad(set_to_none=True)
        v, a_ = model(lat, y, audio, ctx, t, t)
        (v.square().mean() + a_.square().mean()).backward()

    step()
    secs = best_of(step, 3)
    flops = training_step_flops(cfg, tok, full_finetune=COMPONENTS, gradient_checkpointing=False).total
    print(f"\nmeasured on this machine ({torch.get_num_threads()} threads, float32):\n")
    print("| quantity | value |")
    print("| --- | ---: |")
    print(f"| float32 matmul peak (2048^3, best of 10) | {peak / 1e9:.1f} GFLOP/s |")
    print(
        f"| dual tower dim 256 x 4 layers, {tok.video:,} video + {tok.audio} audio tokens, fwd+bwd | "
        f"{flops / 1e9:.2f} GFLOP in {secs * 1e3:.0f} ms (best of 3) |"
    )
    print(f"| achieved | {flops / secs / 1e9:.1f} GFLOP/s = {flops / secs / peak:.0%} of the matmul peak |")


if __name__ == "__main__":
    model_tables()
    measured()
