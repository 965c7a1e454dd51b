"""Inference modes with the tiny model: t2av (no frame), a2v (given audio), v2a (given video).

The given stream is held at t = 0 for every step, and the mp4 keeps it: decoded, it is bit-identical to the
same waveform (or frames) written through the same codecs, and close to the file that was given; the generated
stream lasts as long as the given one within a frame. Every mode also runs through `python -m mova_train.predict`
as the README shows it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torchcodec.decoders import AudioDecoder, VideoDecoder
from torchcodec.encoders import AudioEncoder

from mova_train.callbacks.sample_writer import write_sample
from mova_train.codecs.encoders import tiny_encoders
from mova_train.models.builders import mova_tiny
from mova_train.sampling.generator import MovaGenerator
from mova_train.sampling.media import load_audio, load_video
from mova_train.sampling.mux import probe_mp4, write_mp4
from mova_train.sampling.requests import SamplingSettings, make_request

REPO = Path(__file__).resolve().parents[2]
F, H, W, FPS = 5, 32, 32, 8.0
SETTINGS = SamplingSettings(num_frames=F, height=H, width=W, fps=FPS, steps=2, cfg_scale=2.0)
SIZE = [f"sampling.num_frames={F}", f"sampling.height={H}", f"sampling.width={W}", f"sampling.fps={FPS}"]


def _tone(seconds: float, rate: int, hz: float) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    return (0.4 * torch.sin(2 * math.pi * hz * t) * (1 + torch.sin(2 * math.pi * 2 * t)) / 2)[None]


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """A 1 s voice track (wav, 48 kHz) and a 1 s clip (48x80 at 24 fps, with a tone), both longer than 5/8 s."""
    tmp = tmp_path_factory.mktemp("media")
    AudioEncoder(_tone(1.0, 48000, 330.0), sample_rate=48000).to_file(str(tmp / "voice.wav"))
    frames = torch.zeros(24, 3, 48, 80, dtype=torch.uint8)
    for i in range(24):
        frames[i, 0, 8:40, 2 * i : 2 * i + 24] = 230
        frames[i, 2] = 40 + 5 * i
    write_mp4(tmp / "clip.mp4", frames, _tone(1.0, 48000, 180.0), fps=24.0, sample_rate=48000)
    return {"audio": tmp / "voice.wav", "video": tmp / "clip.mp4"}


class Recording(torch.nn.Module):
    """The tiny dual tower, recording the timesteps, experts and conditioning of every call."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = mova_tiny(seed=0)
        self.calls: list[dict] = []
        self.video_dit, self.video_dit_2 = (
            self.inner.video_dit,
            self.inner.video_dit_2,
        )  # for the expert lookup

    def forward(self, *, latents, y, audio_latents, timestep, audio_timestep, expert, **kw):
        self.calls.append(dict(t=timestep.clone(), t_a=audio_timestep.clone(), expert=expert, y=y.clone()))
        return self.inner(latents, y, audio_latents, timestep=timestep, audio_timestep=audio_timestep,
                          expert=expert, **kw)  # fmt: skip


def _generate(entry: dict, **kwargs):
    enc = tiny_encoders(seed=0)
    model = Recording().eval()
    gen = MovaGenerator(model, _scheduler(), enc.video_vae, enc.audio_vae, enc.text_encoder, **kwargs)
    return gen.generate([make_request(entry, SETTINGS)])[0], model.calls, enc


def _scheduler():
    from mova_train.schedulers.flow_match import FlowMatchScheduler

    return FlowMatchScheduler()


def _decoded_audio(path: Path) -> torch.Tensor:
    return AudioDecoder(str(path)).get_all_samples().data


def _decoded_frames(path: Path) -> torch.Tensor:
    return VideoDecoder(str(path))[:]


def check_given_audio(mp4: Path, audio_file: Path, tmp: Path) -> dict[str, float]:
    """The mp4's track equals the given track after the same AAC round trip; it lines up with the video."""
    wave = load_audio(audio_file, 48000, int(48000 * F / FPS), FPS)
    ref = write_mp4(tmp / "ref_audio.mp4", torch.zeros(F, 3, H, W, dtype=torch.uint8), wave, FPS, 48000)
    got, want = _decoded_audio(mp4), _decoded_audio(ref)
    assert torch.equal(got, want), "the mp4's audio is not the given track"
    n = min(got.shape[1], wave.shape[1])
    err = float((got[0, :n] - wave[0, :n]).abs().max())
    assert err < 0.05, err  # AAC at 192 kbit/s: the round trip stays close to the file
    info = probe_mp4(mp4)
    assert info["num_frames"] == F and abs(info["audio_duration"] - info["video_duration"]) <= 1 / FPS
    return {"audio_max_abs_vs_file": err}


