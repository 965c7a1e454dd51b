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


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"fps": 1e-9}, "'fps'=1e-09 is out of range"),
        ({"fps": 1000.0}, "'fps'"),
        ({"num_frames": 400001}, "'num_frames'"),
        ({"num_frames": 4097, "fps": 1.0}, "lasts 4097 s"),
        ({"height": 1 << 20}, "'height'"),
        ({"steps": 100000}, "'steps'"),
    ],
)
def test_absurd_sizes_are_refused_with_file_and_field(tmp_path, fields, needle):
    """`fps 1e-9` used to reach the sampler and ask for a 57 TB audio latent."""
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({"prompt": "a", **fields}) + "\n")
    with pytest.raises(RequestError) as err:
        load_requests(path, SETTINGS)
    assert f"{path}:1" in str(err.value) and needle in str(err.value)


def test_non_utf8_requests_file_names_the_file(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(RequestError, match=rf"{path}: not UTF-8 text .*save the requests file as UTF-8"):
        load_requests(path, SETTINGS)


def _tone_wav(path, seconds: float, rate: int = 16000):
    import math

    import torch
    from torchcodec.encoders import AudioEncoder

    t = torch.arange(int(seconds * rate)) / rate
    AudioEncoder(torch.sin(2 * math.pi * 220 * t)[None] * 0.3, sample_rate=rate).to_file(str(path))


def test_media_requests_modes_and_checks(tmp_path):
    _tone_wav(tmp_path / "voice.wav", 1.5)
    (tmp_path / "face.png").write_bytes(b"x")
    path = tmp_path / "r.jsonl"
    lines = [
        {"prompt": "speak", "audio": "voice.wav", "first_frame": "face.png"},
        {"prompt": "speak", "audio": "voice.wav"},
        {"prompt": "look", "first_frame": "face.png"},
        {"prompt": "anything"},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    reqs = load_requests(path, SETTINGS)  # 9 frames at 8 fps = 1.125 s: the 1.5 s track covers it
    assert [r.mode for r in reqs] == ["a2v", "a2v", "i2av", "t2av"]
    assert reqs[0].audio == str(tmp_path / "voice.wav")
    assert reqs[0].batch_key() != reqs[2].batch_key()
    # requests without media keep their ids (the new fields are left out of the hash when absent)
    assert reqs[3].content().keys() == {f for f in reqs[3].to_dict() if f not in ("id", "audio", "video")}
    for entry, needle in (
        ({"prompt": "a", "audio": "voice.wav", "video": "voice.wav"}, "'video'"),
        ({"prompt": "a", "video": "clip.mp4"}, "'video'='"),
        (
            {"prompt": "a", "audio": "voice.wav", "num_frames": 17},
            "lasts 1.500 s but the request needs 2.125 s",
        ),
        ({"prompt": "a", "video": "voice.wav"}, "no readable video stream"),
    ):
        path.write_text(json.dumps(entry) + "\n")
        with pytest.raises(RequestError) as err:
            load_requests(path, SETTINGS)
        assert f"{path}:1" in str(err.value) and needle in str(err.value), str(err.value)
