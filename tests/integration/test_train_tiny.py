"""End-to-end training of the tiny dual tower on CPU: loss falls, frozen base, exact resume, atomic saves."""

from __future__ import annotations

import functools
import os
import signal

import pytest
import torch
from helpers.tiny import cpu_trainer
from helpers.tiny_latents import TinyDataModule, make_batch, tiny_module
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from mova_train.callbacks.checkpointing import SigtermCheckpoint
from mova_train.callbacks.ema import EMA
from mova_train.callbacks.lora_export import LoraExport
from mova_train.checkpoints.io import MovaCheckpointIO
from mova_train.codecs.encoders import latents_from_cached
from mova_train.lit.optim import warmup_cosine
from mova_train.models import mova_tiny
from mova_train.models.lora import LoraSpec, base_state_dict
from mova_train.models.lora_apply import load_lora
from mova_train.models.lora_upstream import write_upstream

pytestmark = pytest.mark.usefixtures("one_thread")

LORA = LoraSpec(rank=4, alpha=4, preset="attn_ffn")


def _trainer(tmp_path, max_steps, callbacks=(), accumulate=2, **kw) -> Trainer:
    return cpu_trainer(
        deterministic=True,
        max_steps=max_steps,
        accumulate_grad_batches=accumulate,
        gradient_clip_val=1.0,
        default_root_dir=tmp_path,
        plugins=[MovaCheckpointIO()],
        callbacks=[EMA(decay=0.9), *callbacks],  # first, as in conf/callbacks: savers see the step's EMA
        **kw,
    )


def _module(**kw):
    return tiny_module(
        lr=5e-3,
        lora=LORA,
        full_finetune=("dual_tower_bridge",),
        lr_scheduler=functools.partial(warmup_cosine, warmup_steps=2, total_steps=6, min_lr_ratio=0.1),
        param_groups={"dual_tower_bridge": {"lr_scale": 2.0}},
        **kw,
    )


def _trainable(mod) -> dict[str, torch.Tensor]:
    params = dict(mod.named_parameters())
    return {n: params[n].detach().clone() for n in mod.trainable_names}


def _eval_losses(mod, batch) -> tuple[float, float]:
    with torch.no_grad():
        losses = []
        for step in range(4):
            gen = torch.Generator().manual_seed(123 + step)
            out, _ = mod._step(batch, step, gen)
            losses.append((out.loss_video.item(), out.loss_audio.item()))
    return sum(v for v, _ in losses) / 4, sum(a for _, a in losses) / 4


def test_losses_fall_on_fixed_batch(tmp_path):
    full = ("video_dit", "audio_dit", "dual_tower_bridge")
    mod = tiny_module(lr=5e-3, full_finetune=full, expert_mode="single", expert="video_dit")
    mod.configure_model()
    batch = make_batch(0)
    v0, a0 = _eval_losses(mod, batch)
    trainer = _trainer(tmp_path, 30, accumulate=1, enable_checkpointing=False)
    trainer.fit(mod, datamodule=TinyDataModule(seed=0, fixed=True))
    v1, a1 = _eval_losses(mod, batch)
    assert v1 < 0.5 * v0, (v0, v1)
    assert a1 < 0.5 * a0, (a0, a1)


def test_only_trainable_change_and_checkpoint_is_small(tmp_path):
    mod = _module()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    export = LoraExport(
        tmp_path / "lora", every_n_steps=2, formats=["upstream"], writers={"upstream": write_upstream}
    )
    _trainer(tmp_path, 2, [ckpt, export]).fit(mod, datamodule=TinyDataModule(seed=1))
    base = mova_tiny(seed=0)
    ref = base.state_dict()
    after = base_state_dict(mod.model)
    changed = {k for k in ref if not torch.equal(ref[k], after[k])}
    assert changed and all(k.startswith("dual_tower_bridge.") for k in changed)  # the fully tuned component
    assert {k for k in ref if not k.startswith("dual_tower_bridge.")}.isdisjoint(changed)
    lora = {n: p for n, p in mod.model.named_parameters() if ".lora_B." in n}
    assert any(p.abs().sum() > 0 for p in lora.values())  # LoRA B moved away from zero
    # the checkpoint holds trainable weights + EMA only, never the frozen base
    state = torch.load(tmp_path / "ckpt" / "step=2.ckpt", weights_only=True)
    keys = set(state["state_dict"])
    trainable = set(mod.trainable_names)
    assert trainable <= keys
    assert all(k in trainable or k.startswith("ema_weights.") for k in keys)
    assert not any(k.startswith("model.video_dit.") and "lora" not in k for k in keys)
    assert state["mova_train"]["micro_step"] == 4
    # the optimizer groups carry the bridge's 2x learning rate
    lrs = {g["name"]: g["lr"] for g in trainer_groups(mod)}
    assert lrs["dual_tower_bridge"] == pytest.approx(2 * lrs["default"])
    # the exported LoRA reloads onto a fresh base with the same outputs
    fresh = mova_tiny(seed=0)
    load_lora(tmp_path / "lora" / "lora.safetensors", fresh)
    assert (tmp_path / "lora" / "upstream" / "lora_weights.pt").exists()
    mine = dict(mod.model.named_parameters())
    for n, p in fresh.named_parameters():
        if ".lora_" in n:
            assert torch.equal(p, mine[n])
    # ... and with the fully fine-tuned bridge it was trained with (lora/components/dual_tower_bridge)
    assert (tmp_path / "lora" / "components" / "dual_tower_bridge" / "config.json").is_file()
    tuned = base_state_dict(fresh.dual_tower_bridge)
    for k, v in base_state_dict(mod.model.dual_tower_bridge).items():
        assert torch.equal(tuned[k], v), k