def check_given_video(mp4: Path, video_file: Path, tmp: Path) -> dict[str, float]:
    """The mp4's frames equal the given frames after the same H.264 round trip; the audio lines up."""
    frames = load_video(video_file, F, FPS, H, W)
    ref = write_mp4(tmp / "ref_video.mp4", frames, torch.zeros(1, int(48000 * F / FPS)), FPS, 48000)
    got, want = _decoded_frames(mp4), _decoded_frames(ref)
    assert torch.equal(got, want), "the mp4's frames are not the given frames"
    err = float((got.float() - frames.float()).abs().mean())
    assert err < 4.0, err  # x264 crf 18 on a 64x64 clip
    info = probe_mp4(mp4)
    assert info["num_frames"] == F and abs(info["audio_duration"] - info["video_duration"]) <= 1 / FPS
    return {"video_mean_abs_vs_file": err}


def test_a2v_holds_the_given_audio_and_keeps_it(media, tmp_path):
    sample, calls, enc = _generate({"prompt": "a voice", "audio": str(media["audio"]), "seed": 1})
    assert all((c["t_a"] == 0).all() for c in calls)  # held at t = 0 for every step
    assert all((c["t"] > 0).all() for c in calls)  # the video is generated
    with torch.no_grad():
        want = enc.audio_vae.encode(load_audio(media["audio"], 1600, int(1600 * F / FPS), FPS)[None])
    assert torch.equal(sample.audio_latents, want[0])  # the given latent never moved
    assert sample.sample_rate == 48000
    assert torch.equal(sample.audio, load_audio(media["audio"], 48000, int(48000 * F / FPS), FPS))
    assert (calls[0]["y"][:, :4] == 0).all()  # no first frame: the no-frame condition
    check_given_audio(write_sample(sample, tmp_path), media["audio"], tmp_path)


def test_v2a_holds_the_given_video_on_the_low_noise_expert(media, tmp_path):
    sample, calls, enc = _generate({"prompt": "a clip", "video": str(media["video"]), "seed": 2})
    assert all((c["t"] == 0).all() and c["expert"] == "video_dit_2" for c in calls)
    assert all((c["t_a"] > 0).all() for c in calls)
    frames = load_video(media["video"], F, FPS, H, W)
    assert torch.equal(sample.video, frames)
    with torch.no_grad():
        pixels = frames.permute(1, 0, 2, 3)[None].float() / 127.5 - 1.0
        assert torch.equal(sample.video_latents, enc.video_vae.encode(pixels)[0])
        first = enc.video_vae.encode_first_frame_condition(pixels[:, :, 0], F)
    assert torch.equal(calls[0]["y"][:1], first)  # conditioned on the given clip's first frame
    check_given_video(write_sample(sample, tmp_path), media["video"], tmp_path)


def test_t2av_no_frame_and_white_frame():
    none, calls, enc = _generate({"prompt": "rain", "seed": 3})
    with torch.no_grad():
        empty = enc.video_vae.encode(torch.zeros(1, 3, F, H, W))
    assert (calls[0]["y"][:, :4] == 0).all() and torch.equal(calls[0]["y"][:1, 4:], empty)
    white, calls_w, _ = _generate({"prompt": "rain", "seed": 3}, first_frame_mode="white")
    assert (calls_w[0]["y"][:, :4, 0] == 1).all()  # upstream's white frame, kept for the released model
    assert not torch.allclose(none.video_latents, white.video_latents)


def _predict(args: list[str], out: Path, cwd: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MOVA_")}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", WANDB_MODE="offline", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "mova_train.predict", "+recipe=predict_tiny_cpu", "sampling.steps=2", *SIZE,
           f"hydra.run.dir={out}", f"output_dir={out}", *args]  # fmt: skip
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_predict_entry_point_in_every_mode(media, tmp_path):
    """The README's one command per mode, each as a subprocess (run side by side)."""
    png = tmp_path / "face.png"
    from PIL import Image

    Image.new("RGB", (W, H), (200, 120, 40)).save(png)
    runs = {
        "t2av": [],
        "i2av": [f"first_frame={png}"],
        "a2v": [f"audio={media['audio']}", f"first_frame={png}"],
        "v2a": [f"video={media['video']}"],
    }
    procs = {mode: _predict(args, tmp_path / mode, tmp_path) for mode, args in runs.items()}
    for mode, proc in procs.items():
        log, _ = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{mode}: exit {proc.returncode}\n{log[-5000:]}"
    for mode in runs:
        (mp4,) = sorted((tmp_path / mode).glob("*.mp4"))
        assert json.loads(mp4.with_suffix(".json").read_text())["mode"] == mode
    check_given_audio(next((tmp_path / "a2v").glob("*.mp4")), media["audio"], tmp_path)
    check_given_video(next((tmp_path / "v2a").glob("*.mp4")), media["video"], tmp_path)
