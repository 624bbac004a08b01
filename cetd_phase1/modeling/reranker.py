"""The cross-encoder re-ranker: a requirement and one section read together by one encoder, and
a linear head giving their relevance as one logit.

It is transformers' ``AutoModelForSequenceClassification`` with one label, saved as an ordinary
model folder (``sentence_transformers.CrossEncoder`` opens it too). How it reads text is kept in
the folder's ``config.json`` under ``cetd_reranker``: the token limits of the requirement and
the code, and whether identifiers are split at camelCase boundaries, as the bi-encoder does.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from transformers import (AutoModelForSequenceClassification, PreTrainedModel,
                          PreTrainedTokenizerBase)

from cetd_phase1.text import split_camel_case
from cetd_phase1.errors import CETDError
from cetd_phase1.modeling.tokens import load_tokenizer

#: The ``config.json`` key holding :class:`PairFormat`.
FORMAT_KEY = "cetd_reranker"


@dataclass(frozen=True)
class PairFormat:
    """How a (requirement, section) pair becomes one input: each text cut to its own limit,
    then joined by the tokenizer's pair template (``[CLS] req [SEP] code [SEP]`` for BERT)."""

    max_req_length: int
    max_code_length: int
    split_identifiers: bool

    def encode(self, tokenizer: PreTrainedTokenizerBase, requirements: Sequence[str],
               sections: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded model inputs for the pairs ``zip(requirements, sections)``. Each side is cut
        on its own, so a long function never crowds out the requirement; the fast tokenizer's
        own pair template then adds the special tokens (and segment ids where the model reads
        them)."""
        if self.split_identifiers:
            requirements = [split_camel_case(t) for t in requirements]
            sections = [split_camel_case(t) for t in sections]
        backend = tokenizer.backend_tokenizer
        backend.no_truncation()  # transformers sets these again on each of its own calls
        backend.no_padding()
        cut = backend.encode_batch(list(requirements), add_special_tokens=False)
        code = backend.encode_batch(list(sections), add_special_tokens=False)
        segments = "token_type_ids" in tokenizer.model_input_names
        features = []
        for requirement, section in zip(cut, code):
            requirement.truncate(self.max_req_length)
            section.truncate(self.max_code_length)
            pair = backend.post_process(requirement, section, add_special_tokens=True)
            feature = {"input_ids": pair.ids, "attention_mask": pair.attention_mask}
            if segments:
                feature["token_type_ids"] = pair.type_ids
            features.append(feature)
        return dict(tokenizer.pad(features, padding="longest", pad_to_multiple_of=8,
                                  return_tensors="pt"))


def reranker_from_backbone(backbone: str | os.PathLike, pair_format: PairFormat
                           ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A new re-ranker on a backbone's weights (a packaged alias or a folder), its scoring
    head freshly initialised."""
    from cetd_phase1.modeling.backbone import resolve_backbone

    path = resolve_backbone(backbone)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1,
                                                                   dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise CETDError(f"cannot load backbone {str(backbone)!r} ({path}): {err}") from err
    setattr(model.config, FORMAT_KEY, asdict(pair_format))
    return model, load_tokenizer(path)


def load_reranker(path: str | os.PathLike
                  ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, PairFormat]:
    """A trained re-ranker folder, in eval mode, with the pair format it was trained with."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise CETDError(f"{path}: not a re-ranker folder (no config.json)")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise CETDError(f"{path}: cannot load the re-ranker: {err}") from err
    stored = getattr(model.config, FORMAT_KEY, None)
    if model.config.num_labels != 1 or not isinstance(stored, dict):
        raise CETDError(f"{path}: not a cetd-phase1 re-ranker (one-logit head and "
                        f"'{FORMAT_KEY}' in config.json expected)")
    return model.eval(), load_tokenizer(folder), PairFormat(**stored)


class Reranker:
    """Scores sections for one requirement with a trained re-ranker (bf16 autocast where the
    CPU computes it natively, as the bi-encoder serves)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 pair_format: PairFormat, batch_size: int = 32) -> None:
        from cetd_phase1.modeling.precision import autocast_dtype

        self.model, self.tokenizer, self.format = model, tokenizer, pair_format
        self.batch_size = batch_size
        self.dtype = autocast_dtype(model.device)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, batch_size: int = 32) -> "Reranker":
        """A trained re-ranker folder, on the GPU when there is one."""
        model, tokenizer, pair_format = load_reranker(path)
        if torch.cuda.is_available():
            model = model.to("cuda")
        return cls(model, tokenizer, pair_format, batch_size=batch_size)

    def scores(self, requirement: str, sections: Sequence[str]) -> np.ndarray:
        """The re-ranker's logit for each section text, float32 [N]."""
        out = []
        device = self.model.device
        with torch.inference_mode(), torch.autocast(device.type, dtype=self.dtype,
                                                    enabled=self.dtype is not None):
            for start in range(0, len(sections), self.batch_size):
                part = list(sections[start:start + self.batch_size])
                batch = self.format.encode(self.tokenizer, [requirement] * len(part), part)
                logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits
                out.append(logits[:, 0].float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)
