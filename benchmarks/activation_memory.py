"""Saved-activation bytes of one release-width block, measured, against the estimator's per-block factors.

Run: ``python benchmarks/activation_memory.py`` (about 2 minutes on 2 CPU cores, ~6 GB RAM). Builds a one-layer
release-width slice (video block 5120 / 40 heads / FFN 13824, audio block 1536, one bridge layer; random bf16
weights, LoRA r16), runs one forward of each unit under ``torch.autograd.graph.saved_tensors_hooks`` and counts
the bytes autograd keeps for the backward pass (each storage once, parameters excluded). Two token counts are
measured and the per-token slope is compared with :func:`mova_train.estimate.memory.block_saved_elements` /
``bridge_saved_elements`` (the constant text-side terms, cross-attention k/v of 512 text rows, drop out of the
slope). ``--tokens`` and ``--device`` change the sizes and the device (CUDA gives the GPU kernels' saved sets).
Prints a markdown table (``docs/performance.md`` quotes it).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from mova_train.estimate.flops import TokenCounts
from mova_train.estimate.measure import parameter_storages, saved_activation_bytes
from mova_train.estimate.memory import _trainable_names as trainable_names
from mova_train.estimate.memory import block_saved_elements, bridge_saved_elements
from mova_train.models.lora import LoraSpec

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from release_slice import build_slice, slice_config, unit_inputs  # noqa: E402

__all__ = ["measure", "table"]


RANK = 16


def _grid(tokens: int, tiny: bool) -> tuple[int, int, int]:
    """A latent token grid ``(f, h, w)`` with ``tokens`` tokens (h, w a 360p-like 11:20 aspect)."""
    per_frame = 4 * 6 if tiny else 22 * 20 // 4  # 110 tokens per latent frame at the benchmark size
    f = max(1, tokens // per_frame)
    return (f, 4, 6) if tiny else (f, 10, 11)


def measure(token_counts: list[int], device: str, tiny: bool = False, preset: str = "attn") -> list[dict]:
    """Measured and estimated saved bytes per unit kind at each video token count (audio: 1/4 of video).

    Returns:
        rows ``{"unit", "tokens", "measured", "estimated"}`` (bytes), plus a ``"slope"`` row per unit.
    """
    cfg = slice_config(1, tiny=tiny)
    dtype = torch.bfloat16
    upcast = torch.device(device).type == "cuda"  # CUDA autocast runs layer_norm in float32
    model = build_slice(cfg, device, dtype, lora_rank=RANK, lora_preset=preset)
    exclude = parameter_storages([model])
    v, a, b = cfg.video_dit, cfg.audio_dit, cfg.dual_tower_bridge
    targets = dict(LoraSpec(rank=RANK, preset=preset).components)
    v_names = trainable_names(cfg, "video_dit", targets["video_dit"])
    a_names = trainable_names(cfg, "audio_dit", targets["audio_dit"])
    per_token = {
        "video block": block_saved_elements(v.dim, v.ffn_dim, v_names, False, upcast, RANK)[0] * 2,
        "audio block": block_saved_elements(a.dim, a.ffn_dim, a_names, False, upcast, RANK)[0] * 2,
    }
    rows: list[dict] = []
    for n in token_counts:
        grid = _grid(n, tiny)
        nv = grid[0] * grid[1] * grid[2]
        tok = TokenCounts(nv, max(1, nv // 4), 512, grid[0], grid[1] * 2, grid[2] * 2)
        x = unit_inputs(model, tok, device, dtype, grid=grid)
        tables = [x.video_freqs, x.audio_freqs, *(x.rope or ())]  # RoPE tables: a row of their own
        skip = exclude | {t.untyped_storage().data_ptr() for t in tables}
        units = {
            "video block": lambda x=x: model.video_dit.blocks[0](
                x.video, x.video_ctx, x.video_mod, x.video_freqs
            ),
            "audio block": lambda x=x: model.audio_dit.blocks[0](
                x.audio, x.audio_ctx, x.audio_mod, x.audio_freqs
            ),
            "bridge layer": lambda x=x: model.dual_tower_bridge(0, x.video, x.audio, x.rope),
        }
        est = {
            "video block": per_token["video block"] * nv,
            "audio block": per_token["audio block"] * tok.audio,
            "bridge layer": 2
            * bridge_saved_elements(b.visual_hidden_dim, b.audio_hidden_dim, nv, tok.audio, upcast, RANK),
        }
        for unit, fn in units.items():
            t0 = time.perf_counter()
            got = saved_activation_bytes(fn, skip, torch.device(device).type)
            rows.append(
                {
                    "unit": unit,
                    "video_tokens": nv,
                    "audio_tokens": tok.audio,
                    "measured": got,
                    "estimated": est[unit],
                    "seconds": time.perf_counter() - t0,
                }
            )
    if len(token_counts) >= 2:
        for unit in ("video block", "audio block", "bridge layer"):
            lo, hi = (r for r in rows if r["unit"] == unit and r["video_tokens"] in _two(rows))
            rows.append(
                {
                    "unit": unit + " (per-token slope)",
                    "video_tokens": hi["video_tokens"] - lo["video_tokens"],
                    "audio_tokens": hi["audio_tokens"] - lo["audio_tokens"],
                    "measured": hi["measured"] - lo["measured"],
                    "estimated": hi["estimated"] - lo["estimated"],
                    "seconds": 0.0,
                }
            )
    return rows


def _two(rows: list[dict]) -> tuple[int, int]:
    counts = sorted({r["video_tokens"] for r in rows})
    return counts[0], counts[-1]


def table(rows: list[dict]) -> str:
    """Markdown table of :func:`measure` rows."""
    mib = 2**20
    lines = [
        "| unit | video tokens | audio tokens | measured MiB | estimated MiB | measured / estimated |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        ratio = r["measured"] / r["estimated"] if r["estimated"] else float("nan")
        lines.append(
            f"| {r['unit']} | {r['video_tokens']:,} | {r['audio_tokens']:,} | {r['measured'] / mib:.1f} | "
            f"{r['estimated'] / mib:.1f} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1100, 2200], help="video token counts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="attn", help="LoRA preset of the towers (attn / upstream)")
    parser.add_argument("--tiny", action="store_true", help="tiny widths (the CI smoke run)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = measure(args.tokens, args.device, tiny=args.tiny, preset=args.preset)
    print(f"LoRA r16 preset {args.preset!r}, bf16 autocast, {args.device}, torch {torch.__version__}\n")  # noqa: T201
    print(table(rows))  # noqa: T201


if __name__ == "__main__":
    main()
