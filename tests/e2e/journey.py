"""The user's journey as the README types it: its commands, the tiny overrides the tier adds, and the tier's runs.

Every command below is a string exactly as the README's "Journey" section shows it (tests/e2e/
test_readme_journey.py checks that each README command appears in these sources). The commands are written for
the released MOVA-360p; the tier runs them on the tiny release-layout folder of tests/helpers/release_folder.py
and appends only size and device overrides (`TINY_*`, `CPU`), never anything that changes what is trained.

The workspace (cwd of every command) holds `checkpoints/MOVA-360p` (the release folder), `media/` (upstream's
sample clip with its metadata.json and a first-frame image), and everything the journey writes: `data/`,
`outputs/`.
"""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------------------------------------- the README's commands

# 1. Prepare: the model folder (no download: the tiny stand-in), synthetic clips; media/ holds upstream's sample.
RELEASE_FOLDER = "python tests/helpers/release_folder.py checkpoints/MOVA-360p"
MAKE_SYNTHETIC = (
    "python -m data_tools.make_synthetic data/clips --count 4 --fps 24 --seconds 8.1 --width 640 --height 352"
)
# 2. Shard: each source into its own shard folder (upstream's metadata.json format both times).
SHARD_SYNTHETIC = (
    "python -m data_tools.build_shards data/clips/metadata.json data/shards/synthetic --max-count 2"
)
SHARD_REAL = "python -m data_tools.build_shards media/metadata.json data/shards/real"
# 3. Cache: latents and text states with the model's own VAEs and UMT5.
CACHE_SYNTHETIC = (
    "python -m data_tools.encode --shards data/shards/synthetic --out data/cache/synthetic "
    "--checkpoint checkpoints/MOVA-360p"
)
CACHE_REAL = "python -m data_tools.encode --shards data/shards/real --out data/cache/real --checkpoint checkpoints/MOVA-360p"
# 4. Train: every recipe reads the model from paths.checkpoint_dir and both caches.
RELEASE_DATA = "paths.checkpoint_dir=checkpoints 'data.shards=[data/cache/synthetic,data/cache/real]'"
TRAIN_TINY_CPU = "python -m mova_train +recipe=tiny_cpu hydra.run.dir=outputs/tiny_cpu"
TRAIN_LOW_NOISE = (
    f"python -m mova_train +recipe=lora_1gpu_80gb {RELEASE_DATA} hydra.run.dir=outputs/low_noise"
)
# the second expert starts from the first run's file and keeps its shared (audio/bridge) adapters frozen
TRAIN_HIGH_NOISE = (
    f"python -m mova_train +recipe=lora_1gpu_80gb {RELEASE_DATA} expert=video_dit hydra.run.dir=outputs/high_noise "
    "lora.init_from=outputs/low_noise/lora/lora.safetensors 'lora.freeze_groups=[shared]'"
)
TRAIN_DDP = f"python -m mova_train +recipe=lora_ddp {RELEASE_DATA} hydra.run.dir=outputs/lora_ddp"
TRAIN_FSDP = f"python -m mova_train +recipe=lora_fsdp8 {RELEASE_DATA} hydra.run.dir=outputs/lora_fsdp8"
TRAIN_LOW_RESOURCE = (
    f"python -m mova_train +recipe=lora_low_resource {RELEASE_DATA} hydra.run.dir=outputs/lora_low_resource"
)
TRAIN_NPU = f"python -m mova_train +recipe=lora_npu8 {RELEASE_DATA} hydra.run.dir=outputs/lora_npu8"
TRAIN_LIPSYNC = f"python -m mova_train +recipe=lora_lipsync_a2v_1gpu_80gb {RELEASE_DATA} hydra.run.dir=outputs/lora_lipsync"
SHOW_NPU = f"python -m mova_train +recipe=lora_npu8 {RELEASE_DATA} show=true"
RESUME_LOW_NOISE = f"{TRAIN_LOW_NOISE} ckpt_path=last"
TRAIN_FULL = (
    f"python -m mova_train +recipe=lora_1gpu_80gb {RELEASE_DATA} lora=none "
    "module.full_finetune=[dual_tower_bridge] hydra.run.dir=outputs/full_bridge"
)
# 5. Sample: the predict recipes with what training wrote.
PREDICT_TINY_CPU = (
    "python -m mova_train.predict +recipe=predict_tiny_cpu "
    "'lora.adapters=[{path: outputs/tiny_cpu/lora/lora.safetensors}]' hydra.run.dir=outputs/predict_tiny_cpu"
)
PROMPT = 'prompt="A woman speaks to the camera in a quiet room." first_frame=media/single_person.jpg'
PREDICT_LORA = (
    f"python -m mova_train.predict +recipe=predict_release_360p paths.checkpoint_dir=checkpoints {PROMPT} "
    "'lora.adapters=[{path: outputs/low_noise/lora/lora.safetensors}]' hydra.run.dir=outputs/predict_low_noise"
)
PREDICT_PAIR = (
    f"python -m mova_train.predict +recipe=predict_release_360p paths.checkpoint_dir=checkpoints {PROMPT} "
    "'lora.adapters=[{path: outputs/high_noise/lora/lora.safetensors}, "
    "{path: outputs/low_noise/lora/lora.safetensors}]' hydra.run.dir=outputs/predict_pair"
)
PREDICT_FULL = (
    "python -m mova_train.predict +recipe=predict_release_360p paths.checkpoint_dir=checkpoints_full_bridge "
    f"{PROMPT} hydra.run.dir=outputs/predict_full_bridge"
)
PREDICT_FSDP_LORA = (
    f"python -m mova_train.predict +recipe=predict_release_360p paths.checkpoint_dir=checkpoints {PROMPT} "
    "'lora.adapters=[{path: outputs/lora_fsdp8/lora/lora.safetensors}]' hydra.run.dir=outputs/predict_fsdp8"
)

