"""Release-layout folders for other tools: the rules their loaders check, and a LoRA merged into a release copy.

Rules (:func:`release_folder_problems`, :func:`component_folder_problems`), as read in the loaders:

* SGLang (``sgl-project/sglang``, ``python/sglang/multimodal_gen``): ``runtime/utils/hf_diffusers_utils.py``
  ``verify_model_config_and_directory`` wants ``model_index.json`` with ``_diffusers_version`` and a subfolder for
  every ``[library, class]`` entry; ``_verify_diffusers_model_complete`` wants weight files (``*.safetensors``, ...)
  in every weight-bearing entry (all but tokenizer / scheduler / processor / feature_extractor) and
  ``_check_index_files_for_missing_shards`` every shard an index lists. ``runtime/pipelines/mova_pipeline.py``
  ``MOVAPipeline`` is chosen by ``_class_name`` ``MOVA`` (or ``MOVAPipeline``); ``pipelines_core/
  composed_pipeline_base.py`` ``load_modules`` indexes ``model_index[name]`` for each of its
  ``_required_config_modules`` (every entry of ``RELEASE_LIBRARIES``) and reads ``boundary_ratio``. The component loaders
  (``runtime/loader/component_loaders/transformer_loader.py``, ``bridge_loader.py``) resolve ``config.json``'s
  ``_class_name`` in the model registry (``WanModel``, ``WanAudioModel``, ``DualTowerConditionalBridge``, the
  ``EntryClass`` of ``runtime/models/dits/mova_video_dit.py`` / ``mova_audio_dit.py``) and
  ``configs/models/dits/mova_video.py`` asserts ``has_image_input`` is false.
* Upstream (``OpenMOSS/MOVA`` ``scripts/inference_single.py`` -> ``MOVA.from_pretrained``, diffusers'
  ``DiffusionPipeline``): the ``[library, class]`` entries are imported, so they must be upstream's module paths
  (:data:`RELEASE_LIBRARIES`, docs/model.md §1.2).

:func:`export_merged` writes a copy of a release folder whose touched components hold ``W + B @ A * alpha / r *
strength``: the way to use a LoRA in SGLang (it loads MOVA without LoRA support) and in upstream without its LoRA
script. Untouched files are hard-linked (copied across file systems); touched weight files are copied and the
merged tensors written over their byte ranges, so names, order, shards and metadata stay the base's.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from mova_train.models.checkpoint import RELEASE_LIBRARIES, CheckpointError
from mova_train.models.files import unique_tmp
from mova_train.models.lora_file import LoraExportData
from mova_train.models.lora_formats import split_modules

log = logging.getLogger(__name__)

__all__ = [
    "RELEASE_LIBRARIES",
    "check_release_folder",
    "folder_boundary_timestep",
    "folder_scheduler",
    "component_folder_problems",
    "export_merged",
    "merged_weight",
    "release_folder_problems",
    "write_merged",
]

PIPELINE_CLASSES = ("MOVA", "MOVAPipeline")
NO_WEIGHTS = ("tokenizer", "scheduler")
CONFIG_CLASS = {
    name: cls
    for name, (_, cls) in RELEASE_LIBRARIES.items()
    if name not in ("text_encoder", "tokenizer", "scheduler")
}
"""Components whose ``config.json`` ``_class_name`` a loader resolves."""


def _read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        problems.append(f"{path} is missing")
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        problems.append(f"{path} is not valid JSON ({err})")
        return None


def component_folder_problems(folder: str | Path, name: str) -> list[str]:
    """What keeps a loader from reading component ``name`` from ``folder`` (empty: nothing).

    Checked: ``config.json`` and its ``_class_name`` (DiTs, bridge, VAEs), weight files present, every shard of a
    ``*.safetensors.index.json`` present, ``has_image_input`` false for the video experts.
    """
    folder = Path(folder)
    problems: list[str] = []
    if not folder.is_dir():
        return [f"{folder} is missing (component {name!r})"]
    if name in CONFIG_CLASS:
        config = _read_json(folder / "config.json", problems)
        if isinstance(config, dict):
            if config.get("_class_name") != CONFIG_CLASS[name]:
                problems.append(
                    f"{folder / 'config.json'}: _class_name is {config.get('_class_name')!r}, loaders expect "
                    f"{CONFIG_CLASS[name]!r}"
                )
            if name in ("video_dit", "video_dit_2") and config.get("has_image_input"):
                problems.append(
                    f"{folder / 'config.json'}: has_image_input must be false (SGLang asserts it)"
                )
    if name in NO_WEIGHTS:
        return problems
    if not any(any(folder.glob(f"*{ext}")) for ext in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")):
        problems.append(f"{folder}: no weight files (*.safetensors) for component {name!r}")
    for index in folder.glob("*.safetensors.index.json"):
        data = _read_json(index, problems)
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict):
            problems.append(f"{index}: no weight_map")
            continue
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).is_file():
                problems.append(f"{index}: lists shard {shard}, which is missing")
    return problems


def release_folder_problems(root: str | Path) -> list[str]:
    """What keeps SGLang's and upstream's pipelines from loading ``root`` (empty: nothing; rules: module docstring)."""
    root = Path(root)
    problems: list[str] = []
    index = _read_json(root / "model_index.json", problems)
    if not isinstance(index, dict):
        return problems
    where = root / "model_index.json"
    if index.get("_class_name") not in PIPELINE_CLASSES:
        problems.append(f"{where}: _class_name is {index.get('_class_name')!r}, expected 'MOVA'")
    if not isinstance(index.get("_diffusers_version"), str):
        problems.append(f"{where}: no _diffusers_version (SGLang and diffusers refuse the folder)")
    ratio = index.get("boundary_ratio")
    if not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        problems.append(
            f"{where}: boundary_ratio is {ratio!r}, expected the expert switch in (0, 1), e.g. 0.9"
        )
    for name, expected in RELEASE_LIBRARIES.items():
        entry = index.get(name)
        if list(entry or []) != expected:
            problems.append(f"{where}: {name} is {entry!r}, upstream's pipeline imports {expected!r}")
        problems += component_folder_problems(root / name, name)
    for name, entry in index.items():
        if (
            name not in RELEASE_LIBRARIES
            and isinstance(entry, list)
            and len(entry) == 2
            and not (root / name).is_dir()
        ):
            problems.append(f"{where}: lists {name!r}, whose folder is missing")
    return problems


def check_release_folder(root: str | Path) -> None:
    """Raise :class:`CheckpointError` listing every problem of :func:`release_folder_problems`."""
    problems = release_folder_problems(root)
    if problems:
        raise CheckpointError(f"{root} is not a loadable MOVA release folder: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------- schedule from folder


def _folder_json(path: Path) -> dict[str, Any]:
    problems: list[str] = []
    data = _read_json(path, problems)
    if problems or not isinstance(data, dict):
        raise CheckpointError("; ".join(problems) or f"{path} does not hold a JSON object")
    return data


def _refuse_disagreement(given: Mapping[str, Any], folder: Mapping[str, Any], where: Path, key: str) -> None:
    """Raise `CheckpointError` naming the config key and the file when a value set in the config differs."""
    bad = {k: v for k, v in given.items() if v is not None and v != folder[k]}
    if bad:
        detail = ", ".join(f"{key}.{k}={v!r} but the folder has {folder[k]!r}" for k, v in bad.items())
        raise CheckpointError(
            f"{where}: {detail}; drop the override (the folder's value is used) or point model.root at a folder "
            f"written with it"
        )


def folder_scheduler(
    root: str | Path,
    num_train_timesteps: int | None = None,
    shift: float | None = None,
    extra_one_step: bool | None = None,
    exact_euler_steps: bool = False,
) -> Any:
    """The `FlowMatchScheduler` of a release folder, from its ``scheduler/scheduler_config.json`` (docs/model.md §1).

    Args:
        root: The release folder.
        num_train_timesteps: The value the config sets (None: not set); like the next two it must agree with
            the folder's file (``model.scheduler.shift=3`` on a folder saved with shift 5 is refused).
        shift: The timestep shift the config sets (None: not set).
        extra_one_step: The ``extra_one_step`` flag the config sets (None: not set).
        exact_euler_steps: See `FlowMatchScheduler`.

    Raises:
        CheckpointError: The file is missing or invalid, or a given value disagrees with it (names file and key).
    """
    from mova_train.schedulers.flow_match import FlowMatchScheduler, SchedulerConfig

    path = Path(root) / "scheduler" / "scheduler_config.json"
    cfg = SchedulerConfig.from_dict(_folder_json(path), source=str(path))
    given = {"num_train_timesteps": num_train_timesteps, "shift": shift, "extra_one_step": extra_one_step}
    _refuse_disagreement(given, cfg.to_dict(), path, "model.scheduler")
    log.info("scheduler from %s: shift %s, extra_one_step %s", path, cfg.shift, cfg.extra_one_step)
    return FlowMatchScheduler(cfg, exact_euler_steps=exact_euler_steps)


def folder_boundary_timestep(root: str | Path, boundary_timestep: float | None = None) -> float:
    """The expert switch timestep of a release folder: ``model_index.json``'s ``boundary_ratio`` (timestep space,
    upstream PR #32) times the scheduler's ``num_train_timesteps`` (0.9 x 1000 = 900 in the release).

    Args:
        root: The release folder.
        boundary_timestep: The value the config sets (None: not set); it must agree with the folder.

    Raises:
        CheckpointError: A file is missing, ``boundary_ratio`` is not in (0, 1), or the given value disagrees.
    """
    root = Path(root)
    where = root / "model_index.json"
    ratio = _folder_json(where).get("boundary_ratio")
    if not isinstance(ratio, (int, float)) or not 0 < ratio < 1:
        raise CheckpointError(
            f"{where}: boundary_ratio is {ratio!r}, expected the expert switch in (0, 1), e.g. 0.9"
        )
    steps = _folder_json(root / "scheduler" / "scheduler_config.json").get("num_train_timesteps", 1000)
    value = round(float(ratio) * float(steps), 6)
    given = None if boundary_timestep is None else float(boundary_timestep)
    _refuse_disagreement({"boundary_timestep": given}, {"boundary_timestep": value}, where, "model")
    return value


# ------------------------------------------------------------------------------------------------ merged export


def merged_weight(weight: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """``W + (B @ A) * scale`` computed in float32 and rounded once to ``weight``'s dtype.

    In float32 this is peft's ``merge`` (``weight.data += (lora_B @ lora_A) * scaling``) operation for operation.
    """
    delta = (b.float() @ a.float()) * scale
    return (weight.float() + delta).to(weight.dtype)


def _weight_files(folder: Path) -> dict[str, Path]:
    """Tensor key -> the file of ``folder`` holding it."""
    files: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                files[key] = path
    return files


def _header(path: Path) -> tuple[int, dict[str, Any]]:
    """(byte offset of the data section, the header) of a safetensors file."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        return 8 + size, json.loads(fh.read(size))


