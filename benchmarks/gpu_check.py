"""One-shot GPU check of the release architecture: speed, memory and kernels of release-width slices.

Run on one 80-141 GB GPU (about 4-6 minutes; stops cleanly at ``--budget-s``):

    python benchmarks/gpu_check.py --out gpu_check.json | tee gpu_check.md

``--dry-run`` runs the same code paths at the tiny test widths on a CPU (CUDA-only rows say "n/a on CPU"); CI runs
it (``tests/integration/test_gpu_check.py``). Random bf16 weights, LoRA r16 (upstream's attention + FFN set),
batch 1, 360p x 193 frames (43,120 video + 403 audio tokens). Sections, each timed after a warm-up and guarded
(an error or the budget turns its rows into a note, the other sections still run):

1. **unit**: forward + backward of one paired unit (bridge layer + video block + audio block) under bf16
   autocast, with and without gradient checkpointing: time, TFLOP/s (FLOPs counted by ``FlopCounterMode``), MFU
   against the device's dense bf16 peak, peak memory against ``mova_train/estimate/`` (ratio), and the saved
   activations of one video block against ``block_saved_elements`` (CUDA autocast: float32 norm inputs).
2. **attention**: the SDPA backend PyTorch takes (from the profiler's op names) and each backend's TFLOP/s at
   the video self-attention and bridge cross-attention lengths.
3. **offload**: ``BlockStreamer`` (``strategy=single_gpu_offload``) over a 3-layer slice vs resident, bf16 / fp8
   / int8 host storage: step time, host-to-device GB/s, copy/compute overlap.
4. **optimizer**: AdamW vs bitsandbytes AdamW8bit over the recipe-sized LoRA set: step time, state bytes/param.
5. **compile**: ``module.compile=blocks`` (regional ``torch.compile``) vs eager on the paired unit.
6. **sampling**: one denoiser step of the slice with batched classifier-free guidance (batch 2).
7. **recipes**: extrapolation to each recipe (x layers, x experts, + optimizer; FLOP-scaled at the measured
   MFU) printed beside upstream's figures.

Prints a markdown table (``section | quantity | value``); ``--out`` writes the same rows as JSON (rewritten
after every section, so a run cut short keeps what it measured).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops_memory import recipes  # noqa: E402
from release_slice import build_slice, clip_tokens, run_unit, slice_config, unit_inputs  # noqa: E402

from mova_train.estimate.flops import sampling_step_flops  # noqa: E402
from mova_train.estimate.measure import parameter_storages, saved_activation_bytes  # noqa: E402
from mova_train.estimate.memory import (  # noqa: E402
    GIB,
    _trainable_names,
    block_saved_elements,
    bridge_saved_elements,
)
from mova_train.estimate.report import estimate_run  # noqa: E402
from mova_train.models.builders import release_config  # noqa: E402
from mova_train.models.compile import compile_blocks  # noqa: E402
from mova_train.models.lora import LoraSpec  # noqa: E402

NA_CPU = "n/a on CPU"
PRESET, RANK = "upstream", 16
PEAK_TFLOPS = (  # dense bf16 tensor-core peak by device name (first match wins)
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("H100", 989.0),
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("RTX 6000 Ada", 364.0),
    ("4090", 165.0),
    ("A10", 125.0),
)
UPSTREAM = {
    "24 GB": "≈18 GB, 600 s/step (RTX 4090)",
    "80 GB": "≈100 GB without activation offload (H100)",
    "8xH100": "≈50 GB, 22.2 s/step (8×H100)",
}
ACTIVATION_ROWS = ("one unit", "saved activations", "streams", "checkpoint")
"""Device rows of :class:`~mova_train.estimate.memory.MemoryEstimate` that hold activations."""
UPSTREAM_SAMPLING_S = 9.0  # s per sampling step, H100 (docs/model.md §10.2)


class Check:
    """Collects rows and enforces the time budget."""

    def __init__(self, device: torch.device, budget_s: float, out: Path | None) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.out = out
        self.rows: list[dict] = []
        self.facts: dict[str, float] = {}

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.budget_s - (time.perf_counter() - self.t0)

    def add(self, section: str, quantity: str, value: object) -> None:
        """Append one ``section | quantity | value`` row."""
        self.rows.append({"section": section, "quantity": quantity, "value": value})

    def sync(self) -> None:
        """Wait for the CUDA device (no-op on a CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def iters(self, n: int) -> int:
        """Timed repetitions: ``n`` on a GPU, 1 in a dry run (it checks code paths, not speed)."""
        return n if self.cuda else 1

    def timed(self, fn: Callable[[], object], iters: int = 3) -> float:
        """Best wall time of ``iters`` calls of ``fn`` after one warm-up (device synchronized)."""
        fn()
        self.sync()
        best = math.inf
        for _ in range(self.iters(iters)):
            t = time.perf_counter()
            fn()
            self.sync()
            best = min(best, time.perf_counter() - t)
        return best

    def section(self, name: str, need_s: float, fn: Callable[[], None]) -> None:
        """Run one section unless fewer than ``need_s`` seconds are left; an error becomes a row."""
        if self.left() <= need_s:
            self.add(name, "skipped", f"budget: {self.left():.0f} s left, section needs ~{need_s:.0f} s")
        else:
            t = time.perf_counter()
            alarm = hasattr(signal, "SIGALRM")
            if alarm:  # a section that overruns the budget is interrupted (its rows so far are kept)
                signal.signal(signal.SIGALRM, _overrun)
                signal.alarm(max(1, int(self.left())))
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - one failing section must not lose the others
                msg = str(err).splitlines()[0][:200] if str(err) else ""
                self.add(name, "error", f"{type(err).__name__}: {msg}")
            finally:
                if alarm:
                    signal.alarm(0)
            self.add(name, "section wall time", f"{time.perf_counter() - t:.1f} s")
        if self.cuda:
            torch.cuda.empty_cache()
        self.write()

    def write(self) -> None:
        """Rewrite ``--out`` with the rows and facts so far (no-op without it)."""
        if self.out is not None:
            self.out.write_text(json.dumps({"rows": self.rows, "facts": self.facts}, indent=1, default=str))


def _overrun(signum, frame) -> None:
    raise TimeoutError("stopped at --budget-s")


def device_peak(device: torch.device) -> tuple[str, float | None]:
    """Device name and dense bf16 peak TFLOP/s (None when unknown or on a CPU)."""
    if device.type != "cuda":
        return "cpu", None
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_TFLOPS:
        if key in name:
            return name, peak
    return name, None


def counted(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (``FlopCounterMode``: matmuls and attention, forward and backward)."""
    mode = FlopCounterMode(display=False)
    with mode:
        fn()
    return mode.get_total_flops()


def _si(x: float, unit: str) -> str:
    """``x`` with a T / G / M prefix (dry-run sizes are small)."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}"


def _fmt_rate(flops: float, seconds: float) -> str:
    return _si(flops / seconds, "FLOP/s") if seconds > 0 else "-"


def _mfu(c: Check, flops: float, seconds: float) -> str:
    peak = c.facts.get("peak_tflops")
    return f"{flops / seconds / 1e12 / peak:.1%}" if peak else (NA_CPU if not c.cuda else "peak unknown")


# ----------------------------------------------------------------------------------------------- sections


def unit_section(c: Check, tiny: bool) -> None:
    """Paired unit fwd+bwd, with and without checkpointing: time, FLOPs, MFU, memory vs estimate."""
    cfg = slice_config(1, tiny=tiny)
    tok = clip_tokens(cfg, tiny)
    model = build_slice(cfg, c.device, torch.bfloat16, RANK, PRESET)
    x = unit_inputs(model, tok, c.device, torch.bfloat16)
    v, a, b = cfg.video_dit, cfg.audio_dit, cfg.dual_tower_bridge
    nv, na = x.video.shape[1], x.audio.shape[1]
    c.add("unit", "tokens (video + audio)", f"{nv:,} + {na:,}")
    targets = dict(LoraSpec(rank=RANK, preset=PRESET).components)
    upcast = c.cuda
    v_saved, v_work = block_saved_elements(
        v.dim, v.ffn_dim, _trainable_names(cfg, "video_dit", targets["video_dit"]), False, upcast, RANK
    )
    a_saved, a_work = block_saved_elements(
        a.dim, a.ffn_dim, _trainable_names(cfg, "audio_dit", targets["audio_dit"]), False, upcast, RANK
    )
    bridge = bridge_saved_elements(b.visual_hidden_dim, b.audio_hidden_dim, nv, na, upcast, RANK)
    streams = 2 * (nv * v.dim + na * a.dim)  # outputs + their gradients
    est = {
        True: 2 * (max(nv * (v_saved + v_work), na * (a_saved + a_work)) + bridge + streams),
        False: 2 * (nv * v_saved + na * a_saved + bridge + nv * v_work + streams),
    }

    def step() -> None:
        model.zero_grad(set_to_none=True)
        for t in (x.video, x.audio):
            t.grad = None
        with torch.autocast(c.device.type, torch.bfloat16):
            vo, ao = run_unit(model, x)
            loss = vo.float().square().mean() + ao.float().square().mean()
        loss.backward()

    for ckpt in (False, True):
        label = "with checkpointing" if ckpt else "no checkpointing"
        model.set_gradient_checkpointing(ckpt)
        flops = counted(step)
        c.sync()
        if c.cuda:
            torch.cuda.reset_peak_memory_stats(c.device)
        base = torch.cuda.memory_allocated(c.device) if c.cuda else 0
        secs = c.timed(step)
        c.add("unit", f"fwd+bwd {label}: time", f"{secs * 1e3:.1f} ms")
        c.add("unit", f"fwd+bwd {label}: FLOPs (counted)", _si(flops, "FLOP"))
        c.add("unit", f"fwd+bwd {label}: achieved", _fmt_rate(flops, secs))
        c.add("unit", f"fwd+bwd {label}: MFU", _mfu(c, flops, secs))
        key = "ckpt" if ckpt else "nockpt"
        c.facts[f"unit_{key}_s"], c.facts[f"unit_{key}_flops"] = secs, flops
        if c.cuda:
            peak = torch.cuda.max_memory_allocated(c.device) - base
            c.add("unit", f"fwd+bwd {label}: peak memory above weights+inputs", f"{peak / GIB:.2f} GiB")
            c.add("unit", f"fwd+bwd {label}: estimate (mova_train/estimate)", f"{est[ckpt] / GIB:.2f} GiB")
            c.add("unit", f"fwd+bwd {label}: peak memory measured / estimated", f"{peak / est[ckpt]:.2f}")
            c.facts[f"unit_{key}_mem_ratio"] = peak / est[ckpt]
        else:
            c.add("unit", f"fwd+bwd {label}: peak memory measured / estimated", NA_CPU)
    # The saved set of one video block under this device's autocast, against the per-token factor.
    exclude = parameter_storages([model]) | {x.video_freqs.untyped_storage().data_ptr()}
    got = saved_activation_bytes(
        lambda: model.video_dit.blocks[0](x.video, x.video_ctx, x.video_mod, x.video_freqs),
        exclude,
        c.device.type,
    )
    want = 2 * nv * v_saved
    c.add("unit", "video block saved activations measured / estimated", f"{got / want:.3f}")
    c.facts["saved_ratio"] = got / want


def attention_section(c: Check, tiny: bool) -> None:
    """The SDPA backend taken and each backend's fwd+bwd speed at the video and bridge attention lengths."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = slice_config(1, tiny=tiny)
    tok = clip_tokens(cfg, tiny)
    v, b = cfg.video_dit, cfg.dual_tower_bridge
    nv, na = tok.video, tok.audio
    shapes = {
        "video self-attention": (v.num_heads, nv, nv, v.head_dim),
        "bridge A2V (video q, audio k/v)": (b.visual_hidden_dim // b.head_dim, nv, na, b.head_dim),
    }

    def make(h: int, lq: int, lk: int, d: int):
        q = torch.randn(1, h, lq, d, device=c.device, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(1, h, lk, d, device=c.device, dtype=torch.bfloat16, requires_grad=True)
        vv = torch.randn(1, h, lk, d, device=c.device, dtype=torch.bfloat16, requires_grad=True)

        def run() -> None:
            torch.nn.functional.scaled_dot_product_attention(q, k, vv).sum().backward()

        return run

    for label, shape in shapes.items():
        run = make(*shape)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            run()
        names = {e.name for e in prof.events()}
        taken = sorted(
            n
            for n in names
            if "scaled_dot_product" in n and "backward" not in n and n != "aten::scaled_dot_product_attention"
        )
        c.add("attention", f"{label}: backend taken by SDPA", ", ".join(taken) or "math (unfused)")
        flops = counted(run)
        secs = c.timed(run)
        c.add("attention", f"{label}: fwd+bwd default", f"{secs * 1e3:.2f} ms, {_fmt_rate(flops, secs)}")
        if label != "video self-attention":
            continue
        for backend in (
            SDPBackend.FLASH_ATTENTION,
            SDPBackend.CUDNN_ATTENTION,
            SDPBackend.EFFICIENT_ATTENTION,
        ):
            name = backend.name.lower()
            if not c.cuda and backend != SDPBackend.FLASH_ATTENTION:
                c.add("attention", f"{label}: {name}", NA_CPU)
                continue
            try:
                with sdpa_kernel([backend]):
                    secs = c.timed(run, iters=2)
                c.add("attention", f"{label}: {name}", f"{secs * 1e3:.2f} ms, {_fmt_rate(flops, secs)}")
            except RuntimeError as err:
                c.add("attention", f"{label}: {name}", f"not available ({str(err).splitlines()[0][:80]})")


def offload_section(c: Check, tiny: bool) -> None:
    """``BlockStreamer`` on a 3-layer slice vs resident: step time, bytes moved, copy overlap."""
    from mova_train.strategies.offload import BlockStreamer

    layers = 3
    cfg = slice_config(layers, tiny=tiny)
    tok = clip_tokens(cfg, tiny)
    v, a = cfg.video_dit, cfg.audio_dit
    gen = torch.Generator(device="cpu").manual_seed(0)

    def inputs():
        lat = torch.randn(1, v.out_dim, tok.latent_frames, tok.latent_height, tok.latent_width, generator=gen)
        y = torch.randn(1, v.in_dim - v.out_dim, *lat.shape[2:], generator=gen)
        aud = torch.randn(1, a.in_dim, tok.audio, generator=gen)
        ctx = torch.randn(1, tok.text, v.text_dim, generator=gen)
        t = torch.tensor([500.0])
        return [
            z.to(c.device, torch.bfloat16 if z.dim() > 1 else torch.float32) for z in (lat, y, aud, ctx, t, t)
        ]

    args = inputs()

    def steps(storage: str | None) -> tuple[float, int]:
        model = build_slice(cfg, c.device, torch.bfloat16, RANK, PRESET)
        model.set_gradient_checkpointing(True)
        streamer = BlockStreamer(model, c.device, prefetch=1, storage=storage) if storage else None

        def step() -> None:
            model.zero_grad(set_to_none=True)
            with torch.autocast(c.device.type, torch.bfloat16):
                vo, ao = model(*args)
                loss = vo.float().square().mean() + ao.float().square().mean()
            loss.backward()

        step()
        if streamer is not None:
            streamer.reset_stats()
        secs = c.timed(step, iters=2)
        calls = 1 + c.iters(2)  # warm-up call + timed calls
        return secs, (streamer.stats.bytes // calls if streamer is not None else 0)

    bw = None
    if c.cuda:
        host = torch.empty(256 * 2**20, dtype=torch.uint8).pin_memory()
        dev = torch.empty_like(host, device=c.device)
        secs = c.timed(lambda: dev.copy_(host, non_blocking=True))
        bw = host.numel() / secs
        c.add("offload", "pinned host->device copy (256 MiB)", f"{bw / 1e9:.1f} GB/s")
        del host, dev
    else:
        c.add("offload", "pinned host->device copy (256 MiB)", NA_CPU)
    resident, _ = steps(None)
    c.add("offload", f"{layers}-layer slice, resident: step", f"{resident * 1e3:.1f} ms")
    for storage in ("native", "fp8", "int8"):
        secs, moved = steps(storage)
        label = f"{layers}-layer slice, streamed {'bf16' if storage == 'native' else storage}"
        c.add("offload", f"{label}: step", f"{secs * 1e3:.1f} ms ({secs / resident:.2f}x resident)")
        c.add(
            "offload",
            f"{label}: host->device per step",
            f"{_si(moved, 'B')}, {_si(moved / secs, 'B/s')}",
        )
        if bw:
            copy_s = moved / bw
            hidden = (resident + copy_s - secs) / min(resident, copy_s) if copy_s > 0 else 1.0
            c.add("offload", f"{label}: copy/compute overlap", f"{min(max(hidden, 0.0), 1.0):.0%}")
        else:
            c.add("offload", f"{label}: copy/compute overlap", NA_CPU)
        c.facts[f"offload_{storage}_ratio"] = secs / resident


def optimizer_section(c: Check, tiny: bool) -> None:
    """AdamW vs AdamW8bit over the recipe-sized LoRA set: step time and state bytes per parameter."""
    from bitsandbytes.optim import AdamW8bit

    cfg = slice_config(1, tiny=tiny)
    model = build_slice(cfg, c.device, torch.bfloat16, RANK, PRESET)
    shapes = [p.shape for p in model.parameters() if p.requires_grad]
    layers = 1 if tiny else 40  # the recipe's LoRA set: one layer's adapters x the video tower's layers
    params = [
        torch.nn.Parameter(torch.randn(s, device=c.device) * 0.01) for s in shapes for _ in range(layers)
    ]
    n = sum(p.numel() for p in params)
    del model
    c.add("optimizer", "LoRA parameters (one expert, r16, upstream set)", f"{n / 1e6:.1f} M")
    for name, make in (
        ("AdamW", lambda ps: torch.optim.AdamW(ps, lr=1e-4)),
        ("AdamW8bit (bitsandbytes)", lambda ps: AdamW8bit(ps, lr=1e-4)),
    ):
        opt = make(params)
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        secs = c.timed(opt.step)
        state = sum(
            t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)
        )
        c.add("optimizer", f"{name}: step", f"{secs * 1e3:.2f} ms")
        c.add("optimizer", f"{name}: state", f"{state / 2**20:.1f} MiB = {state / n:.2f} B/param")
        c.facts[f"opt_{name.split()[0]}_s"] = secs
        del opt


def compile_section(c: Check, tiny: bool) -> None:
    """Regional ``torch.compile`` vs eager on the paired unit: first call, step time, max diff."""
    cfg = slice_config(1, tiny=tiny)
    tok = clip_tokens(cfg, tiny)
    model = build_slice(cfg, c.device, torch.bfloat16, RANK, PRESET)
    model.set_gradient_checkpointing(True)
    x = unit_inputs(model, tok, c.device, torch.bfloat16)

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        with torch.autocast(c.device.type, torch.bfloat16):
            vo, ao = run_unit(model, x)
            loss = vo.float().square().mean() + ao.float().square().mean()
        loss.backward()
        return vo.detach()

    eager_out = step()
    eager = c.timed(step)
    backend = "inductor" if c.cuda else "aot_eager"  # CPU: trace + AOT autograd, no codegen (CI time)
    compile_blocks(model, "blocks", backend=backend)
    t = time.perf_counter()
    out = step()
    c.sync()
    first = time.perf_counter() - t
    secs = c.timed(step)
    diff = (out.float() - eager_out.float()).abs().max().item()
    c.add(
        "compile", "backend (module.compile=blocks, dynamic=False)", backend + ("" if c.cuda else " on CPU")
    )
    c.add("compile", "first step (compiles fwd+bwd of 4 unit kinds)", f"{first:.1f} s")
    c.add(
        "compile",
        "paired unit fwd+bwd (ckpt): eager vs compiled",
        f"{eager * 1e3:.1f} ms vs {secs * 1e3:.1f} ms ({eager / secs:.2f}x)",
    )
    c.add("compile", "max |compiled - eager| of the video output", f"{diff:.3g}")
    c.facts["compile_speedup"] = eager / secs


def sampling_section(c: Check, tiny: bool) -> None:
    """One batched-CFG denoiser step of the 1-layer slice: time, FLOP/s and MFU."""
    cfg = slice_config(1, tiny=tiny)
    tok = clip_tokens(cfg, tiny)
    model = build_slice(cfg, c.device, torch.bfloat16, 0, PRESET)
    v, a = cfg.video_dit, cfg.audio_dit
    shape = (tok.latent_frames, tok.latent_height, tok.latent_width)
    lat = torch.randn(2, v.out_dim, *shape, device=c.device, dtype=torch.bfloat16)
    y = torch.randn(2, v.in_dim - v.out_dim, *shape, device=c.device, dtype=torch.bfloat16)
    aud = torch.randn(2, a.in_dim, tok.audio, device=c.device, dtype=torch.bfloat16)
    ctx = torch.randn(2, tok.text, v.text_dim, device=c.device, dtype=torch.bfloat16)  # cond + negative
    t = torch.full((2,), 500.0, device=c.device)

    @torch.no_grad()
    def step() -> None:
        model(lat, y, aud, ctx, t, t)

    flops = counted(step)
    secs = c.timed(step)
    c.add(
        "sampling",
        "1-layer slice step, batched CFG (batch 2)",
        f"{secs * 1e3:.1f} ms, {_fmt_rate(flops, secs)}",
    )
    c.add("sampling", "MFU", _mfu(c, flops, secs))
    c.facts["sampling_rate"] = flops / secs
    full = sampling_step_flops(release_config(), clip_tokens(release_config()), cfg=True)
    c.add(
        "sampling",
        "full model step at this rate (× FLOPs) vs upstream 9.0 s (H100)",
        f"{full / (flops / secs):.1f} s vs {UPSTREAM_SAMPLING_S:g} s" if c.cuda else NA_CPU,
    )


def recipes_section(c: Check, tiny: bool) -> None:
    """Project each recipe's step time and device memory from the facts measured by the other sections."""
    cfg = release_config()
    mfu = None
    if c.facts.get("peak_tflops") and "unit_ckpt_s" in c.facts:
        mfu = c.facts["unit_ckpt_flops"] / c.facts["unit_ckpt_s"] / 1e12 / c.facts["peak_tflops"]
    mem_ratio = c.facts.get("unit_ckpt_mem_ratio")
    c.add(
        "recipes",
        "MFU used (measured here on the unit with checkpointing; applied to each recipe's device peak)",
        f"{mfu:.1%}" if mfu else f"{NA_CPU} (40 % assumed)",
    )
    for label, kw, _ in recipes(352, 640):
        est = estimate_run(cfg, mfu=mfu or 0.4, **kw)
        opt = c.facts.get("opt_AdamW8bit_s" if kw.get("optimizer") == "adamw8bit" else "opt_AdamW_s", 0.0)
        step = est.step_time_s + opt
        offload = c.facts.get(f"offload_{'fp8' if kw.get('weight_dtype') == 'fp8' else 'native'}_ratio")
        if kw.get("strategy") == "offload" and offload:
            step = max(step, est.step_time_s * offload)
        # The measured/estimated ratio of the unit scales the activation rows only (weights are exact).
        act = sum(b for name, b in est.memory.device if name.startswith(ACTIVATION_ROWS))
        mem = est.memory.device_total + ((mem_ratio or 1.0) - 1.0) * act
        short = label.split(":")[0]
        c.add(
            "recipes",
            f"{short}: projected step / device memory",
            f"{step:.1f} s ({est.train.total / 1e15:.1f} PFLOP at {kw['peak_tflops']:g} TFLOP/s x MFU), "
            f"{mem / GIB:.1f} GiB{'' if mem_ratio else ' (estimate)'}",
        )
        c.add("recipes", f"{short}: upstream", UPSTREAM.get(short, "-"))


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections within the budget, print the markdown table and return the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny widths on the CPU (CI)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="stop starting sections after this")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="JSON output file")
    parser.add_argument("--only", nargs="*", default=None, help="run only these sections")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA device; use --dry-run to exercise the script on a CPU")
    device = torch.device("cpu" if args.dry_run else "cuda:0")
    torch.manual_seed(0)
    c = Check(device, args.budget_s, args.out)
    name, peak = device_peak(device)
    c.facts["peak_tflops"] = peak or 0.0
    c.add("device", "name", name)
    c.add("device", "dense bf16 peak", f"{peak:g} TFLOP/s" if peak else (NA_CPU if not c.cuda else "unknown"))
    c.add("device", "torch", torch.__version__)
    c.add("device", "mode", "dry run (tiny widths, CPU)" if args.dry_run else "release-width slices")
    sections = {  # name -> (seconds needed at release width, function)
        "unit": (60, unit_section),
        "attention": (30, attention_section),
        "offload": (90, offload_section),
        "optimizer": (20, optimizer_section),
        "sampling": (20, sampling_section),
        "compile": (150, compile_section),
        "recipes": (1, recipes_section),
    }
    for sec, (need, fn) in sections.items():
        if args.only and sec not in args.only:
            continue
        c.section(sec, 0.0 if args.dry_run else need, lambda fn=fn: fn(c, args.dry_run))
    c.add("total", "wall time", f"{time.perf_counter() - c.t0:.1f} s")
    c.write()
    lines = ["| section | quantity | value |", "| --- | --- | --- |"]
    lines += [f"| {r['section']} | {r['quantity']} | {r['value']} |" for r in c.rows]
    print("\n".join(lines))  # noqa: T201
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
