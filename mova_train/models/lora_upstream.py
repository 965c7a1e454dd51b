"""Upstream's LoRA files (docs/model.md §9.1-9.2): read them for inference, write them from our LoRA.

Upstream writes ``<dir>/lora_weights.pt`` and ``<dir>/lora_config.pt`` in two incompatible layouts:

* accelerate trainer: a flat dict ``{"video_dit.blocks.0.self_attn.q.lora_A.weight": [r, in], ...}`` (optionally
  ``...lora_A.default.weight``) and a config ``{"rank", "alpha", "target_modules"}``;
* low-resource trainer: ``{"lora_state_dict": {"video_dit.blocks.0.self_attn.q.lora_A": [r, in], ...}, "rank",
  "alpha", ...}``.

Both are read with ``torch.load(weights_only=True)``. The layers come from the keys themselves (exact module
paths) and the rank from the tensors. Alpha comes from the config only when the config can be trusted: its
``rank`` must be the tensors' rank. Upstream's FSDP saver always writes ``{"rank": 16, "alpha": 16.0}`` and its
single-GPU saver writes a class name as the rank, so a file trained at r4 / alpha 8 carries a config that
would apply it at the wrong scale: such a file is refused unless the adapter entry gives ``alpha`` itself.
Without any config upstream applies alpha = rank (scaling 1); so do we, with a warning. An empty file
(upstream's single-GPU accelerate bug, pitfall 1) is an error rather than a silent no-op.

Export (:func:`export_upstream`) writes the true rank and alpha. Upstream's loader (``MOVALoRA.load_lora`` in
``mova/diffusion/pipelines/mova_lora.py`` -> ``inject_lora_to_model`` in
``mova/engine/trainer/accelerate/lora_utils.py``) wraps, inside each component named by ``target_modules``,
every ``nn.Linear`` whose path relative to the component matches ``.*{p}.*`` for a ``p`` in
:data:`UPSTREAM_TARGETS` and no ``.*{x}.*`` for ``x`` in :data:`UPSTREAM_EXCLUDES`, then copies tensors by key.
LoRA layers outside that set (``head.head``, ``time_embedding.0``, ``text_embedding.0``, ...) would be dropped
silently by upstream: they are refused, or dropped with a warning with ``drop_unsupported=True``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mova_train.models.files import unique_tmp
from mova_train.models.lora import COMPONENTS, LoraError
from mova_train.models.lora_file import LoraExportData, LoraWeights, module_of

logger = logging.getLogger(__name__)

__all__ = [
    "UPSTREAM_EXCLUDES",
    "UPSTREAM_TARGETS",
    "export_upstream",
    "read_upstream_lora",
    "upstream_injects",
    "write_upstream",
]

UPSTREAM_TARGETS = ("q", "k", "v", "o", "to_q", "to_k", "to_v", "proj")
"""``target_layer_names`` of upstream's ``MOVALoRA._inject_lora_layers``."""
UPSTREAM_EXCLUDES = ("time_projection", "time_embedding")
"""Default ``exclude_modules`` of upstream's ``inject_lora_to_model``."""
UPSTREAM_DEFAULT_CONFIG = {"rank": 16, "alpha": 16.0}

_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.default)?(?:\.weight)?$")


def upstream_injects(module: str) -> bool:
    """Whether upstream's loader wraps the layer at ``<component>.<path>`` (see the module docstring)."""
    comp, _, rel = module.partition(".")
    if comp not in COMPONENTS:
        return False
    if any(re.match(f".*{x}.*", rel) for x in UPSTREAM_EXCLUDES):
        return False
    return any(re.match(f".*{p}.*", rel) for p in UPSTREAM_TARGETS)


