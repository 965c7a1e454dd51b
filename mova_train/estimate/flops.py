"""Analytic parameter and FLOP counts of the MOVA dual tower, from the component configs alone.

Nothing is allocated: every count follows from :class:`~mova_train.models.builders.MovaConfig` and the token
counts. Conventions (the usual ones, and those of ``torch.utils.flop_counter.FlopCounterMode``):

* a matmul ``[m, k] @ [k, n]`` costs ``2*m*k*n`` FLOPs; biases, norms, RoPE, softmax, GELU and other
  element-wise work are not counted (they are memory-bound and below 1 % of the total at release size);
* attention over ``Lq`` queries and ``Lk`` keys of total width ``D`` costs ``4*Lq*Lk*D`` (``QK^T`` and ``AV``);
* backward: every matmul whose input needs a gradient costs one more forward (the input gradient), and every
  matmul whose weight is trainable one more forward (the weight gradient). Frozen LoRA bases therefore cost
  1x forward in backward, fully trained layers 2x. Attention backward is 2x its forward (four matmuls);
* gradient checkpointing recomputes the checkpointed units (DiT blocks and bridge layers) once more;
* a sampling step is one denoiser forward per guidance branch (2 with classifier-free guidance).

docs/model.md §2.6, §3.2: video ``N = T'/pt * (H/8)/ph * (W/8)/pw`` with ``T' = (F-1)//4 + 1``; audio
``L = (int(48000*F/fps) - 1)//960 + 1``; text 512 rows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from mova_train.models.builders import MovaConfig

log = logging.getLogger(__name__)

__all__ = [
    "COMPONENTS",
    "LinearOp",
    "StepFlops",
    "TokenCounts",
    "component_linears",
    "component_params",
    "forward_flops",
    "sampling_step_flops",
    "token_counts",
    "training_step_flops",
]

COMPONENTS = ("video_dit", "audio_dit", "dual_tower_bridge")
"""Components of one denoiser evaluation (the active video expert is ``video_dit``'s shape)."""

TEXT_LEN = 512
VAE_TEMPORAL_STRIDE = 4
VAE_SPATIAL_STRIDE = 8
AUDIO_SAMPLE_RATE = 48000
AUDIO_HOP = 960


@dataclass(frozen=True)
class TokenCounts:
    """Sequence lengths of one sample.

    Attributes:
        video: video tokens ``N`` after patchify.
        audio: audio tokens ``L`` (one per DAC latent frame).
        text: text rows (512).
        latent_frames: ``T'``.
        latent_height: ``H / 8``.
        latent_width: ``W / 8``.
    """

    video: int
    audio: int
    text: int
    latent_frames: int
    latent_height: int
    latent_width: int


def token_counts(
    frames: int,
    height: int,
    width: int,
    fps: float = 24.0,
    patch_size: Sequence[int] = (1, 2, 2),
    text_len: int = TEXT_LEN,
    sample_rate: int = AUDIO_SAMPLE_RATE,
    hop: int = AUDIO_HOP,
) -> TokenCounts:
    """Token counts of a ``frames x height x width`` clip at ``fps``.

    Raises:
        ValueError: ``frames`` is not ``4k + 1`` or the size does not divide into whole patches.
    """
    if frames < 1 or (frames - 1) % VAE_TEMPORAL_STRIDE:
        raise ValueError(f"frames={frames} must be 4k + 1 (e.g. 17, 97, 193)")
    pt, ph, pw = patch_size
    div = VAE_SPATIAL_STRIDE * max(ph, pw)
    if height % div or width % div:
        raise ValueError(
            f"height={height}, width={width} must be divisible by {div} (e.g. 352x640, 720x1280)"
        )
    t = (frames - 1) // VAE_TEMPORAL_STRIDE + 1
    h, w = height // VAE_SPATIAL_STRIDE, width // VAE_SPATIAL_STRIDE
    samples = int(sample_rate * frames / fps)
    audio = (samples - 1) // hop + 1
    return TokenCounts(
        video=(t // pt) * (h // ph) * (w // pw),
        audio=audio,
        text=text_len,
        latent_frames=t,
        latent_height=h,
        latent_width=w,
    )


@dataclass(frozen=True)
class LinearOp:
    """One (group of identical) matmul layers of a component.

    Attributes:
        name: module path with ``*`` for the layer index (``blocks.*.self_attn.q``); LoRA patterns match its
            dotted suffix.
        in_features: input width (for a patch Conv: ``in_channels * prod(kernel)``).
        out_features: output width.
        rows: tokens it is applied to per sample.
        count: number of identical layers.
        chain: where its input comes from: ``"stream"`` (the residual streams, carry gradients when
            anything trains), ``"text"`` (text-embedding output), ``"time"`` (time MLP) or ``"data"``.
        bias: has a bias vector.
        checkpointed: inside a gradient-checkpointing unit (DiT block or bridge layer).
    """

    name: str
    in_features: int
    out_features: int
    rows: int
    count: int = 1
    chain: str = "stream"
    bias: bool = True
    checkpointed: bool = True

    @property
    def params(self) -> int:
        """Parameters of all ``count`` layers (weights and bias)."""
        return self.count * (self.in_features * self.out_features + (self.out_features if self.bias else 0))

    @property
    def flops(self) -> int:
        """Forward FLOPs for one sample."""
        return 2 * self.rows * self.in_features * self.out_features * self.count

    def matches(self, pattern: str) -> bool:
        """Exact dotted-suffix match, as :mod:`mova_train.models.lora` matches its targets."""
        return self.name == pattern or self.name.endswith("." + pattern)


@dataclass(frozen=True)
class AttentionOp:
    """One (group of identical) attention cores: ``4 * q_len * kv_len * width`` FLOPs each."""

    name: str
    q_len: int
    kv_len: int
    width: int
    count: int = 1
    kv_chain: str = "stream"

    @property
    def flops(self) -> int:
        return 4 * self.q_len * self.kv_len * self.width * self.count


def _tower_ops(prefix_dim: dict, rows: int, text: int, n_layers: int, patch_in: int, head_out: int):
    d, f, td, fq = prefix_dim["dim"], prefix_dim["ffn"], prefix_dim["text_dim"], prefix_dim["freq"]
    linears = [
        LinearOp("patch_embedding", patch_in, d, rows, chain="data", checkpointed=False),
        LinearOp("text_embedding.0", td, d, text, chain="data", checkpointed=False),
        LinearOp("text_embedding.2", d, d, text, chain="text", checkpointed=False),
        LinearOp("time_embedding.0", fq, d, 1, chain="data", checkpointed=False),
        LinearOp("time_embedding.2", d, d, 1, chain="time", checkpointed=False),
        LinearOp("time_projection.1", d, 6 * d, 1, chain="time", checkpointed=False),
        LinearOp("head.head", d, head_out, rows, checkpointed=False),
    ]
    for p in ("q", "k", "v", "o"):
        linears.append(LinearOp(f"blocks.*.self_attn.{p}", d, d, rows, n_layers))
    linears.append(LinearOp("blocks.*.cross_attn.q", d, d, rows, n_layers))
    linears.append(LinearOp("blocks.*.cross_attn.k", d, d, text, n_layers, chain="text"))
    linears.append(LinearOp("blocks.*.cross_attn.v", d, d, text, n_layers, chain="text"))
    linears.append(LinearOp("blocks.*.cross_attn.o", d, d, rows, n_layers))
    linears.append(LinearOp("blocks.*.ffn.0", d, f, rows, n_layers))
    linears.append(LinearOp("blocks.*.ffn.2", f, d, rows, n_layers))
    attn = [
        AttentionOp("blocks.*.self_attn", rows, rows, d, n_layers),
        AttentionOp("blocks.*.cross_attn", rows, text, d, n_layers, kv_chain="text"),
    ]
    # Non-matmul parameters: q/k RMSNorms (2 per attention), norm3 (weight + bias), modulation (6D), head mod.
    extra = n_layers * (4 * d + 2 * d + 6 * d) + 2 * d
    fp32 = fq * d + d + d * d + d + d * 6 * d + 6 * d  # time_embedding + time_projection stay float32
    return linears, attn, extra, fp32


def component_ops(
    config: MovaConfig, component: str, tokens: TokenCounts
) -> tuple[list[LinearOp], list[AttentionOp], int, int]:
    """Matmul inventory of one component for one sample.

    Args:
        config: the denoiser config.
        component: ``"video_dit"`` (either expert), ``"audio_dit"`` or ``"dual_tower_bridge"``.
        tokens: sequence lengths.

    Returns:
        ``(linears, attentions, extra_params, fp32_params)``: the matmul layers, the attention cores, the
        number of parameters outside linear layers (norms, modulation tables) and the number of parameters
        kept in float32 (time MLPs).
    """
    if component in ("video_dit", "video_dit_2"):
        c = config.video_dit
        p = c.patch_size[0] * c.patch_size[1] * c.patch_size[2]
        dims = {"dim": c.dim, "ffn": c.ffn_dim, "text_dim": c.text_dim, "freq": c.freq_dim}
        return _tower_ops(dims, tokens.video, tokens.text, c.num_layers, c.in_dim * p, c.out_dim * p)
    if component == "audio_dit":
        c = config.audio_dit
        p = c.patch_size[0]
        dims = {"dim": c.dim, "ffn": c.ffn_dim, "text_dim": c.text_dim, "freq": c.freq_dim}
        return _tower_ops(dims, tokens.audio, tokens.text, c.num_layers, c.in_dim * p, c.out_dim * p)
    if component == "dual_tower_bridge":
        b = config.dual_tower_bridge
        n, v, a = b.num_interaction_layers, b.visual_hidden_dim, b.audio_hidden_dim
        nv, na = tokens.video, tokens.audio
        pre = "audio_to_video_conditioners.*.inner"
        linears = [
            LinearOp(f"{pre}.q", v, v, nv, n),
            LinearOp(f"{pre}.k", a, v, na, n),
            LinearOp(f"{pre}.v", a, v, na, n),
            LinearOp(f"{pre}.o", v, v, nv, n),
        ]
        pre = "video_to_audio_conditioners.*.inner"
        linears += [
            LinearOp(f"{pre}.q", a, a, na, n),
            LinearOp(f"{pre}.k", v, a, nv, n),
            LinearOp(f"{pre}.v", v, a, nv, n),
            LinearOp(f"{pre}.o", a, a, na, n),
        ]
        attn = [
            AttentionOp("audio_to_video_conditioners.*", nv, na, v, n),
            AttentionOp("video_to_audio_conditioners.*", na, nv, a, n),
        ]
        # y_norm (weight + bias of the condition width) and q/k RMSNorms of the primary width, per direction.
        extra = n * ((2 * a + 2 * v) + (2 * v + 2 * a))
        return linears, attn, extra, 0
    raise ValueError(f"unknown component {component!r}; expected one of {COMPONENTS} or 'video_dit_2'")


_NO_TOKENS = TokenCounts(0, 0, 0, 0, 0, 0)


def component_params(config: MovaConfig, component: str) -> tuple[int, int]:
    """``(parameters, float32-kept parameters)`` of one component (independent of token counts)."""
    linears, _, extra, fp32 = component_ops(config, component, _NO_TOKENS)
    return sum(op.params for op in linears) + extra, fp32


def component_linears(config: MovaConfig, component: str, tokens: TokenCounts) -> list[LinearOp]:
    """Just the matmul layers of :func:`component_ops`."""
    return component_ops(config, component, tokens)[0]


def forward_flops(config: MovaConfig, tokens: TokenCounts, batch: int = 1) -> dict[str, int]:
    """Forward FLOPs of one dual-tower evaluation (one video expert + audio tower + bridge), per component.

    Returns:
        ``{"video_dit": ..., "audio_dit": ..., "dual_tower_bridge": ...}`` for ``batch`` samples.
    """
    out = {}
    for comp in COMPONENTS:
        linears, attn, _, _ = component_ops(config, comp, tokens)
        out[comp] = batch * (sum(op.flops for op in linears) + sum(op.flops for op in attn))
    return out


@dataclass
class StepFlops:
    """FLOPs of one training step (one sample unless ``batch`` says otherwise).

    Attributes:
        forward: forward FLOPs including LoRA adapters.
        backward: input- and weight-gradient FLOPs.
        recompute: the extra forward of gradient checkpointing.
        by_component: forward FLOPs per component (base layers, no LoRA).
        lora_params: trainable LoRA parameters.
    """

    forward: int
    backward: int
    recompute: int
    by_component: dict[str, int] = field(default_factory=dict)
    lora_params: int = 0

    @property
    def total(self) -> int:
        """Forward + backward + recompute FLOPs."""
        return self.forward + self.backward + self.recompute


def _resolve_targets(component: str, lora_targets: Mapping[str, Sequence[str]] | None) -> Sequence[str]:
    if not lora_targets:
        return ()
    if component == "video_dit":
        # The active expert is either video_dit or video_dit_2; both have the same shape.
        return lora_targets.get("video_dit") or lora_targets.get("video_dit_2") or ()
    return lora_targets.get(component) or ()


def training_step_flops(
    config: MovaConfig,
    tokens: TokenCounts,
    *,
    lora_rank: int = 0,
    lora_targets: Mapping[str, Sequence[str]] | None = None,
    full_finetune: Iterable[str] = (),
    gradient_checkpointing: bool = True,
    batch: int = 1,
    fused_attention: bool = True,
) -> StepFlops:
    """FLOPs of one forward + backward of the dual tower (one active video expert).

    Args:
        config: the denoiser config.
        tokens: sequence lengths.
        lora_rank: LoRA rank (0: no LoRA).
        lora_targets: component -> exact module patterns (``LoraSpec.components``), e.g.
            ``{"video_dit": ["self_attn.q", ...], "dual_tower_bridge": ["inner.q", ...]}``.
        full_finetune: components whose base weights all train (e.g. ``["dual_tower_bridge"]``).
        gradient_checkpointing: recompute DiT blocks and bridge layers in backward.
        batch: samples per step.
        fused_attention: attention backward as a fused kernel (FlashAttention / SDPA efficient: dQ, dK, dV
            always, 2x forward); False models the unfused math path, which skips dK/dV of text keys that carry
            no gradient (what ``FlopCounterMode`` sees on CPU with ``SDPBackend.MATH``).

    Returns:
        :class:`StepFlops`.
    """
    full = {"video_dit" if c == "video_dit_2" else c for c in full_finetune}
    unknown = full - set(COMPONENTS)
    if unknown:
        raise ValueError(f"full_finetune: unknown component(s) {sorted(unknown)}; expected {COMPONENTS}")
    fwd = bwd = rec = lora_params = 0
    by_comp: dict[str, int] = {}
    per_comp = {c: component_ops(config, c, tokens) for c in COMPONENTS}
    # Which input chains carry gradients: the text / time chains only when their MLPs are trained.
    text_grad = bool(full & {"video_dit", "audio_dit"})
    for comp, (linears, attn, _, _) in per_comp.items():
        patterns = _resolve_targets(comp, lora_targets) if lora_rank else ()
        comp_fwd = 0
        for op in linears:
            base = op.flops
            trainable = comp in full
            needs_input_grad = op.chain == "stream" or (op.chain in ("text", "time") and text_grad)
            lora = 0
            if any(op.matches(p) for p in patterns):
                r = lora_rank
                lora_params += op.count * r * (op.in_features + op.out_features)
                lora = 2 * op.rows * r * (op.in_features + op.out_features) * op.count
                # Backward of the adapter: weight grads of A and B (1x its forward), grad into A's output,
                # and grad into the layer input when that input carries gradients.
                bwd += lora + 2 * op.rows * r * op.out_features * op.count
                if needs_input_grad:
                    bwd += 2 * op.rows * r * op.in_features * op.count
            layer_fwd = base + lora
            fwd += layer_fwd
            comp_fwd += base
            if needs_input_grad:
                bwd += base
            if trainable:
                bwd += base
            if op.checkpointed and gradient_checkpointing:
                rec += layer_fwd
        for op in attn:
            fwd += op.flops
            comp_fwd += op.flops
            if fused_attention:
                bwd += 2 * op.flops  # fused kernels (flash / efficient) compute dQ, dK and dV together
            else:
                kv_pats = [f"{op.name}.{p}" for p in ("k", "v")]
                kv_grad = (
                    op.kv_chain == "stream"
                    or text_grad
                    or any(lin.matches(p) for lin in linears if lin.name in kv_pats for p in patterns)
                )
                # Unfused (math) attention: dQ and dP always, dK and dV only when k/v carry gradients.
                bwd += op.flops // 2 * (2 + (2 if kv_grad else 0))
            if gradient_checkpointing:
                rec += op.flops
        by_comp[comp] = comp_fwd
    bwd -= _first_layer_savings(per_comp, full, lora_rank, lora_targets)
    return StepFlops(
        forward=batch * fwd,
        backward=batch * bwd,
        recompute=batch * rec,
        by_component={k: batch * v for k, v in by_comp.items()},
        lora_params=lora_params,
    )


def _per_layer(ops: Sequence[LinearOp | AttentionOp], name: str) -> int:
    op = next(o for o in ops if o.name.endswith(name))
    return op.flops // op.count


def _first_layer_savings(
    per_comp: dict, full: set[str], lora_rank: int, lora_targets: Mapping[str, Sequence[str]] | None
) -> int:
    """Backward FLOPs that layer 0 does not need because its inputs carry no gradient yet.

    :func:`training_step_flops` first assumes every matmul on the residual streams needs an input gradient. In
    the first interaction layer (the bridge runs before block 0) and, when the bridge is frozen, in DiT block 0,
    the streams come straight from the frozen patch embeddings, so autograd skips those input gradients (and
    whole attention backwards) until the first trainable layer. This walks those layers in execution order.
    """

    def trainable(comp: str, linears: list[LinearOp], suffix: str) -> bool:
        op = next(o for o in linears if o.name.endswith(suffix))
        pats = _resolve_targets(comp, lora_targets) if lora_rank else ()
        return comp in full or any(op.matches(p) for p in pats)

    saved = 0
    stream_grad = {"video": "video_dit" in full, "audio": "audio_dit" in full}
    # Bridge layer 0: A2V (q from video, k/v from audio) and V2A (q from audio, k/v from video).
    b_lin, b_attn, _, _ = per_comp["dual_tower_bridge"]
    if b_lin and b_lin[0].count > 0:
        after = dict(stream_grad)
        for prefix, primary, cond in (
            ("audio_to_video_conditioners.*", "video", "audio"),
            ("video_to_audio_conditioners.*", "audio", "video"),
        ):
            qkv_grad = False
            for p, src in (("q", primary), ("k", cond), ("v", cond)):
                if not stream_grad[src]:
                    saved += _per_layer(b_lin, f"{prefix}.inner.{p}")
                qkv_grad |= stream_grad[src] or trainable("dual_tower_bridge", b_lin, f"{prefix}.inner.{p}")
            if not qkv_grad:
                saved += 2 * _per_layer(b_attn, prefix) + _per_layer(b_lin, f"{prefix}.inner.o")
            out_grad = qkv_grad or trainable("dual_tower_bridge", b_lin, f"{prefix}.inner.o")
            after[primary] = after[primary] or out_grad
        stream_grad = after
    # DiT block 0 of each tower, stage by stage, while its stream carries no gradient.
    for comp, stream in (("video_dit", "video"), ("audio_dit", "audio")):
        linears, attn, _, _ = per_comp[comp]
        g = stream_grad[stream]
        for stage in (
            ("self_attn.q", "self_attn.k", "self_attn.v"),
            ("attn:self_attn",),
            ("self_attn.o",),
            ("cross_attn.q",),
            ("attn:cross_attn",),
            ("cross_attn.o",),
            ("ffn.0",),
            ("ffn.2",),
        ):
            if g:
                break
            if stage[0].startswith("attn:"):
                saved += 2 * _per_layer(attn, stage[0][5:])
                continue
            for suffix in stage:
                saved += _per_layer(linears, f"blocks.*.{suffix}")
            if stage[0] == "cross_attn.q":  # the text k/v adapters also give the attention core gradients
                stage = ("cross_attn.q", "cross_attn.k", "cross_attn.v")
            g = any(trainable(comp, linears, f"blocks.*.{s}") for s in stage)
    return saved


def sampling_step_flops(config: MovaConfig, tokens: TokenCounts, cfg: bool = True, batch: int = 1) -> int:
    """FLOPs of one sampling (denoising) step: one forward per guidance branch (2 with CFG)."""
    return (2 if cfg else 1) * sum(forward_flops(config, tokens, batch).values())
