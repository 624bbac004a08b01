"""Text to token ids as the model reads it: the tokenizer with a pad token, truncation that
keeps room for an appended EOS, camelCase splitting, and padding to the batch's longest text."""

from __future__ import annotations

import os
from typing import Sequence

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from cetd_phase1.errors import CETDError
from cetd_phase1.text import split_camel_case


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer at ``path`` with a pad token (decoders often lack one: EOS is used)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise CETDError(f"{path}: cannot load tokenizer: {err}") from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CETDError(f"{path}: tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
             append_eos: bool, split_identifiers: bool = False) -> list[dict[str, list[int]]]:
    """Unpadded features, truncated to ``max_length`` tokens including the appended EOS;
    with ``split_identifiers``, of the texts split at camelCase boundaries."""
    if append_eos and tokenizer.eos_token_id is None:
        raise CETDError("the backbone needs an EOS token appended but its tokenizer has none")
    limit = max_length - 1 if append_eos else max_length
    texts = [split_camel_case(t) for t in texts] if split_identifiers else list(texts)
    enc = tokenizer(texts, max_length=limit, truncation=True, padding=False,
                    return_attention_mask=False)
    ids = enc["input_ids"]
    if append_eos:
        ids = [x + [tokenizer.eos_token_id] for x in ids]
    return [{"input_ids": x, "attention_mask": [1] * len(x)} for x in ids]


def pad(tokenizer: PreTrainedTokenizerBase, features: list[dict[str, list[int]]],
        pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Pad to the longest feature (rounded up to a multiple of 8 for tensor cores)."""
    return dict(tokenizer.pad(features, padding="longest", pad_to_multiple_of=pad_to_multiple_of,
                              return_tensors="pt"))

