"""Strategy runs for tests/integration/test_strategies.py: a deterministic MovaLitModule, data, and a
torchrun entry point that runs FSDP2 -> DDP -> DDP-resume -> FSDP2 + context parallel in one 2-process launch
(imports cost ~15 s per launch on 2 cores, so one launch does all four).

Usage: ``python -m torch.distributed.run --nproc_per_node 2 tests/helpers/strategy_worker.py OUT_DIR``
(with ``PYTHONPATH=tests``).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from helpers.tiny import cpu_trainer
from mova_train.codecs.encoders import latents_from_cached
from mova_train.lit import MovaLitModule
from mova_train.models import mova_tiny
from mova_train.models.lora import LoraSpec
from mova_train.objectives import FlowMatchingObjective

STEPS = 3
GLOBAL_BATCH = 2
LR = 1e-3


class TinySamples(Dataset):
    """Sample ``i`` (latents, noise and timestep) depends only on ``i``."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(1000 + i)
        cond = torch.randn(8, 2, 4, 4, generator=g)
        cond[:4] = 0.0
        cond[:4, 0] = 1.0
        return {
            "video_latents": torch.randn(4, 2, 4, 4, generator=g),
            "cond": cond,
            "audio_latents": torch.randn(8, 8, generator=g),
            "context": torch.randn(8, 32, generator=g),
            "noise_v": torch.randn(4, 2, 4, 4, generator=g),
            "noise_a": torch.randn(8, 8, generator=g),
            "t": torch.rand((), generator=g) * 1000.0,
        }


class DeterministicLit(MovaLitModule):
    """MovaLitModule whose noise and timesteps come with the samples, so a global batch gives the same loss
    whatever its split over ranks (the real module draws per-rank noise).
    """

    def __init__(self) -> None:
        super().__init__(
            model=functools.partial(mova_tiny, experts=("video_dit",), seed=0),
            objective=FlowMatchingObjective(expert_mode="single", expert="video_dit"),
            optimizer=functools.partial(torch.optim.AdamW, lr=LR, weight_decay=0.0),
            lora=LoraSpec(
                rank=4,
                alpha=4.0,
                components={"video_dit": "attn", "audio_dit": "attn", "dual_tower_bridge": "bridge"},
            ),
        )
        self.losses: list[float] = []

    def built(self) -> DeterministicLit:
        """Build the model now (as ``configure_model`` does in a run); returns self."""
        self.configure_model()
        return self

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        lat = latents_from_cached(batch)
        t = batch["t"]
        sig_v = (t / 1000.0).view(-1, 1, 1, 1, 1)
        sig_a = (t / 1000.0).view(-1, 1, 1)
        x0_v, x0_a = lat["video_latents"], lat["audio_latents"]
        xt_v = (1 - sig_v) * x0_v + sig_v * batch["noise_v"]
        xt_a = (1 - sig_a) * x0_a + sig_a * batch["noise_a"]
        pred_v, pred_a = self.model(xt_v, lat["cond"], xt_a, lat["context"], t, t, expert="video_dit")
        loss = (pred_v - (batch["noise_v"] - x0_v)).square().mean() + (
            pred_a - (batch["noise_a"] - x0_a)
        ).square().mean()
        self.losses.append(float(loss.detach()))
        return loss


def loader(per_rank_batch: int, world_size: int = 1, rank: int = 0) -> DataLoader:
    """Unshuffled: with 2 ranks, step k sees samples 2k (rank 0) and 2k+1 (rank 1), like one process."""
    ds = TinySamples()
    sampler = (
        DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=False) if world_size > 1 else None
    )
    return DataLoader(ds, batch_size=per_rank_batch, shuffle=False, sampler=sampler, num_workers=0)


def trainer(strategy: Any, devices: int, max_steps: int = STEPS, **kwargs: Any) -> pl.Trainer:
    return cpu_trainer(
        devices=devices,
        strategy=strategy,
        max_steps=max_steps,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        **kwargs,
    )


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()


def trainable_state(module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """Full (gathered) trainable weights; collective under FSDP2, so every rank must call it."""
    return {n: _full(p) for n, p in module.named_parameters() if p.requires_grad}


class RecordAtStart(pl.Callback):
    """Record what a resumed run starts from: step, trainable weights, AdamW first moments."""

    def __init__(self) -> None:
        self.record: dict[str, Any] = {}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        opt = trainer.optimizers[0]
        params = dict(pl_module.named_parameters())
        self.record = {
            "global_step": trainer.global_step,
            "weights": trainable_state(pl_module),
            "exp_avg": {n: _full(opt.state[p]["exp_avg"]) for n, p in params.items() if p in opt.state},
        }
        model = trainer.strategy.model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            self.record["ddp_ignored"] = sorted(model.parameters_to_ignore)
            self.record["ddp_synced"] = len(model._module_parameters)


def main(out: Path) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    from mova_train.strategies import MovaDDPStrategy, MovaFSDP2Strategy

    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    # 1. FSDP2 (fp32: mixed_precision=None), 3 steps, then a distributed checkpoint.
    pl.seed_everything(0)
    module = DeterministicLit()
    fsdp = trainer(MovaFSDP2Strategy(mixed_precision=None), devices=2)
    fsdp.fit(module, loader(GLOBAL_BATCH // 2, 2, int(os.environ["RANK"])))
    ckpt = out / "fsdp2.ckpt"
    fsdp.save_checkpoint(ckpt)
    osd = get_optimizer_state_dict(
        fsdp.strategy.model,
        fsdp.optimizers[0],
        options=StateDictOptions(full_state_dict=True, cpu_offload=True),
    )
    results["fsdp2"] = {
        "weights": trainable_state(module),
        "losses": module.losses,
        "exp_avg": {n: s["exp_avg"] for n, s in osd.get("state", {}).items()},
        "global_step": fsdp.global_step,
    }
    # 2. DDP, same global batch.
    pl.seed_everything(0)
    module = DeterministicLit()
    ddp = trainer(MovaDDPStrategy(), devices=2)
    ddp.fit(module, loader(GLOBAL_BATCH // 2, 2, int(os.environ["RANK"])))
    results["ddp"] = {"weights": trainable_state(module), "losses": module.losses}
    # 3. DDP resumes the FSDP2 checkpoint (topology change) and trains one more step.
    pl.seed_everything(0)
    module = DeterministicLit()
    rec = RecordAtStart()
    resumed = trainer(MovaDDPStrategy(), devices=2, max_steps=STEPS + 1, callbacks=[rec])
    resumed.fit(module, loader(GLOBAL_BATCH // 2, 2, int(os.environ["RANK"])), ckpt_path=ckpt)
    results["ddp_resume"] = {**rec.record, "final_step": resumed.global_step}
    # 4. FSDP2 composed with context parallel: mesh (dp=1, cp=2); both ranks see the whole global batch.
    pl.seed_everything(0)
    module = DeterministicLit()
    cp = trainer(MovaFSDP2Strategy(mixed_precision=None, context_parallel_size=2), devices=2)
    cp.fit(module, loader(GLOBAL_BATCH))
    results["fsdp2_cp"] = {
        "weights": trainable_state(module),
        "mesh": tuple(cp.strategy.device_mesh.mesh_dim_names),
        "cp_on": module.model.sequence_parallel is not None,
    }
    if cp.global_rank == 0:
        torch.save(results, out / "results.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
