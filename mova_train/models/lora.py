"""LoRA on the MOVA dual tower through peft, with exact target matching (docs/model.md §9).

Targets are chosen per component (``video_dit``, ``video_dit_2``, ``audio_dit``, ``dual_tower_bridge``) as
patterns matched **exactly** against the last dotted components of each ``nn.Linear``'s path: the pattern
``self_attn.q`` matches ``blocks.3.self_attn.q`` and nothing else; ``q`` alone would match every ``*.q``.
Upstream's substring regex (docs/model.md §13.2 pitfall 3) is not reproduced; its effective layer set is the
``"upstream"`` preset (attention + FFN in the towers, q/k/v/o in the bridge).

Groups. Every LoRA layer belongs to one of four groups, by its path: ``video`` (both video experts),
``audio`` (the audio tower), ``bridge_a2v`` (the bridge's audio -> video conditioners, which write into the
video stream) and ``bridge_v2a`` (video -> audio). ``bridge`` names both bridge groups and ``shared`` the three
groups the two video experts share. Groups can be frozen in training (``LoraSpec.freeze_groups``), scaled at
inference, and switched per video expert (:func:`gate_lora_layers`).

Precision. LoRA weights are float32 whatever the base dtype (peft computes the LoRA branch in the LoRA dtype
and casts the result back), so bf16 bases train fp32 adapters, as the memory estimator assumes.

Sharded models. Under FSDP2 the parameters are ``DTensor`` shards: :func:`lora_state_dict` and
:func:`trainable_state_dict` gather them (a collective: every rank of the mesh must call them).

Files: :mod:`mova_train.models.lora_file` (our safetensors format), :mod:`mova_train.models.lora_upstream`
(upstream's ``.pt`` files), :mod:`mova_train.models.lora_apply` (adapters at inference).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mova_train.models.mova import COMPONENTS, EXPERTS

log = logging.getLogger(__name__)

__all__ = [
    "ADAPTER",
    "AUDIO_SIDE_GROUPS",
    "COMPONENTS",
    "LORA_GROUPS",
    "MODULE_PRESETS",
    "SHARED_GROUPS",
    "SPEC_PRESETS",
    "VIDEO_SIDE_GROUPS",
    "LoraError",
    "LoraSpec",
    "base_fingerprint",
    "base_state_dict",
    "component_fingerprints",
    "expand_groups",
    "full_tensor",
    "gate_lora_layers",
    "inject_lora",
    "inject_modules",
    "lora_group",
    "lora_layers",
    "lora_state_dict",
    "merge_lora",
    "scaled_lora_groups",
    "set_layer_strengths",
    "set_trainable",
    "target_names",
    "trainable_state_dict",
]

ADAPTER = "default"

LORA_GROUPS = ("video", "audio", "bridge_a2v", "bridge_v2a")
"""Video towers, audio tower, bridge audio -> video, bridge video -> audio."""
SHARED_GROUPS = ("audio", "bridge_a2v", "bridge_v2a")
"""Groups both video experts run with (trained in both experts' timestep ranges)."""
VIDEO_SIDE_GROUPS = ("video", "bridge_a2v")
"""Groups whose layers write into the video stream."""
AUDIO_SIDE_GROUPS = ("audio", "bridge_v2a")
"""Groups whose layers write into the audio stream."""
GROUP_ALIASES: dict[str, tuple[str, ...]] = {
    **{g: (g,) for g in LORA_GROUPS},
    "bridge": ("bridge_a2v", "bridge_v2a"),
    "shared": SHARED_GROUPS,
}

_ATTN = [f"{a}.{p}" for a in ("self_attn", "cross_attn") for p in ("q", "k", "v", "o")]
_FFN = ["ffn.0", "ffn.2"]
_BRIDGE = [f"inner.{p}" for p in ("q", "k", "v", "o")]

MODULE_PRESETS: dict[str, dict[str, list[str]]] = {
    # preset -> {"tower": patterns for video/audio DiTs, "bridge": patterns for the bridge}
    "attn": {"tower": _ATTN, "bridge": _BRIDGE},
    "attn_ffn": {"tower": _ATTN + _FFN, "bridge": _BRIDGE},
    "bridge": {"tower": [], "bridge": _BRIDGE},
}
"""Per-component module presets: a component may name one of these instead of listing patterns."""

SPEC_PRESETS: dict[str, dict[str, str]] = {
    "upstream": {c: "attn_ffn" for c in COMPONENTS},  # accelerate trainer's set (docs/model.md §9.1)
    "attn": {c: "attn" for c in COMPONENTS},  # low-resource trainer's set
    "attn_ffn": {c: "attn_ffn" for c in COMPONENTS},
    "bridge": {"dual_tower_bridge": "bridge"},
}
"""Whole-model presets for ``LoraSpec(preset=...)``."""


class LoraError(ValueError):
    """A LoRA spec, file or model does not fit."""


# ------------------------------------------------------------------------------------------------ groups


def lora_group(module: str) -> str:
    """The group of a LoRA layer or tensor, from its path (``audio_dit.blocks.0.self_attn.q`` -> ``audio``).

    Raises:
        LoraError: the path is not under one of :data:`COMPONENTS` (or not under a bridge conditioner list).
    """
    comp, _, rest = module.partition(".")
    if comp in EXPERTS:
        return "video"
    if comp == "audio_dit":
        return "audio"
    if comp == "dual_tower_bridge":
        if rest.startswith("audio_to_video_conditioners."):
            return "bridge_a2v"
        if rest.startswith("video_to_audio_conditioners."):
            return "bridge_v2a"
    raise LoraError(f"LoRA layer {module!r} belongs to no group; expected a path under one of {COMPONENTS}")


def expand_groups(names: Iterable[str], where: str) -> set[str]:
    """Group names with aliases (``bridge``, ``shared``) expanded.

    Raises:
        LoraError: an unknown name; ``where`` (e.g. ``lora.freeze_groups``) is named in the message.
    """
    out: set[str] = set()
    for name in names:
        if name not in GROUP_ALIASES:
            raise LoraError(f"{where}: unknown LoRA group {name!r}; use one of {sorted(GROUP_ALIASES)}")
        out.update(GROUP_ALIASES[name])
    return out


def _expand(component: str, targets: str | Sequence[str]) -> list[str]:
    if isinstance(targets, str):
        if targets not in MODULE_PRESETS:
            raise LoraError(
                f"lora.components.{component}: unknown preset {targets!r}; use one of {sorted(MODULE_PRESETS)} "
                f"or a list of module-name patterns"
            )
        kind = "bridge" if component == "dual_tower_bridge" else "tower"
        return list(MODULE_PRESETS[targets][kind])
    return [str(t) for t in targets]


# ------------------------------------------------------------------------------------------------ spec


@dataclass
class LoraSpec:
    """Which layers get LoRA, its hyper-parameters, and how a run starts and freezes it.

    Attributes:
        rank: LoRA rank r.
        alpha: scaling numerator (scaling = alpha / rank).
        dropout: dropout on the LoRA input.
        components: component -> module preset name (``"attn"``, ``"attn_ffn"``, ``"bridge"``) or a list of
            exact patterns; None uses ``preset``. After construction it always holds expanded pattern lists.
        preset: whole-model preset used when ``components`` is None (see ``SPEC_PRESETS``).
        init_from: a ``lora.safetensors`` whose tensors initialize the matching LoRA layers of this run (the
            second run of a two-expert workflow warm-starts the shared audio/bridge adapters of the first).
        freeze_groups: LoRA groups that do not train (``video``, ``audio``, ``bridge_a2v``, ``bridge_v2a``,
            ``bridge``, ``shared``); with ``init_from`` they keep the loaded values.
        init_from_other_base: warm-start from ``init_from`` even when its ``base_fingerprints`` differ from this
            run's base (refused by default: an adapter trained on another base does not fit this one).
    """

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    components: dict[str, Any] | None = None
    preset: str | None = "upstream"
    init_from: str | None = None
    freeze_groups: Sequence[str] = ()
    init_from_other_base: bool = False
    _from_preset: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise LoraError(f"lora.rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise LoraError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise LoraError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        comps = self.components
        if comps is None:
            if self.preset not in SPEC_PRESETS:
                raise LoraError(f"lora.preset must be one of {sorted(SPEC_PRESETS)}, got {self.preset!r}")
            comps = SPEC_PRESETS[self.preset]
            self._from_preset = True
        unknown = set(comps) - set(COMPONENTS)
        if unknown:
            raise LoraError(f"lora.components: unknown component(s) {sorted(unknown)}; expected {COMPONENTS}")
        self.components = {c: _expand(c, t) for c, t in dict(comps).items() if _expand(c, t)}
        self.rank, self.alpha, self.dropout = int(self.rank), float(self.alpha), float(self.dropout)
        self.freeze_groups = sorted(expand_groups(self.freeze_groups or (), "lora.freeze_groups"))
        if self.init_from is not None:
            self.init_from = str(self.init_from)

    @property
    def scaling(self) -> float:
        """``alpha / rank``."""
        return self.alpha / self.rank

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable form (expanded components)."""
        return {
            "rank": self.rank,
            "alpha": self.alpha,
            "dropout": self.dropout,
            "components": self.components,
            "init_from": self.init_from,
            "freeze_groups": list(self.freeze_groups),
        }


def _matches(name: str, pattern: str) -> bool:
    return name == pattern or name.endswith("." + pattern)


def target_names(model: nn.Module, spec: LoraSpec) -> dict[str, list[str]]:
    """Per component, the ``nn.Linear`` paths (relative to the component) the spec selects.

    A whole-model preset skips video experts that are not loaded (a run training one expert); components
    listed explicitly must all be present.

    Raises:
        LoraError: a listed component is missing, or a pattern matches no layer of its component.
    """
    out: dict[str, list[str]] = {}
    for comp, patterns in (spec.components or {}).items():
        sub = getattr(model, comp, None)
        if sub is None and spec._from_preset and comp in EXPERTS:
            continue
        if sub is None:
            raise LoraError(f"lora.components names {comp!r} but the model has no such component loaded")
        linears = [n for n, m in sub.named_modules() if isinstance(m, nn.Linear)]
        names = []
        for pattern in patterns:
            hit = [n for n in linears if _matches(n, pattern)]
            if not hit:
                raise LoraError(f"lora.components.{comp}: pattern {pattern!r} matches no nn.Linear in {comp}")
            names.extend(hit)
        out[comp] = sorted(set(names), key=linears.index)
    return out


# ------------------------------------------------------------------------------------------------ layers


def lora_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(path, peft LoraLayer)`` for every LoRA layer of ``model``."""
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def inject_modules(
    model: nn.Module, component: str, names: Sequence[str], rank: int, alpha: float, dropout: float = 0.0
) -> list[str]:
    """Wrap the ``nn.Linear`` layers ``names`` (paths relative to ``component``) with float32 LoRA layers.

    Layers that are already LoRA layers are refused: the caller merges first (see ``lora_apply``).

    Returns:
        full module names (``video_dit.blocks.0.self_attn.q``).
    """
    from peft import LoraConfig, inject_adapter_in_model

    sub = getattr(model, component, None)
    if sub is None:
        raise LoraError(f"LoRA for {component!r}: the model has no such component loaded")
    if not names:
        return []
    regex = "(?:" + "|".join(re.escape(n) for n in names) + ")"
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha),
        lora_dropout=float(dropout),
        target_modules=regex,
        bias="none",
        init_lora_weights=True,
    )
    inject_adapter_in_model(config, sub, adapter_name=ADAPTER)
    for name in names:
        layer = sub.get_submodule(name)
        # peft creates the adapter in the base layer's dtype; trainable weights stay float32 (module docstring).
        layer.lora_A[ADAPTER].float()
        layer.lora_B[ADAPTER].float()
    return [f"{component}.{n}" for n in names]


