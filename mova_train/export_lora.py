"""Export a ``lora.safetensors`` for other tools (``python -m mova_train.export_lora``).

Formats (the files each writes into ``--out``; loading lines in the README, "Use the LoRA elsewhere"):

* ``diffsynth``: ``<component>.safetensors`` per component, for DiffSynth-Studio's ``pipe.load_lora``;
* ``comfyui``: ``mova_prism.safetensors``, for core ComfyUI's MOVA dual tower (Prism) and its LoRA loader;
* ``comfyui_wan``: ``video_dit.safetensors`` / ``video_dit_2.safetensors``, one per expert, for ComfyUI's Wan model;
* ``merged``: a copy of the release folder ``--checkpoint`` with the LoRA merged in (SGLang, upstream without
  its LoRA script, DiffSynth or ComfyUI without LoRA).

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
from mova_train.models.lora_formats import FORMATS, RELEASE_FUSED_LAYERS, write_export

log = logging.getLogger(__name__)

ALL_FORMATS = (*FORMATS, "merged")


def read_native(path: Path) -> tuple[dict, dict[str, float], int]:
    """(tensors, module -> alpha, rank) of one of our LoRA files (checksum verified)."""
    from mova_train.models.lora_file import read_lora

    weights = read_lora(path)
    assert weights.meta is not None
    return weights.tensors, weights.alphas, weights.meta.rank


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
) -> list[Path]:
    """Write ``lora`` in format ``fmt`` into ``out``; returns the written files (or the merged folder)."""
    if fmt not in ALL_FORMATS:
        raise LoraError(f"--format {fmt!r}: expected one of {ALL_FORMATS}")
    if fmt == "merged" and checkpoint is None:
        raise LoraError("--format merged needs --checkpoint RELEASE_DIR (the base the LoRA was trained on)")
    tensors, alphas, rank = read_native(lora)
    if fmt == "merged":
        from mova_train.models.release_folder import export_merged

        return [export_merged(tensors, alphas, checkpoint, out, copy=copy, provenance={"lora": str(lora)})]
    return write_export(tensors, alphas, fmt, out, fused_layers(checkpoint, fused))


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
        written = export(args.lora, args.format, args.out, args.checkpoint, args.fused_layers, args.copy)
    except errors as err:
        parser.exit(2, f"error: {err}\n")
    for path in written:
        log.info("wrote %s", path)
    return written


if __name__ == "__main__":
    main()
