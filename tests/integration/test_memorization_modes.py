"""Acceptance of the conditioning modes: after training on clips A and B, the given stream or the caption selects
the clip.

Clips in latent space: A's video latents are a slow spatial sinusoid per channel, B's a fast one, and the audio
latents a slow vs a fast tone (`helpers.two_clips.latent_tone`). The random tiny VAE maps even a red square on
white and a blue square on black to latents only 16-28 % apart (mostly its biases), which a tiny model cannot
tell apart in a few minutes; latent clips 140 % apart make the selection measurable. The first-frame condition
is built like the VAE's (mask 1 on latent frame 0, the clip's frame-0 latent, the empty clip's latent after).

The tiny denoiser (the low-noise expert alone, over the whole t range, since v2a runs on it) is overfit on A and
B with `objective.mode={t2av: 0.4, a2v: 0.3, v2a: 0.3}`: A and B have their own captions, a2v samples never see
their first frame (`a2v_first_frame=0`) and 40 % of captions are dropped to the empty prompt. Then, with seeds
never used in training, 10 steps and no CFG:

- t2av: A's caption, no image (the no-frame condition) -> video and audio of A, not B (and the same for B);
- a2v: A's audio held at t = 0 with the *empty* caption and no image -> the video of A (so the audio, and
  nothing else, carries the clip; and for B);
- v2a: A's video held at t = 0 with the empty caption -> the audio of A (and for B).

Measures (logged; pytest -o log_cli=true -o log_cli_level=INFO shows them): the projection coefficient of the
sample on the line through the two clips' latents, ``2 <x - (A + B) / 2, own - other> / ||own - other||^2``
(+1 = the own clip, -1 = the other), and the distance margin ``(||x - other|| - ||x - own||) / ||own - other||``
(in [-1, 1]; > 0 means closer to the own clip).
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from helpers.tiny import overfit
from helpers.two_clips import FPS, F, H, W, latent_tone

from mova_train.codecs.encoders import tiny_encoders
from mova_train.models.builders import mova_tiny
from mova_train.objectives import FlowMatchingObjective, no_frame_condition
from mova_train.sampling.sampler import sample
from mova_train.schedulers.flow_match import FlowMatchScheduler

log = logging.getLogger(__name__)

CAPTIONS = {
    "A": "a red square slides right with a low hum",
    "B": "a blue square slides right with a high whistle",
}
TRAIN_STEPS, LR = 1500, 5e-3
MIX = {"t2av": 0.4, "a2v": 0.3, "v2a": 0.3}
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield _train()
    finally:
        torch.set_num_threads(threads)


def _train():
    torch.manual_seed(0)
    enc = tiny_encoders(seed=0)
    with torch.no_grad():
        contexts = {name: enc.text_encoder.encode([c]) for name, c in CAPTIONS.items()}
        null = enc.text_encoder.encode([""])
        empty = enc.video_vae.encode_empty(F, H, W)
    clips = {name: _latent_clip(enc, cycles, empty) for name, cycles in (("A", 1), ("B", 3))}
    batch = {k: torch.cat([clips["A"][k], clips["B"][k]]) for k in clips["A"]}
    batch["context"] = torch.cat([contexts["A"], contexts["B"]])
    batch["empty_latents"] = empty.expand(2, -1, -1, -1, -1)
    model = mova_tiny(seed=0, experts=("video_dit_2",))
    # the low-noise expert alone over (almost) the whole grid: boundary at t = 1000 leaves it every index but 0
    objective = FlowMatchingObjective(
        FlowMatchScheduler(), expert_mode="single", expert="video_dit_2", boundary_timestep=1000.0, mode=MIX,
        a2v_first_frame=0.0, caption_dropout=0.4, independent_audio_timesteps=True,
    )  # fmt: skip
    objective.null_context = null[0]
    loss = overfit(model, objective, batch, TRAIN_STEPS, LR, video_fps=FPS)
    model.eval()
    log.info("final training loss %.4f", loss)
    return {"model": model, "clips": clips, "contexts": contexts, "null": null, "empty": empty, "enc": enc}


def _latent_clip(enc, cycles: int, empty: torch.Tensor) -> dict[str, torch.Tensor]:
    z, t, h, w = empty.shape[1:]
    pos = torch.arange(t * h * w) / (t * h * w)
    video = torch.sin(2 * math.pi * cycles * pos + torch.arange(z)[:, None]).view(1, z, t, h, w)
    first = empty.clone()
    first[:, :, 0] = video[:, :, 0]
    mask = torch.zeros(1, 4, t, h, w)
    mask[:, :, 0] = 1.0
    return {
        "video_latents": video,
        "cond": torch.cat([mask, first], 1),
        "audio_latents": latent_tone(enc, cycles),
    }


def _sample(t, context, seed, y, video_given=None, audio_given=None):
    clip = t["clips"]["A"]
    gen = torch.Generator().manual_seed(seed)
    video_noise = torch.randn(clip["video_latents"].shape, generator=gen)
    audio_noise = torch.randn(clip["audio_latents"].shape, generator=gen)
    return sample(
        t["model"], FlowMatchScheduler(), video_noise=video_noise, audio_noise=audio_noise, y=y,
        context_pos=context, num_steps=10, cfg_scale=1.0, video_fps=FPS, boundary_timestep=float("inf"),
        video_given=video_given, audio_given=audio_given,
    )  # fmt: skip


def _margins(x, own, other) -> tuple[float, float]:
    """(projection coefficient, distance margin), see the module docstring."""
    d = own - other
    coef = float(2 * ((x - (own + other) / 2) * d).sum() / (d * d).sum())
    return coef, float(((x - other).norm() - (x - own).norm()) / d.norm())


SEEDS = (101, 202)


def test_t2av_caption_without_image_selects_the_clip(trained):
    y = no_frame_condition(trained["empty"])
    for name, other in (("A", "B"), ("B", "A")):
        for seed in SEEDS:
            out = _sample(trained, trained["contexts"][name], seed, y)
            own, oth = trained["clips"][name], trained["clips"][other]
            mv = _margins(out.video_latents, own["video_latents"], oth["video_latents"])
            ma = _margins(out.audio_latents, own["audio_latents"], oth["audio_latents"])
            log.info("t2av %s seed %d: video (coef, margin) %.3f %.3f, audio %.3f %.3f", name, seed, *mv, *ma)
            assert mv[0] > 0.5 and mv[1] > 0.2 and ma[0] > 0.5 and ma[1] > 0.2, (name, seed, mv, ma)


def test_a2v_audio_alone_selects_the_video(trained):
    y = no_frame_condition(trained["empty"])
    for name, other in (("A", "B"), ("B", "A")):
        own, oth = trained["clips"][name], trained["clips"][other]
        for seed in SEEDS:
            out = _sample(trained, trained["null"], seed, y, audio_given=own["audio_latents"])
            assert torch.equal(out.audio_latents, own["audio_latents"])  # held
            mv = _margins(out.video_latents, own["video_latents"], oth["video_latents"])
            log.info("a2v %s seed %d: video (coef, margin) %.3f %.3f", name, seed, *mv)
            assert mv[0] > 0.5 and mv[1] > 0.2, (name, seed, mv)


def test_v2a_video_alone_selects_the_audio(trained):
    for name, other in (("A", "B"), ("B", "A")):
        own, oth = trained["clips"][name], trained["clips"][other]
        for seed in SEEDS:
            out = _sample(trained, trained["null"], seed, own["cond"], video_given=own["video_latents"])
            assert torch.equal(out.video_latents, own["video_latents"])  # held
            ma = _margins(out.audio_latents, own["audio_latents"], oth["audio_latents"])
            log.info("v2a %s seed %d: audio (coef, margin) %.3f %.3f", name, seed, *ma)
            assert ma[0] > 0.5 and ma[1] > 0.2, (name, seed, ma)