def inject_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Wrap the selected ``nn.Linear`` layers with peft LoRA layers (B = 0, so outputs are unchanged).

    Args:
        model: a ``MovaDualTower`` (any module whose children are the components).
        spec: the targets and hyper-parameters.

    Returns:
        full module names (``video_dit.blocks.0.self_attn.q``) that received LoRA.
    """
    if any(True for _ in lora_layers(model)):
        raise LoraError("inject_lora: the model already has LoRA layers; build a fresh model or load into it")
    wrapped: list[str] = []
    for comp, names in target_names(model, spec).items():
        wrapped += inject_modules(model, comp, names, spec.rank, spec.alpha, spec.dropout)
    log.info("LoRA r=%d alpha=%g on %d layers", spec.rank, spec.alpha, len(wrapped))
    return wrapped


def set_trainable(
    model: nn.Module, spec: LoraSpec | None = None, full_finetune_components: Sequence[str] = ()
) -> list[str]:
    """Freeze everything, then unfreeze LoRA parameters (but ``spec.freeze_groups``) and the fully fine-tuned
    components.

    Args:
        model: the dual tower (LoRA already injected when ``spec`` is given).
        spec: LoRA spec, or None for no LoRA.
        full_finetune_components: components whose base weights all train.

    Returns:
        names of the trainable parameters.
    """
    unknown = set(full_finetune_components) - set(COMPONENTS)
    if unknown:
        raise LoraError(f"full_finetune: unknown component(s) {sorted(unknown)}; expected {COMPONENTS}")
    model.requires_grad_(False)
    for comp in full_finetune_components:
        sub = getattr(model, comp, None)
        if sub is None:
            raise LoraError(f"full_finetune names {comp!r} but the model has no such component loaded")
        sub.requires_grad_(True)
    if spec is not None:
        frozen = set(spec.freeze_groups)
        for name, p in model.named_parameters():
            if (".lora_A." in name or ".lora_B." in name) and lora_group(name) not in frozen:
                p.requires_grad_(True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        hint = f" (lora.freeze_groups={list(spec.freeze_groups)} froze every LoRA layer)" if spec else ""
        raise LoraError(f"nothing to train: give a LoRA spec or a non-empty full_finetune list{hint}")
    return names


# ------------------------------------------------------------------------------------------------ state


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a parameter: an FSDP2 ``DTensor`` shard is all-gathered (collective), others pass."""
    from torch.distributed.tensor import DTensor

    if isinstance(t, DTensor):
        t = t.full_tensor()
    return t.detach()


