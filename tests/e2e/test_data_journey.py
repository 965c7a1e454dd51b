"""Prepare -> shard -> cache through the commands users type: synthetic clips and upstream's real sample clip,
packed from upstream's metadata.json format and encoded with the release folder's own codecs.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest
from e2e import journey as j
from e2e.workspace import Workspace
from safetensors.torch import load

pytestmark = pytest.mark.e2e


def _cached(folder: Path) -> list[tuple[dict, dict]]:
    """(record, tensors) of every clip in a cache folder."""
    out = []
    for shard in sorted(folder.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
        for name, data in members.items():
            if name.endswith(".json"):
                key = name[: -len(".json")]
                out.append((json.loads(data), load(members[f"{key}.latents.safetensors"])))
    return out


def test_shards_hold_every_clip(workspace: Workspace, cache: Path) -> None:
    shards = workspace.root / "data" / "shards"
    synthetic = json.loads((shards / "synthetic" / "index.json").read_text())
    real = json.loads((shards / "real" / "index.json").read_text())
    assert synthetic["total"] == 4 and len(synthetic["shards"]) == 2  # --max-count 2
    assert real["total"] == 1 and not real["skipped"]


def test_cache_has_the_release_codecs_latents(workspace: Workspace, cache: Path) -> None:
    # 5 frames -> 2 latent frames of 32x48 / 8; DAC hop 6 at 300 Hz: int(300 * 5 / 24) = 62 samples -> 11 frames
    video, audio = (
        [8, 2, j.HEIGHT // 8, j.WIDTH // 8],
        [8, (int(j.SAMPLE_RATE * j.FRAMES / j.FPS) - 1) // 6 + 1],
    )
    clips = _cached(cache / "synthetic") + _cached(cache / "real")
    assert len(clips) == 5
    captions = {record["caption"][:40] for record, _ in clips}
    assert any(c.startswith("A photorealistic medium shot") for c in captions)  # the real clip is in
    for record, tensors in clips:
        assert list(tensors["video_latents"].shape) == video
        assert list(tensors["cond_latents"].shape) == video
        assert list(tensors["audio_latents"].shape) == audio
        assert tensors["context"].shape[1] == 32  # the release UMT5's d_model = the DiTs' text_dim
        assert record["audio_mask"] is True and tensors["audio_latents"].abs().sum() > 0
    real = json.loads((cache / "real" / "index.json").read_text())
    synthetic = json.loads((cache / "synthetic" / "index.json").read_text())
    assert real["fingerprint"] == synthetic["fingerprint"]  # same codecs and settings: one trainable cache


def test_encode_refuses_a_sample_rate_the_dac_does_not_run_at(workspace: Workspace, cache: Path) -> None:
    out = workspace.root / "data" / "cache" / "wrong_rate"
    result = workspace.run(j.CACHE_REAL, j.TINY_CACHE, "--sample-rate 48000 --out data/cache/wrong_rate")
    assert result.returncode != 0, result.output  # issue 9 item 4: it only warned, then encoded
    assert "audio_vae/config.json" in result.output and "--sample-rate 300" in result.output
    assert "48000" in result.output and "300" in result.output and "sample" in result.output.lower()
    assert not (out / "index.json").exists()
