"""LoRA files in the key conventions of the tools users run, exported from and imported into our key layout.

A LoRA here is ``tensors`` in our layout (``<component>.<path>.lora_A.weight`` ``[r, in]`` / ``lora_B.weight``
``[out, r]``) plus ``alphas`` (module path -> alpha); the delta of a module is ``B @ A * alpha / r``. Every format
below is a renaming of the same tensors, copied bit for bit, so a round trip restores them exactly:

===============  =================================  ============================================  =====================
format           files                              keys per LoRA module                          alpha
===============  =================================  ============================================  =====================
``diffsynth``    ``<component>.safetensors`` each   ``<path>.lora_A.weight`` / ``lora_B``           ``<path>.alpha`` if != r
``comfyui``      ``mova_prism.safetensors``         ``diffusion_model.<Prism path>.lora_down``     ``<...>.alpha``
                                                    ``.weight`` / ``lora_up``
``comfyui_wan``  ``video_dit.safetensors``,         ``diffusion_model.<path>.lora_down.weight``    ``<...>.alpha``
                 ``video_dit_2.safetensors``        / ``lora_up``
===============  =================================  ============================================  =====================

``Prism path``: core ComfyUI's MOVA-derived dual tower (``comfy/ldm/prism/model.py``) holds video block ``i < F``
and audio block ``i`` in ``fusion_blocks.i.video_block`` / ``.audio_block`` next to the bridge conditioners
``fusion_blocks.i.a2v_conditioner`` / ``.v2a_conditioner``; video block ``i >= F`` is
``remaining_video_blocks.{i - F}``; ``F = min(video layers, audio layers)`` (30 in the release). Everything else
(``video_dit_2.*``, the towers' embeddings and heads) keeps our name.

Imports (:func:`map_foreign`, :func:`read_foreign_lora`) take those files and the variants other trainers write:
``lora_down``/``lora_up`` or ``lora_A``/``lora_B`` (with or without ``.default`` and ``.weight``), per-module
``.alpha``, the prefixes ``diffusion_model.``, ``lora_unet_`` (kohya: underscored paths) and PEFT's
``base_model.model.`` (alpha from the ``adapter_config.json`` beside the file), and our, Prism or component-less
(DiffSynth / Wan-style) module paths. Component-less tower keys need their component: the file's metadata, its
name ``<component>.safetensors`` inside a folder, or ``component`` in the adapter entry.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mova_train.models.lora import LoraError
from mova_train.models.lora_file import LoraExportData, LoraWeights
from mova_train.models.mova import COMPONENTS, EXPERTS

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "PRISM_FILE",
    "RELEASE_FUSED_LAYERS",
    "export_files",
    "fused_layers_of",
    "is_foreign",
    "linear_targets",
    "map_foreign",
    "prism_name",
    "read_foreign_lora",
    "split_modules",
    "write_export",
    "write_format",
]

FORMATS = ("diffsynth", "comfyui", "comfyui_wan")
"""Renaming export formats (``upstream`` and ``merged`` are written by other modules)."""
PRISM_FILE = "mova_prism.safetensors"
RELEASE_FUSED_LAYERS = 30
"""``min(video layers, audio layers)`` of the released model: the number of Prism ``fusion_blocks``."""
META_FORMAT = "mova_train.format"
META_COMPONENT = "mova_train.component"

_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_BRIDGE = re.compile(r"(audio_to_video|video_to_audio)_conditioners\.(\d+)\.(.+)")
_PRISM_SIDE = {"audio_to_video": "a2v", "video_to_audio": "v2a"}
_KEY = re.compile(
    r"^(?P<module>.+?)\.(?:(?P<factor>lora_A|lora_B|lora_down|lora_up)(?:\.default)?(?:\.weight)?|(?P<alpha>alpha))$"
)
_FACTOR = {"lora_A": "A", "lora_down": "A", "lora_B": "B", "lora_up": "B"}
_PREFIXES = ("base_model.model.", "diffusion_model.", "lora_unet_")


# ------------------------------------------------------------------------------------------------ Prism names


def prism_name(module: str, fused_layers: int = RELEASE_FUSED_LAYERS) -> str:
    """Core ComfyUI's Prism path of one of our module paths (``video_dit.blocks.3.ffn.0`` -> ``fusion_blocks...``).

    Raises:
        LoraError: an audio block or bridge layer at or beyond ``fused_layers`` (Prism has no place for it).
    """
    comp, _, path = module.partition(".")
    block = _BLOCK.fullmatch(path)
    if comp == "video_dit" and block:
        i, rest = int(block[1]), block[2]
        if i < fused_layers:
            return f"fusion_blocks.{i}.video_block.{rest}"
        return f"remaining_video_blocks.{i - fused_layers}.{rest}"
    if comp == "audio_dit" and block:
        if int(block[1]) >= fused_layers:
            raise LoraError(
                f"{module}: audio block {block[1]} is beyond the {fused_layers} Prism fusion blocks"
            )
        return f"fusion_blocks.{block[1]}.audio_block.{block[2]}"
    if comp == "dual_tower_bridge":
        bridge = _BRIDGE.fullmatch(path)
        if bridge is None:
            raise LoraError(f"{module}: not a bridge conditioner layer")
        if int(bridge[2]) >= fused_layers:
            raise LoraError(
                f"{module}: bridge layer {bridge[2]} is beyond the {fused_layers} Prism fusion blocks"
            )
        return f"fusion_blocks.{bridge[2]}.{_PRISM_SIDE[bridge[1]]}_conditioner.{bridge[3]}"
    if comp not in COMPONENTS or not path:
        raise LoraError(f"{module}: not under one of {COMPONENTS}")
    return module


# ------------------------------------------------------------------------------------------------ our layout


def split_modules(
    tensors: Mapping[str, torch.Tensor], source: str = "<LoRA>"
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module path -> (A ``[r, in]``, B ``[out, r]``) of tensors in our key layout.

    Raises:
        LoraError: a key that is not ``<module>.lora_A.weight`` / ``lora_B.weight``, a module with one factor only,
            or factors that are not a linear LoRA pair.
    """
    factors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None or match["factor"] not in ("lora_A", "lora_B") or not key.endswith(".weight"):
            raise LoraError(
                f"{source}: unexpected key {key!r} (expected '<module>.lora_A.weight' / 'lora_B.weight')"
            )
        factors.setdefault(match["module"], {})[_FACTOR[match["factor"]]] = tensor
    return _pairs(factors, source)