def _link_or_copy(src: Path, dst: Path, copy: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def _patch(path: Path, merged: Mapping[str, torch.Tensor]) -> None:
    """Write ``merged`` over the byte ranges of the same keys in the safetensors file ``path``."""
    start, header = _header(path)
    with open(path, "r+b") as fh:
        for key, tensor in merged.items():
            begin, end = header[key]["data_offsets"]
            data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
            if len(data) != end - begin:
                raise CheckpointError(
                    f"{path}: {key} holds {end - begin} bytes, the merged tensor {len(data)}"
                )
            fh.seek(start + begin)
            fh.write(data)


def _component_files(base: Path, comp: str) -> dict[str, Path]:
    files = _weight_files(base / comp)
    if not files:
        raise CheckpointError(f"merged export: {base / comp} holds no safetensors weights")
    return files


def _plan(
    base: Path,
    pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    replaced: Mapping[str, Mapping[str, torch.Tensor]],
) -> dict[Path, list[str]]:
    """Base weight file -> the keys to rewrite; every key and shape checked against ``base``."""
    plan: dict[Path, list[str]] = {}
    for comp, state in replaced.items():
        files = _component_files(base, comp)
        if set(state) != set(files):
            missing, extra = sorted(set(files) - set(state)), sorted(set(state) - set(files))
            raise CheckpointError(
                f"merged export: the {comp} weights do not match {base / comp}: missing {missing[:3]}, "
                f"unexpected {extra[:3]}"
            )
        for key, tensor in state.items():
            with safe_open(str(files[key]), framework="pt") as f:
                shape = list(f.get_slice(key).get_shape())
            if shape != list(tensor.shape):
                raise CheckpointError(
                    f"merged export: {base / comp}: {key} has shape {shape}, the {comp} weights {list(tensor.shape)}"
                )
            plan.setdefault(files[key], []).append(key)
    by_comp: dict[str, dict[str, Path]] = {}
    for module, (a, b) in pairs.items():
        comp, _, path = module.partition(".")
        files = by_comp.setdefault(comp, _component_files(base, comp))
        key = f"{path}.weight"
        if key not in files:
            raise CheckpointError(
                f"merged export: {base / comp} has no weight {key!r} for the LoRA module {module}"
            )
        with safe_open(str(files[key]), framework="pt") as f:
            shape = list(f.get_slice(key).get_shape())
        if shape != [b.shape[0], a.shape[1]]:
            raise CheckpointError(
                f"merged export: {base / comp}: {key} has shape {shape}, the LoRA module {module} makes "
                f"{[b.shape[0], a.shape[1]]}; is this the base the LoRA was trained on?"
            )
        if key not in plan.get(files[key], []):
            plan.setdefault(files[key], []).append(key)
    return plan


def export_merged(
    tensors: Mapping[str, torch.Tensor],
    alphas: Mapping[str, float],
    base: str | Path,
    out: str | Path,
    strength: float = 1.0,
    components: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
    copy: bool = False,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``out``: the release folder ``base`` with fully fine-tuned components and the LoRA merged in.

    Args:
        tensors: the LoRA in our key layout (may be empty when ``components`` are given).
        alphas: module path -> alpha.
        base: a complete release folder (:func:`release_folder_problems` finds nothing).
        out: the folder to create (must not exist or be empty).
        strength: multiplies every module's ``alpha / r``.
        components: fully fine-tuned component -> its whole state dict (release key names); it replaces the base's
            weights (and the LoRA, if it has layers there, is merged on top).
        copy: copy the untouched files instead of hard-linking them.
        provenance: recorded in ``out/mova_lora_merge.json`` (e.g. the LoRA file).

    Returns:
        ``out``.

    Raises:
        CheckpointError: ``base`` is not a complete release folder, ``out`` is not empty, nothing to merge, or a
            LoRA module / component weight without a base weight of the same shape (checked before writing).
    """
    base, out = Path(base), Path(out)
    problems = release_folder_problems(base)
    if problems:
        raise CheckpointError(
            f"merged export: the base {base} is not a complete release folder (SGLang and upstream need one): "
            + "; ".join(problems)
        )
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"merged export: {out} is not empty; give a new folder")
    if out.resolve() == base.resolve() or base.resolve() in out.resolve().parents:
        raise CheckpointError(f"merged export: {out} is inside the base {base}; give a folder outside it")
    pairs = split_modules(tensors) if tensors else {}
    replaced = dict(components or {})
    if not pairs and not replaced:
        raise CheckpointError("merged export: neither LoRA tensors nor fully fine-tuned components to merge")
    plan = _plan(base, pairs, replaced)
    out.mkdir(parents=True, exist_ok=True)
    for src in sorted(p for p in base.rglob("*") if p.is_file()):
        dst = out / src.relative_to(base)
        if src not in plan:
            _link_or_copy(src, dst, copy)
            continue
        comp = src.relative_to(base).parts[0]
        tmp = unique_tmp(dst)
        shutil.copyfile(src, tmp)
        with safe_open(str(src), framework="pt") as f:
            for key in plan[src]:
                stored = f.get_tensor(key)
                weight = replaced[comp][key] if comp in replaced else stored
                module = f"{comp}.{key.removesuffix('.weight')}"
                if module in pairs:
                    a, b = pairs[module]
                    weight = merged_weight(weight, a, b, strength * alphas[module] / a.shape[0])
                _patch(tmp, {key: weight.to(stored.dtype)})
        os.replace(tmp, dst)
    record = {
        "strength": strength,
        "lora_modules": len(pairs),
        "lora_components": sorted({m.partition(".")[0] for m in pairs}),
        "full_finetune": sorted(replaced),
    }
    (out / "mova_lora_merge.json").write_text(
        json.dumps({**record, **dict(provenance or {})}, indent=2) + "\n"
    )
    check_release_folder(out)
    log.info(
        "merged into %s (base %s): %d LoRA modules, components %s", out, base, len(pairs), sorted(replaced)
    )
    return out


def write_merged(folder: Path, export: LoraExportData, checkpoint: str | Path | None = None) -> list[Path]:
    """``LoraExport`` writer: ``<folder>/merged/``, the release ``checkpoint`` with the run's weights merged in.

    Each export replaces the previous ``merged/`` (written to ``merged.tmp/`` first).
    """
    if checkpoint is None:
        raise CheckpointError(
            "callbacks.lora_export.writers.merged: no checkpoint (the release folder the run trained on); set "
            "callbacks.lora_export.writers.merged.checkpoint=<release folder>"
        )
    if (export.spec is None or not export.tensors) and not export.components:
        return []
    alphas = {m: export.spec.alpha for m in split_modules(export.tensors)} if export.tensors else {}
    out, tmp = folder / "merged", folder / "merged.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    export_merged(export.tensors, alphas, checkpoint, tmp, components=export.components)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return [out]
