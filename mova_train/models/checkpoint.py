"""Checkpoint folders in the released MOVA layout (diffusers ``DiffusionPipeline`` style).

One subfolder per component with a ``config.json`` and either one ``diffusion_pytorch_model.safetensors``
or shards ``diffusion_pytorch_model-0000i-of-0000n.safetensors`` listed in
``diffusion_pytorch_model.safetensors.index.json``. ``model_index.json`` is tolerated and never required.

Loading builds the module on the ``meta`` device, validates every key and shape against the files, then
reads tensors one at a time from memory-mapped safetensors, casts them and assigns them in place: the
weights are never held twice in RAM. A missing component, key or a wrong shape fails with one
:class:`CheckpointError` that names the component, the key, the expected and the found shape.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from mova_train.codecs.configs import DACConfig, VideoVAEConfig
from mova_train.codecs.dac import DAC
from mova_train.codecs.video_vae import WanVideoVAE
from mova_train.models.audio_tower import AudioDiT
from mova_train.models.bridge import DualTowerBridge
from mova_train.models.configs import AudioDiTConfig, BridgeConfig, VideoDiTConfig
from mova_train.models.files import unique_tmp
from mova_train.models.mova import EXPERTS, MovaDualTower
from mova_train.models.video_tower import VideoDiT

__all__ = [
    "COMPONENTS",
    "RELEASE_LIBRARIES",
    "CheckpointError",
    "diffusers_version",
    "load_component",
    "load_component_into",
    "load_dual_tower",
    "read_config",
    "save_component",
    "save_dual_tower",
    "write_model_index",
]

log = logging.getLogger(__name__)

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = f"{WEIGHTS_NAME}.index.json"


class CheckpointError(ValueError):
    """A checkpoint folder does not match the model it is loaded into."""


@dataclass(frozen=True)
class ComponentSpec:
    """How to build one component from its ``config.json``."""

    class_name: str
    config_cls: type
    module_cls: type


COMPONENTS: dict[str, ComponentSpec] = {
    "video_dit": ComponentSpec("WanModel", VideoDiTConfig, VideoDiT),
    "video_dit_2": ComponentSpec("WanModel", VideoDiTConfig, VideoDiT),
    "audio_dit": ComponentSpec("WanAudioModel", AudioDiTConfig, AudioDiT),
    "dual_tower_bridge": ComponentSpec("DualTowerConditionalBridge", BridgeConfig, DualTowerBridge),
    "audio_vae": ComponentSpec("DAC", DACConfig, DAC),
    "video_vae": ComponentSpec("AutoencoderKLWan", VideoVAEConfig, WanVideoVAE),
}

RELEASE_LIBRARIES: dict[str, list[str]] = {
    "video_vae": ["diffusers", "AutoencoderKLWan"],
    "audio_vae": ["mova.diffusion.models.dac_vae", "DAC"],
    "text_encoder": ["transformers", "UMT5EncoderModel"],
    "tokenizer": ["transformers", "T5TokenizerFast"],
    "scheduler": ["mova.diffusion.schedulers.flow_match_pair", "FlowMatchPairScheduler"],
    "video_dit": ["mova.diffusion.models.wan_video_dit", "WanModel"],
    "video_dit_2": ["mova.diffusion.models.wan_video_dit", "WanModel"],
    "audio_dit": ["mova.diffusion.models.wan_audio_dit", "WanAudioModel"],
    "dual_tower_bridge": ["mova.diffusion.models.interactionv2", "DualTowerConditionalBridge"],
}
"""``model_index.json`` ``[library, class]`` entries of the release (upstream's ``save_pretrained`` writes the
defining module of custom classes; docs/model.md §1.2). diffusers and SGLang resolve components by them."""
PIPELINE_ENTRIES: dict[str, Any] = {"_class_name": "MOVA", "audio_vae_type": "dac", "boundary_ratio": 0.9}
"""The release's other ``model_index.json`` entries."""


def _spec(name: str) -> ComponentSpec:
    if name not in COMPONENTS:
        raise CheckpointError(f"unknown component {name!r}; known: {sorted(COMPONENTS)}")
    return COMPONENTS[name]


