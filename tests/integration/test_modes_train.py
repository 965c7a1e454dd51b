"""Each conditioning mode trains: the losses of the streams it trains fall on a fixed batch (tiny model), and a
Lightning fit with a per-sample mix logs the per-mode losses.
"""

from __future__ import annotations

import pytest
import torch
from helpers.tiny import cpu_trainer
from helpers.tiny_latents import TinyDataModule, make_batch, tiny_module

from mova_train.codecs.encoders import latents_from_cached
from mova_train.models import mova_tiny
from mova_train.models.lora import LoraSpec
from mova_train.objectives import FlowMatchingObjective

pytestmark = pytest.mark.usefixtures("one_thread")

MIX = {"i2av": 0.25, "t2av": 0.25, "a2v": 0.25, "v2a": 0.25}
EXPECTED = {
    "i2av": {"loss_i2av_video", "loss_i2av_audio"},
    "t2av": {"loss_t2av_video", "loss_t2av_audio"},
    "a2v": {"loss_a2v_video"},
    "v2a": {"loss_v2a_audio"},
}


@torch.no_grad()
def _eval(model, objective, lat) -> dict[str, float]:
    """Mean per-mode stream losses over fixed draws (the same draws before and after training)."""
    sums: dict[str, float] = {}
    for seed in range(8):
        out = objective(model, lat, seed, torch.Generator().manual_seed(seed))
        for name, (value, _) in out.mode_losses().items():
            sums[name] = sums.get(name, 0.0) + float(value) / 8
    return sums


@pytest.mark.parametrize("mode", ["i2av", "t2av", "a2v", "v2a"])
def test_each_mode_lowers_the_losses_it_trains(mode):
    lat = latents_from_cached(make_batch(0))
    model = mova_tiny(seed=0)
    objective = FlowMatchingObjective(mode=mode, expert_mode="by_timestep")
    before = _eval(model, objective, lat)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(1)
    for step in range(60):
        loss = objective(model, lat, step, gen).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _eval(model, objective, lat)
    assert set(before) == set(after) == EXPECTED[mode]
    for name in EXPECTED[mode]:
        assert after[name] < 0.75 * before[name], (name, before[name], after[name])


def test_mixed_fit_logs_per_mode_losses(tmp_path):
    mod = tiny_module(lora=LoraSpec(rank=4, alpha=4, preset="attn"), mode=MIX, expert_mode="by_timestep")
    trainer = cpu_trainer(
        max_steps=6, enable_checkpointing=False, default_root_dir=tmp_path, log_every_n_steps=1
    )
    trainer.fit(mod, datamodule=TinyDataModule(fixed=True))
    logged = {k.removeprefix("train/") for k in trainer.callback_metrics if k.startswith("train/loss_")}
    assert len(logged & set().union(*EXPECTED.values())) >= 3, sorted(logged)
    assert all(torch.isfinite(v) for v in trainer.callback_metrics.values())
