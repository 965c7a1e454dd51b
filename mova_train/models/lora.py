"""LoRA on the MOVA dual tower through peft, with exact target matching (mova_spec.md §9).

Targets are chosen per component (``video_dit``, ``video_dit_2``, ``audio_dit``, ``dual_tower_bridge``) as
patterns matched **exactly** against the last dotted components of each ``nn.Linear``'s path: the pattern
``self_attn.q`` matches ``blocks.3.self_attn.q`` and nothing else; ``q`` alone would match every ``*.q``.
Upstream's substring regex (spec §13.2 pitfall 3) is not reproduced; its effective layer set is the
``"upstream"`` preset (attention + FFN in the towers, q/k/v/o in the bridge).

Files: ``save_lora`` writes one safetensors file with keys ``<component>.<module path>.lora_A.weight`` /
``.lora_B.weight`` (peft's ``.default`` adapter name stripped) and metadata (rank, alpha, dropout, targets,
base fingerprint). Upstream's ``lora_weights.pt`` / ``lora_config.pt`` format (import and export) lives in
``mova_train.models.lora_upstream``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

log = logging.getLogger(__name__)

__all__ = [
    "COMPONENTS",
    "LORA_FORMAT",
    "MODULE_PRESETS",
    "SPEC_PRESETS",
    "LoraError",
    "LoraSpec",
    "base_fingerprint",
    "base_state_dict",
    "inject_lora",
    "load_lora",
    "lora_state_dict",
    "merge_lora",
    "read_lora_metadata",
    "save_lora",
    "set_trainable",
]

COMPONENTS = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")
LORA_FORMAT = "mova_lora/1"
ADAPTER = "default"

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
    "upstream": {c: "attn_ffn" for c in COMPONENTS},  # accelerate trainer's effective set (spec §9.1)
    "attn": {c: "attn" for c in COMPONENTS},  # low-resource trainer's set
    "attn_ffn": {c: "attn_ffn" for c in COMPONENTS},
    "bridge": {"dual_tower_bridge": "bridge"},
}
"""Whole-model presets for ``LoraSpec(preset=...)``."""


class LoraError(ValueError):
    """A LoRA spec, file or model does not fit."""


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


@dataclass
class LoraSpec:
    """Which layers get LoRA, and its hyper-parameters.

    Attributes:
        rank: LoRA rank r.
        alpha: scaling numerator (scaling = alpha / rank).
        dropout: dropout on the LoRA input.
        components: component -> module preset name (``"attn"``, ``"attn_ffn"``, ``"bridge"``) or a list of
            exact patterns; None uses ``preset``. After construction it always holds expanded pattern lists.
        preset: whole-model preset used when ``components`` is None (see ``SPEC_PRESETS``).
    """

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    components: dict[str, Any] | None = None
    preset: str | None = "upstream"
    _expanded: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False)
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
        if sub is None and spec._from_preset and comp in ("video_dit", "video_dit_2"):
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


def _lora_layers(model: nn.Module) -> Iterable[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            yield name, module


def inject_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Wrap the selected ``nn.Linear`` layers with peft LoRA layers (B = 0, so outputs are unchanged).

    Args:
        model: a ``MovaDualTower`` (any module whose children are the components).
        spec: the targets and hyper-parameters.

    Returns:
        full module names (``video_dit.blocks.0.self_attn.q``) that received LoRA.
    """
    from peft import LoraConfig, inject_adapter_in_model

    if any(True for _ in _lora_layers(model)):
        raise LoraError("inject_lora: the model already has LoRA layers; build a fresh model or load into it")
    wrapped: list[str] = []
    for comp, names in target_names(model, spec).items():
        regex = "(?:" + "|".join(re.escape(n) for n in names) + ")"
        config = LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=regex,
            bias="none",
            init_lora_weights=True,
        )
        inject_adapter_in_model(config, getattr(model, comp), adapter_name=ADAPTER)
        wrapped.extend(f"{comp}.{n}" for n in names)
    log.info("LoRA r=%d alpha=%g on %d layers", spec.rank, spec.alpha, len(wrapped))
    return wrapped


def set_trainable(
    model: nn.Module, spec: LoraSpec | None = None, full_finetune_components: Sequence[str] = ()
) -> list[str]:
    """Freeze everything, then unfreeze LoRA parameters and the fully fine-tuned components.

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
        for name, p in model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                p.requires_grad_(True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    if not names:
        raise LoraError("nothing to train: give a LoRA spec or a non-empty full_finetune list")
    return names


def _strip(key: str) -> str:
    return key.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(f".lora_B.{ADAPTER}.", ".lora_B.")


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA tensors keyed ``<component>.<path>.lora_A.weight`` / ``lora_B.weight`` (detached, on their device)."""
    return {_strip(n): p.detach() for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}


