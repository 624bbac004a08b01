"""Ranking every section of an app for a requirement with the trained encoder: the one path the
Trainer's validation, ``evaluate`` and the :class:`~cetd_phase1.retrieve.Retriever` all take
(section texts -> encoded vectors -> scores), so their numbers cannot drift apart; and the
served ranking that mixes those scores with BM25's (:mod:`cetd_phase1.ranking.fusion`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from transformers import PreTrainedTokenizerBase

from cetd_phase1.modeling.prepacked import PrepackedEncoder
from cetd_phase1.modeling.model import CETDRetriever
from cetd_phase1.ranking.chunks import section_texts
from cetd_phase1.ranking.encode import Encoded, encode_for_ranking
from cetd_phase1.ranking.config import RankingConfig
from cetd_phase1.ranking.fusion import served_scores

#: A section as ranking reads it: (file, qualname, kind, code without docstrings).
SectionItem = tuple[str, str, str, str]


@dataclass
class SectionVectors:
    """N sections encoded for ranking: the vectors of their M texts and, when a long function
    has several texts, the row of each section's first one (``None``: one text each)."""

    encoded: Encoded
    starts: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.encoded) if self.starts is None else len(self.starts)

    def take(self, sections: Sequence[int]) -> "SectionVectors":
        """The sections at ``sections`` (their texts with them), in that order."""
        if self.starts is None:
            return SectionVectors(self.encoded.take(np.asarray(sections, dtype=np.int64)))
        bounds = np.append(self.starts, len(self.encoded))
        spans = [np.arange(bounds[c], bounds[c + 1]) for c in sections]
        local = np.cumsum([0] + [len(s) for s in spans[:-1]]).astype(np.int64)
        rows = np.concatenate(spans) if spans else np.zeros(0, np.int64)
        return SectionVectors(self.encoded.take(rows), local)


class FullAppRanker:
    """The encoder's scores of requirements against every section of an app.

    Reads the model's token limits (``max_req_length``, ``max_code_length``) and the
    :class:`RankingConfig` the checkpoint was chosen with: a long function is read as up to
    ``section_chunks`` texts and scores as its best, and the pooled cosine is mixed with
    token-level MaxSim at ``late_interaction``. Requirements are encoded by
    ``requirement_encoder`` when given (a frozen model's pre-packed copy), else by the model.
    """

    def __init__(self, model: CETDRetriever, tokenizer: PreTrainedTokenizerBase,
                 ranking: RankingConfig, *, batch_size: int = 64,
                 requirement_encoder: PrepackedEncoder | None = None) -> None:
        self.model, self.tokenizer, self.ranking = model, tokenizer, ranking
        self.batch_size = batch_size
        self.requirement_encoder = requirement_encoder

    @property
    def max_query_length(self) -> int:
        return self.model.config.max_req_length

    @property
    def max_code_length(self) -> int:
        return self.model.config.max_code_length

    def texts(self, sections: Sequence[SectionItem]) -> tuple[list[str], np.ndarray | None]:
        """The texts the encoder reads for ``sections`` and each section's first text's row."""
        return section_texts(sections, self.tokenizer, self.max_code_length,
                             self.ranking.section_chunks)

    def _encode(self, texts: list[str], max_length: int, show_progress: bool,
                encoder: PrepackedEncoder | None = None) -> Encoded:
        return encode_for_ranking(self.model, self.tokenizer, texts, max_length=max_length,
                                  batch_size=self.batch_size, show_progress=show_progress,
                                  tokens=bool(self.ranking.late_interaction),
                                  encoder=encoder and encoder.encode)

    def encode_texts(self, texts: list[str], starts: np.ndarray | None = None,
                     show_progress: bool = False) -> SectionVectors:
        """Vectors of section texts from :meth:`texts`."""
        return SectionVectors(self._encode(texts, self.max_code_length, show_progress), starts)

    def encode_sections(self, sections: Sequence[SectionItem],
                        show_progress: bool = False) -> SectionVectors:
        """:meth:`texts` then :meth:`encode_texts`."""
        return self.encode_texts(*self.texts(sections), show_progress=show_progress)

    def encode_requirements(self, requirements: list[str],
                            show_progress: bool = False) -> Encoded:
        return self._encode(list(requirements), self.max_query_length, show_progress,
                            self.requirement_encoder)

    def scores(self, requirements: Encoded, sections: SectionVectors,
               first_stage: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Scores [Q, N] of the encoded requirements against every one of the N sections
        (``first_stage``: :meth:`Encoded.scores`)."""
        if not len(sections):
            return np.zeros((len(requirements), 0), dtype=np.float32)
        return sections.encoded.scores(requirements, self.ranking.late_interaction,
                                       sections.starts, self.ranking.shortlist, first_stage)

    def served(self, dense: np.ndarray, bm25: Sequence[np.ndarray],
               classes: np.ndarray) -> np.ndarray:
        """The served scores [Q, N]: each requirement's model scores ``dense`` [Q, N] mixed with
        its BM25 scores (:func:`~cetd_phase1.ranking.fusion.served_scores`; ``classes`` marks
        the sections that are classes)."""
        return np.stack([served_scores(m, b, classes, self.ranking)
                         for m, b in zip(dense, bm25)]).astype(np.float32)

    def served_scores(self, requirements: Encoded, sections: SectionVectors,
                      bm25: Sequence[np.ndarray], classes: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The served scores [Q, N] and the model's [Q, N]. Where MaxSim's shortlist binds, it
        is the best sections by the served score of the pooled cosines: BM25 finds sections
        the pooled vector misses."""
        dense = self.scores(requirements, sections,
                            lambda pooled: self.served(pooled, bm25, classes))
        return self.served(dense, bm25, classes), dense
