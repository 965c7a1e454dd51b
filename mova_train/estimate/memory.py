"""Per-device memory estimate of a MOVA training run (analytic; nothing is allocated).

What is counted, per device:

* **weights** of the resident components in their storage dtype (``bf16`` 2 B, ``fp8`` 1 B, ``fp32`` 4 B per
  parameter; the time MLPs always stay float32). One video expert is active per step; with ``offload`` only
  ``offload_blocks`` swap units (video block + audio block + bridge layer, in the compute dtype) are on the
  device and pinned host copies hold the rest; with ``fsdp2`` everything is divided by ``dp`` plus two
  gathered units (current + prefetch);
* **trainable** parameters (float32 masters: LoRA adapters and fully fine-tuned components), their float32
  gradients and the optimizer state (AdamW: 8 B/param; 8-bit AdamW: 2 B/param), divided by ``dp`` under FSDP2;
* **activations** from token counts x hidden sizes x a per-block factor (below), divided by ``cp``. With
  gradient checkpointing only each unit's input stream is kept (on the host with ``activation_offload``) plus
  one unit's working set; without it every block keeps its saved tensors.

Per-block factor (saved tensors per token, in elements of the activation dtype, bf16 autocast as the trainer
runs it, fused attention): :func:`block_saved_elements` and :func:`bridge_saved_elements` list them tensor by
tensor. They are held against measurement by ``benchmarks/activation_memory.py`` (``saved_tensors_hooks`` on
one release-width block on a CPU; within 1 %, see ``docs/performance.md``); the CUDA-only difference is that
autocast runs LayerNorm in float32 there (``norm_upcast``), which ``benchmarks/gpu_check.py`` measures. The
release video block with LoRA on attention keeps about ``24 D + F`` per token (LayerNorm and RMSNorm inputs
in float32, one input copy per LoRA-wrapped linear). Backward adds a working set of about ``4 D + F``.
Text-encoder and VAE memory is 0 (training from the latent cache).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mova_train.estimate.flops import TokenCounts, component_linears, component_params
from mova_train.models.builders import MovaConfig

__all__ = [
    "DTYPE_BYTES",
    "OPTIMIZER_BYTES",
    "STRATEGIES",
    "MemoryEstimate",
    "audio_cp_mode",
    "block_saved_elements",
    "bridge_saved_elements",
    "estimate_memory",
]

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp8": 1}
OPTIMIZER_BYTES = {"adamw": 8, "adam": 8, "adamw8bit": 2, "adam8bit": 2, "pagedadamw8bit": 2, "sgd": 0}
STRATEGIES = ("single", "ddp", "fsdp2", "offload")
GIB = 1024**3


@dataclass
class MemoryEstimate:
    """Per-device (and host) memory breakdown in bytes.

    Attributes:
        device: ``[(label, bytes)]`` resident on each accelerator.
        host: ``[(label, bytes)]`` in host RAM (pinned weight copies, offloaded activations).
        notes: assumptions that shaped the numbers.
    """

    device: list[tuple[str, float]] = field(default_factory=list)
    host: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def device_total(self) -> float:
        """Sum of the device rows in bytes."""
        return sum(b for _, b in self.device)

    @property
    def host_total(self) -> float:
        """Sum of the host rows in bytes."""
        return sum(b for _, b in self.host)

    def get(self, label: str) -> float:
        """Bytes of one device row (0 when absent)."""
        return sum(b for name, b in self.device if name == label)

    def table(self) -> str:
        """Markdown table of the breakdown in GiB."""
        lines = ["| where | item | GiB |", "| --- | --- | ---: |"]
        lines += [f"| device | {name} | {b / GIB:.2f} |" for name, b in self.device]
        lines.append(f"| device | **total** | **{self.device_total / GIB:.2f}** |")
        lines += [f"| host | {name} | {b / GIB:.2f} |" for name, b in self.host]
        if self.host:
            lines.append(f"| host | **total** | **{self.host_total / GIB:.2f}** |")
        return "\n".join(lines)


def _weight_bytes(config: MovaConfig, component: str, dtype: str) -> int:
    params, fp32 = component_params(config, component)
    return (params - fp32) * DTYPE_BYTES[dtype] + fp32 * 4


def _unit_params(config: MovaConfig) -> dict[str, int]:
    """Parameters of one swap / FSDP unit of each kind."""
    v, a = config.video_dit, config.audio_dit
    b = config.dual_tower_bridge

    def block(d: int, f: int) -> int:
        return 8 * (d * d + d) + 2 * d * f + f + d + 12 * d

    vd, ad = b.visual_hidden_dim, b.audio_hidden_dim
    a2v = 2 * (vd * vd + vd) + 2 * (ad * vd + vd) + 2 * ad + 2 * vd
    v2a = 2 * (ad * ad + ad) + 2 * (vd * ad + ad) + 2 * vd + 2 * ad
    return {
        "video_block": block(v.dim, v.ffn_dim),
        "audio_block": block(a.dim, a.ffn_dim),
        "bridge_layer": a2v + v2a,
    }


_STREAM_LINEARS = (
    ("self_attn.q", "d"),
    ("self_attn.k", "d"),
    ("self_attn.v", "d"),
    ("self_attn.o", "d"),
    ("cross_attn.q", "d"),
    ("cross_attn.o", "d"),
    ("ffn.0", "d"),
    ("ffn.2", "f"),
)
"""Linears of a DiT block applied to the stream's rows, and the width of their input."""