def _pairs(
    factors: Mapping[str, Mapping[str, torch.Tensor]], source: str
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    out = {}
    for module, ab in factors.items():
        if set(ab) != {"A", "B"}:
            raise LoraError(
                f"{source}: module {module} has only its {'down (A)' if 'A' in ab else 'up (B)'} factor"
            )
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise LoraError(
                f"{source}: module {module}: factors of shapes {tuple(a.shape)} / {tuple(b.shape)} are not a linear "
                f"LoRA pair (A [r, in], B [out, r])"
            )
        out[module] = (a, b)
    if not out:
        raise LoraError(f"{source}: holds no LoRA tensors")
    return out


# ------------------------------------------------------------------------------------------------ export


def _alpha_tensor(alpha: float) -> torch.Tensor:
    """A 0-d alpha: float32 (kohya's convention) when that holds ``alpha`` exactly, else float64."""
    single = torch.tensor(alpha, dtype=torch.float32)
    return single if float(single) == alpha else torch.tensor(alpha, dtype=torch.float64)


def export_files(
    tensors: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float],
    fmt: str,
    fused_layers: int = RELEASE_FUSED_LAYERS,
) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, str]]]:
    """The files of ``fmt``: file name -> (tensors, safetensors metadata).

    Args:
        tensors: the LoRA in our key layout.
        alphas: module path -> alpha.
        fmt: one of :data:`FORMATS`.
        fused_layers: Prism's fusion-block count (``comfyui``; see :func:`prism_name`).

    Raises:
        LoraError: unknown format, a module without a place in the format, a module without alpha, or
            ``comfyui_wan`` for a LoRA without video expert layers.
    """
    if fmt not in FORMATS:
        raise LoraError(f"unknown LoRA export format {fmt!r}; expected one of {FORMATS}")
    pairs = split_modules(tensors)
    missing = [m for m in pairs if m not in alphas]
    if missing:
        raise LoraError(f"export {fmt}: no alpha for {missing[:3]}")
    meta = {META_FORMAT: fmt}
    if fmt == "comfyui":
        out: dict[str, torch.Tensor] = {}
        for module, (a, b) in pairs.items():
            name = "diffusion_model." + prism_name(module, fused_layers)
            out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"] = a, b
            out[f"{name}.alpha"] = _alpha_tensor(alphas[module])
        return {PRISM_FILE: (out, {**meta, "mova_train.fused_layers": str(fused_layers)})}
    comps = list(dict.fromkeys(m.partition(".")[0] for m in pairs))
    if fmt == "comfyui_wan":
        skipped = [c for c in comps if c not in EXPERTS]
        comps = [c for c in comps if c in EXPERTS]
        if not comps:
            raise LoraError(
                f"comfyui_wan: the LoRA has no video expert layers (components {skipped}); a Wan model takes only "
                f"video_dit / video_dit_2 adapters: export the dual tower with --format comfyui"
            )
        if skipped:
            log.warning(
                "comfyui_wan: %s have no place in a Wan model and are left out (use comfyui)", skipped
            )
    files = {}
    for comp in comps:
        out = {}
        for module, (a, b) in pairs.items():
            owner, _, path = module.partition(".")
            if owner != comp:
                continue
            if fmt == "diffsynth":
                out[f"{path}.lora_A.weight"], out[f"{path}.lora_B.weight"] = a, b
                if alphas[module] != a.shape[0]:
                    out[f"{path}.alpha"] = _alpha_tensor(alphas[module])
            else:
                (
                    out[f"diffusion_model.{path}.lora_down.weight"],
                    out[f"diffusion_model.{path}.lora_up.weight"],
                ) = a, b
                out[f"diffusion_model.{path}.alpha"] = _alpha_tensor(alphas[module])
        files[f"{comp}.safetensors"] = (out, {**meta, META_COMPONENT: comp})
    return files


