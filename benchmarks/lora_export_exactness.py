"""How exactly each tool reproduces our merged weights from our exports (float32, tiny model, random LoRA).

For every (rank, alpha) it exports a random LoRA (upstream preset, 3 video / 2 audio blocks) in each format, loads the
files onto state dicts with the tool's module names through the re-implemented loaders of ``tests/helpers/
tool_loaders.py`` (DiffSynth-Studio's ``GeneralLoRALoader`` fusion, ComfyUI's ``load_lora`` + ``calculate_weight`` on
the Prism and Wan module trees) and prints max |tool merge - peft merge|, and max |diff| of the tensors and alphas our
importer reads back from each export (the round trip).

    python benchmarks/lora_export_exactness.py
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from helpers.lora_exports import max_diff, random_lora, reference_merged  # noqa: E402
from helpers.tool_loaders import ComfyModel, PrismTree, comfy_apply, diffsynth_fuse, with_weights  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from mova_train.models.lora_formats import PRISM_FILE, fused_layers_of, read_foreign_lora, write_export  # noqa: E402

DIFFSYNTH_PIPE = {
    "video_dit": "video_dit",
    "video_dit_2": "video_dit2",
    "audio_dit": "audio_dit",
    "dual_tower_bridge": "dual_tower_bridge",
}


def measure(rank: int, alpha: float, folder: Path) -> dict[str, float]:
    """Max |diff| per tool and for the round trip."""
    base, tensors, alphas = random_lora(rank, alpha)
    reference = reference_merged(rank, alpha)
    for fmt in ("diffsynth", "comfyui", "comfyui_wan"):
        write_export(tensors, alphas, fmt, folder / fmt, fused_layers_of(base))

    def part(comp: str, prefix: str = "") -> dict:
        return {prefix + k[len(comp) + 1 :]: v for k, v in reference.items() if k.startswith(comp + ".")}

    out = {"diffsynth": 0.0, "comfyui_wan": 0.0, "round trip": 0.0}
    for comp in DIFFSYNTH_PIPE:  # pipe.load_lora(pipe.<attr>, "<comp>.safetensors")
        fused = diffsynth_fuse(
            getattr(base, comp).state_dict(), load_file(str(folder / "diffsynth" / f"{comp}.safetensors"))
        )
        out["diffsynth"] = max(out["diffsynth"], max_diff(fused, part(comp)))
    prism = comfy_apply(
        ComfyModel(PrismTree(base)).state_dict(), load_file(str(folder / "comfyui" / PRISM_FILE))
    )
    out["comfyui"] = max_diff(prism, ComfyModel(PrismTree(with_weights(base, reference))).state_dict())
    for expert in ("video_dit", "video_dit_2"):
        wan = comfy_apply(
            ComfyModel(copy.deepcopy(getattr(base, expert))).state_dict(),
            load_file(str(folder / "comfyui_wan" / f"{expert}.safetensors")),
        )
        out["comfyui_wan"] = max(out["comfyui_wan"], max_diff(wan, part(expert, "diffusion_model.")))
    for source in (folder / "diffsynth", folder / "comfyui" / PRISM_FILE, folder / "comfyui_wan"):
        back = read_foreign_lora(source, base)
        worst = max((back.tensors[k] - tensors[k]).abs().max().item() for k in back.tensors)
        out["round trip"] = max(
            out["round trip"], worst, max(abs(back.alphas[m] - alphas[m]) for m in back.alphas)
        )
    return out


def main() -> None:
    """Print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cases", nargs="*", default=["4:4", "4:8", "4:2", "4:6", "3:5", "16:16"], help="rank:alpha"
    )
    args = parser.parse_args()
    print("| rank | alpha | DiffSynth | ComfyUI Prism | ComfyUI Wan | round trip |")
    print("|---:|---:|---:|---:|---:|---:|")
    for case in args.cases:
        rank, alpha = int(case.split(":")[0]), float(case.split(":")[1])
        with tempfile.TemporaryDirectory() as tmp:
            d = measure(rank, alpha, Path(tmp))
        print(
            f"| {rank} | {alpha:g} | {d['diffsynth']:.3g} | {d['comfyui']:.3g} | {d['comfyui_wan']:.3g} | {d['round trip']:.3g} |"
        )


if __name__ == "__main__":
    main()