def base_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base weights under their original names (LoRA tensors dropped, peft's ``.base_layer`` removed)."""
    return {
        k.replace(".base_layer.", "."): v
        for k, v in model.state_dict().items()
        if ".lora_A." not in k and ".lora_B." not in k
    }


def base_fingerprint(source: nn.Module | str | Path, samples: int = 64) -> str:
    """A cheap identity of the base weights the LoRA was trained on.

    For a module: sha256 over every base tensor's name, shape, dtype and ``samples`` evenly strided values.
    For a checkpoint folder: sha256 over the relative path, size and safetensors header of each weight file
    (names, shapes, dtypes, offsets). The two kinds are prefixed ``model:`` / ``folder:`` and are not
    comparable with each other.
    """
    h = hashlib.sha256()
    if isinstance(source, nn.Module):
        for name, t in sorted(base_state_dict(source).items()):
            flat = t.detach().reshape(-1)
            step = max(1, flat.numel() // samples)
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            h.update(flat[::step][:samples].to("cpu", torch.float64).numpy().tobytes())
        return "model:" + h.hexdigest()
    root = Path(source)
    files = sorted(root.rglob("*.safetensors"))
    if not files:
        raise LoraError(f"base_fingerprint: no .safetensors files under {root}")
    for f in files:
        with open(f, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = fh.read(size)
        h.update(f"{f.relative_to(root)}|{f.stat().st_size}|".encode() + header)
    return "folder:" + h.hexdigest()


def save_lora(
    path: str | Path, model: nn.Module, spec: LoraSpec, base_fingerprint: str = "", atomic: bool = True
) -> Path:
    """Write the LoRA tensors and metadata to one safetensors file.

    Metadata (strings): ``format``, ``rank``, ``alpha``, ``dropout``, ``targets`` (JSON of the expanded
    components), ``base_fingerprint``.
    """
    from safetensors.torch import save_file

    tensors = {k: v.to("cpu").contiguous() for k, v in lora_state_dict(model).items()}
    if not tensors:
        raise LoraError("save_lora: the model has no LoRA parameters")
    meta = {
        "format": LORA_FORMAT,
        "rank": str(spec.rank),
        "alpha": repr(spec.alpha),
        "dropout": repr(spec.dropout),
        "targets": json.dumps(spec.components, sort_keys=True),
        "base_fingerprint": base_fingerprint,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp") if atomic else path
    save_file(tensors, str(tmp), metadata=meta)
    if atomic:
        tmp.replace(path)
    return path


def read_lora_metadata(path: str | Path) -> tuple[LoraSpec, dict[str, str]]:
    """The spec and the raw metadata of a LoRA file written by :func:`save_lora`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != LORA_FORMAT:
        raise LoraError(f"{path}: not a mova_train LoRA file (metadata format={meta.get('format')!r})")
    spec = LoraSpec(
        rank=int(meta["rank"]),
        alpha=float(meta["alpha"]),
        dropout=float(meta.get("dropout", "0.0")),
        components=json.loads(meta["targets"]),
    )
    return spec, meta


def load_lora(path: str | Path, model: nn.Module, strength: float = 1.0) -> LoraSpec:
    """Load a LoRA file into ``model`` (injecting the layers first if the model has none).

    Strict: every tensor of the file must land on a LoRA parameter of the same shape and every LoRA parameter
    of the model must be in the file. ``strength`` multiplies the scaling (``alpha / rank * strength``).

    Returns:
        the spec read from the file.
    """
    from safetensors.torch import load_file

    spec, _ = read_lora_metadata(path)
    if not any(True for _ in _lora_layers(model)):
        inject_lora(model, spec)
    tensors = load_file(str(path))
    params = {_strip(n): p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    if missing or unexpected:
        raise LoraError(
            f"{path}: LoRA keys do not match the model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); load it into a model with the same "
            f"components/targets (file targets: {spec.components})"
        )
    for key, p in params.items():
        t = tensors[key]
        if t.shape != p.shape:
            raise LoraError(f"{path}: {key} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(t.to(p.dtype))
    for _, layer in _lora_layers(model):
        layer.set_scale(ADAPTER, strength)
    return spec


def merge_lora(model: nn.Module, unload: bool = True) -> int:
    """Merge every LoRA layer into its base weight (``W + B @ A * scaling``).

    Args:
        model: the model with LoRA layers.
        unload: also replace each LoRA wrapper by its (merged) base ``nn.Linear``, restoring the original
            module names so the model saves in the release layout.

    Returns:
        number of merged layers.
    """
    layers = list(_lora_layers(model))
    for name, layer in layers:
        layer.merge()
        if unload:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, layer.get_base_layer())
    return len(layers)
