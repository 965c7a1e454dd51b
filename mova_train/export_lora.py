"""Export a ``lora.safetensors`` for other tools (``python -m mova_train.export_lora``).

Formats (the files each writes into ``--out``; loading lines in the README, "Use the LoRA elsewhere"):

* ``diffsynth``: ``<component>.safetensors`` per component, for DiffSynth-Studio's ``pipe.load_lora``;
* ``comfyui``: ``mova_prism.safetensors``, for core ComfyUI's MOVA dual tower (Prism) and its LoRA loader;
* ``comfyui_wan``: ``video_dit.safetensors`` / ``video_dit_2.safetensors``, one per expert, for ComfyUI's Wan model;
* ``upstream``: ``lora_weights.pt`` + ``lora_config.pt`` for upstream's ``scripts/inference_single_lora.py``;
* ``merged``: a copy of the release folder ``--checkpoint`` with the LoRA merged in (SGLang, upstream without
  its LoRA script, DiffSynth or ComfyUI without LoRA); fully fine-tuned components the LoRA file lists
  (``full_finetune`` metadata) replace the base's.

Example:
    python -m mova_train.export_lora outputs/run/lora/lora.safetensors --format comfyui --out exports/comfyui
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from mova_train.models.lora import LoraError
from mova_train.models.lora_file import read_lora
from mova_train.models.lora_formats import FORMATS, RELEASE_FUSED_LAYERS, write_export

log = logging.getLogger(__name__)

ALL_FORMATS = (*FORMATS, "upstream", "merged")


def fused_layers(checkpoint: Path | None, given: int | None) -> int:
    """Prism's fusion-block count: from the checkpoint's configs, else ``--fused-layers``, else the release's."""
    if checkpoint is not None:
        counts = []
        for comp in ("video_dit", "audio_dit"):
            config = checkpoint / comp / "config.json"
            try:
                counts.append(int(json.loads(config.read_text())["num_layers"]))
            except (OSError, ValueError, KeyError) as err:
                raise LoraError(
                    f"--checkpoint {checkpoint}: cannot read num_layers from {config} ({err})"
                ) from err
        layers = min(counts)
        if given is not None and given != layers:
            raise LoraError(
                f"--fused-layers {given} disagrees with {checkpoint} (min of its layer counts: {layers})"
            )
        return layers
    return RELEASE_FUSED_LAYERS if given is None else given


def export(
    lora: Path,
    fmt: str,
    out: Path,
    checkpoint: Path | None = None,
    fused: int | None = None,
    copy: bool = False,
    drop_unsupported: bool = False,
) -> list[Path]:
    """Write ``lora`` in format ``fmt`` into ``out``; returns the written files (or the merged folder)."""
    if fmt not in ALL_FORMATS:
        raise LoraError(f"--format {fmt!r}: expected one of {ALL_FORMATS}")
    if fmt == "merged" and checkpoint is None:
        raise LoraError("--format merged needs --checkpoint RELEASE_DIR (the base the LoRA was trained on)")
    weights = read_lora(lora)
    if fmt == "merged":
        from mova_train.models.release_folder import export_merged

        components = {c: _component_state(lora.parent / rel) for c, rel in weights.meta.full_finetune.items()}
        return [
            export_merged(
                weights.tensors,
                weights.alphas,
                checkpoint,
                out,
                components=components,
                copy=copy,
                provenance={"lora": str(lora), "checksum": weights.meta.checksum},
            )
        ]
    if fmt == "upstream":
        from mova_train.models.lora_upstream import export_upstream

        folder = export_upstream(
            out, weights.tensors, weights.meta.rank, weights.meta.alpha, drop_unsupported=drop_unsupported
        )
        return [folder / "lora_weights.pt", folder / "lora_config.pt"]
    if weights.meta.full_finetune:
        log.warning(
            "%s was trained with fully fine-tuned %s (in %s): %s files hold the LoRA only; load those folders "
            "beside it, or use --format merged",
            lora,
            sorted(weights.meta.full_finetune),
            sorted(weights.meta.full_finetune.values()),
            fmt,
        )
    return write_export(weights.tensors, weights.alphas, fmt, out, fused_layers(checkpoint, fused))


def _component_state(folder: Path) -> dict:
    """The tensors of a fully fine-tuned component folder (``config.json`` + safetensors)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LoraError(f"{folder}: no safetensors weights (listed in the LoRA's full_finetune metadata)")
    state: dict = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m mova_train.export_lora", description=__doc__.split("\n")[0]
    )
    parser.add_argument("lora", type=Path, help="a lora.safetensors written by mova_train")
    parser.add_argument("--format", required=True, choices=ALL_FORMATS, help="target tool format")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument(
        "--checkpoint", type=Path, help="release folder: the base for merged; layer counts for comfyui"
    )
    parser.add_argument(
        "--fused-layers",
        type=int,
        help=f"comfyui without --checkpoint: Prism fusion blocks (default {RELEASE_FUSED_LAYERS})",
    )
    parser.add_argument(
        "--copy", action="store_true", help="merged: copy untouched files instead of hard-linking them"
    )
    parser.add_argument(
        "--drop-unsupported",
        action="store_true",
        help="upstream: drop (with a warning) layers upstream's loader does not inject instead of refusing",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Run the command line; returns the written paths."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    errors: tuple[type[Exception], ...] = (LoraError,)
    if args.format == "merged":  # the checkpoint module imports the codecs (diffusers): only when needed
        from mova_train.models.checkpoint import CheckpointError

        errors = (LoraError, CheckpointError)
    try:
        written = export(
            args.lora,
            args.format,
            args.out,
            args.checkpoint,
            args.fused_layers,
            args.copy,
            args.drop_unsupported,
        )
    except errors as err:
        parser.exit(2, f"error: {err}\n")
    for path in written:
        log.info("wrote %s", path)
    return written


if __name__ == "__main__":
    main()
