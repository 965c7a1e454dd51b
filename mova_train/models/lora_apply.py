"""LoRA adapters at inference: read, check, resolve pairs, inject, scale, gate, merge.

An adapter entry is ``{path, strength: 1.0, groups: {audio: 0.0, ...}, alpha: null, allow_other_base: false}``:
``path`` is our ``lora.safetensors`` or an upstream folder / ``.pt``; ``strength`` multiplies the scaling of
every layer and ``groups`` that of a group's layers (``video``, ``audio``, ``bridge_a2v``, ``bridge_v2a``,
``bridge``, ``shared``); layers at strength 0 are not loaded at all. ``alpha`` overrides the file's alpha
(required for upstream files whose config disagrees with their tensors).

Checks before anything is changed: the file's checksum (a corrupted file is refused), its base fingerprints
against the model's (a LoRA trained on another base is refused unless ``allow_other_base``).

Single-expert files. A run that loaded one video expert trained the shared adapters (audio tower, bridge)
only in that expert's timestep range. Loaded into a two-expert model, such a file acts only while its expert
runs: its shared layers are gated to that expert (:func:`~mova_train.models.lora.gate_lora_layers`).

Pairs. A high-noise file and a low-noise file (one expert each) load as one adapter per expert plus ONE
shared set: the two shared sets are identical (second run trained with ``lora.freeze_groups=[shared]`` after
``lora.init_from`` = the first), or one descends from the other (``init_from`` warm start: the descendant's
shared set was trained in both ranges and is used), or only one file has shared tensors. Two unrelated
shared sets are ambiguous and refused with the ways to train a proper pair.

Several adapters on the same layers (stacking) are merged one after the other; gated layers cannot be.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mova_train.models.lora import (
    ADAPTER,
    EXPERTS,
    SHARED_GROUPS,
    LoraError,
    LoraSpec,
    component_fingerprints,
    expand_groups,
    gate_lora_layers,
    inject_modules,
    lora_group,
    lora_layers,
    merge_lora,
    set_layer_strengths,
)
from mova_train.models.lora_file import (
    LoraWeights,
    check_base,
    module_of,
    read_lora,
    shared_tensors,
    tensor_checksum,
)
from mova_train.models.lora_formats import is_foreign, read_foreign_lora
from mova_train.models.lora_upstream import read_upstream_lora

log = logging.getLogger(__name__)

__all__ = ["AdapterEntry", "apply_loras", "file_fingerprint", "load_lora", "read_adapter"]

_PAIR_HELP = (
    "train the second expert from the first run's file: lora.init_from=<first run>/lora/lora.safetensors with "
    "lora.freeze_groups=[shared] (one shared set, trained in the first run) or without it (warm start: the "
    "second run's shared set continues the first); or switch one file's shared groups off with "
    "groups: {shared: 0.0}"
)


@dataclass
class AdapterEntry:
    """One ``lora.adapters`` entry (see the module docstring)."""

    path: Path
    strength: float = 1.0
    groups: dict[str, float] = field(default_factory=dict)
    alpha: float | None = None
    allow_other_base: bool = False
    component: str | None = None

    @classmethod
    def parse(cls, entry: Mapping[str, Any] | str | Path) -> AdapterEntry:
        """From a mapping or a bare path; unknown keys and groups are refused."""
        if isinstance(entry, (str, Path)):
            entry = {"path": entry}
        unknown = set(entry) - {"path", "strength", "groups", "alpha", "allow_other_base", "component"}
        if unknown or "path" not in entry:
            raise LoraError(
                f"lora.adapters entry {dict(entry)}: unknown key(s) {sorted(unknown)} or no path; keys are path, "
                f"strength, groups, alpha, allow_other_base, component"
            )
        groups: dict[str, float] = {}
        for name, value in dict(entry.get("groups") or {}).items():
            for g in expand_groups([name], f"lora.adapters[{entry['path']}].groups"):
                groups[g] = float(value)
        alpha = entry.get("alpha")
        return cls(
            path=Path(str(entry["path"])).expanduser(),
            strength=float(entry.get("strength", 1.0)),
            groups=groups,
            alpha=None if alpha is None else float(alpha),
            allow_other_base=bool(entry.get("allow_other_base", False)),
            component=entry.get("component"),
        )

    def strength_of(self, module: str) -> float:
        """File strength x group strength of one layer."""
        return self.strength * self.groups.get(lora_group(module), 1.0)


def file_fingerprint(path: str | Path) -> str:
    """sha256 (first 16 hex) of a LoRA file, or of ``lora_weights.pt`` + ``lora_config.pt`` in a folder."""
    path = Path(path)
    files = [path / "lora_weights.pt", path / "lora_config.pt"] if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def read_adapter(entry: AdapterEntry, model: nn.Module | None = None) -> LoraWeights:
    """Read the file of an entry: our safetensors, upstream's ``.pt`` layouts, else the other tools' formats
    (``mova_train.models.lora_formats.read_foreign_lora``: DiffSynth, ComfyUI, kohya, PEFT).
    """
    path = entry.path
    if not path.exists():
        raise LoraError(f"LoRA {path} does not exist; fix the path in lora.adapters")
    if path.suffix == ".safetensors" and not is_foreign(path):
        weights = read_lora(path)
        if entry.alpha is not None:
            weights.alphas = {m: entry.alpha for m in weights.modules}
        return weights
    if path.suffix == ".pt" or (path / "lora_weights.pt").is_file():
        return read_upstream_lora(path, alpha=entry.alpha)
    return read_foreign_lora(path, model, component=entry.component, alpha=entry.alpha)


@dataclass
class _Part:
    """The layers one file contributes after group strengths and pair resolution."""

    entry: AdapterEntry
    weights: LoraWeights
    modules: list[str]
    gate: tuple[str, ...] | None = None  # shared layers act only with these experts
    note: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def _loaded_experts(model: nn.Module) -> list[str]:
    return [e for e in EXPERTS if getattr(model, e, None) is not None]


def _select(model: nn.Module, entry: AdapterEntry, weights: LoraWeights) -> _Part:
    """Drop layers at strength 0 and layers of video experts the model does not hold."""
    loaded = _loaded_experts(model)
    keep = []
    for m in weights.modules:
        comp = m.partition(".")[0]
        if comp in EXPERTS and (comp not in loaded or comp not in weights.trained_experts):
            continue  # an expert the model lacks, or one the run held but never trained (B = 0)
        if getattr(model, comp, None) is None:
            raise LoraError(f"{weights.source}: has LoRA for {comp!r}, which this model does not hold")
        if entry.strength_of(m) != 0.0:
            keep.append(m)
    part = _Part(entry, weights, keep)
    shared = [m for m in keep if lora_group(m) in SHARED_GROUPS]
    covered = [e for e in loaded if e in weights.shared_experts]
    if shared and set(covered) != set(loaded):
        part.gate = tuple(covered) or tuple(weights.trained_experts)
    return part


def _shared_checksum(part: _Part) -> str:
    tensors = {k: v for k, v in part.weights.tensors.items() if module_of(k) in part.modules}
    shared = shared_tensors(tensors)
    return tensor_checksum(shared) if shared else ""


def _resolve_pair(a: _Part, b: _Part) -> None:
    """One shared set for a high-noise + low-noise pair (see the module docstring); mutates the parts."""
    sa, sb = _shared_checksum(a), _shared_checksum(b)
    if not sa or not sb:
        return
    meta_a, meta_b = a.weights.meta, b.weights.meta
    parent_of_b = meta_b.init_from.get("shared_checksum") if meta_b and meta_b.init_from else None
    parent_of_a = meta_a.init_from.get("shared_checksum") if meta_a and meta_a.init_from else None
    if sa == sb:
        keep, drop = (b, a) if len(b.weights.shared_experts) >= len(a.weights.shared_experts) else (a, b)
        reason = f"identical to the shared set of {keep.weights.source}"
    elif parent_of_b == sa:
        keep, drop, reason = b, a, f"superseded by {b.weights.source}, which was warm-started from it"
    elif parent_of_a == sb:
        keep, drop, reason = a, b, f"superseded by {a.weights.source}, which was warm-started from it"
    else:
        raise LoraError(
            f"LoRA pair {a.weights.source} ({'+'.join(a.weights.trained_experts)}) and {b.weights.source} "
            f"({'+'.join(b.weights.trained_experts)}) carry two independent audio/bridge adapters; loading both "
            f"would add both deltas. To use them together, {_PAIR_HELP}"
        )
    drop.modules = [m for m in drop.modules if lora_group(m) not in SHARED_GROUPS]
    drop.gate, drop.note = None, f"shared groups not loaded: {reason}"
    keep.gate = None  # the one shared set ran with both experts in training (frozen or warm-started)


def _find_pairs(parts: list[_Part]) -> None:
    singles = [p for p in parts if len(p.weights.trained_experts) == 1]
    by_expert = {e: [p for p in singles if p.weights.trained_experts == [e]] for e in EXPERTS}
    if len(parts) == 2 and all(len(v) == 1 for v in by_expert.values()):
        _resolve_pair(by_expert["video_dit"][0], by_expert["video_dit_2"][0])


def _load_part(model: nn.Module, part: _Part) -> list[str]:
    """Inject the part's layers (grouped by component, rank and alpha) and copy its tensors."""
    weights, present = part.weights, set(dict(lora_layers(model)))
    clash = [m for m in part.modules if m in present]
    if clash:
        raise LoraError(f"{weights.source}: layers {clash[:3]} already hold an unmerged (gated) LoRA")
    buckets: dict[tuple[str, int, float], list[str]] = {}
    for m in part.modules:
        comp, _, rel = m.partition(".")
        buckets.setdefault((comp, weights.rank_of(m), weights.alphas[m]), []).append(rel)
    for (comp, rank, alpha), rels in buckets.items():
        inject_modules(model, comp, rels, rank, alpha)
    layers = dict(lora_layers(model))
    for m in part.modules:
        layer = layers[m]
        for ab in ("A", "B"):
            target = getattr(layer, f"lora_{ab}")[ADAPTER].weight
            tensor = weights.tensors[f"{m}.lora_{ab}.weight"]
            if target.shape != tensor.shape:
                raise LoraError(
                    f"{weights.source}: {m}.lora_{ab} has shape {tuple(tensor.shape)}, model wants {tuple(target.shape)}"
                )
            with torch.no_grad():
                target.copy_(tensor.to(target.dtype))
    set_layer_strengths(model, {m: part.entry.strength_of(m) for m in part.modules})
    if part.gate is not None:
        gate_lora_layers(model, {m: part.gate for m in part.modules if lora_group(m) in SHARED_GROUPS})
    return part.modules


