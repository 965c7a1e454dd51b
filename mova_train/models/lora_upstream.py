"""Load upstream LoRA files for inference (mova_spec.md §9.1-9.2), and pick the right loader for a path.

Upstream writes ``<dir>/lora_weights.pt`` and ``<dir>/lora_config.pt`` in two incompatible layouts:

* accelerate trainer: a flat dict ``{"video_dit.blocks.0.self_attn.q.lora_A.weight": [r, in], ...}`` (optionally
  ``...lora_A.default.weight``) and a config ``{"rank", "alpha", "target_modules"}``;
* low-resource trainer: ``{"lora_state_dict": {"video_dit.blocks.0.self_attn.q.lora_A": [r, in], ...}, "rank",
  "alpha", ...}``.

Both are read here with ``torch.load(weights_only=True)``. The layers to wrap are taken from the keys themselves
(exact module paths), the rank from the tensors (upstream's saved "rank" can be a class-name string, pitfall 1),
and alpha from the config (default: alpha = rank, i.e. scaling 1, with a warning). An empty file (upstream's
single-GPU accelerate bug, pitfall 1) is an error rather than a silent no-op.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mova_train.models.lora import (
    COMPONENTS,
    LoraError,
    LoraSpec,
    inject_lora,
    load_lora,
    lora_state_dict,
    merge_lora,
)

logger = logging.getLogger(__name__)

__all__ = ["apply_loras", "export_upstream", "file_fingerprint", "load_upstream_lora", "read_upstream_lora"]

_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?(?:\.weight)?$")


def _load_pt(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - surface any unpickling failure with the file name
        raise LoraError(f"{path}: cannot be read with torch.load(weights_only=True): {err}") from err


def read_upstream_lora(path: str | Path) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], float | None]:
    """Read an upstream LoRA folder (or its ``lora_weights.pt``).

    Returns:
        (``{module path: (A [r, in], B [out, r])}``, alpha or None when no config gives one).
    """
    path = Path(path)
    weights_file = path / "lora_weights.pt" if path.is_dir() else path
    if not weights_file.is_file():
        raise LoraError(f"upstream LoRA: {weights_file} not found (expected <dir>/lora_weights.pt)")
    raw = _load_pt(weights_file)
    alpha: float | None = None
    if isinstance(raw, dict) and "lora_state_dict" in raw:  # low-resource layout
        alpha = raw.get("alpha")
        raw = raw["lora_state_dict"]
    config_file = weights_file.with_name("lora_config.pt")
    if config_file.is_file():
        config = _load_pt(config_file)
        if isinstance(config, dict) and alpha is None:
            alpha = config.get("alpha")
    if not isinstance(raw, dict) or not raw:
        raise LoraError(
            f"{weights_file}: holds no LoRA tensors (upstream's single-GPU accelerate trainer saves an empty "
            f"file, spec §13.2 pitfall 1); use a file written by the FSDP path or by mova_train"
        )
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in raw.items():
        match = _KEY.match(key)
        if match is None or not isinstance(tensor, torch.Tensor):
            raise LoraError(f"{weights_file}: unexpected key {key!r} (expected '<module>.lora_A[.weight]')")
        pairs.setdefault(match["module"], {})[match["ab"]] = tensor
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for module, ab in pairs.items():
        if set(ab) != {"A", "B"}:
            raise LoraError(f"{weights_file}: module {module} has only lora_{''.join(ab)}")
        out[module] = (ab["A"], ab["B"])
    if alpha is not None and not isinstance(alpha, (int, float)):
        logger.warning("%s: alpha %r is not a number; using alpha = rank", weights_file, alpha)
        alpha = None
    return out, (None if alpha is None else float(alpha))


def load_upstream_lora(
    path: str | Path, model: nn.Module, strength: float = 1.0, alpha: float | None = None
) -> LoraSpec:
    """Inject LoRA layers for the modules an upstream file names and copy its tensors.

    Args:
        path: Upstream LoRA folder (with ``lora_weights.pt``) or the ``.pt`` file.
        model: The `MovaDualTower` (without LoRA layers).
        strength: Multiplies the scaling (upstream ``--lora_scale``).
        alpha: Overrides the file's alpha (upstream ``--lora_alpha``).

    Returns:
        The spec that was injected.
    """
    pairs, file_alpha = read_upstream_lora(path)
    ranks = {a.shape[0] for a, _ in pairs.values()}
    if len(ranks) != 1:
        raise LoraError(f"{path}: LoRA ranks differ across layers ({sorted(ranks)})")
    rank = ranks.pop()
    if alpha is None:
        alpha = file_alpha
    if alpha is None:
        logger.warning(
            "%s: no alpha in lora_config.pt; using alpha = rank = %d (upstream default 16/16)", path, rank
        )
        alpha = float(rank)
    components: dict[str, list[str]] = {}
    for module in pairs:
        comp, _, rest = module.partition(".")
        if comp not in COMPONENTS or not rest:
            raise LoraError(f"{path}: module {module!r} is not under one of {COMPONENTS}")
        components.setdefault(comp, []).append(rest)
    spec = LoraSpec(rank=rank, alpha=float(alpha), components=components)
    inject_lora(model, spec)
    params = dict(model.named_parameters())
    for module, (a, b) in pairs.items():
        for suffix, tensor in (("lora_A", a), ("lora_B", b)):
            name = f"{module}.{suffix}.default.weight"
            if name not in params:
                raise LoraError(f"{path}: no LoRA parameter {name} after injection")
            target = params[name]
            if target.shape != tensor.shape:
                raise LoraError(
                    f"{path}: {module}.{suffix} has shape {tuple(tensor.shape)}, model wants {tuple(target.shape)}"
                )
            with torch.no_grad():
                target.copy_(tensor.to(target.dtype))
    from mova_train.models.lora import _lora_layers

    for _, layer in _lora_layers(model):
        layer.set_scale("default", strength)
    logger.info(
        "upstream LoRA %s: %d layers, rank %d, alpha %g, strength %g", path, len(pairs), rank, alpha, strength
    )
    return spec


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


def apply_loras(model: nn.Module, loras: list[dict[str, Any]], merge: bool = False) -> list[dict[str, Any]]:
    """Load LoRA adapters into ``model`` (our ``.safetensors`` or an upstream folder / ``.pt``).

    Several adapters are stacked by merging each one into the base weights before loading the next (``merge``
    is forced when more than one is given). With one adapter and ``merge=False`` the LoRA layers stay separate
    (the strength can still be changed with peft's ``set_scale``).

    Args:
        model: The denoiser.
        loras: ``[{"path": ..., "strength": 1.0, "alpha": None}, ...]``.
        merge: Merge into the base weights (faster sampling, no LoRA overhead per step).

    Returns:
        Fingerprints ``[{"path", "sha256_16", "strength", "format", "rank", "alpha", "merged"}, ...]``.
    """
    infos: list[dict[str, Any]] = []
    merge_each = merge or len(loras) > 1
    for entry in loras:
        path = Path(str(entry["path"])).expanduser()
        strength = float(entry.get("strength", 1.0))
        if not path.exists():
            raise LoraError(f"LoRA {path} does not exist; fix lora.paths / predict LoRA config")
        if path.suffix == ".safetensors":
            spec, fmt = load_lora(path, model, strength=strength), "mova_lora"
        else:
            spec, fmt = (
                load_upstream_lora(path, model, strength=strength, alpha=entry.get("alpha")),
                "upstream",
            )
        if merge_each:
            merge_lora(model, unload=True)
        infos.append(
            {
                "path": str(path),
                "sha256_16": file_fingerprint(path),
                "strength": strength,
                "format": fmt,
                "rank": spec.rank,
                "alpha": spec.alpha,
                "merged": merge_each,
            }
        )
    return infos


def export_upstream(path_dir: str | Path, model: nn.Module, spec: LoraSpec) -> Path:
    """Write upstream's LoRA inference files (``lora_weights.pt`` flat dict, ``lora_config.pt``).

    Upstream's loader injects LoRA with its accelerate-style targets (attention + FFN + bridge) and copies
    tensors by key; layers absent from the file keep B = 0, so a narrower spec loads with the same effect.
    """
    out = Path(path_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.to("cpu").clone().contiguous() for k, v in lora_state_dict(model).items()}
    config = {"rank": spec.rank, "alpha": spec.alpha, "target_modules": list(spec.components or {})}
    for name, obj in (("lora_weights.pt", weights), ("lora_config.pt", config)):
        tmp = out / (name + ".tmp")
        torch.save(obj, tmp)
        tmp.replace(out / name)
    return out