def block_saved_elements(
    d: int, f: int, trainable: set[str], full: bool, norm_upcast: bool = True, lora_rank: int = 0
) -> tuple[int, int]:
    """Saved elements per stream token of one DiT block under bf16 autocast, and its backward working set.

    Measured tensor by tensor with ``saved_tensors_hooks`` (``benchmarks/activation_memory.py``). Every block
    keeps: the three LayerNorm inputs (in float32 when ``norm_upcast``: CUDA autocast runs ``layer_norm`` in
    float32; CPU autocast keeps the activation dtype), the three stream-row RMSNorm inputs (q/k norms, always
    float32 under autocast: 2 elements each), attention q, k, v, out (self) and q, out (cross) (6 D), and the
    GELU input (F). A LoRA-wrapped linear keeps its own copy of its input (the adapter's dtype cast: q, k and
    v each hold one) plus the rank-``r`` adapter activation; a fully trained block instead keeps each distinct
    linear input once (5 D + F) and the modulation / gate operands (4 D).

    Args:
        d: block width.
        f: FFN width.
        trainable: LoRA-wrapped linears of the block (``"self_attn.q"``, ``"ffn.2"``, ...).
        full: the whole block trains (no LoRA copies).
        norm_upcast: LayerNorm inputs saved in float32 (the CUDA autocast path).
        lora_rank: adapter rank (adds ``r`` per LoRA-wrapped stream linear).

    Returns:
        ``(saved, working_set)`` in elements of the activation dtype per token.
    """
    saved = 3 * d * (2 if norm_upcast else 1) + 3 * 2 * d + 6 * d + f
    if full:
        saved += 5 * d + f + 4 * d
    else:
        for name, width in _STREAM_LINEARS:
            if name in trainable:
                saved += (d if width == "d" else f) + lora_rank
    return saved, 4 * d + f


def bridge_saved_elements(
    vd: int, ad: int, nv: float, na: float, norm_upcast: bool = True, lora_rank: int = 0
) -> float:
    """Saved elements of one bridge layer (A2V + V2A, LoRA on q/k/v/o) for ``nv`` video and ``na`` audio tokens.

    Per video token: A2V q/out (2 Dv), its q RMSNorm input (2 Dv, float32), the LoRA copies of the q and o inputs
    (2 Dv); V2A k/v heads (2 Da), its k RMSNorm input (2 Da), the LoRA copies of the k and v inputs (2 Dv), the
    y_norm input (Dv, float32 with ``norm_upcast``). Per audio token the same with the roles swapped.
    """
    up = 2 if norm_upcast else 1
    per_video = 2 * vd + 2 * vd + 2 * vd + 2 * ad + 2 * ad + 2 * vd + up * vd + 4 * lora_rank
    per_audio = 2 * ad + 2 * ad + 2 * ad + 2 * vd + 2 * vd + 2 * ad + up * ad + 4 * lora_rank
    return nv * per_video + na * per_audio


