"""Acceptance: the sampler regenerates what the tiny model memorized, and the first frame selects the audio.

Two clips share one caption. Clip A: a large red square moving right, audio latents of a "low tone"; clip B: a blue
square, a "high tone" (`helpers.two_clips`: audio synthesized in latent space). The tiny denoiser (one video
expert over the whole t range) is overfit on both clips with the flow-matching objective, then each clip is sampled through the full request pipeline (PNG first
frame -> preprocess -> VAE condition -> sampler), 10 steps, no CFG, a seed never used in training.

1. Memorization: relative latent error ||x_gen - x_clip|| / ||x_clip|| after training << untrained.
2. Cross-modal: the audio generated from A's first frame projects onto A's audio, from B's onto B's
   (projection coefficient on (A - B), centred: +1 = A, -1 = B).
"""

from __future__ import annotations

import logging

import pytest
import torch
from helpers.tiny import overfit
from helpers.two_clips import FPS, F, H, W, make_clip
from helpers.two_clips import rel as _rel

from mova_train.codecs.encoders import tiny_encoders
from mova_train.models.builders import mova_tiny
from mova_train.objectives.flow_matching import FlowMatchingObjective
from mova_train.sampling.generator import generate
from mova_train.sampling.requests import SamplingSettings, make_request
from mova_train.schedulers.flow_match import FlowMatchScheduler

log = logging.getLogger(__name__)

CAPTION = "a shape moves with a steady tone"
TRAIN_STEPS, LR = 2000, 5e-3


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is ~2x faster than two contending ones
    try:
        yield _train_and_sample(tmp_path_factory)
    finally:
        torch.set_num_threads(threads)


def _train_and_sample(tmp_path_factory):
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("mem")
    enc = tiny_encoders(seed=0)
    clips = [make_clip(enc, "A", tmp / "a.png"), make_clip(enc, "B", tmp / "b.png")]
    settings = SamplingSettings(num_frames=F, height=H, width=W, fps=FPS, steps=10, cfg_scale=1.0)
    reqs = [
        make_request({"prompt": CAPTION, "first_frame": str(tmp / p), "seed": 99}, settings)
        for p in ("a.png", "b.png")
    ]
    sched = FlowMatchScheduler()
    model = mova_tiny(seed=0, experts=("video_dit",))

    def sample_all():
        model.eval()
        out = generate(reqs, model, sched, enc.video_vae, enc.audio_vae, enc.text_encoder, decode=False)
        model.train()
        return out

    untrained = sample_all()
    batch = {k: torch.cat([c[k] for c in clips]) for k in clips[0]}
    batch["context"] = enc.text_encoder.encode([CAPTION]).expand(2, -1, -1)
    # one expert over (almost) the whole t range: boundary at t = 20 puts ~all grid indices on video_dit
    objective = FlowMatchingObjective(sched, expert_mode="single", expert="video_dit", boundary_timestep=20.0)
    loss = overfit(model, objective, batch, TRAIN_STEPS, LR, video_fps=FPS)
    log.info("final training loss %.4f", loss)
    return clips, untrained, sample_all()


@pytest.mark.slow
def test_memorization_regenerates_latents(runs):
    clips, untrained, trained = runs
    for clip, before, after in zip(clips, untrained, trained, strict=True):
        errs = {
            "video_untrained": _rel(before.video_latents, clip["video_latents"][0]),
            "video_trained": _rel(after.video_latents, clip["video_latents"][0]),
            "audio_untrained": _rel(before.audio_latents, clip["audio_latents"][0]),
            "audio_trained": _rel(after.audio_latents, clip["audio_latents"][0]),
        }
        log.info("relative latent errors: %s", errs)
        assert errs["video_untrained"] > 1.0 and errs["audio_untrained"] > 1.0
        assert errs["video_trained"] < 0.25 and errs["audio_trained"] < 0.6
        assert errs["video_trained"] < errs["video_untrained"] / 10
        assert errs["audio_trained"] < errs["audio_untrained"] / 3


@pytest.mark.slow
def test_first_frame_selects_the_audio(runs):
    clips, _, trained = runs
    a, b = clips[0]["audio_latents"][0], clips[1]["audio_latents"][0]
    direction, mid = a - b, (a + b) / 2

    def proj(x):
        return float(2 * ((x - mid) * direction).sum() / (direction * direction).sum())

    coef = [proj(s.audio_latents) for s in trained]
    log.info("audio projection coefficients (A: +1, B: -1): %s", coef)
    assert coef[0] > 0.5 and coef[1] < -0.5
    assert _rel(trained[0].audio_latents, a) < _rel(trained[0].audio_latents, b)
    assert _rel(trained[1].audio_latents, b) < _rel(trained[1].audio_latents, a)
