"""The release-size configs, built on the meta device, reproduce the released key -> shape manifest."""

from __future__ import annotations

import json

import pytest

from mova_train.models import mova_release


@pytest.fixture(scope="module")
def manifest(golden_dir):
    return json.loads((golden_dir / "key_manifest_release.json").read_text())["components"]


@pytest.fixture(scope="module")
def release_model():
    return mova_release(device="meta")


@pytest.mark.parametrize("component", ["video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge"])
def test_release_keys_shapes_and_counts(manifest, release_model, component):
    entry = manifest[component]
    if "same_as" in entry:
        entry = manifest[entry["same_as"]]
    module = getattr(release_model, component)
    got = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert not any(t.device.type != "meta" for t in module.state_dict().values())
    assert set(got) == set(entry["keys"]), (
        f"missing {sorted(set(entry['keys']) - set(got))[:5]}, unexpected {sorted(set(got) - set(entry['keys']))[:5]}"
    )
    wrong = {k: (got[k], s) for k, s in entry["keys"].items() if got[k] != s}
    assert not wrong
    assert len(got) == entry["num_tensors"]
    assert sum(p.numel() for p in module.parameters()) == entry["num_params"]


def test_release_config_matches_manifest_config(manifest):
    from mova_train.models import release_config

    cfg = release_config()
    for component in ("video_dit", "audio_dit", "dual_tower_bridge"):
        ours = getattr(cfg, component).to_dict()
        for key, value in manifest[component]["config"].items():
            assert ours[key] == value, f"{component}.{key}: ours {ours[key]!r}, release {value!r}"
