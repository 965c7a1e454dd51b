"""Prompt cleaning and the UMT5 text encoder: 512 rows, zero past length, per-prompt independence, loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mova_train.codecs.text_encoder import DEFAULT_MAX_LENGTH, MovaTextEncoder, prompt_clean

PROMPTS = ["a cat sits on a warm mat", "waves crash on the rocky shore and seagulls cry above the water"]


@pytest.fixture(scope="module")
def encoder() -> MovaTextEncoder:
    return MovaTextEncoder.tiny()


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  a\n\t b   c  ", "a b c"),
        ("&amp;lt;b&amp;gt; Tom &amp;amp; Jerry", "<b> Tom & Jerry"),
        ("SchÃ¶n und grÃ¼n", "Schön und grün"),
        ("caf\u00e9 &quot;x&quot;\u3000y\n", 'caf\u00e9 "x" y'),
        ("", ""),
    ],
)
def test_prompt_clean(raw: str, clean: str) -> None:
    assert prompt_clean(raw) == clean


def test_shape_and_zero_rows_past_length(encoder: MovaTextEncoder) -> None:
    out = encoder.encode(PROMPTS)
    assert out.shape == (2, DEFAULT_MAX_LENGTH, encoder.text_dim)
    assert out.dtype == torch.float32
    _, mask = encoder.tokenize(PROMPTS)
    lengths = mask.sum(1).tolist()
    assert lengths[0] < lengths[1] < DEFAULT_MAX_LENGTH
    for i, n in enumerate(lengths):
        assert not out[i, n:].any()
        assert (out[i, :n].abs().sum(-1) > 0).all()


def test_rows_before_length_equal_encoder_on_same_tokens(encoder: MovaTextEncoder) -> None:
    out = encoder.encode(PROMPTS)
    ids, mask = encoder.tokenize(PROMPTS)
    for i in range(len(PROMPTS)):
        n = int(mask[i].sum())
        assert ids[i, n - 1] == encoder.tokenizer.eos_token_id
        with torch.no_grad():
            ref = encoder.encoder(input_ids=ids[i : i + 1, :n]).last_hidden_state[0]
        assert (out[i, :n] - ref).abs().max() <= 1e-5


def test_batch_equals_singles(encoder: MovaTextEncoder) -> None:
    both = encoder.encode(PROMPTS)
    singles = torch.cat([encoder.encode([p]) for p in PROMPTS])
    assert (both - singles).abs().max() <= 1e-5


def test_cleaning_applied_before_tokenizing(encoder: MovaTextEncoder) -> None:
    raw, clean = "  a cat &amp;amp;\n dog  ", "a cat & dog"
    assert torch.equal(encoder.encode([raw]), encoder.encode([clean]))
    ids_raw, _ = encoder.tokenize([raw], clean=False)
    ids_clean, _ = encoder.tokenize([clean])
    assert not torch.equal(ids_raw, ids_clean)


def test_max_length_respected() -> None:
    small = MovaTextEncoder.tiny(max_length=16)
    long_prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 10)
    ids, mask = small.tokenize([long_prompt, "a cat"])
    assert ids.shape == (2, 16)
    assert int(mask[0].sum()) == 16
    assert ids[0, -1] == small.tokenizer.eos_token_id
    out = small.encode([long_prompt, "a cat"])
    assert out.shape == (2, 16, small.text_dim)
    assert (out[0].abs().sum(-1) > 0).all()
    assert not out[1, int(mask[1].sum()) :].any()


def test_from_pretrained_round_trip(encoder: MovaTextEncoder, tmp_path: Path) -> None:
    encoder.encoder.save_pretrained(tmp_path / "text_encoder")
    encoder.tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = MovaTextEncoder.from_pretrained(
        tmp_path / "text_encoder", tmp_path / "tokenizer", dtype=torch.float32
    )
    assert not any(p.requires_grad for p in loaded.parameters())
    assert torch.equal(loaded.encode(PROMPTS), encoder.encode(PROMPTS))
    with pytest.raises(FileNotFoundError, match="text_encoder_dir"):
        MovaTextEncoder.from_pretrained(tmp_path / "missing", tmp_path / "tokenizer")


def test_rejects_a_bare_string(encoder: MovaTextEncoder) -> None:
    with pytest.raises(TypeError, match="list of prompt strings"):
        encoder.encode("a cat")