def read_config(root: str | Path, name: str) -> Any:
    """Parse ``<root>/<name>/config.json`` into the component's config dataclass."""
    return _read_config_file(Path(root) / name / "config.json", name)


def _read_config_file(path: Path, name: str) -> Any:
    if not path.is_file():
        raise CheckpointError(
            f"component {name!r}: {path} not found; is {path.parent.parent} a MOVA checkpoint folder?"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"component {name!r}: {path} is not valid JSON ({err})") from err
    try:
        return _spec(name).config_cls.from_dict(data)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"component {name!r}: {path}: {err}") from err


def _weight_files(folder: Path, name: str) -> dict[str, Path]:
    """Map every tensor key to the safetensors file holding it."""
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"component {name!r}: {index} has no 'weight_map'")
        files = {key: folder / fname for key, fname in weight_map.items()}
        for path in sorted(set(files.values())):
            if not path.is_file():
                raise CheckpointError(f"component {name!r}: shard {path} listed in {index.name} is missing")
        return files
    single = folder / WEIGHTS_NAME
    if not single.is_file():
        raise CheckpointError(f"component {name!r}: neither {WEIGHTS_NAME} nor {INDEX_NAME} in {folder}")
    with safe_open(str(single), framework="pt") as f:
        return {key: single for key in f.keys()}


def _check_keys(name: str, expected: dict[str, torch.Size], found: dict[str, list[int]], where: Path) -> None:
    problems = []
    for key in sorted(set(expected) - set(found)):
        problems.append(f"missing key {key!r} (expected shape {list(expected[key])})")
    for key in sorted(set(found) - set(expected)):
        problems.append(f"unexpected key {key!r} (found shape {found[key]})")
    for key in sorted(set(expected) & set(found)):
        if list(expected[key]) != list(found[key]):
            problems.append(f"key {key!r}: expected shape {list(expected[key])}, found {found[key]}")
    if problems:
        shown = "; ".join(problems[:10]) + (
            f"; ... ({len(problems) - 10} more)" if len(problems) > 10 else ""
        )
        raise CheckpointError(f"component {name!r} at {where}: {len(problems)} problem(s): {shown}")


def _fp32_keys(module: nn.Module) -> set[str]:
    keep = set()
    for prefix, sub in module.named_modules():
        for child in getattr(sub, "keep_in_fp32_modules", ()):
            base = f"{prefix}.{child}." if prefix else f"{child}."
            keep.update(k for k in module.state_dict(keep_vars=True) if k.startswith(base))
    return keep