def write_export(
    tensors: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float],
    fmt: str,
    out_dir: str | Path,
    fused_layers: int = RELEASE_FUSED_LAYERS,
) -> list[Path]:
    """Write :func:`export_files` into ``out_dir`` (atomically; component files of an earlier export removed).

    Returns:
        the written files.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (file_tensors, meta) in export_files(tensors, alphas, fmt, fused_layers).items():
        target = out / name
        tmp = target.with_name(name + ".tmp")
        save_file(
            {k: v.detach().to("cpu").contiguous() for k, v in file_tensors.items()}, str(tmp), metadata=meta
        )
        os.replace(tmp, target)
        written.append(target)
    for stale in (out / f"{c}.safetensors" for c in COMPONENTS):
        if stale not in written and stale.is_file():
            stale.unlink()
    log.info("LoRA (%s) written to %s: %s", fmt, out, [p.name for p in written])
    return written


def write_format(
    folder: Path, export: LoraExportData, fmt: str, fused_layers: int = RELEASE_FUSED_LAYERS
) -> list[Path]:
    """``LoraExport`` writer: the run's LoRA in format ``fmt`` into ``<folder>/<fmt>/``.

    Args:
        folder: the export folder (``lora.safetensors`` is there).
        export: what the run exports.
        fmt: one of :data:`FORMATS`.
        fused_layers: Prism's fusion-block count (``comfyui``): ``min(video, audio layers)`` of the model, 30 for
            the release (a model whose towers have equal depth maps the same with any value >= that depth).
    """
    if export.spec is None or not export.tensors:
        return []
    alphas = {m: export.spec.alpha for m in split_modules(export.tensors)}
    return write_export(export.tensors, alphas, fmt, folder / fmt, fused_layers)


# ------------------------------------------------------------------------------------------------ import


def linear_targets(model: nn.Module) -> list[str]:
    """Our paths ``<component>.<path>`` of every ``nn.Linear`` of the loaded components."""
    out = []
    for comp in COMPONENTS:
        sub = getattr(model, comp, None)
        if sub is not None:
            out.extend(f"{comp}.{n}" for n, m in sub.named_modules() if isinstance(m, nn.Linear))
    return out


def fused_layers_of(model: nn.Module) -> int:
    """Prism's fusion-block count for ``model``: ``min(video layers, audio layers)``."""
    expert = model.video_dit if getattr(model, "video_dit", None) is not None else model.video_dit_2
    return min(len(expert.blocks), len(model.audio_dit.blocks))


