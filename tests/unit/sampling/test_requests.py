"""Requests files: defaults, validation errors naming file/line/field, deterministic ids."""

from __future__ import annotations

import json

import pytest

from mova_train.sampling.requests import (
    RequestError,
    SamplingSettings,
    load_requests,
    make_request,
    request_name,
    slugify,
)

SETTINGS = SamplingSettings(num_frames=9, height=32, width=64, fps=8.0, steps=3, cfg_scale=2.0)


def test_jsonl_defaults_comments_and_relative_first_frame(tmp_path):
    (tmp_path / "img.png").write_bytes(b"x")
    path = tmp_path / "r.jsonl"
    path.write_text(
        "# a comment\n"
        + json.dumps({"prompt": "A cat meows.", "seed": 3, "first_frame": "img.png"})
        + "\n\n"
        + json.dumps({"prompt": "Rain.", "steps": 5, "cfg_scale": 1})
        + "\n"
    )
    reqs = load_requests(path, SETTINGS)
    assert [r.prompt for r in reqs] == ["A cat meows.", "Rain."]
    assert reqs[0].seed == 3 and reqs[0].steps == 3 and reqs[0].num_frames == 9
    assert reqs[0].first_frame == str(tmp_path / "img.png")
    assert reqs[1].steps == 5 and reqs[1].cfg_scale == 1.0 and isinstance(reqs[1].cfg_scale, float)
    assert reqs[0].batch_key() != reqs[1].batch_key()


def test_yaml_list_and_mapping(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("requests:\n  - prompt: one\n  - prompt: two\n    seed: 5\n")
    reqs = load_requests(path, SETTINGS)
    assert [(r.prompt, r.seed) for r in reqs] == [("one", 0), ("two", 5)]


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ('{"prompt": "a", "num_frames": 10}', "num_frames"),
        ('{"prompt": "a", "height": 40}', "height"),
        ('{"prompt": "a", "stepz": 4}', "stepz"),
        ('{"seed": 1}', "prompt"),
        ('{"prompt": "a", "seed": "one"}', "seed"),
        ('{"prompt": "a", "first_frame": "missing.png"}', "first_frame"),
        ('{"prompt": "a", "guidance": "both"}', "guidance"),
        ('{"prompt": "a",', "invalid JSON"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path, line, needle):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(RequestError) as err:
        load_requests(path, SETTINGS)
    msg = str(err.value)
    assert f"{path}:2" in msg and needle in msg


def test_yaml_error_names_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- prompt: ok\n- prompt: bad\n  width: 33\n")
    with pytest.raises(RequestError, match=rf"{path}:2: field 'width'"):
        load_requests(path, SETTINGS)


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(RequestError, match="does not exist"):
        load_requests(tmp_path / "nope.jsonl")
    (tmp_path / "r.txt").write_text("x")
    with pytest.raises(RequestError, match="unknown requests format"):
        load_requests(tmp_path / "r.txt")


def test_ids_are_deterministic_and_content_addressed():
    a = make_request({"prompt": "A red ball, bouncing!", "seed": 7}, SETTINGS)
    b = make_request({"prompt": "A red ball, bouncing!", "seed": 7}, SETTINGS)
    c = make_request({"prompt": "A red ball, bouncing!", "seed": 7, "steps": 4}, SETTINGS)
    assert a.id == b.id == request_name(a)
    assert a.id.startswith("a-red-ball-bouncing-") and a.id.endswith("-s7")
    assert c.id != a.id  # settings are part of the hash
    assert slugify("x" * 100) == "x" * 40 and slugify("!!!") == "sample"