# 6. Use the LoRA elsewhere: exports for other tools (README "Use the LoRA elsewhere"); the merged release folder
#    is also a model folder for our own predict.
LOW_NOISE_LORA = "outputs/low_noise/lora/lora.safetensors"
EXPORT_DIFFSYNTH = (
    f"python -m mova_train.export_lora {LOW_NOISE_LORA} --format diffsynth --out exports/diffsynth"
)
EXPORT_COMFYUI = (
    f"python -m mova_train.export_lora {LOW_NOISE_LORA} --format comfyui --out exports/comfyui "
    "--checkpoint checkpoints/MOVA-360p"
)
EXPORT_MERGED = (
    f"python -m mova_train.export_lora {LOW_NOISE_LORA} --format merged --out exports/merged "
    "--checkpoint checkpoints/MOVA-360p"
)
PREDICT_MERGED = (
    f"python -m mova_train.predict +recipe=predict_release_360p model.root=exports/merged {PROMPT} "
    "hydra.run.dir=outputs/predict_merged"
)

# ---------------------------------------------------------------------------------------------- tiny overrides

# The tiny release folder: DiTs at 32x48 pixels (4x6 latents), 5 frames at 24 fps, a DAC at 300 Hz, 16 text rows.
FRAMES, HEIGHT, WIDTH, FPS, SAMPLE_RATE, TEXT_LEN = 5, 32, 48, 24.0, 300, 16
TINY_CLIPS = "--seconds 1 --width 64 --height 48"
TINY_CACHE = (
    f"--num-frames {FRAMES} --height {HEIGHT} --width {WIDTH} --sample-rate {SAMPLE_RATE} --text-len {TEXT_LEN} "
    "--no-progress"
)
CPU = "trainer.accelerator=cpu trainer.precision=32-true"
PREDICT_CPU = (
    "trainer.accelerator=cpu"  # predict_release_360p already runs in 32-true (bf16 weights, no autocast)
)
TINY_TRAIN = (
    f"data.num_frames={FRAMES} data.height={HEIGHT} data.width={WIDTH} data.sample_rate={SAMPLE_RATE} "
    f"data.text_len={TEXT_LEN} data.num_workers=0 trainer.max_steps=2 callbacks.checkpoint.every_n_train_steps=1 "
    "lr_scheduler.warmup_steps=1"
)
TINY_VALIDATION = "callbacks.validation_sampling.sampling.steps=2"  # validation sampling at the end of fit
TINY_TINY_CPU = "trainer.max_steps=2 callbacks.validation_sampling.sampling.steps=2 data.synthetic.count=2"
TINY_PREDICT = (
    f"sampling.num_frames={FRAMES} sampling.height={HEIGHT} sampling.width={WIDTH} sampling.steps=2"
)
TWO_PROCESSES = "trainer.devices=2"


