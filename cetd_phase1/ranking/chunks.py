"""The texts a section is ranked by: its formatted code, and for a long function a few more
windows of it, each with the function's header (it scores as its best text)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from cetd_phase1.text import format_section

_DEF = ("def ", "async def ")


def section_texts(sections: Sequence[tuple[str, str, str, str]],
                  tokenizer: PreTrainedTokenizerBase, max_length: int,
                  max_chunks: int) -> tuple[list[str], np.ndarray | None]:
    """The texts to encode for ranking ``sections`` (``(file, qualname, kind, code)`` each) and,
    when a section has several, the index of each section's first text (else ``None``).

    A section is read as its :func:`~cetd_phase1.text.format_section` text, which the encoder
    cuts at ``max_length`` tokens. With ``max_chunks > 1`` a function or method whose code runs
    past that cut gets up to ``max_chunks - 1`` more texts: its header and ``def`` line (the
    signature, not a decorator) followed by the next lines that fit, so the lines a change
    touches further down count too; the section then scores as its best text (max over
    passages, as for long documents). Classes keep one text: their code holds their methods, sections of their own.
    """
    texts, starts = [], []
    split = {i: code.splitlines() for i, (_, _, kind, code) in enumerate(sections)
             if max_chunks > 1 and kind != "class"}
    flat = [line for lines in split.values() for line in lines]
    sizes_flat = iter([len(ids) + 1 for ids in  # + the newline
                       tokenizer(flat, add_special_tokens=False)["input_ids"]] if flat else [])

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # lengths of the text as written: split at camelCase (split_identifiers) it counts about the
    # same, and a line more or less at a window's edge does not matter
    for i, (file, qualname, _, code) in enumerate(sections):
        starts.append(len(texts))
        texts.append(format_section(file, qualname, code))
        if i not in split:
            continue
        lines = split[i]
        sizes = [next(sizes_flat) for _ in lines]
        room = max_length - 2  # [CLS] and [SEP], or BOS/EOS
        used, k = n_tokens(format_section(file, qualname, "")) + (sizes[0] if sizes else 0), 1
        while k < len(lines) and used + sizes[k] <= room:  # what the first text holds
            used, k = used + sizes[k], k + 1
        # the def line, not a decorator above it
        signature = next((line for line in lines if line.lstrip().startswith(_DEF)),
                         lines[0] if lines else "")
        header = format_section(file, qualname, signature)
        budget = room - n_tokens(header)
        while k < len(lines) and len(texts) - starts[-1] < max_chunks:
            window, used = [], 0
            while k < len(lines) and (not window or used + sizes[k] <= budget):
                window.append(lines[k])
                used, k = used + sizes[k], k + 1
            texts.append(header + "\n" + "\n".join(window))
    return texts, (np.asarray(starts, dtype=np.int64) if len(texts) > len(sections) else None)


def best_text_scores(scores: np.ndarray, starts: np.ndarray | None) -> np.ndarray:
    """Per-section scores [..., N] from per-text scores [..., M] (:func:`section_texts`): each
    section's best text."""
    return scores if starts is None else np.maximum.reduceat(scores, starts, axis=-1)