def trainer_groups(mod):
    return mod.trainer.optimizers[0].param_groups


def _straight(tmp_path, n):
    mod, dm = _module(), TinyDataModule(seed=2)
    _trainer(tmp_path / "straight", n, enable_checkpointing=False).fit(mod, datamodule=dm)
    return mod, dm


def _assert_same(a, b, dm_a, dm_b):
    wa, wb = _trainable(a), _trainable(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ea, eb = a.ema_weights.state_dict(), b.ema_weights.state_dict()
    assert all(torch.equal(ea[k], eb[k]) for k in ea)
    assert dm_a.consumed == dm_b.consumed and a.micro_step == b.micro_step


@pytest.mark.slow
def test_resume_is_bit_identical(tmp_path):
    n, k = 4, 2
    ref, ref_dm = _straight(tmp_path, n)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=-1, filename="{step}")
    first = _module()
    _trainer(tmp_path / "a", k, [ckpt]).fit(first, datamodule=TinyDataModule(seed=2))
    resumed, dm = _module(), TinyDataModule(seed=2)
    _trainer(tmp_path / "b", n).fit(resumed, datamodule=dm, ckpt_path=tmp_path / "ckpt" / f"step={k}.ckpt")
    assert dm.consumed == 2 * n
    _assert_same(ref, resumed, ref_dm, dm)


class _Kill(Callback):
    def __init__(self, at_batch: int) -> None:
        self.at_batch = at_batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.at_batch:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.slow
def test_sigterm_mid_accumulation_saves_at_boundary_and_resumes(tmp_path):
    n = 4
    ref, ref_dm = _straight(tmp_path, n)
    sig = SigtermCheckpoint(dirpath=tmp_path / "ckpt")
    first = _module()
    with pytest.raises(SystemExit):
        _trainer(tmp_path / "a", n, [_Kill(at_batch=2), sig]).fit(first, datamodule=TinyDataModule(seed=2))
    assert sig.saved_path is not None and first.trainer.global_step == 2  # waited for the boundary
    resumed, dm = _module(), TinyDataModule(seed=2)
    _trainer(tmp_path / "b", n).fit(resumed, datamodule=dm, ckpt_path=sig.saved_path)
    _assert_same(ref, resumed, ref_dm, dm)


@pytest.mark.slow
def test_interrupted_save_leaves_previous_checkpoint(tmp_path, monkeypatch):
    n = 4
    ref, ref_dm = _straight(tmp_path, n)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_top_k=0, save_last=True)
    first = _module()
    _trainer(tmp_path / "a", 2, [ckpt]).fit(first, datamodule=TinyDataModule(seed=2))
    last = tmp_path / "ckpt" / "last.ckpt"
    before = last.read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"partial checkpoint bytes")
        raise OSError("killed mid-write")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="mid-write"):
        MovaCheckpointIO().save_checkpoint({"state_dict": {}}, last)
    monkeypatch.setattr(torch, "save", real_save)
    assert last.read_bytes() == before and not list((tmp_path / "ckpt").glob(".last.ckpt.tmp*"))
    resumed, dm = _module(), TinyDataModule(seed=2)
    _trainer(tmp_path / "b", n).fit(resumed, datamodule=dm, ckpt_path=last)
    _assert_same(ref, resumed, ref_dm, dm)


def test_cached_batch_fields_map_to_objective():
    lat = latents_from_cached(make_batch(0))
    assert set(lat) == {"video_latents", "cond", "audio_latents", "context", "audio_mask", "empty_latents"}
    with pytest.raises(KeyError, match="encoders"):
        latents_from_cached({"video": torch.zeros(1)})