def _load_components(model: nn.Module, weights: LoraWeights) -> list[str]:
    """Load the fully fine-tuned components a LoRA file was trained with (its ``full_finetune`` metadata)."""
    from mova_train.models.checkpoint import load_component_into

    names = []
    for comp, rel in (weights.meta.full_finetune if weights.meta else {}).items():
        folder = weights.source.parent / rel
        if getattr(model, comp, None) is None:
            raise LoraError(
                f"{weights.source}: trained with {comp} fully fine-tuned, which this model does not hold"
            )
        load_component_into(getattr(model, comp), folder, comp)
        names.append(comp)
    return names


def apply_loras(
    model: nn.Module, loras: Sequence[Mapping[str, Any] | str | Path], merge: bool = False
) -> list[dict[str, Any]]:
    """Load LoRA adapters into ``model`` (see the module docstring).

    Args:
        model: the denoiser (a ``MovaDualTower``) without LoRA layers.
        loras: adapter entries.
        merge: merge into the base weights (no per-step LoRA cost); gated layers stay unmerged.

    Returns:
        one record per entry: ``path``, ``sha256_16``, ``strength``, ``groups``, ``format``, ``rank``, ``alpha``,
        ``merged``, ``layers``, ``experts``, ``gated_to``, ``note``, ``components``.
    """
    entries = [AdapterEntry.parse(e) for e in loras]
    fingerprints = component_fingerprints(model)
    parts = []
    for entry in entries:
        weights = read_adapter(entry, model)
        check_base(weights, fingerprints, entry.allow_other_base)
        parts.append(_select(model, entry, weights))
    _find_pairs(parts)
    seen: set[str] = set()
    overlap = False
    for part in parts:
        overlap |= bool(seen & set(part.modules))
        seen |= set(part.modules)
    merge_each = merge or overlap
    infos = []
    for part in parts:
        components = _load_components(model, part.weights)
        loaded = _load_part(model, part)
        if merge_each:
            merge_lora(model, unload=True)
        ranks = sorted({part.weights.rank_of(m) for m in loaded})
        alphas = sorted({part.weights.alphas[m] for m in loaded})
        infos.append(
            {
                "path": str(part.entry.path),
                "sha256_16": file_fingerprint(part.entry.path),
                "strength": part.entry.strength,
                "groups": dict(part.entry.groups),
                "format": part.weights.format,
                "rank": ranks[0] if len(ranks) == 1 else ranks,
                "alpha": alphas[0] if len(alphas) == 1 else alphas,
                "merged": merge_each,
                "layers": len(loaded),
                "experts": part.weights.trained_experts,
                "gated_to": list(part.gate) if part.gate else None,
                "note": part.note,
                "components": components,
            }
        )
        log.info(
            "LoRA %s: %d layers%s%s",
            part.entry.path,
            len(loaded),
            f", shared groups only with {list(part.gate)}" if part.gate else "",
            f" ({part.note})" if part.note else "",
        )
    return infos


