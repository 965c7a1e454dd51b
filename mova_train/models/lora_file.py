"""Our LoRA file: one safetensors file with keys ``<component>.<path>.lora_A.weight`` / ``.lora_B.weight``.

Metadata (all strings; JSON where structured), format ``mova_lora/2``:

* ``rank``, ``alpha``, ``dropout``; ``targets``: the patterns of the components that received LoRA;
* ``groups``: group -> module paths (``video``, ``audio``, ``bridge_a2v``, ``bridge_v2a``; see ``lora.py``);
* ``experts``: the video experts the run loaded and trained; ``shared_experts``: the experts the shared
  (audio/bridge) adapters ran with in training, over the whole ``init_from`` chain; ``shared_trained_on``:
  one entry per run in that chain, ``{"experts", "timesteps": [t_min, t_max], "trained_groups"}``;
* ``frozen_groups``; ``init_from``: ``{"path", "checksum", "shared_checksum"}`` of the warm-start file;
* ``base_fingerprint`` and ``base_fingerprints`` (per component, checked at load: a LoRA trained on another
  base is refused unless ``allow_other_base``);
* ``checksum`` (sha256 of every tensor's name, dtype, shape and bytes; verified at load) and
  ``shared_checksum`` (the same over the shared groups only: a pair of single-expert files shares one set when
  these agree, see ``lora_apply``);
* ``full_finetune``: component -> folder (relative to the file) holding its fully fine-tuned weights.

``mova_lora/1`` files (no groups, provenance or checksum) are still read.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from mova_train.models.files import unique_tmp
from mova_train.models.lora import (
    COMPONENTS,
    EXPERTS,
    SHARED_GROUPS,
    LoraError,
    LoraSpec,
    lora_group,
    lora_state_dict,
)

log = logging.getLogger(__name__)

__all__ = [
    "LORA_FORMAT",
    "LoraExportData",
    "LoraMeta",
    "LoraWeights",
    "build_meta",
    "read_lora",
    "read_lora_metadata",
    "save_lora",
    "tensor_checksum",
    "warm_start_lora",
]

LORA_FORMAT = "mova_lora/2"
_READABLE = ("mova_lora/1", LORA_FORMAT)


def tensor_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and raw bytes (sorted by name)."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def module_of(key: str) -> str:
    """``video_dit.blocks.0.self_attn.q.lora_A.weight`` -> ``video_dit.blocks.0.self_attn.q``."""
    for tag in (".lora_A.", ".lora_B."):
        if tag in key:
            return key.split(tag)[0]
    raise LoraError(f"{key!r} is not a LoRA tensor key ('<module>.lora_A.weight' / '<module>.lora_B.weight')")


def shared_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors of the shared groups (audio tower and bridge)."""
    return {k: v for k, v in tensors.items() if lora_group(module_of(k)) in SHARED_GROUPS}


@dataclass
class LoraMeta:
    """What a LoRA file says about itself (see the module docstring)."""

    rank: int
    alpha: float
    dropout: float = 0.0
    targets: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    experts: list[str] = field(default_factory=list)
    shared_experts: list[str] = field(default_factory=list)
    shared_trained_on: list[dict[str, Any]] = field(default_factory=list)
    frozen_groups: list[str] = field(default_factory=list)
    init_from: dict[str, str] | None = None
    base_fingerprint: str = ""
    base_fingerprints: dict[str, str] = field(default_factory=dict)
    checksum: str = ""
    shared_checksum: str = ""
    full_finetune: dict[str, str] = field(default_factory=dict)
    format: str = LORA_FORMAT

    _JSON = (
        "targets",
        "groups",
        "experts",
        "shared_experts",
        "shared_trained_on",
        "frozen_groups",
        "init_from",
        "base_fingerprints",
        "full_finetune",
    )

    def spec(self) -> LoraSpec:
        """The spec of the file: rank, alpha, dropout and the targets it holds."""
        return LoraSpec(rank=self.rank, alpha=self.alpha, dropout=self.dropout, components=self.targets)

    def to_metadata(self) -> dict[str, str]:
        """The safetensors metadata (strings)."""
        out: dict[str, str] = {}
        for key, value in asdict(self).items():
            if key in self._JSON:
                out[key] = json.dumps(value, sort_keys=True)
            elif isinstance(value, float):
                out[key] = repr(value)
            else:
                out[key] = str(value)
        return out

    @classmethod
    def from_metadata(cls, meta: Mapping[str, str], path: str | Path) -> LoraMeta:
        """Parse a file's metadata; a foreign or broken header names the file."""
        fmt = meta.get("format")
        if fmt not in _READABLE:
            raise LoraError(
                f"{path}: not a mova_train LoRA file (metadata format={fmt!r}, expected {LORA_FORMAT})"
            )
        try:
            kwargs: dict[str, Any] = {
                "rank": int(meta["rank"]),
                "alpha": float(meta["alpha"]),
                "dropout": float(meta.get("dropout", "0.0")),
                "base_fingerprint": meta.get("base_fingerprint", ""),
                "checksum": meta.get("checksum", ""),
                "shared_checksum": meta.get("shared_checksum", ""),
                "format": fmt,
            }
            for key in cls._JSON:
                if key in meta:
                    kwargs[key] = json.loads(meta[key])
        except (KeyError, ValueError) as err:
            raise LoraError(f"{path}: broken LoRA metadata ({type(err).__name__}: {err})") from err
        return cls(**kwargs)


