"""Dataset mixing (`data.sources`): sample shares follow the weights (or counts x repeats), seeded, and the
training stream resumes bit-identically with mixing and automatic buckets (cached shards, several buckets).
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers.shards import encode_safetensors, write_tar
from helpers.streams import take_batches

from mova_train.data.cache import latents_checksum
from mova_train.data.datamodule import MovaDataModule
from mova_train.data.options import DataConfigError

SIZES = [(16, 16, 5), (16, 32, 9)]


def _sample(key: str, size: tuple[int, int, int], seed: int) -> dict:
    h, w, f = size
    gen = torch.Generator().manual_seed(seed)
    latent = (4, (f - 1) // 4 + 1, h // 8, w // 8)
    tensors = {
        "video_latents": torch.randn(latent, generator=gen).bfloat16(),
        "cond_latents": torch.randn(latent, generator=gen).bfloat16(),
        "audio_latents": torch.randn(8, 2 * f, generator=gen).bfloat16(),
        "context": torch.randn(3, 6, generator=gen).bfloat16(),
    }
    latents = encode_safetensors(tensors)
    record = {"caption": key, "has_audio": True, "height": h, "width": w, "num_frames": f}
    record["latents_sha256"] = latents_checksum(latents)
    return {"__key__": key, "latents.safetensors": latents, "json": record}


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, list[str]]:
    """Source "a": 6 samples in 2 shards, source "b": 3 samples in 1 shard; both sizes in each."""
    root = tmp_path_factory.mktemp("sources")
    out: dict[str, list[str]] = {}
    for name, shards in (("a", [3, 3]), ("b", [3])):
        out[name] = []
        n = 0
        for s, count in enumerate(shards):
            path = root / f"{name}-{s}.tar"
            write_tar(
                path,
                [
                    _sample(f"{name}{n + i}", SIZES[(n + i) % 2], hash((name, n + i)) % 1000)
                    for i in range(count)
                ],
            )
            n += count
            out[name].append(str(path))
    return out


def _dm(sources, **kw) -> MovaDataModule:
    args = dict(mode="cached", batch_size=4, num_workers=0, shuffle_buffer=4, text_len=4, seed=3)
    args.update(kw)
    dm = MovaDataModule(sources=sources, **args)
    dm.setup("fit")
    return dm


def _share_of_a(dm: MovaDataModule, batches: int) -> float:
    keys = []
    for i, batch in enumerate(dm.train_dataloader()):
        keys += batch["key"]
        if i + 1 == batches:
            break
    return sum(k.startswith("a") for k in keys) / len(keys)


@pytest.mark.parametrize(
    ("spec", "share"),
    [
        ({"a": {"weight": 1.0}, "b": {"weight": 3.0}}, 0.25),
        ({"a": {}, "b": {}}, 6 / 9),  # by sample count
        ({"a": {}, "b": {"repeats": 2}}, 0.5),  # b listed twice
    ],
)
def test_sample_shares_follow_the_weights(caches, spec, share):
    sources = [{"shards": caches[name], **extra} for name, extra in spec.items()]
    got = _share_of_a(_dm(sources), 200)  # 800 samples: binomial sd < 0.017
    assert abs(got - share) < 0.05, (got, share)


def test_the_mix_is_seeded(caches):
    sources = [{"shards": caches["a"], "weight": 1.0}, {"shards": caches["b"], "weight": 1.0}]
    assert _share_of_a(_dm(sources), 20) == _share_of_a(_dm(sources), 20)
    assert [b["key"] for b in take_batches(_dm(sources), 3)] != [
        b["key"] for b in take_batches(_dm(sources, seed=4), 3)
    ]


def _same(a: dict, b: dict) -> bool:
    tensors = [k for k, v in a.items() if isinstance(v, torch.Tensor)]
    return (
        a["key"] == b["key"]
        and all(torch.equal(a[k], b[k]) for k in tensors)
        and tensors == [k for k, v in b.items() if isinstance(v, torch.Tensor)]
    )


def test_resume_is_bit_identical_with_mixing_and_auto_buckets(caches):
    sources = [{"shards": caches["a"], "weight": 2.0}, {"shards": caches["b"], "weight": 1.0}]
    kw = dict(buckets="auto", bucket_tokens=40, audio_hop=4, num_workers=2, fps=24.0, sample_rate=48)
    reference = _dm(sources, **kw)
    assert sorted(reference.plan.batch_sizes.values()) != [reference.plan.batch_sizes[SIZES[0]]] * 2
    ref = take_batches(reference, 10)
    assert {tuple(b["video_latents"].shape) for b in ref} != {
        tuple(ref[0]["video_latents"].shape)
    }  # 2 buckets

    first = _dm(sources, **kw)
    head = take_batches(first, 6, consume=5)
    state = json.loads(json.dumps(first.state_dict()))  # as stored in a checkpoint
    resumed = _dm(sources, **kw)
    resumed.load_state_dict(state)
    tail = take_batches(resumed, 5)
    got = head[:5] + tail
    assert len(got) == len(ref) and all(_same(a, b) for a, b in zip(got, ref, strict=True))


def test_another_mix_restarts_the_stream(caches, caplog):
    sources = [{"shards": caches["a"], "weight": 2.0}, {"shards": caches["b"], "weight": 1.0}]
    dm = _dm(sources)
    take_batches(dm, 2)
    state = dm.state_dict()
    other = _dm([{**sources[0], "weight": 1.0}, sources[1]])
    other.load_state_dict(state)
    assert other.epoch == 1 and "restarts with fresh seeds" in caplog.text


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (
            [{"shards": "x", "weight": 1.0}, {"shards": "y"}],
            r"weight is set on some sources but not on \[1\]",
        ),
        ([{"shards": "x", "weight": -1}], r"data.sources\[0\].weight=-1 must be a positive number"),
        ([{"shards": "x", "repeat": 2}], r"data.sources\[0\] has unknown keys \['repeat'\]"),
        ([{"weight": 1.0}], r"data.sources\[0\].shards is missing"),
        ([], r"data.sources=\[\] must be a non-empty list"),
    ],
)
def test_bad_sources_are_refused_before_reading(sources, message):
    with pytest.raises(DataConfigError, match=message):
        MovaDataModule(sources=sources)


def test_shards_and_sources_are_exclusive(caches):
    with pytest.raises(DataConfigError, match="give data.shards or data.sources, not both"):
        MovaDataModule(caches["a"], sources=[{"shards": caches["b"]}])