def _aliases(targets: Sequence[str], fused_layers: int, component: str | None) -> dict[str, str]:
    """Every name a file may use for a target (ours, Prism, component-less; dotted or underscored) -> ours."""
    table: dict[str, str] = {}
    clash: set[str] = set()

    def add(alias: str, native: str) -> None:
        for form in (alias, alias.replace(".", "_")):
            if table.setdefault(form, native) != native:
                clash.add(form)

    for native in targets:
        add(native, native)
        try:
            add(prism_name(native, fused_layers), native)
        except LoraError:
            pass
        comp, _, path = native.partition(".")
        if comp in ("dual_tower_bridge", component):
            add(path, native)
    return {k: v for k, v in table.items() if k not in clash}


def _resolve(module: str, table: Mapping[str, str]) -> str | None:
    candidates = [module]
    for prefix in _PREFIXES:
        if candidates[-1].startswith(prefix):
            candidates.append(candidates[-1][len(prefix) :])
    for name in reversed(candidates):
        if name in table:
            return table[name]
    return None


def map_foreign(
    tensors: Mapping[str, torch.Tensor],
    targets: Sequence[str],
    fused_layers: int,
    component: str | None = None,
    alpha: float | None = None,
    peft_config: Mapping[str, Any] | None = None,
    source: str = "<LoRA>",
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Map a DiffSynth / ComfyUI / kohya / PEFT LoRA state dict onto our key layout.

    Args:
        tensors: the file's tensors.
        targets: our paths of the ``nn.Linear`` layers of the model it is for (:func:`linear_targets`).
        fused_layers: the model's Prism fusion-block count (:func:`fused_layers_of`).
        component: the component of component-less tower keys (DiffSynth / Wan-style files).
        alpha: overrides every alpha of the file.
        peft_config: the ``adapter_config.json`` of a PEFT file (``r``, ``lora_alpha``).
        source: the file, for messages.

    Returns:
        (tensors in our key layout, module path -> alpha). A module without alpha gets alpha = r (scale 1, what
        DiffSynth and ComfyUI apply to such files).

    Raises:
        LoraError: a key that is not a linear LoRA factor or alpha, a module the model does not have (component-less
            tower keys without ``component`` among them), a PEFT file without alpha.
    """
    table = _aliases(targets, fused_layers, component)
    factors: dict[str, dict[str, torch.Tensor]] = {}
    file_alphas: dict[str, float] = {}
    unknown, unmatched = [], []
    for key, tensor in tensors.items():
        match = _KEY.match(key)
        if match is None:
            unknown.append(key)
            continue
        native = _resolve(match["module"], table)
        if native is None:
            unmatched.append(match["module"])
        elif match["alpha"]:
            file_alphas[native] = float(tensor.item())
        else:
            factors.setdefault(native, {})[_FACTOR[match["factor"]]] = tensor
    if unknown:
        raise LoraError(
            f"{source}: {len(unknown)} keys are not linear LoRA factors or alphas (e.g. {unknown[:3]}); supported are "
            f"lora_A/lora_B, lora_down/lora_up and .alpha (no DoRA, LoHa, LoKr, conv or bias LoRA)"
        )
    if unmatched:
        unmatched = sorted(set(unmatched))
        hint = ""
        if component is None and any(_BLOCK.fullmatch(m.removeprefix("diffusion_model.")) for m in unmatched):
            hint = (
                "; the keys carry no component (a DiffSynth / Wan-style file): name it in the adapter entry "
                "({path: ..., component: video_dit | video_dit_2 | audio_dit}) or name the file <component>.safetensors"
            )
        raise LoraError(
            f"{source}: {len(unmatched)} modules are not LoRA-able layers of the loaded model (e.g. {unmatched[:3]}){hint}"
        )
    pairs = _pairs(factors, source)
    peft = any(k.startswith("base_model.model.") for k in tensors)
    if peft_config is not None:
        if peft_config.get("rank_pattern") or peft_config.get("alpha_pattern"):
            raise LoraError(f"{source}: adapter_config.json has rank_pattern / alpha_pattern; not supported")
        ranks = {a.shape[0] for a, _ in pairs.values()}
        if ranks != {int(peft_config.get("r", -1))}:
            raise LoraError(
                f"{source}: adapter_config.json says r={peft_config.get('r')}, the tensors have {sorted(ranks)}"
            )
        if alpha is None and "lora_alpha" in peft_config:
            alpha = float(peft_config["lora_alpha"])
    if alpha is None and peft and not file_alphas:
        raise LoraError(
            f"{source}: a PEFT file without its adapter_config.json has no alpha; put the config beside it or give "
            f"alpha in the adapter entry ({{path: ..., alpha: A}})"
        )
    out, alphas = {}, {}
    for module, (a, b) in pairs.items():
        out[f"{module}.lora_A.weight"], out[f"{module}.lora_B.weight"] = a, b
        alphas[module] = float(alpha) if alpha is not None else file_alphas.get(module, float(a.shape[0]))
    return out, alphas


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError) as err:
        raise LoraError(f"{path}: cannot be read as a safetensors LoRA file ({err})") from err


def is_foreign(path: str | Path) -> bool:
    """Whether ``path`` is a readable ``.safetensors`` that is not one of ours (no ``mova_lora/*`` metadata).

    An unreadable file is not foreign: our reader reports it (truncated or corrupted).
    """
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return not str((f.metadata() or {}).get("format", "")).startswith("mova_lora/")
    except (SafetensorError, OSError):
        return False


def _guess_format(keys: Sequence[str]) -> str:
    if any(k.startswith("base_model.model.") for k in keys):
        return "peft"
    if any(k.startswith("lora_unet_") for k in keys):
        return "kohya"
    prefixed = [k.split(".")[1] for k in keys if k.startswith("diffusion_model.")]
    if prefixed:
        return "comfyui" if any(p in COMPONENTS or p.endswith("_blocks") for p in prefixed) else "comfyui_wan"
    return "diffsynth"


def read_foreign_file(
    path: str | Path, model: nn.Module, component: str | None = None, alpha: float | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, float], str]:
    """Read one foreign LoRA ``.safetensors`` for ``model``.

    Returns:
        (tensors in our key layout, module path -> alpha, format name).
    """
    path = Path(path)
    raw, meta = _read_safetensors(path)
    peft_config = None
    peft_file = path.with_name("adapter_config.json")
    if peft_file.is_file() and any(k.startswith("base_model.model.") for k in raw):
        peft_config = json.loads(peft_file.read_text())
    tensors, alphas = map_foreign(
        raw,
        linear_targets(model),
        fused_layers_of(model),
        component=component or meta.get(META_COMPONENT),
        alpha=alpha,
        peft_config=peft_config,
        source=str(path),
    )
    return tensors, alphas, meta.get(META_FORMAT) or _guess_format(list(raw))


def read_foreign_lora(
    path: str | Path, model: nn.Module, component: str | None = None, alpha: float | None = None
) -> LoraWeights:
    """Read a foreign LoRA file, or a folder of ``<component>.safetensors`` files, for ``model``.

    A folder is what the ``diffsynth`` and ``comfyui_wan`` exports write: each file's component comes from its
    name (``video_dit_2.safetensors``), else from its metadata or ``component``.

    Returns:
        the LoRA in our key layout (``format``: ``diffsynth``, ``comfyui``, ``comfyui_wan``, ``kohya``, ``peft``).

    Raises:
        LoraError: see :func:`map_foreign`; two files of a folder with the same module.
    """
    path = Path(path)
    if not path.is_dir():
        tensors, alphas, fmt = read_foreign_file(path, model, component, alpha)
        return LoraWeights(tensors, alphas, path, fmt)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise LoraError(
            f"{path}: a LoRA folder without .safetensors files (and without upstream's lora_weights.pt)"
        )
    tensors: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    formats = set()
    ours = [f.name for f in files if not is_foreign(f)]
    if ours:
        raise LoraError(
            f"{path}: holds {ours}, written by mova_train; give the file itself as the adapter path"
        )
    for f in files:
        part, part_alphas, fmt = read_foreign_file(
            f, model, f.stem if f.stem in COMPONENTS else component, alpha
        )
        twice = set(part_alphas) & set(alphas)
        if twice:
            raise LoraError(
                f"{path}: {f.name} repeats modules of another file of the folder (e.g. {sorted(twice)[:2]})"
            )
        tensors.update(part)
        alphas.update(part_alphas)
        formats.add(fmt)
    return LoraWeights(tensors, alphas, path, "+".join(sorted(formats)))