# ---------------------------------------------------------------------------------------------- the tier's runs

# name -> command parts of one training run (README command + tiny overrides); its folder is outputs/<name>
TRAIN_RUNS: dict[str, tuple[str, ...]] = {
    "tiny_cpu": (TRAIN_TINY_CPU, TINY_TINY_CPU),
    "low_noise": (TRAIN_LOW_NOISE, CPU, TINY_TRAIN),
    "high_noise": (TRAIN_HIGH_NOISE, CPU, TINY_TRAIN),
    "lora_ddp": (TRAIN_DDP, CPU, TINY_TRAIN, TWO_PROCESSES),
    "lora_fsdp8": (TRAIN_FSDP, CPU, TINY_TRAIN, TWO_PROCESSES, "strategy.context_parallel_size=1"),
    # context parallel on the tiny release: its video DiT has 3 heads (head_dim 32), so cp 3 on 3 processes
    # (cp 2 is refused up front: "context-parallel size 2 does not divide the 3 heads")
    "lora_fsdp8_cp3": (
        TRAIN_FSDP,
        CPU,
        TINY_TRAIN,
        "trainer.devices=3 strategy.context_parallel_size=3 hydra.run.dir=outputs/lora_fsdp8_cp3",
    ),
    # single_gpu_offload runs its block-streaming code path on a CPU device (and pins no memory there)
    "lora_low_resource": (TRAIN_LOW_RESOURCE, CPU, TINY_TRAIN, "strategy.device=cpu"),
    # lora_npu8 through tests/e2e/npu_standin.py: the recipe's own accelerator class and strategy, on CPU
    "lora_npu8": (
        TRAIN_NPU.replace("-m mova_train", "tests/e2e/npu_standin.py", 1),
        "trainer.precision=32-true",
        TINY_TRAIN,
        TWO_PROCESSES,
        "strategy.process_group_backend=gloo",
    ),
    "full_bridge": (TRAIN_FULL, CPU, TINY_TRAIN),
    "lora_lipsync": (TRAIN_LIPSYNC, CPU, TINY_TRAIN, TINY_VALIDATION),
}
MULTI_PROCESS = {"lora_ddp", "lora_fsdp8", "lora_fsdp8_cp3", "lora_npu8"}

# every recipe in conf/recipe/ -> the tier's steps that run it (a new recipe fails the coverage test)
RECIPE_STEPS: dict[str, list[str]] = {
    "tiny_cpu": ["tiny_cpu"],
    "lora_1gpu_80gb": ["low_noise", "high_noise", "full_bridge", "kill -9 + ckpt_path=last"],
    "lora_ddp": ["lora_ddp"],
    "lora_lipsync_a2v_1gpu_80gb": ["lora_lipsync"],
    "lora_fsdp8": ["lora_fsdp8", "lora_fsdp8_cp3"],
    "lora_low_resource": ["lora_low_resource"],
    "lora_npu8": ["show=true", "lora_npu8"],
    "predict_tiny_cpu": ["predict_tiny_cpu"],
    "predict_release_360p": [
        "predict_low_noise",
        "predict_pair",
        "predict_fsdp8",
        "predict_full_bridge",
        "predict_merged",
    ],
}

# run -> the runs whose files it reads (they finish first)
TRAIN_NEEDS: dict[str, tuple[str, ...]] = {"high_noise": ("low_noise",)}

# predict step -> (command parts, training runs whose LoRA it loads, frames of its mp4); folder outputs/<step>
RELEASE_PREDICT = (PREDICT_CPU, TINY_PREDICT)
PREDICT_RUNS: dict[str, tuple[tuple[str, ...], list[str], int]] = {
    "predict_tiny_cpu": ((PREDICT_TINY_CPU, "sampling.steps=2"), ["tiny_cpu"], 9),
    "predict_low_noise": ((PREDICT_LORA, *RELEASE_PREDICT), ["low_noise"], FRAMES),
    "predict_pair": ((PREDICT_PAIR, *RELEASE_PREDICT), ["low_noise", "high_noise"], FRAMES),
    "predict_fsdp8": ((PREDICT_FSDP_LORA, *RELEASE_PREDICT), ["lora_fsdp8"], FRAMES),
}