@dataclass
class LoraWeights:
    """A LoRA in memory, in our key layout, whatever file it came from.

    Attributes:
        tensors: ``<component>.<path>.lora_A.weight`` ``[r, in]`` / ``lora_B.weight`` ``[out, r]``.
        alphas: module path -> alpha (scaling = alpha / rank of that module).
        dropout: LoRA dropout (training only).
        source: the file (or folder) it was read from.
        format: ``mova_lora``, ``upstream``, ...
        meta: our metadata (None for foreign formats).
    """

    tensors: dict[str, torch.Tensor]
    alphas: dict[str, float]
    source: Path
    format: str
    dropout: float = 0.0
    meta: LoraMeta | None = None

    @property
    def modules(self) -> list[str]:
        """Module paths holding LoRA, in key order."""
        return list(dict.fromkeys(module_of(k) for k in self.tensors))

    def rank_of(self, module: str) -> int:
        """Rank r of one module (rows of its A)."""
        return int(self.tensors[f"{module}.lora_A.weight"].shape[0])

    @property
    def video_experts(self) -> list[str]:
        """Video experts with tensors in this file."""
        return [e for e in EXPERTS if any(m.split(".", 1)[0] == e for m in self.modules)]

    @property
    def trained_experts(self) -> list[str]:
        """The experts the run trained (metadata), else the ones with video tensors, else both."""
        if self.meta is not None and self.meta.experts:
            return list(self.meta.experts)
        return self.video_experts or list(EXPERTS)

    @property
    def shared_experts(self) -> list[str]:
        """Experts the shared adapters ran with in training (cumulative over ``init_from``)."""
        if self.meta is not None and self.meta.shared_experts:
            return list(self.meta.shared_experts)
        return self.trained_experts


@dataclass
class LoraExportData:
    """Everything a writer needs to export a run's LoRA (built on rank 0 after a collective gather).

    Attributes:
        tensors: whole CPU LoRA tensors in our key layout (empty without LoRA).
        spec: the run's LoRA spec (None without LoRA).
        meta: the metadata of ``lora.safetensors`` (None without LoRA).
        components: fully fine-tuned component -> whole CPU state dict under release key names.
        component_configs: component -> its config dataclass (for ``config.json``).
    """

    tensors: dict[str, torch.Tensor]
    spec: LoraSpec | None
    meta: LoraMeta | None
    components: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    component_configs: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------------ writing


