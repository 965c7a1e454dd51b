"""`estimate_run`: parameters, FLOPs, step time and per-device memory of a run, from plain values.

Used by ``python -m mova_train ... show=true`` (nothing is allocated) and by ``benchmarks/flops_memory.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from mova_train.estimate.flops import (
    COMPONENTS,
    StepFlops,
    TokenCounts,
    component_params,
    sampling_step_flops,
    token_counts,
    training_step_flops,
)
from mova_train.estimate.memory import GIB, MemoryEstimate, _weight_bytes, audio_cp_mode, estimate_memory
from mova_train.models.builders import MovaConfig

__all__ = ["Estimate", "estimate_run", "format_estimate"]


@dataclass
class Estimate:
    """Everything ``show=true`` prints.

    Attributes:
        tokens: sequence lengths of one sample.
        params_total: parameters of the loaded denoiser (all loaded experts).
        params_active: parameters used by one step (one expert + audio + bridge).
        params_trainable: trainable parameters (LoRA + fully fine-tuned components).
        train: FLOPs of one training step (whole batch, per data-parallel replica).
        sampling_flops: FLOPs of one sampling step (with CFG when asked).
        memory: per-device memory breakdown.
        step_time_s: training step time at ``mfu`` of ``peak_tflops`` on the devices of one replica.
        peak_tflops: per-device dense peak used.
        mfu: model-FLOPs utilization assumed.
        devices_per_replica: devices that share one sample (``cp``; 1 otherwise).
        transfer_s: host-to-device weight traffic time per step under offload (0 otherwise).
    """

    tokens: TokenCounts
    params_total: int
    params_active: int
    params_trainable: int
    train: StepFlops
    sampling_flops: int
    memory: MemoryEstimate
    step_time_s: float
    peak_tflops: float
    mfu: float
    devices_per_replica: int
    transfer_s: float = 0.0


def estimate_run(
    config: MovaConfig,
    *,
    experts: Sequence[str] = ("video_dit", "video_dit_2"),
    lora_rank: int = 0,
    lora_targets: Mapping[str, Sequence[str]] | None = None,
    full_finetune: Iterable[str] = (),
    strategy: str = "single",
    dp: int = 1,
    cp: int = 1,
    offload_blocks: int = 2,
    frames: int = 193,
    height: int = 352,
    width: int = 640,
    fps: float = 24.0,
    batch: int = 1,
    weight_dtype: str = "bf16",
    optimizer: str = "adamw",
    gradient_checkpointing: bool = True,
    activation_offload: bool = False,
    peak_tflops: float = 989.0,
    mfu: float = 0.4,
    cfg_guidance: bool = True,
    host_bandwidth_gbs: float = 25.0,
) -> Estimate:
    """Estimate one training run's size, FLOPs, step time and per-device memory.

    Args:
        config: denoiser config (``release_config()`` or a model's ``MovaConfig``).
        experts: loaded video experts (one is active per step).
        lora_rank: LoRA rank, 0 without LoRA.
        lora_targets: ``LoraSpec.components`` (component -> exact module patterns).
        full_finetune: components trained in full.
        strategy: ``single``, ``ddp``, ``fsdp2`` or ``offload``.
        dp: data-parallel (sharding) degree.
        cp: context-parallel degree.
        offload_blocks: swap units kept on the device under ``offload``.
        frames: clip length in video frames.
        height: frame height in pixels.
        width: frame width in pixels.
        fps: video frame rate.
        batch: samples per data-parallel replica per step.
        weight_dtype: frozen weight storage (``bf16`` / ``fp8`` / ``fp32``).
        optimizer: ``adamw`` / ``adamw8bit`` / ``sgd``.
        gradient_checkpointing: recompute blocks in backward.
        activation_offload: keep checkpoint inputs in host RAM.
        peak_tflops: dense bf16 peak per device (H100 SXM 989, RTX 4090 165).
        mfu: assumed model-FLOPs utilization.
        cfg_guidance: count two branches per sampling step.
        host_bandwidth_gbs: host-to-device bandwidth for the offload transfer bound.
    """
    tokens = token_counts(frames, height, width, fps, config.video_dit.patch_size)
    full = tuple(full_finetune)
    train = training_step_flops(
        config,
        tokens,
        lora_rank=lora_rank,
        lora_targets=lora_targets,
        full_finetune=full,
        gradient_checkpointing=gradient_checkpointing,
        batch=batch,
    )
    per = {c: component_params(config, c)[0] for c in COMPONENTS}
    active = sum(per.values())
    total = active + (len(experts) - 1) * per["video_dit"]
    trainable = train.lora_params + sum(per["video_dit" if c == "video_dit_2" else c] for c in full)
    memory = estimate_memory(
        config,
        tokens,
        strategy=strategy,
        experts_loaded=len(experts),
        dp=dp,
        cp=cp,
        offload_blocks=offload_blocks,
        weight_dtype=weight_dtype,
        trainable_params=train.lora_params,
        lora_targets=lora_targets,
        full_finetune=full,
        optimizer=optimizer,
        gradient_checkpointing=gradient_checkpointing,
        activation_offload=activation_offload,
        batch=batch,
    )
    devices = cp if strategy == "fsdp2" or cp > 1 else 1
    # With replicated audio (cp not dividing its heads) every cp rank also runs the whole audio tower.
    replicated = 0.0
    if devices > 1 and audio_cp_mode(config, cp) == "replicate":
        replicated = train.total * train.by_component["audio_dit"] / sum(train.by_component.values())
    compute_s = ((train.total - replicated) / devices + replicated) / (peak_tflops * 1e12 * mfu)
    transfer_s = 0.0
    if strategy == "offload":
        # Active weights cross the bus in forward, recompute and backward; checkpoint inputs go out and back.
        passes = 3 if gradient_checkpointing else 2

        moved = passes * sum(_weight_bytes(config, c, weight_dtype) for c in COMPONENTS)
        moved += 2 * sum(b for name, b in memory.host if name.startswith("checkpoint"))
        transfer_s = moved / (host_bandwidth_gbs * 1e9)
    return Estimate(
        tokens=tokens,
        params_total=total,
        params_active=active,
        params_trainable=trainable,
        train=train,
        sampling_flops=sampling_step_flops(config, tokens, cfg=cfg_guidance, batch=batch),
        memory=memory,
        step_time_s=max(compute_s, transfer_s),
        peak_tflops=peak_tflops,
        mfu=mfu,
        devices_per_replica=devices,
        transfer_s=transfer_s,
    )


def format_estimate(est: Estimate, title: str = "estimate") -> str:
    """Multi-line text for ``show=true``: sizes, FLOPs, step time and the memory table."""
    t = est.tokens
    lines = [
        f"## {title}",
        f"tokens: video {t.video:,} (latent {t.latent_frames}x{t.latent_height}x{t.latent_width}), "
        f"audio {t.audio:,}, text {t.text}",
        f"parameters: {est.params_total / 1e9:.3f} B loaded, {est.params_active / 1e9:.3f} B active per step, "
        f"{est.params_trainable / 1e6:.2f} M trainable",
        f"training step: {est.train.total / 1e15:.1f} PFLOP (forward {est.train.forward / 1e15:.1f}, "
        f"backward {est.train.backward / 1e15:.1f}, recompute {est.train.recompute / 1e15:.1f})",
        f"sampling step: {est.sampling_flops / 1e15:.1f} PFLOP",
        f"step time: {est.step_time_s:.1f} s at {est.mfu:.0%} MFU of {est.peak_tflops:g} TFLOP/s x "
        f"{est.devices_per_replica} device(s)"
        + (f" (host transfer bound {est.transfer_s:.1f} s)" if est.transfer_s else ""),
        f"memory per device: {est.memory.device_total / GIB:.1f} GiB; host: {est.memory.host_total / GIB:.1f} GiB",
        est.memory.table(),
    ]
    lines += [f"note: {n}" for n in est.memory.notes]
    return "\n".join(lines)
