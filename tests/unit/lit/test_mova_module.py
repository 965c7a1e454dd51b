"""MovaLitModule wiring: optimizers, schedules, param groups, EMA, metrics, checkpoints, encoders."""

from __future__ import annotations

import functools

import pytest
import torch
from bitsandbytes.optim import AdamW8bit
from helpers.tiny import cpu_trainer
from helpers.tiny_latents import TinyDataModule, make_batch, tiny_module
from lightning.pytorch import Trainer

from mova_train.callbacks.ema import EMA, ema_swapped
from mova_train.callbacks.throughput import Throughput
from mova_train.lit.optim import build_param_groups, warmup_cosine, warmup_stable_decay
from mova_train.models import mova_tiny
from mova_train.models.lora import LoraSpec

pytestmark = pytest.mark.usefixtures("one_thread")

LORA = LoraSpec(rank=4, alpha=4, preset="attn")


def _fit(mod, steps: int, tmp_path, accumulate: int = 1, callbacks=(), **dm_kw) -> Trainer:
    trainer = cpu_trainer(
        callbacks=list(callbacks),
        max_steps=steps,
        enable_checkpointing=False,
        accumulate_grad_batches=accumulate,
        default_root_dir=tmp_path,
    )
    trainer.fit(mod, datamodule=TinyDataModule(**dm_kw))
    return trainer


def test_schedules_count_optimizer_steps():
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD(p, lr=1.0)
    sched = warmup_cosine(opt, warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    lrs = []
    for _ in range(16):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert lrs[14] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.1)
    opt = torch.optim.SGD(p, lr=2.0)
    sched = warmup_stable_decay(opt, warmup_steps=2, total_steps=10, decay_steps=4, min_lr_ratio=0.0)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 1.5, 1.0, 0.5])
    with pytest.raises(ValueError, match="fit in"):
        warmup_stable_decay(opt, warmup_steps=5, total_steps=6, decay_steps=4)


def test_param_groups_scale_lr():
    model = mova_tiny()
    groups = build_param_groups(model, 1e-3, {"dual_tower_bridge": {"lr_scale": 2.0, "weight_decay": 0.0}})
    by_name = {g["name"]: g for g in groups}
    assert by_name["dual_tower_bridge"]["lr"] == pytest.approx(2e-3)
    assert by_name["dual_tower_bridge"]["weight_decay"] == 0.0 and by_name["default"]["lr"] == 1e-3
    n_bridge = sum(1 for n, _ in model.named_parameters() if n.startswith("dual_tower_bridge."))
    assert len(by_name["dual_tower_bridge"]["params"]) == n_bridge


