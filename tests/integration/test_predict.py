"""The predict loop end to end with the tiny model and tiny codecs: files, determinism, batching, DDP split."""

from __future__ import annotations

import json

import pytest
import torch
from lightning.pytorch import Trainer

from mova_train.callbacks.sample_writer import SampleWriter
from mova_train.codecs.encoders import tiny_encoders
from mova_train.lit.predict import MovaPredictModule, PredictDataModule, RankSplitSampler, RequestDataset
from mova_train.models.builders import mova_tiny
from mova_train.sampling.generator import generate
from mova_train.sampling.mux import probe_mp4
from mova_train.sampling.requests import SamplingSettings, make_request

SETTINGS = {"num_frames": 5, "height": 32, "width": 32, "fps": 8.0, "steps": 2, "cfg_scale": 2.0}


def _module(**kwargs) -> MovaPredictModule:
    enc = tiny_encoders(seed=0)
    return MovaPredictModule(mova_tiny(seed=0), enc, **kwargs)


def _requests_file(tmp_path, n):
    path = tmp_path / "requests.jsonl"
    path.write_text(
        "\n".join(json.dumps({"prompt": f"clip number {i}", "seed": 10 + i}) for i in range(n)) + "\n"
    )
    return path


def _trainer(out, **kwargs):
    writer = SampleWriter(out)
    kw = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    kw.update(kwargs)
    return Trainer(callbacks=[writer], **kw), writer


def test_predict_writes_mp4_and_sidecar(tmp_path):
    dm = PredictDataModule(requests=_requests_file(tmp_path, 2), sampling=SETTINGS, batch_size=2)
    trainer, writer = _trainer(tmp_path / "out")
    preds = trainer.predict(_module(), datamodule=dm)
    assert len(preds) == 1 and len(preds[0]) == 2
    assert sorted(p.name for p in (tmp_path / "out").glob("*.mp4")) == sorted(
        f"{r.id}.mp4" for r in dm.requests
    )
    for req in dm.requests:
        meta = json.loads((tmp_path / "out" / f"{req.id}.json").read_text())
        assert meta["request"] == req.to_dict() and meta["model_fingerprint"].startswith("model:")
        assert {"text", "sampling", "decode_video", "decode_audio", "mux"} <= set(meta["timings"])
        info = probe_mp4(tmp_path / "out" / f"{req.id}.mp4")
        assert info["num_frames"] == 5 and info["fps"] == pytest.approx(8.0)
        assert info["sample_rate"] == 48000 and info["num_channels"] == 1
        assert abs(info["audio_duration"] - info["video_duration"]) <= 1 / 8.0
    sample = preds[0][0]
    assert sample.video.shape == (5, 3, 32, 32) and sample.video.dtype == torch.uint8
    assert sample.audio.shape == (1, int(1600 * 5 / 8.0))  # trimmed to the video duration


def test_determinism_and_batch_independence():
    module = _module()
    settings = SamplingSettings(**SETTINGS)
    reqs = [make_request({"prompt": "a bell rings", "seed": 1}, settings),
            make_request({"prompt": "a dog barks", "seed": 2, "negative_prompt": "noise"}, settings)]  # fmt: skip
    gen = module.generator
    both = gen.generate(reqs)
    again = gen.generate(reqs)
    singles = [gen.generate([r])[0] for r in reqs]
    for b, a, s in zip(both, again, singles, strict=True):
        assert torch.equal(b.video_latents, a.video_latents) and torch.equal(b.video, a.video)
        assert torch.equal(b.audio_latents, a.audio_latents) and torch.equal(b.audio, a.audio)
        assert torch.allclose(b.video_latents, s.video_latents, atol=1e-5)
        assert torch.allclose(b.audio_latents, s.audio_latents, atol=1e-5)
        assert (b.video.int() - s.video.int()).abs().max() <= 1
    assert not torch.allclose(both[0].audio_latents, both[1].audio_latents)  # different seeds differ


def test_release_high_noise_and_single_expert():
    enc = tiny_encoders(seed=0)
    req = [make_request({"prompt": "waves", "seed": 3}, SamplingSettings(**{**SETTINGS, "steps": 4}))]
    model = mova_tiny(seed=0)
    ref = generate(
        req, model, _module().scheduler, enc.video_vae, enc.audio_vae, enc.text_encoder, decode=False
    )
    out = generate(req, model, _module().scheduler, enc.video_vae, enc.audio_vae, enc.text_encoder,
                   decode=False, release_high_noise="delete")  # fmt: skip
    assert model.video_dit is None and torch.equal(ref[0].video_latents, out[0].video_latents)
    one = mova_tiny(seed=0, experts=("video_dit",))
    lat = generate(
        req, one, _module().scheduler, enc.video_vae, enc.audio_vae, enc.text_encoder, decode=False
    )
    assert torch.isfinite(lat[0].video_latents).all()


def test_rank_split_sampler_covers_each_index_once():
    ds = RequestDataset(list(range(7)))
    seen = [list(RankSplitSampler(ds, num_replicas=3, rank=r)) for r in range(3)]
    assert sorted(i for s in seen for i in s) == list(range(7))
    assert [len(RankSplitSampler(ds, num_replicas=3, rank=r)) for r in range(3)] == [3, 2, 2]


@pytest.mark.distributed
def test_ddp_two_ranks_write_each_request_once(tmp_path):
    dm = PredictDataModule(requests=_requests_file(tmp_path, 3), sampling=SETTINGS, batch_size=1)
    dm.setup()
    trainer, _ = _trainer(tmp_path / "out", devices=2, strategy="ddp_spawn")
    trainer.predict(_module(), datamodule=dm, return_predictions=False)
    ranks = {}
    for i, req in enumerate(dm.requests):
        meta = json.loads((tmp_path / "out" / f"{req.id}.json").read_text())
        ranks[i] = meta["rank"]
        assert meta["world_size"] == 2
    assert ranks == {0: 0, 1: 1, 2: 0}  # request i on rank i % 2, no padding duplicates
    assert len(list((tmp_path / "out").glob("*.mp4"))) == 3
