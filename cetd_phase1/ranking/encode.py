"""Encoding texts for ranking: pooled embeddings and, for late interaction, token vectors
(:class:`Encoded`), in length-sorted batches under the device's mixed precision."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from cetd_phase1.modeling.model import CETDRetriever
from cetd_phase1.modeling import precision
from cetd_phase1.modeling.tokens import pad, tokenize
from cetd_phase1.ranking.chunks import best_text_scores
from cetd_phase1.ranking.compress import PackedTokens, join_packed
from cetd_phase1.ranking.late_interaction import maxsim


#: Sections outside MaxSim's shortlist it reads anyway, at evenly spaced ranks of the pooled
#: score, to fit the line that estimates the others' MaxSim.
SHORTLIST_SAMPLE = 16
#: At most this many token vectors of the shortlist are read (its best sections first, never
#: fewer than ``SHORTLIST_MIN``): a shortlist of long functions (up to 8 texts each) would
#: otherwise cost several times a typical one. Validation MRR is the same to three decimals
#: at 10,000 as at 20,000 or with no budget (bench/token_compression.py, docs/results.md).
SHORTLIST_TOKENS = 10_000
SHORTLIST_MIN = 32


@dataclass
class Encoded:
    """N encoded texts as ranking reads them: ``pooled`` embeddings float32 [N, D] and, when
    ranked with late interaction, every text's L2-normalised token vectors concatenated in
    ``tokens`` [T, D] (text i: rows ``offsets[i]`` to ``offsets[i + 1]``): float16 as encoded,
    or 2-bit codes as an index keeps them (:class:`PackedTokens`)."""

    pooled: np.ndarray
    tokens: np.ndarray | PackedTokens | None = None
    offsets: np.ndarray | None = None
    _matrix: tuple[torch.Tensor, np.ndarray | None] | None = field(
        default=None, repr=False, compare=False)
    _half: tuple[np.ndarray, torch.Tensor | None] | None = field(
        default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.pooled)

    def take(self, rows: np.ndarray) -> "Encoded":
        """The texts at ``rows``, in that order."""
        if self.tokens is None:
            return Encoded(self.pooled[rows])
        spans = [np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]
        sizes = np.array([len(x) for x in spans], dtype=np.int64)
        flat = np.concatenate(spans) if spans else np.zeros(0, np.int64)
        return Encoded(self.pooled[rows], self.tokens.take(flat) if isinstance(
            self.tokens, PackedTokens) else self.tokens[flat],
            np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))

    def scores(self, queries: "Encoded", share: float, sections: np.ndarray | None = None,
               shortlist: int = 0,
               first_stage: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
        """Scores [Q, N] of ``queries`` against these texts, or against sections when
        ``sections`` gives the row of each section's first text (:func:`section_texts`): the
        pooled dot product of the best text, mixed with :func:`maxsim` at ``share`` over all
        the section's tokens (a requirement's words may sit in different parts of a long
        function) when both sides carry token vectors.

        With a ``shortlist`` that binds (:func:`reads_shortlist`), MaxSim reads only the
        ``shortlist`` sections of highest first-stage score (``first_stage`` of the pooled
        scores [Q, N]; the pooled scores themselves by default), the best first up to
        :data:`SHORTLIST_TOKENS` token vectors, so the expensive part does not grow with the
        app, and a sample of :data:`SHORTLIST_SAMPLE` others. Every other section's MaxSim is
        estimated from its pooled score by a line fitted on that sample: the served score
        z-scores the model's scores over the whole app, and the shortlist's mean gap between
        the two (its best sections) misjudged their spread (docs/experiments.md). Coded token
        vectors (:class:`PackedTokens`) are decoded for the sections read only.

        Without a shortlist, every token vector is held decoded in the matrix MaxSim
        multiplies, built once and kept: bfloat16 where the CPU computes it natively (2 bytes
        x D per token of the app in memory, faster than float32; cosines within bfloat16's
        rounding), float32 elsewhere (4 bytes; emulated bfloat16 would be slower)."""
        dense = best_text_scores(self._pooled_scores(queries.pooled), sections)
        if not share or self.tokens is None or queries.tokens is None or not len(self):
            return dense
        starts = self.offsets[:-1] if sections is None else self.offsets[sections]
        ends = np.append(starts[1:], len(self.tokens))
        if not reads_shortlist(len(starts), shortlist):
            matrix, scales = self._decoded()
            late = [maxsim(queries.tokens[queries.offsets[j]:queries.offsets[j + 1]], matrix,
                           starts, scales) for j in range(len(queries))]
            return ((1.0 - share) * dense + share * np.stack(late)).astype(np.float32)
        pick = dense if first_stage is None else first_stage(dense)
        late = []
        for j in range(len(queries)):
            top = np.argpartition(-pick[j], shortlist)[:shortlist]
            top = top[np.argsort(-pick[j][top], kind="stable")]
            within = np.searchsorted(np.cumsum(ends[top] - starts[top]), SHORTLIST_TOKENS,
                                     side="right")
            top = top[:max(SHORTLIST_MIN, int(within))]
            left_out = np.ones(len(starts), dtype=bool)
            left_out[top] = False
            rest = np.flatnonzero(left_out)
            # a sample over the range of pooled scores: the ones at evenly spaced ranks
            ranks = np.linspace(0, len(rest) - 1, SHORTLIST_SAMPLE).astype(np.int64)
            sample = rest[np.argpartition(dense[j][rest], ranks)[ranks]]
            read = np.union1d(top, sample)
            exact = self._maxsim_of(queries.tokens[queries.offsets[j]:queries.offsets[j + 1]],
                                    starts[read], ends[read])
            sampled = np.isin(read, sample)
            slope, intercept = _line(dense[j][read[sampled]], exact[sampled])
            row = intercept + slope * dense[j]
            row[read] = exact
            late.append(row)
        return ((1.0 - share) * dense + share * np.stack(late)).astype(np.float32)

    def _pooled_scores(self, queries: np.ndarray) -> np.ndarray:
        """``queries @ pooled.T`` float32 [Q, M]. In torch, as every product on a query's path:
        numpy's BLAS threads would contend with torch's for the cores (a served query's p95
        several times higher). From float16 copies where both sides lie in [-1, 1] (unit
        vectors; the index stores pooled vectors as float16 anyway): the product reads half the
        memory, the most of a query's time on a large app; the float16 result is within 5e-4
        of the float32."""
        queries = np.asarray(queries, np.float32)
        if self._half is None or self._half[0] is not self.pooled:
            fits = not self.pooled.size or float(np.abs(self.pooled).max()) <= 1.0
            self._half = (self.pooled, torch.from_numpy(self.pooled.astype(np.float16))
                          if fits else None)
        half = self._half[1]
        if half is None or (queries.size and float(np.abs(queries).max()) > 1.0):
            return (torch.from_numpy(queries)
                    @ torch.from_numpy(np.asarray(self.pooled, np.float32)).T).numpy()
        return (torch.from_numpy(queries.astype(np.float16)) @ half.T).float().numpy()

    def _maxsim_of(self, query: np.ndarray, starts: np.ndarray,
                   ends: np.ndarray) -> np.ndarray:
        """:func:`maxsim` of ``query`` against the token rows ``starts[i]`` to ``ends[i]``."""
        local = np.concatenate([[0], np.cumsum(ends - starts)[:-1]])
        if isinstance(self.tokens, PackedTokens):
            matrix, scales = self.tokens.decode(starts, ends, _matrix_dtype())
            return maxsim(query, matrix, local, scales)
        matrix, _ = self._decoded()
        rows = np.concatenate([np.arange(s, e) for s, e in zip(starts, ends)])
        return maxsim(query, matrix[torch.from_numpy(rows)], local)

    def _decoded(self) -> tuple[torch.Tensor, np.ndarray | None]:
        """Every token vector as MaxSim multiplies it, and the scales of coded ones."""
        if self._matrix is None:
            if isinstance(self.tokens, PackedTokens):
                self._matrix = self.tokens.decode(np.zeros(1, np.int64),
                                                  np.array([len(self.tokens)]), _matrix_dtype())
            else:
                self._matrix = (torch.from_numpy(self.tokens).to(_matrix_dtype()), None)
        return self._matrix


def reads_shortlist(n_sections: int, shortlist: int) -> bool:
    """Whether MaxSim reads a shortlist of ``n_sections`` rather than all of them: a shortlist
    is set and leaves more than its sample of other sections out."""
    return bool(shortlist) and n_sections > shortlist + SHORTLIST_SAMPLE


def _line(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``y`` on ``x`` (slope 0 where ``x`` is flat)."""
    spread = x - x.mean()
    denom = float(spread @ spread)
    slope = float(spread @ (y - y.mean())) / denom if denom > 0 else 0.0
    return slope, float(y.mean() - slope * x.mean())