def build_meta(
    tensors: Mapping[str, torch.Tensor],
    spec: LoraSpec,
    base_fingerprint: str = "",
    base_fingerprints: Mapping[str, str] | None = None,
    experts: Sequence[str] | None = None,
    timesteps: Sequence[float] | None = None,
    full_finetune: Mapping[str, str] | None = None,
) -> LoraMeta:
    """Metadata for ``tensors`` trained with ``spec``.

    Args:
        tensors: the LoRA tensors (our key layout).
        spec: the run's spec (rank, alpha, targets, ``init_from``, ``freeze_groups``).
        base_fingerprint: :func:`~mova_train.models.lora.base_fingerprint` of the base.
        base_fingerprints: per-component fingerprints.
        experts: the video experts the run trained (default: those with tensors, else both).
        timesteps: ``[t_min, t_max]`` the run trained in (default ``[0, 1000]``).
        full_finetune: fully fine-tuned component -> folder relative to the file.
    """
    modules = list(dict.fromkeys(module_of(k) for k in tensors))
    comps = {m.split(".", 1)[0] for m in modules}
    groups: dict[str, list[str]] = {}
    for m in modules:
        groups.setdefault(lora_group(m), []).append(m)
    if experts is None:
        experts = [e for e in EXPERTS if e in comps] or list(EXPERTS)
    shared = shared_tensors(tensors)
    trained_shared = sorted({lora_group(module_of(k)) for k in shared} - set(spec.freeze_groups))
    run = {
        "experts": sorted(experts),
        "timesteps": [float(t) for t in (timesteps or (0.0, 1000.0))],
        "trained_groups": trained_shared,
    }
    shared_experts, lineage, init = set(experts) if shared else set(), [run], None
    if spec.init_from:
        parent = read_lora(spec.init_from, load_tensors=False)
        init = {
            "path": str(spec.init_from),
            "checksum": parent.meta.checksum if parent.meta else "",
            "shared_checksum": parent.meta.shared_checksum if parent.meta else "",
        }
        if shared:
            shared_experts |= set(parent.shared_experts)
            lineage = [*(parent.meta.shared_trained_on if parent.meta else []), run]
    return LoraMeta(
        rank=spec.rank,
        alpha=spec.alpha,
        dropout=spec.dropout,
        targets={c: list(p) for c, p in (spec.components or {}).items() if c in comps},
        groups=groups,
        experts=sorted(experts),
        shared_experts=sorted(shared_experts),
        shared_trained_on=lineage if shared else [],
        frozen_groups=list(spec.freeze_groups),
        init_from=init,
        base_fingerprint=base_fingerprint,
        base_fingerprints=dict(base_fingerprints or {}),
        checksum=tensor_checksum(tensors),
        shared_checksum=tensor_checksum(shared) if shared else "",
        full_finetune=dict(full_finetune or {}),
    )


def save_lora(
    path: str | Path,
    source: nn.Module | Mapping[str, torch.Tensor],
    spec: LoraSpec,
    base_fingerprint: str = "",
    meta: LoraMeta | None = None,
    atomic: bool = True,
) -> Path:
    """Write LoRA tensors and their metadata to one safetensors file.

    Args:
        path: the file.
        source: a model with LoRA layers (gathered with :func:`lora_state_dict`: under FSDP2 every rank must
            call this, and all but one should pass a mapping instead) or the tensors themselves.
        spec: the run's spec.
        base_fingerprint: identity of the base (used when ``meta`` is None).
        meta: full metadata (default: :func:`build_meta` of the tensors and spec).
        atomic: write to a temporary file unique to this save and rename.
    """
    from safetensors.torch import save_file

    tensors = lora_state_dict(source) if isinstance(source, nn.Module) else dict(source)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    if not tensors:
        raise LoraError("save_lora: the model has no LoRA parameters")
    if meta is None:
        meta = build_meta(tensors, spec, base_fingerprint)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_tmp(path) if atomic else path
    save_file(tensors, str(tmp), metadata=meta.to_metadata())
    if atomic:
        tmp.replace(path)
    return path


# ------------------------------------------------------------------------------------------------ reading


