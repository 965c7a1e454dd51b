"""Write a tiny MOVA checkpoint folder laid out and written the way the release is, not by mova_train.

The weights are the original implementation's, at tiny size: the `weights.<component>.<key>` tensors of
the golden folder's ``sampling.safetensors`` (``$MOVA_GOLDEN_DIR``; configs in ``sampling.json``). Every
file is written by the tool that writes it in the release (docs/model.md §1):

- ``video_dit/``, ``video_dit_2/``: bf16 ``diffusion_pytorch_model-0000k-of-0000n.safetensors`` shards with a
  ``diffusion_pytorch_model.safetensors.index.json``, and a ``config.json`` with ``_class_name`` and
  ``_diffusers_version`` (as diffusers' ``ModelMixin.save_pretrained`` writes for upstream's ``WanModel``);
- ``audio_dit/``, ``dual_tower_bridge/``, ``audio_vae/`` (DAC, weight norm fused): one
  ``diffusion_pytorch_model.safetensors`` each, the same kind of ``config.json``;
- ``video_vae/``: diffusers' own ``AutoencoderKLWan(...).save_pretrained`` (golden weights loaded first);
- ``text_encoder/``: transformers' ``UMT5EncoderModel.save_pretrained`` (random tiny config whose ``d_model``
  is the DiTs' ``text_dim``), ``tokenizer/``: ``T5TokenizerFast.save_pretrained`` of a Unigram vocabulary
  trained in process (offline, docs/environment.md gotcha 6);
- ``model_index.json`` and ``scheduler/scheduler_config.json`` with upstream's library strings (§1.2, §1.8).

Run it by hand to get such a folder (``paths.checkpoint_dir=/tmp/ckpt`` then finds ``MOVA-360p`` in it)::

    python tests/helpers/release_folder.py /tmp/ckpt/MOVA-360p     # golden data: ../shared/golden or $MOVA_GOLDEN_DIR
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

DIFFUSERS_VERSION = "0.35.1"  # what a 2026 upstream `convert_to_diffusers.py` run would have written
WEIGHTS = "diffusion_pytorch_model.safetensors"

# component -> (upstream class, upstream module: the "library" string diffusers writes for custom classes)
UPSTREAM_CLASSES = {
    "video_dit": ("WanModel", "mova.diffusion.models.wan_video_dit"),
    "video_dit_2": ("WanModel", "mova.diffusion.models.wan_video_dit"),
    "audio_dit": ("WanAudioModel", "mova.diffusion.models.wan_audio_dit"),
    "dual_tower_bridge": ("DualTowerConditionalBridge", "mova.diffusion.models.interactionv2"),
    "audio_vae": ("DAC", "mova.diffusion.models.dac_vae"),
}
SHARDED = ("video_dit", "video_dit_2")  # 3 shards each in the release

# DAC config fields the release writes beyond the golden ones (unused in continuous mode).
DAC_EXTRA = {"n_codebooks": 9, "codebook_size": 1024, "codebook_dim": 8, "quantizer_dropout": False}

TOKENIZER_CORPUS = [
    "a cat plays with a ball of blue yarn on a wooden floor",
    "sunlight streams in from a large window while guitar music plays",
    "a red circle moves across a dark background and bounces with a click",
    "waves crash on the shore and birds call above the water",
    "a person speaks softly to the camera in a quiet room at night",
]


def _golden_weights(golden: Path, component: str) -> dict[str, torch.Tensor]:
    head = f"weights.{component}."
    with safe_open(str(golden / "sampling.safetensors"), framework="pt") as f:
        return {k[len(head) :]: f.get_tensor(k) for k in f.keys() if k.startswith(head)}


def _diffusers_config(class_name: str, config: dict) -> dict:
    return {"_class_name": class_name, "_diffusers_version": DIFFUSERS_VERSION, **config}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _write_sharded(folder: Path, state: dict[str, torch.Tensor], num_shards: int) -> None:
    """Shards ``diffusion_pytorch_model-0000k-of-0000n.safetensors`` + the index json (diffusers' layout)."""
    keys = list(state)
    per = -(-len(keys) // num_shards)
    weight_map = {}
    for i in range(num_shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
        part = {k: state[k] for k in keys[i * per : (i + 1) * per]}
        save_file(part, str(folder / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    _write_json(
        folder / f"{WEIGHTS}.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )


def _write_text_encoder(root: Path, text_dim: int, seed: int) -> None:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import T5TokenizerFast, UMT5Config, UMT5EncoderModel

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=200, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"
    )
    tok.train_from_iterator(TOKENIZER_CORPUS, trainer=trainer)
    vocab = [(piece, float(score)) for piece, score in json.loads(tok.to_str())["model"]["vocab"]]
    tokenizer = T5TokenizerFast(vocab=vocab, extra_ids=0)
    tokenizer.save_pretrained(str(root / "tokenizer"))

    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=text_dim,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_heads=2,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UMT5EncoderModel(config)
    model.to(torch.bfloat16).save_pretrained(str(root / "text_encoder"))


def write_release_folder(out: str | Path, golden: str | Path, seed: int = 0) -> Path:
    """Write the tiny release-layout folder ``out`` from the golden weights; returns ``out``.

    Args:
        out: the folder to create (e.g. ``<checkpoint_dir>/MOVA-360p``).
        golden: the folder holding ``sampling.json`` and ``sampling.safetensors``.
        seed: seed of the (random) tiny UMT5 weights.
    """
    out, golden = Path(out), Path(golden)
    configs = json.loads((golden / "sampling.json").read_text())["config"]

    for component, (class_name, _) in UPSTREAM_CLASSES.items():
        folder = out / component
        folder.mkdir(parents=True, exist_ok=True)
        config = dict(configs[component])
        if component == "audio_vae":
            config = {**config, **DAC_EXTRA}
        _write_json(folder / "config.json", _diffusers_config(class_name, config))
        state = _golden_weights(golden, component)
        if component != "audio_vae":  # the release stores the DiTs and the bridge in bf16
            state = {k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}
        if component in SHARDED:
            _write_sharded(folder, state, num_shards=3)
        else:
            save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})

    from diffusers import AutoencoderKLWan

    vae_config = {k: v for k, v in configs["video_vae"].items() if not k.startswith("_")}
    vae = AutoencoderKLWan(**vae_config)
    vae_state = _golden_weights(golden, "video_vae")
    if vae_state:
        vae.load_state_dict(vae_state, strict=True)
    vae.save_pretrained(str(out / "video_vae"))

    _write_text_encoder(out, text_dim=int(configs["video_dit"]["text_dim"]), seed=seed)

    scheduler = {k: v for k, v in configs["scheduler"].items()}
    _write_json(
        out / "scheduler" / "scheduler_config.json",
        {
            "_class_name": "FlowMatchPairScheduler",
            "_diffusers_version": DIFFUSERS_VERSION,
            **scheduler,
            "num_inference_steps": 100,
        },
    )
    index = {"_class_name": "MOVA", "_diffusers_version": DIFFUSERS_VERSION}
    index.update(
        audio_dit=["mova.diffusion.models.wan_audio_dit", "WanAudioModel"],
        audio_vae=["mova.diffusion.models.dac_vae", "DAC"],
        audio_vae_type=configs["pipeline"]["audio_vae_type"],
        boundary_ratio=configs["pipeline"]["boundary_ratio"],
        dual_tower_bridge=["mova.diffusion.models.interactionv2", "DualTowerConditionalBridge"],
        scheduler=["mova.diffusion.schedulers.flow_match_pair", "FlowMatchPairScheduler"],
        text_encoder=["transformers", "UMT5EncoderModel"],
        tokenizer=["transformers", "T5TokenizerFast"],
        video_dit=["mova.diffusion.models.wan_video_dit", "WanModel"],
        video_dit_2=["mova.diffusion.models.wan_video_dit", "WanModel"],
        video_vae=["diffusers", "AutoencoderKLWan"],
    )
    _write_json(out / "model_index.json", index)
    return out


def main() -> None:
    """Command line: ``python tests/helpers/release_folder.py OUT [--golden DIR]``."""
    here = Path(__file__).resolve()
    found = [p / "shared" / "golden" for p in here.parents if (p / "shared" / "golden").is_dir()]
    if os.environ.get("MOVA_SHARED_DIR"):
        found.insert(0, Path(os.environ["MOVA_SHARED_DIR"]) / "golden")
    if os.environ.get("MOVA_GOLDEN_DIR"):
        found.insert(0, Path(os.environ["MOVA_GOLDEN_DIR"]))
    default_golden = found[0] if found else None
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder to write, e.g. /tmp/ckpt/MOVA-360p")
    parser.add_argument("--golden", type=Path, default=default_golden, help="shared/golden folder")
    args = parser.parse_args()
    if args.golden is None:
        parser.error("no shared/golden folder above this file; pass --golden")
    write_release_folder(args.out, args.golden)


if __name__ == "__main__":
    main()