def audio_cp_mode(config: MovaConfig, cp: int) -> str:
    """How context parallelism ``cp`` treats the audio stream of ``config``: ``"shard"`` or ``"replicate"``."""
    from mova_train.parallel.context_parallel import resolve_audio_mode

    b = config.dual_tower_bridge
    heads = (config.audio_dit.num_heads, b.audio_hidden_dim // b.head_dim, b.visual_hidden_dim // b.head_dim)
    return resolve_audio_mode(cp, heads)


def _trainable_names(config: MovaConfig, component: str, patterns: Sequence[str]) -> set[str]:
    names = set()
    for op in component_linears(config, component, TokenCounts(0, 0, 0, 0, 0, 0)):
        if any(op.matches(p) for p in patterns):
            names.add(op.name.split("*.", 1)[-1])
    return names


def estimate_memory(
    config: MovaConfig,
    tokens: TokenCounts,
    *,
    strategy: str = "single",
    experts_loaded: int = 2,
    dp: int = 1,
    cp: int = 1,
    offload_blocks: int = 2,
    weight_dtype: str = "bf16",
    act_dtype: str = "bf16",
    trainable_params: int = 0,
    lora_targets: Mapping[str, Sequence[str]] | None = None,
    full_finetune: Iterable[str] = (),
    optimizer: str = "adamw",
    gradient_checkpointing: bool = True,
    activation_offload: bool = False,
    batch: int = 1,
) -> MemoryEstimate:
    """Per-device memory of one training step.

    Args:
        config: denoiser config.
        tokens: sequence lengths (:func:`~mova_train.estimate.flops.token_counts`).
        strategy: ``"single"``, ``"ddp"``, ``"fsdp2"`` or ``"offload"`` (block swap on one device).
        experts_loaded: video experts in the model (1 or 2); only one is active per step.
        dp: data-parallel (sharding) degree; divides weights/grads/optimizer under FSDP2.
        cp: context-parallel degree; divides the video token activations, and the audio ones when cp divides
            the audio-side head counts (otherwise the audio stream is replicated on every cp rank, see
            :mod:`mova_train.parallel.context_parallel`).
        offload_blocks: swap units resident on the device under ``offload``.
        weight_dtype: storage dtype of the frozen weights (``bf16``, ``fp8``, ``fp32``).
        act_dtype: activation dtype.
        trainable_params: LoRA parameters (float32).
        lora_targets: component -> LoRA patterns (decides which linear inputs are saved).
        full_finetune: components trained in full (float32 masters replace their stored weights).
        optimizer: ``adamw`` or ``adamw8bit`` (or ``sgd``).
        gradient_checkpointing: recompute blocks in backward.
        activation_offload: keep the checkpoint inputs in host RAM.
        batch: samples per device.

    Raises:
        ValueError: unknown strategy, dtype or optimizer, or sizes below 1.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} unknown; choose one of {STRATEGIES}")
    for key, value, table in (
        ("weight_dtype", weight_dtype, DTYPE_BYTES),
        ("act_dtype", act_dtype, DTYPE_BYTES),
    ):
        if value not in table:
            raise ValueError(f"{key}={value!r} unknown; choose one of {sorted(table)}")
    opt = optimizer.lower().replace("_", "").replace("-", "")
    if opt not in OPTIMIZER_BYTES:
        raise ValueError(f"optimizer={optimizer!r} unknown; choose one of {sorted(OPTIMIZER_BYTES)}")
    if min(dp, cp, batch, experts_loaded) < 1 or experts_loaded > 2:
        raise ValueError("dp, cp, batch must be >= 1 and experts_loaded 1 or 2")
    full = {"video_dit" if c == "video_dit_2" else c for c in full_finetune}
    est = MemoryEstimate()
    wb, ab = DTYPE_BYTES[weight_dtype], DTYPE_BYTES[act_dtype]
    shard = dp if strategy == "fsdp2" else 1
    units = _unit_params(config)
    unit_bytes = (
        sum(units.values()) * ab
    )  # one interleaved layer (video block + audio block + bridge) in bf16

    # 1. Frozen weights.
    frozen = {
        "video experts": 0
        if "video_dit" in full
        else experts_loaded * _weight_bytes(config, "video_dit", weight_dtype),
        "audio tower": 0 if "audio_dit" in full else _weight_bytes(config, "audio_dit", weight_dtype),
        "bridge": 0
        if "dual_tower_bridge" in full
        else _weight_bytes(config, "dual_tower_bridge", weight_dtype),
    }
    if strategy == "offload":
        n_layers = config.video_dit.num_layers
        non_block = _weight_bytes(config, "video_dit", weight_dtype) - n_layers * units["video_block"] * wb
        non_block += (
            _weight_bytes(config, "audio_dit", weight_dtype)
            - config.audio_dit.num_layers * units["audio_block"] * wb
        )
        est.device.append(("weights: resident swap units (compute dtype)", offload_blocks * unit_bytes))
        est.device.append(("weights: embeddings + heads", max(non_block, 0)))
        est.host.append(("pinned weight copies", sum(frozen.values())))
        est.notes.append(
            f"offload: {offload_blocks} swap units resident, the rest streamed from pinned host RAM"
        )
    else:
        for name, b in frozen.items():
            if b:
                est.device.append((f"weights: {name}", b / shard))
        if strategy == "fsdp2":
            est.device.append(("weights: gathered units (current + prefetch)", 2 * unit_bytes))
        elif weight_dtype == "fp8":
            est.device.append(("weights: dequantized working unit", unit_bytes))

    # 2. Trainable parameters, gradients, optimizer state (float32 masters).
    n_train = trainable_params + sum(component_params(config, c)[0] for c in full)
    est.device.append(("trainable params (fp32)", 4 * n_train / shard))
    est.device.append(("gradients (fp32)", 4 * n_train / shard))
    est.device.append((f"optimizer state ({optimizer})", OPTIMIZER_BYTES[opt] * n_train / shard))

    # 3. Activations (token terms divided by cp).
    v, a, b = config.video_dit, config.audio_dit, config.dual_tower_bridge
    audio_cp = cp if audio_cp_mode(config, cp) == "shard" else 1
    if cp > 1 and audio_cp == 1:
        est.notes.append(
            f"context parallel {cp}: audio stream replicated on every cp rank (heads not divisible)"
        )
    nv, na = tokens.video * batch / cp, tokens.audio * batch / audio_cp
    pats = lora_targets or {}
    vpat = pats.get("video_dit") or pats.get("video_dit_2") or ()
    v_saved, v_work = block_saved_elements(
        v.dim, v.ffn_dim, _trainable_names(config, "video_dit", vpat), "video_dit" in full
    )
    a_saved, a_work = block_saved_elements(
        a.dim,
        a.ffn_dim,
        _trainable_names(config, "audio_dit", pats.get("audio_dit") or ()),
        "audio_dit" in full,
    )
    vd, ad = b.visual_hidden_dim, b.audio_hidden_dim
    bridge_saved = bridge_saved_elements(vd, ad, nv, na)
    video_block = nv * (v_saved + v_work) * ab
    audio_block = na * (a_saved + a_work) * ab
    n_bridge = b.num_interaction_layers
    stream = (nv * v.dim + na * a.dim) * ab
    tables = nv * (v.head_dim // 2) * 16 + na * (a.head_dim // 2) * 16 + 2 * (nv + na) * b.head_dim * ab
    est.device.append(("streams + gradients + RoPE tables", 2 * stream + tables))
    if gradient_checkpointing:
        kept = (v.num_layers + a.num_layers + n_bridge) * stream
        if activation_offload:
            est.host.append(("checkpoint inputs (offloaded)", kept))
        else:
            est.device.append(("checkpoint inputs", kept))
        est.device.append(
            (
                "one unit's working set (recompute + backward)",
                max(video_block, audio_block) + bridge_saved * ab,
            )
        )
    else:
        est.device.append(
            (
                "saved activations (all blocks)",
                (v.num_layers * nv * v_saved + a.num_layers * na * a_saved + n_bridge * bridge_saved) * ab
                + nv * v_work * ab,
            )
        )
    return est