def test_adamw8bit_trains_lora_on_cpu(tmp_path):
    mod = tiny_module(lora=LORA, optimizer=functools.partial(AdamW8bit, lr=1e-3))
    mod.configure_model()
    before = {n: p.detach().clone() for n, p in mod.named_parameters() if p.requires_grad}
    trainer = _fit(mod, 3, tmp_path)
    assert type(trainer.optimizers[0]).__name__ == "AdamW8bit"
    after = dict(mod.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_metrics_ema_and_accumulation(tmp_path):
    mod = tiny_module(lora=LORA, timestep_buckets=2)
    trainer = _fit(mod, 2, tmp_path, accumulate=2, callbacks=[Throughput(), EMA(decay=0.5)])
    m = trainer.callback_metrics
    assert "train/lr" not in m  # the lr_monitor callback's job (one owner)
    for key in (
        "train/loss",
        "train/loss_video",
        "train/loss_audio",
        "train/samples_per_s",
        "train/tokens_per_s",
    ):
        assert key in m, key
    assert any(k.startswith("train/loss_t") for k in m)
    assert mod.micro_step == 4 and trainer.global_step == 2
    # EMA moved once per optimizer step: it differs from the weights (decay 0.5 lags) but is not the init
    params = dict(mod.named_parameters())
    name = next(n for n in mod.trainable_names if ".lora_B." in n)
    ema = mod.ema_weights.get(name)
    assert not torch.equal(ema, params[name].float()) and ema.abs().sum() > 0
    with ema_swapped(mod):
        assert torch.equal(params[name].float(), ema)
    assert not torch.equal(params[name].float(), ema)


def test_missing_expert_and_bad_checkpoint_are_clear_errors():
    single = tiny_module(lora=LORA)
    single._model_factory = functools.partial(mova_tiny, experts=("video_dit",))
    with pytest.raises(ValueError, match="video_dit_2"):
        single.configure_model()
    mod = tiny_module(lora=LORA)
    mod.configure_model()
    with pytest.raises(KeyError, match="trainable weights"):
        mod.on_load_checkpoint({"state_dict": {}})


def _raw_clips() -> dict:
    """Two raw clips as the raw-mode datamodule yields them: 5 frames of 32 x 32, 64 audio samples, captions."""
    g = torch.Generator().manual_seed(0)
    return {
        "video": torch.rand(2, 3, 5, 32, 32, generator=g) * 2 - 1,
        "audio": torch.randn(2, 1, 64, generator=g) * 0.1,
        "caption": ["a dog barks", "rain on a roof"],
    }


def test_raw_batch_through_tiny_encoders():
    from mova_train.codecs.encoders import tiny_encoders

    enc = tiny_encoders(seed=0, text_len=8)
    raw = {**_raw_clips(), "audio_mask": torch.tensor([True, False])}
    lat = enc.encode_batch(raw)
    assert lat["video_latents"].shape == (2, 4, 2, 4, 4)
    assert lat["cond"].shape == (2, 8, 2, 4, 4) and (lat["cond"][:, :4, 0] == 1).all()
    assert lat["audio_latents"].shape == (2, 8, 8) and lat["context"].shape == (2, 8, 32)
    assert not any(p.requires_grad for p in enc.parameters())
    mod = tiny_module(lora=LORA, encoders=enc, caption_dropout=0.5)
    mod.configure_model()
    assert mod.objective.null_context is not None and mod.objective.null_context.abs().sum() > 0
    out, _ = mod._step(raw, 0, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.per_sample_audio[1] == 0
    cached = make_batch(0)
    assert enc.encode_batch(cached)["cond"] is cached["cond"]  # latents pass through untouched


def test_noise_is_seeded_by_the_data_parallel_rank():
    """Context-parallel ranks of one group (same data-parallel rank) must draw identical noise and timesteps."""
    from types import SimpleNamespace

    def draw(global_rank: int, dp_rank: int) -> torch.Tensor:
        mod = tiny_module(lora=LORA)
        strategy = SimpleNamespace(distributed_sampler_kwargs={"rank": dp_rank, "num_replicas": 2})
        mod._trainer = SimpleNamespace(strategy=strategy, global_rank=global_rank)
        return torch.randn(4, generator=mod._generator(3))

    assert torch.equal(draw(global_rank=0, dp_rank=0), draw(global_rank=1, dp_rank=0))
    assert not torch.equal(draw(global_rank=0, dp_rank=0), draw(global_rank=2, dp_rank=1))


def test_raw_t2av_gets_the_empty_clip_latent_from_the_vae():
    from mova_train.codecs.encoders import tiny_encoders

    enc = tiny_encoders(seed=0, text_len=8)
    raw = _raw_clips()
    assert "empty_latents" not in enc.encode_batch(raw)
    lat = enc.encode_batch(raw, empty_latents=True)
    with torch.no_grad():
        want = enc.video_vae.encode(torch.zeros(1, 3, 5, 32, 32))
    assert lat["empty_latents"].shape == (2, 4, 2, 4, 4) and torch.equal(lat["empty_latents"][1], want[0])
    assert not torch.equal(lat["empty_latents"][0], lat["cond"][0, 4:])  # not the first-frame latent
    mod = tiny_module(lora=LORA, encoders=enc, mode="t2av")
    mod.configure_model()
    out, _ = mod._step(raw, 0, torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.modes == ("t2av", "t2av")
