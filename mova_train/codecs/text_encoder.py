"""UMT5 text encoder with MOVA's prompt cleaning and zero padding to 512 rows, docs/model.md §6.

`MovaTextEncoder.encode(prompts)` cleans each prompt (`prompt_clean`), tokenizes with padding to `max_length`
(512) and truncation, runs the UMT5 encoder **with** the attention mask, and zeroes every row past each prompt's
real length (its mask-1 tokens, `</s>` included). The DiTs then attend all rows with no mask.

`MovaTextEncoder.tiny()` builds a random-init UMT5 and an in-process trained Unigram tokenizer, offline, for
tests (docs/environment.md gotcha 6).
"""

from __future__ import annotations

import html
import logging
import re
from pathlib import Path

import ftfy
import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase, T5Tokenizer, UMT5Config, UMT5EncoderModel

logger = logging.getLogger(__name__)

DEFAULT_MAX_LENGTH = 512

_TINY_CORPUS = (
    "a cat sits on a warm mat while the rain falls outside",
    "the quick brown fox jumps over the lazy dog near the river",
    "a woman speaks softly to the camera in a quiet room",
    "waves crash on the rocky shore and seagulls cry above",
    "a man plays the guitar and sings a slow song at night",
    "cars pass by on a busy street with horns and engines",
)


def prompt_clean(text: str) -> str:
    """Clean a prompt as upstream does: ftfy, HTML unescape twice, strip, collapse whitespace runs.

    Args:
        text: raw prompt.

    Returns:
        the cleaned prompt (mojibake fixed, entities decoded, single spaces, no outer whitespace).
    """
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    text = text.strip()
    text = re.sub(r"\s+", " ", text)
    return text.strip()


def train_tiny_tokenizer(vocab_size: int = 256, corpus: tuple[str, ...] = _TINY_CORPUS) -> T5Tokenizer:
    """Build a small, deterministic Unigram tokenizer in process (no network) wrapped as a T5 tokenizer.

    The vocabulary is derived from ``corpus`` without a trainer (the tokenizers Unigram trainer breaks score
    ties differently from run to run, which would make tiny-model caches irreproducible): the special
    tokens, every printable ASCII character (alone and word-initial with ``▁``), then the most frequent
    corpus words, scored by their log frequency. Special tokens follow T5: `<pad>` = 0, `</s>` = 1, `<unk>` = 2.

    Args:
        vocab_size: maximum vocabulary size (characters are always kept, words fill the rest).
        corpus: sentences whose words become whole-word pieces.

    Returns:
        a `T5Tokenizer` (tokenizers-backed) with no extra ids.
    """
    import math
    import string
    from collections import Counter

    words = Counter(w for line in corpus for w in line.lower().split())
    total = sum(words.values()) or 1
    chars = [c for c in string.printable if not c.isspace()]
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [(piece, -12.0) for c in chars for piece in (c, "\u2581" + c)]
    room = max(vocab_size - len(vocab), 0)
    ranked = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:room]
    vocab += [("\u2581" + w, math.log(n / total)) for w, n in ranked]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


class MovaTextEncoder(nn.Module):
    """UMT5 encoder + tokenizer producing zero-padded text states [B, max_length, d_model].

    Args:
        encoder: a transformers `UMT5EncoderModel` (frozen in MOVA training).
        tokenizer: the matching tokenizer (T5 / UMT5, appends `</s>`).
        max_length: rows of the output (512 for the release).
    """

    def __init__(
        self,
        encoder: UMT5EncoderModel,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(
        cls,
        text_encoder_dir: str | Path,
        tokenizer_dir: str | Path,
        dtype: torch.dtype = torch.bfloat16,
        max_length: int = DEFAULT_MAX_LENGTH,
    ) -> MovaTextEncoder:
        """Load the released `text_encoder/` and `tokenizer/` folders (local paths, no hub access).

        Args:
            text_encoder_dir: folder with the UMT5 `config.json` and safetensors shards.
            tokenizer_dir: folder with the tokenizer files.
            dtype: weight dtype (bf16 upstream).
            max_length: output rows.

        Returns:
            the text encoder in eval mode with frozen weights.
        """
        for name, path in (("text_encoder_dir", text_encoder_dir), ("tokenizer_dir", tokenizer_dir)):
            if not Path(path).is_dir():
                raise FileNotFoundError(f"MovaTextEncoder.from_pretrained: {name}={path} is not a folder")
        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
        encoder = UMT5EncoderModel.from_pretrained(str(text_encoder_dir), dtype=dtype)
        return cls(encoder, tokenizer, max_length).eval().requires_grad_(False)

    @classmethod
    def tiny(
        cls,
        d_model: int = 32,
        num_layers: int = 2,
        num_heads: int = 2,
        d_kv: int = 16,
        d_ff: int = 64,
        max_length: int = DEFAULT_MAX_LENGTH,
        vocab_size: int = 256,
        seed: int = 0,
    ) -> MovaTextEncoder:
        """Random-init tiny UMT5 and an in-process trained tokenizer, for tests (offline, float32).

        Args:
            d_model: hidden size (= text_dim of the DiTs).
            num_layers: encoder layers.
            num_heads: attention heads.
            d_kv: per-head dim.
            d_ff: gated-GELU FFN width.
            max_length: output rows.
            vocab_size: requested tokenizer vocabulary.
            seed: seed of the random weights.

        Returns:
            the text encoder in eval mode with frozen weights.
        """
        tokenizer = train_tiny_tokenizer(vocab_size)
        config = UMT5Config(
            vocab_size=len(tokenizer),
            d_model=d_model,
            d_kv=d_kv,
            d_ff=d_ff,
            num_layers=num_layers,
            num_heads=num_heads,
            feed_forward_proj="gated-gelu",
            dropout_rate=0.0,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            encoder = UMT5EncoderModel(config)
        return cls(encoder, tokenizer, max_length).eval().requires_grad_(False)

    @property
    def text_dim(self) -> int:
        """Width of the text states (d_model)."""
        return int(self.encoder.config.d_model)

    def tokenize(self, prompts: list[str], clean: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokenize with padding to `max_length`, truncation and `</s>`.

        Args:
            prompts: B prompts.
            clean: apply `prompt_clean` first (as upstream does).

        Returns:
            (input_ids [B, max_length] int64, attention_mask [B, max_length] int64).
        """
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("MovaTextEncoder expects a list of prompt strings")
        texts = [prompt_clean(p) for p in prompts] if clean else list(prompts)
        out = self.tokenizer(
            texts,
            padding="max_length",
            max_length=self.max_length,
            truncation=True,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return out["input_ids"], out["attention_mask"]

    @torch.no_grad()
    def encode(self, prompts: list[str], clean: bool = True) -> torch.Tensor:
        """Encode prompts to zero-padded text states (no gradient: the text encoder is frozen).

        Args:
            prompts: B prompts.
            clean: apply `prompt_clean` first.

        Returns:
            [B, max_length, d_model] in the encoder's dtype; rows past each prompt's token count are zero.
        """
        ids, mask = self.tokenize(prompts, clean=clean)
        device = next(self.encoder.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        seq_lens = mask.sum(dim=1)
        keep = torch.arange(hidden.shape[1], device=device)[None, :] < seq_lens[:, None]
        return torch.where(keep[..., None], hidden, torch.zeros((), dtype=hidden.dtype, device=device))

    def forward(self, prompts: list[str]) -> torch.Tensor:
        """Same as `encode`."""
        return self.encode(prompts)