def _load_pt(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - surface any unpickling failure with the file name
        raise LoraError(f"{path}: cannot be read with torch.load(weights_only=True): {err}") from err


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def read_upstream_lora(path: str | Path, alpha: float | None = None) -> LoraWeights:
    """Read an upstream LoRA folder (or its ``lora_weights.pt``).

    Args:
        path: the folder holding ``lora_weights.pt`` (and usually ``lora_config.pt``) or the ``.pt`` file.
        alpha: the alpha it was trained with (overrides the file's; needed when its config is untrustworthy).

    Returns:
        the LoRA in our key layout, one alpha for every layer.

    Raises:
        LoraError: unreadable or empty file, odd keys, ranks that differ across layers, or a config whose rank
            disagrees with the tensors' (without ``alpha``).
    """
    path = Path(path)
    weights_file = path / "lora_weights.pt" if path.is_dir() else path
    if not weights_file.is_file():
        raise LoraError(f"upstream LoRA: {weights_file} not found (expected <dir>/lora_weights.pt)")
    raw = _load_pt(weights_file)
    config: dict[str, Any] | None = None
    if isinstance(raw, dict) and "lora_state_dict" in raw:  # low-resource layout: settings beside the tensors
        config = {"rank": raw.get("rank"), "alpha": raw.get("alpha"), "source": weights_file.name}
        raw = raw["lora_state_dict"]
    config_file = weights_file.with_name("lora_config.pt")
    if config is None and config_file.is_file():
        loaded = _load_pt(config_file)
        if isinstance(loaded, dict):
            config = {"rank": loaded.get("rank"), "alpha": loaded.get("alpha"), "source": config_file.name}
    if not isinstance(raw, dict) or not raw:
        raise LoraError(
            f"{weights_file}: holds no LoRA tensors (upstream's single-GPU accelerate trainer saves an empty "
            f"file, docs/model.md §13.2 pitfall 1); use a file written by the FSDP path or by mova_train"
        )
    tensors: dict[str, torch.Tensor] = {}
    for key, tensor in raw.items():
        match = _KEY.match(key)
        if match is None or not isinstance(tensor, torch.Tensor):
            raise LoraError(f"{weights_file}: unexpected key {key!r} (expected '<module>.lora_A[.weight]')")
        tensors[f"{match['module']}.lora_{match['ab']}.weight"] = tensor
    modules = list(dict.fromkeys(module_of(k) for k in tensors))
    for module in modules:
        missing = [ab for ab in "AB" if f"{module}.lora_{ab}.weight" not in tensors]
        if missing:
            raise LoraError(f"{weights_file}: module {module} has no lora_{missing[0]}")
        if module.partition(".")[0] not in COMPONENTS:
            raise LoraError(f"{weights_file}: module {module!r} is not under one of {COMPONENTS}")
    ranks = {int(tensors[f"{m}.lora_A.weight"].shape[0]) for m in modules}
    if len(ranks) != 1:
        raise LoraError(f"{weights_file}: LoRA ranks differ across layers ({sorted(ranks)})")
    rank = ranks.pop()
    alpha = _trusted_alpha(weights_file, rank, config, alpha)
    return LoraWeights(tensors, {m: alpha for m in modules}, path, "upstream")


def _trusted_alpha(
    weights_file: Path, rank: int, config: dict[str, Any] | None, alpha: float | None
) -> float:
    if alpha is not None:
        return float(alpha)
    if config is None:
        logger.warning(
            "%s: no lora_config.pt; using alpha = rank = %d (scaling 1, what upstream's loader applies then); "
            "give the trained alpha with {path: ..., alpha: A}",
            weights_file,
            rank,
        )
        return float(rank)
    where = weights_file.with_name(config["source"])
    cfg_rank, cfg_alpha = config.get("rank"), config.get("alpha")
    if not _is_number(cfg_rank) or int(cfg_rank) != rank or not _is_number(cfg_alpha):
        raise LoraError(
            f"{where}: says rank {cfg_rank!r} / alpha {cfg_alpha!r} but the tensors have rank {rank}: the config "
            f"cannot be trusted (upstream's FSDP saver always writes rank 16 / alpha 16), so its alpha would apply "
            f"the LoRA at the wrong scale; give the alpha it was trained with: "
            f"lora.adapters=[{{path: {weights_file.parent}, alpha: <trained alpha>}}]"
        )
    return float(cfg_alpha)


def _supported(modules: Sequence[str], drop_unsupported: bool, where: Path) -> set[str]:
    unsupported = [m for m in modules if not upstream_injects(m)]
    if unsupported and not drop_unsupported:
        raise LoraError(
            f"export_upstream to {where}: upstream's loader does not inject LoRA into {len(unsupported)} of these "
            f"layers (e.g. {unsupported[:4]}; it wraps only nn.Linear paths containing one of {UPSTREAM_TARGETS} "
            f"and none of {UPSTREAM_EXCLUDES}), so they would be dropped silently; train without them, or pass "
            f"drop_unsupported=True to drop them"
        )
    if unsupported:
        logger.warning(
            "export_upstream to %s: dropped %d layers upstream does not inject: %s",
            where,
            len(unsupported),
            unsupported,
        )
    return set(unsupported)


def export_upstream(
    path_dir: str | Path,
    tensors: dict[str, torch.Tensor],
    rank: int,
    alpha: float,
    drop_unsupported: bool = False,
) -> Path:
    """Write upstream's LoRA inference files (``lora_weights.pt`` flat dict, ``lora_config.pt``).

    Args:
        path_dir: the folder (created).
        tensors: whole CPU LoRA tensors in our key layout (e.g. :func:`~mova_train.models.lora.lora_state_dict`).
        rank: the LoRA rank (written to ``lora_config.pt``; upstream builds its layers with it).
        alpha: the LoRA alpha (upstream's scaling is ``alpha / rank`` of the config).
        drop_unsupported: drop (with a warning) instead of refusing layers upstream does not inject.

    Returns:
        the folder.
    """
    out = Path(path_dir)
    modules = list(dict.fromkeys(module_of(k) for k in tensors))
    ranks = {int(tensors[f"{m}.lora_A.weight"].shape[0]) for m in modules}
    if ranks != {int(rank)}:
        raise LoraError(
            f"export_upstream: tensors have rank(s) {sorted(ranks)}, not {rank}; upstream needs one rank"
        )
    dropped = _supported(modules, drop_unsupported, out)
    weights = {k: v.to("cpu").clone().contiguous() for k, v in tensors.items() if module_of(k) not in dropped}
    components = sorted({m.partition(".")[0] for m in modules if m not in dropped}, key=COMPONENTS.index)
    config = {"rank": int(rank), "alpha": float(alpha), "target_modules": components}
    out.mkdir(parents=True, exist_ok=True)
    for name, obj in (("lora_weights.pt", weights), ("lora_config.pt", config)):
        tmp = unique_tmp(out / name)
        torch.save(obj, tmp)
        tmp.replace(out / name)
    return out


def write_upstream(folder: Path, export: LoraExportData, drop_unsupported: bool = False) -> list[Path]:
    """`LoraExport` writer: upstream's files in ``<folder>/upstream``."""
    if export.spec is None or not export.tensors:
        return []
    out = export_upstream(
        folder / "upstream",
        export.tensors,
        export.spec.rank,
        export.spec.alpha,
        drop_unsupported=drop_unsupported,
    )
    return [out / "lora_weights.pt", out / "lora_config.pt"]