def load_component(
    root: str | Path,
    name: str,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """Load component ``name`` from the checkpoint folder ``root``.

    Args:
        root: the checkpoint folder (e.g. a downloaded ``MOVA-360p``).
        name: one of :data:`COMPONENTS`.
        dtype: floating dtype of the parameters (``keep_in_fp32_modules`` stay float32).
        device: where the weights go.

    Raises:
        CheckpointError: missing folder/files, or key/shape mismatch (all problems in one message).
    """
    return _load_folder(Path(root) / name, name, dtype, device)


def _load_folder(folder: Path, name: str, dtype: torch.dtype, device: str | torch.device) -> nn.Module:
    spec = _spec(name)
    config = _read_config_file(folder / "config.json", name)
    with torch.device("meta"):
        module = spec.module_cls(config)
    expected = {k: v.shape for k, v in module.state_dict().items()}
    files = _weight_files(folder, name)
    found: dict[str, list[int]] = {}
    for path in sorted(set(files.values())):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if files.get(key) == path:
                    found[key] = list(f.get_slice(key).get_shape())
    _check_keys(name, expected, found, folder)
    keep_fp32 = _fp32_keys(module)
    state: dict[str, torch.Tensor] = {}
    for path in sorted(set(files.values())):
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key in f.keys():
                if files.get(key) != path:
                    continue
                tensor = f.get_tensor(key)
                target = tensor.dtype
                if tensor.is_floating_point():
                    target = torch.float32 if key in keep_fp32 else dtype
                # One owned, aligned copy per tensor (the mmap view is released right away), so the
                # peak is the model plus one tensor and kernels see the same memory as a fresh module.
                state[key] = tensor.to(device=device, dtype=target, copy=True)
    module.load_state_dict(state, strict=True, assign=True)
    _assert_materialized(module, name)
    log.info("loaded %s from %s (%d tensors)", name, folder, len(state))
    return module.eval().requires_grad_(False)


def _assert_materialized(module: nn.Module, name: str) -> None:
    """Every tensor must have left the meta device (a non-persistent buffer would not)."""
    for key, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_meta:
            raise CheckpointError(
                f"component {name!r}: {key!r} is not stored in the checkpoint (bug in mova_train)"
            )


def _component_folder(path: str | Path, name: str) -> Path:
    """A component's folder: ``path`` itself when it holds ``config.json``, else ``path/<name>``."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / name / "config.json").is_file():
        return path / name
    return path


def load_component_into(module: nn.Module, folder: str | Path, name: str) -> nn.Module:
    """Copy the weights of a component folder (e.g. a full fine-tune export) into an existing ``module``.

    The parameters keep their dtype and device; the folder's ``config.json`` must describe the same
    architecture and every key and shape must match.

    Args:
        module: the component to overwrite (e.g. ``model.dual_tower_bridge``).
        folder: the component folder, or a release-layout root holding ``<name>/``.
        name: the component name.
    """
    folder = _component_folder(folder, name)
    config = _read_config_file(folder / "config.json", name)
    mine = getattr(module, "config", None) or getattr(module, "cfg", None)
    if mine is not None and config != mine:
        raise CheckpointError(
            f"component {name!r} at {folder}: config.json describes another architecture than the model's "
            f"({config} vs {mine})"
        )
    state = module.state_dict()
    files = _weight_files(folder, name)
    found: dict[str, list[int]] = {}
    for path in sorted(set(files.values())):
        with safe_open(str(path), framework="pt") as f:
            found.update({k: list(f.get_slice(k).get_shape()) for k in f.keys() if files.get(k) == path})
    _check_keys(name, {k: v.shape for k, v in state.items()}, found, folder)
    with torch.no_grad():
        for path in sorted(set(files.values())):
            with safe_open(str(path), framework="pt", device="cpu") as f:
                for key in f.keys():
                    if files.get(key) == path:
                        state[key].copy_(f.get_tensor(key))
    log.info("loaded %s weights from %s", name, folder)
    return module


def load_dual_tower(
    root: str | Path,
    experts: Iterable[str] = EXPERTS,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    components: dict[str, str | Path] | None = None,
) -> MovaDualTower:
    """Load the denoiser (chosen video experts, audio tower, bridge) from a release-layout folder.

    Args:
        root: the release folder.
        experts: the video experts to load.
        dtype: parameter dtype (``keep_in_fp32_modules`` stay float32).
        device: where the weights go.
        components: component -> folder to load it from instead of ``root`` (e.g. the full fine-tune export
            ``{dual_tower_bridge: outputs/run/lora/components/dual_tower_bridge}``).
    """
    experts = tuple(experts)
    components = dict(components or {})
    names = (*experts, "audio_dit", "dual_tower_bridge")
    unknown = set(components) - set(names)
    if unknown:
        raise CheckpointError(
            f"model.components: {sorted(unknown)} are not loaded components ({list(names)})"
        )
    parts = {}
    for name in names:
        if name in components:
            folder = _component_folder(components[name], name)
            parts[name] = _load_folder(folder, name, dtype, device)
        else:
            parts[name] = load_component(root, name, dtype, device)
    return MovaDualTower(
        video_dit=parts.get("video_dit"),
        audio_dit=parts["audio_dit"],
        dual_tower_bridge=parts["dual_tower_bridge"],
        video_dit_2=parts.get("video_dit_2"),
    )


def save_component(
    module: nn.Module | None,
    root: str | Path,
    name: str,
    config: Any = None,
    max_shard_bytes: int | None = None,
    state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a component as ``<root>/<name>/`` in the release layout.

    Args:
        module: the component (None when ``state`` and ``config`` are given).
        root: checkpoint folder (created if needed).
        name: component name (subfolder).
        config: its config dataclass (written as ``config.json`` with ``_class_name``); defaults to the
            module's own ``config``.
        max_shard_bytes: split the weights into shards of at most this size (plus an index json).
        state: the weights to write (default: the module's state dict), e.g. gathered from FSDP2 shards.

    Returns:
        The component folder.
    """
    spec = _spec(name)
    if config is None:
        config = getattr(module, "config", None) or module.cfg
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"_class_name": spec.class_name, "_diffusers_version": diffusers_version(), **config.to_dict()}
    (folder / "config.json").write_text(json.dumps(payload, indent=2) + "\n")
    if state is None:
        state = module.state_dict()
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    previous = {*folder.glob("diffusion_pytorch_model*.safetensors"), folder / INDEX_NAME}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes is not None and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    if len(shards) == 1:
        _atomic_save(shards[0], folder / WEIGHTS_NAME)
        _remove_stale(previous, keep={folder / WEIGHTS_NAME})
        return folder
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"diffusion_pytorch_model-{i:05d}-of-{len(shards):05d}.safetensors"
        _atomic_save(shard, folder / fname)
        weight_map.update({key: fname for key in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    tmp_index = unique_tmp(folder / INDEX_NAME)
    tmp_index.write_text(json.dumps(index, indent=2) + "\n")
    os.replace(tmp_index, folder / INDEX_NAME)
    _remove_stale(previous, keep={folder / f for f in weight_map.values()} | {folder / INDEX_NAME})
    return folder


def _remove_stale(paths: set[Path], keep: set[Path]) -> None:
    """Delete weight files of an earlier save only after the new ones are complete (a crash keeps the old)."""
    for path in paths - keep:
        if path.exists():
            path.unlink()


def _atomic_save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = unique_tmp(path)
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, path)


def diffusers_version() -> str:
    """The installed diffusers version (what ``save_pretrained`` writes as ``_diffusers_version``)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("diffusers")
    except PackageNotFoundError:
        return "0.33.0"  # the release's folders were written by a diffusers of that era


def write_model_index(root: str | Path, names: Iterable[str]) -> Path:
    """Write (or update) ``<root>/model_index.json`` for the components ``names`` (docs/model.md §1.2).

    Entries are upstream's ``[library, class]`` pairs, which diffusers and SGLang resolve; an existing valid
    file keeps its other entries and values (only the entries of ``names`` are set, missing pipeline entries
    and ``_diffusers_version`` are added). An existing file that is not a JSON object is refused.
    """
    index_path = Path(root) / "model_index.json"
    index: dict[str, Any] = {}
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{index_path} is not valid JSON ({err}); fix or delete it") from err
        if not isinstance(index, dict):
            raise CheckpointError(
                f"{index_path} holds {type(index).__name__}, not a JSON object; fix or delete it"
            )
    for key, value in PIPELINE_ENTRIES.items():
        index.setdefault(key, value)
    index.setdefault("_diffusers_version", diffusers_version())
    for name, entry in RELEASE_LIBRARIES.items():  # the other components of a release copy, if present
        if (Path(root) / name).is_dir():
            index.setdefault(name, list(entry))
    for name in names:
        index[name] = list(RELEASE_LIBRARIES[name])
    tmp = unique_tmp(index_path)
    tmp.write_text(json.dumps(index, indent=2, ensure_ascii=False) + "\n")
    os.replace(tmp, index_path)
    return index_path


def save_dual_tower(model: MovaDualTower, root: str | Path, max_shard_bytes: int | None = None) -> Path:
    """Write every present part of ``model`` (experts, audio tower, bridge) plus ``model_index.json``."""
    root = Path(root)
    names = [n for n in (*EXPERTS, "audio_dit", "dual_tower_bridge") if getattr(model, n) is not None]
    for name in names:
        save_component(getattr(model, name), root, name, max_shard_bytes=max_shard_bytes)
    write_model_index(root, names)
    return root