def load_lora(path: str | Path, model: nn.Module, strength: float = 1.0, **entry: Any) -> LoraSpec:
    """Load one of our LoRA files into ``model``.

    A model without LoRA layers gets them injected (:func:`apply_loras`); into a model that has LoRA layers
    (e.g. a training module) the tensors are copied strictly: every file tensor must land on a LoRA parameter
    of the same shape and every LoRA parameter must be in the file.

    Returns:
        the spec of the file (rank, alpha, the targets it holds).
    """
    weights = read_lora(path)
    meta = weights.meta
    assert meta is not None
    spec = meta.spec()
    if not any(True for _ in lora_layers(model)):
        apply_loras(model, [{"path": path, "strength": strength, **entry}])
        return spec
    params = {
        n.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(f".lora_B.{ADAPTER}.", ".lora_B."): p
        for n, p in model.named_parameters()
        if ".lora_A." in n or ".lora_B." in n
    }
    missing = sorted(set(params) - set(weights.tensors))
    unexpected = sorted(set(weights.tensors) - set(params))
    if missing or unexpected:
        raise LoraError(
            f"{path}: LoRA keys do not match the model: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]}); load it into a model with the same "
            f"components/targets (file targets: {meta.targets})"
        )
    for key, p in params.items():
        t = weights.tensors[key]
        if t.shape != p.shape:
            raise LoraError(f"{path}: {key} has shape {tuple(t.shape)}, the model expects {tuple(p.shape)}")
        with torch.no_grad():
            p.copy_(t.to(p.dtype))
    set_layer_strengths(model, {n: strength for n, _ in lora_layers(model)})
    return spec