def _strip(key: str) -> str:
    return key.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(f".lora_B.{ADAPTER}.", ".lora_B.")


def _is_lora(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def lora_state_dict(model: nn.Module, device: str | torch.device | None = "cpu") -> dict[str, torch.Tensor]:
    """LoRA tensors keyed ``<component>.<path>.lora_A.weight`` / ``lora_B.weight``, whole (gathered from FSDP2
    shards: every rank must call this) and detached.

    Args:
        model: the model with LoRA layers.
        device: where the tensors go (None: where they are).
    """
    out = {}
    for name, p in model.named_parameters():
        if _is_lora(name):
            t = full_tensor(p)
            out[_strip(name)] = t if device is None else t.to(device)
    return out


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base weights under their original names (LoRA tensors dropped, peft's ``.base_layer`` removed)."""
    return {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if not _is_lora(k)}


def trainable_state_dict(model: nn.Module, component: str) -> dict[str, torch.Tensor]:
    """Whole CPU weights of one component under release key names (LoRA dropped; gathered: collective).

    Used to export a fully fine-tuned component; the keys match the release ``diffusion_pytorch_model``.
    """
    sub = getattr(model, component, None)
    if sub is None:
        raise LoraError(f"export: the model has no component {component!r}")
    return {k: full_tensor(v).to("cpu") for k, v in base_state_dict(sub).items()}


def component_fingerprints(model: nn.Module, samples: int = 64) -> dict[str, str]:
    """Per loaded component, a cheap identity of its base weights.

    sha256 over every base tensor's name, shape and ``samples`` evenly strided values rounded to bfloat16, so
    the same weights held in float32 or bfloat16 give the same fingerprint. LoRA layers are ignored.
    """
    out = {}
    for comp in COMPONENTS:
        sub = getattr(model, comp, None)
        if sub is None:
            continue
        h = hashlib.sha256()
        for name, t in sorted(base_state_dict(sub).items()):
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // samples)
            h.update(f"{name}|{tuple(t.shape)}|".encode())
            values = flat[::step][:samples].to("cpu", torch.float32).to(torch.bfloat16).to(torch.float64)
            h.update(values.numpy().tobytes())
        out[comp] = h.hexdigest()[:32]
    return out


def base_fingerprint(source: nn.Module | Mapping[str, str] | str | Path, samples: int = 64) -> str:
    """A cheap identity of the base weights the LoRA was trained on.

    For a module (or the output of :func:`component_fingerprints`): sha256 over the per-component
    fingerprints, prefixed ``model:``. For a checkpoint folder: sha256 over the relative path, size and
    safetensors header of each weight file, prefixed ``folder:``. The two kinds are not comparable.
    """
    if isinstance(source, nn.Module):
        source = component_fingerprints(source, samples)
    if isinstance(source, Mapping):
        h = hashlib.sha256("|".join(f"{c}={fp}" for c, fp in sorted(source.items())).encode())
        return "model:" + h.hexdigest()
    root = Path(source)
    files = sorted(root.rglob("*.safetensors"))
    if not files:
        raise LoraError(f"base_fingerprint: no .safetensors files under {root}")
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = fh.read(size)
        h.update(f"{f.relative_to(root)}|{f.stat().st_size}|".encode() + header)
    return "folder:" + h.hexdigest()


# ------------------------------------------------------------------------------------------------ strengths


def _rescale(layer: nn.Module, on: bool = True) -> None:
    """Scaling = alpha / r x strength (per file and group) x temporary factor x expert gate."""
    base = float(layer.lora_alpha[ADAPTER]) / float(layer.r[ADAPTER])
    strength = getattr(layer, "_mova_strength", 1.0) * getattr(layer, "_mova_factor", 1.0)
    layer.scaling[ADAPTER] = base * strength * float(on)


def set_layer_strengths(model: nn.Module, strengths: Mapping[str, float]) -> None:
    """Set the strength (multiplier of ``alpha / rank``) of LoRA layers by full path; others keep theirs."""
    for name, layer in lora_layers(model):
        if name in strengths:
            layer._mova_strength = float(strengths[name])
            _rescale(layer)


@contextlib.contextmanager
def scaled_lora_groups(model: nn.Module, strengths: Mapping[str, float]) -> Iterator[None]:
    """Temporarily multiply the LoRA layers of some groups by a factor (0.0 switches a group off).

    For the leakage check (render with the audio-side groups off, then the video-side ones): works on an
    unmerged model, in training or at inference. Merged layers are part of the base weights and unaffected.
    With factor 0 the output equals the one of the adapter without that group's tensors, bit for bit.

    Args:
        model: the model with LoRA layers.
        strengths: group (or alias: ``bridge``, ``shared``) -> factor, e.g. ``{"audio": 0.0, "bridge_v2a": 0.0}``.
    """
    factors: dict[str, float] = {}
    for name, value in strengths.items():
        for g in expand_groups([name], "scaled_lora_groups"):
            factors[g] = float(value)
    touched = [(n, layer) for n, layer in lora_layers(model) if lora_group(n) in factors]
    for name, layer in touched:
        layer._mova_factor = factors[lora_group(name)]
        _rescale(layer)
    try:
        yield
    finally:
        for _, layer in touched:
            del layer._mova_factor
            _rescale(layer)


def gate_lora_layers(model: nn.Module, gates: Mapping[str, Sequence[str]]) -> None:
    """Make LoRA layers act only while given video experts run (``model(..., expert=...)``).

    A shared adapter trained with one expert only (a single-expert run) is thereby applied in the steps where
    it was trained, not at every step. Gated layers stay unmerged (:func:`merge_lora` skips them).

    Args:
        model: a ``MovaDualTower`` with LoRA layers.
        gates: full layer path -> experts under which it is active.
    """
    layers = dict(lora_layers(model))
    unknown = sorted(set(gates) - set(layers))
    if unknown:
        raise LoraError(f"gate_lora_layers: no LoRA layer at {unknown[:3]}")
    table: dict[str, tuple[nn.Module, tuple[str, ...]]] = getattr(model, "_mova_lora_gates", {})
    table.update({name: (layers[name], tuple(experts)) for name, experts in gates.items()})
    model._mova_lora_gates = table
    if getattr(model, "_mova_gate_hook", None) is None:
        model._mova_gate_hook = model.register_forward_pre_hook(_gate_hook, with_kwargs=True)


def _gate_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
    # MovaDualTower.forward(latents, y, audio_latents, context, timestep, audio_timestep, video_fps, expert)
    expert = kwargs.get("expert", args[7] if len(args) > 7 else "video_dit")
    for layer, experts in module._mova_lora_gates.values():
        _rescale(layer, on=expert in experts)


def merge_lora(model: nn.Module, unload: bool = True, skip: Iterable[str] = ()) -> int:
    """Merge LoRA layers into their base weights (``W + B @ A * scaling``).

    Args:
        model: the model with LoRA layers.
        unload: also replace each LoRA wrapper by its (merged) base ``nn.Linear``, restoring the original
            module names so the model saves in the release layout.
        skip: layer paths to leave unmerged (gated layers).

    Returns:
        number of merged layers.
    """
    skip = set(skip) | set(getattr(model, "_mova_lora_gates", {}))
    layers = [(n, layer) for n, layer in lora_layers(model) if n not in skip]
    for name, layer in layers:
        layer.merge()
        if unload:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.get_base_layer())
    return len(layers)