def read_lora(path: str | Path, verify: bool = True, load_tensors: bool = True) -> LoraWeights:
    """Read one of our LoRA files.

    Args:
        path: the ``.safetensors`` file.
        verify: check the tensors against the ``checksum`` written at save (files of format 2).
        load_tensors: False reads the metadata only (``tensors`` is then empty).

    Raises:
        LoraError: missing, truncated or corrupted file, foreign metadata, checksum mismatch, odd keys; the
            message names the file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise LoraError(f"LoRA {path} does not exist (expected a lora.safetensors written by mova_train)")
    tensors: dict[str, torch.Tensor] = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = LoraMeta.from_metadata(f.metadata() or {}, path)
            if load_tensors:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise LoraError(
            f"{path}: cannot be read as safetensors ({err}); the file is truncated or corrupted: "
            f"export it again or copy it anew"
        ) from err
    if load_tensors:
        for key in tensors:
            module_of(key)
            if not key.endswith((".lora_A.weight", ".lora_B.weight")):
                raise LoraError(f"{path}: unexpected key {key!r}")
        if verify and meta.checksum and tensor_checksum(tensors) != meta.checksum:
            raise LoraError(
                f"{path}: corrupted: its tensors do not match the checksum written when it was saved; export it "
                f"again from the run (lora/lora.safetensors) or copy it anew"
            )
    weights = LoraWeights(tensors, {}, path, "mova_lora", meta.dropout, meta)
    weights.alphas = {m: meta.alpha for m in weights.modules}
    return weights


def read_lora_metadata(path: str | Path) -> tuple[LoraSpec, dict[str, str]]:
    """The spec (targets actually injected) and the raw metadata of a LoRA file written by :func:`save_lora`."""
    from safetensors import safe_open

    meta = read_lora(path, load_tensors=False).meta
    assert meta is not None
    with safe_open(str(path), framework="pt") as f:
        raw = f.metadata() or {}
    return meta.spec(), raw


# ------------------------------------------------------------------------------------------------ warm start


def check_base(
    weights: LoraWeights,
    fingerprints: Mapping[str, str],
    allow_other_base: bool,
    what: str = "LoRA",
    override: str = "pass allow_other_base: true (predict: lora.adapters=[{path: ..., allow_other_base: true}])",
) -> None:
    """Refuse a LoRA trained on another base (per-component fingerprints that disagree).

    Components missing on either side are not compared; files without per-component fingerprints (format 1,
    foreign formats) pass.
    """
    saved = weights.meta.base_fingerprints if weights.meta is not None else {}
    differ = {
        c: (saved[c], fingerprints[c]) for c in saved if c in fingerprints and saved[c] != fingerprints[c]
    }
    if not differ:
        return
    detail = "; ".join(f"{c}: file {a} vs model {b}" for c, (a, b) in sorted(differ.items()))
    if allow_other_base:
        log.warning(
            "%s %s was trained on another base (%s); applied anyway (allow_other_base)",
            what,
            weights.source,
            detail,
        )
        return
    raise LoraError(
        f"{what} {weights.source} was trained on another base model ({detail}); use the base it was trained on, "
        f"or {override}"
    )


def warm_start_lora(
    model: nn.Module, spec: LoraSpec, fingerprints: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Copy the tensors of ``spec.init_from`` into the matching LoRA layers of ``model`` (already injected).

    Layers of the file that the model lacks (e.g. the other expert's video adapter) are skipped; the LoRA
    layers of the model that the file lacks keep their fresh init (B = 0).

    Returns:
        ``{"path", "copied", "groups"}``.

    Raises:
        LoraError: no matching layer, a rank that differs, or a file trained on another base.
    """
    assert spec.init_from is not None
    weights = read_lora(spec.init_from)
    check_base(
        weights,
        fingerprints or {},
        allow_other_base=spec.init_from_other_base,
        what="lora.init_from",
        override="set lora.init_from_other_base=true",
    )
    if weights.meta is not None and weights.meta.alpha / weights.meta.rank != spec.scaling:
        raise LoraError(
            f"lora.init_from={spec.init_from}: trained at alpha {weights.meta.alpha} / rank {weights.meta.rank}, "
            f"this run has lora.alpha={spec.alpha} / lora.rank={spec.rank}; set lora.alpha={weights.meta.alpha} so "
            f"the warm-started adapter keeps its scale"
        )
    params = {n: p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n}
    copied, groups = 0, set()
    for name, p in params.items():
        key = name.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B.")
        t = weights.tensors.get(key)
        if t is None:
            continue
        if t.shape != p.shape:
            raise LoraError(
                f"lora.init_from={spec.init_from}: {key} has shape {tuple(t.shape)}, this run's layer "
                f"{tuple(p.shape)} (file rank {weights.meta.rank if weights.meta else '?'}, lora.rank={spec.rank})"
            )
        with torch.no_grad():
            p.copy_(t.to(p.dtype))
        copied += 1
        groups.add(lora_group(module_of(key)))
    if not copied:
        raise LoraError(
            f"lora.init_from={spec.init_from}: none of its {len(weights.tensors)} tensors matches a LoRA layer of "
            f"this run (file targets {weights.meta.targets if weights.meta else '?'}; run components "
            f"{sorted(c for c in COMPONENTS if getattr(model, c, None) is not None)})"
        )
    log.info("LoRA warm start from %s: %d tensors (groups %s)", spec.init_from, copied, sorted(groups))
    return {"path": str(spec.init_from), "copied": copied, "groups": sorted(groups)}