def _matrix_dtype() -> torch.dtype:
    return torch.bfloat16 if precision.cpu_has_native_bf16() else torch.float32


def encode_texts(model: CETDRetriever, tokenizer: PreTrainedTokenizerBase, texts: list[str], *,
                 max_length: int, batch_size: int = 64, show_progress: bool = False,
                 dtype: torch.dtype | None = None) -> np.ndarray:
    """Embeddings float32 [N, D] of ``texts`` in input order, no grad, eval mode.

    Inputs are sorted by token length so each batch pads little; EOS is appended for decoder
    backbones. The backbone runs under autocast to ``dtype``: by default
    :func:`autocast_dtype` (fp16 on CUDA, bf16 on a CPU with native bf16, else fp32);
    ``torch.float32`` turns it off. The model's train/eval mode is restored afterwards.
    """
    return encode_for_ranking(model, tokenizer, texts, max_length=max_length,
                              batch_size=batch_size, show_progress=show_progress, dtype=dtype,
                              tokens=False).pooled


def encode_for_ranking(model: CETDRetriever, tokenizer: PreTrainedTokenizerBase,
                       texts: list[str], *, max_length: int, batch_size: int = 64,
                       show_progress: bool = False, dtype: torch.dtype | None = None,
                       tokens: bool = False,
                       encoder: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor]
                       | None = None) -> Encoded:
    """:func:`encode_texts` with the token vectors too when ``tokens`` (ranking with late
    interaction). ``encoder`` encodes each padded batch in place of ``model.encode``, without
    autocast (a :class:`~cetd_phase1.modeling.prepacked.PrepackedEncoder`'s, in its own dtype)."""
    from tqdm.auto import tqdm
    if not texts:  # an app without sections: nothing to encode (tokenizers fail on no input)
        dim = _output_dim(model)
        return Encoded(np.zeros((0, dim), np.float32),
                       np.zeros((0, dim), np.float16) if tokens else None,
                       np.zeros(1, np.int64) if tokens else None)
    was_training = model.training
    if was_training:  # walking the modules twice costs a one-requirement encoding ~10%
        model.eval()
    device = next(model.parameters()).device
    if dtype is None:
        dtype = precision.autocast_dtype(device)
    mixed = dtype is not None and dtype != torch.float32 and encoder is None
    encoder = encoder or model.encode
    features = tokenize(tokenizer, texts, max_length, bool(model.config.append_eos),
                        model.config.split_identifiers)
    order = np.argsort([-len(f["input_ids"]) for f in features], kind="stable")
    out = np.zeros((len(texts), _output_dim(model)), dtype=np.float32)
    vectors: list[np.ndarray | None] = [None] * len(texts)  # token vectors, when asked for
    starts = range(0, len(texts), batch_size)
    try:
        for start in tqdm(starts, desc="encoding", disable=not show_progress, unit="batch"):
            idx = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in pad(tokenizer, [features[i] for i in idx]).items()}
            with torch.no_grad(), torch.autocast(device_type=device.type,
                                                 dtype=dtype if mixed else None, enabled=mixed):
                reps = encoder(batch["input_ids"], batch["attention_mask"], tokens)
            reps = reps.float().cpu()
            if tokens:
                real = batch["attention_mask"].bool().cpu()
                for row, i in enumerate(idx):
                    vectors[i] = reps[row, 1:][real[row]].numpy().astype(np.float16)
                reps = reps[:, 0]
            out[idx] = reps.numpy()
    finally:
        if was_training:
            model.train()
    if not tokens:
        return Encoded(out)
    sizes = np.array([len(v) for v in vectors], dtype=np.int64)
    return Encoded(out, np.concatenate(vectors),  # texts is not empty here
                   np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))



def _output_dim(model: CETDRetriever) -> int:
    return model.config.projection_dim or model.backbone.config.hidden_size


def concat_encoded(parts: list[Encoded]) -> Encoded:
    """The texts of ``parts`` one after another, as one :class:`Encoded` (coded token vectors
    are not copied: :func:`join_packed`)."""
    if not parts:
        return Encoded(np.zeros((0, 0), np.float32))
    pooled = np.concatenate([p.pooled for p in parts])
    if parts[0].tokens is None:
        return Encoded(pooled)
    sizes = np.concatenate([np.diff(p.offsets) for p in parts])
    tokens = join_packed([p.tokens for p in parts]) if isinstance(parts[0].tokens, PackedTokens) \
        else np.concatenate([p.tokens for p in parts])
    return Encoded(pooled, tokens, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
