"""Re-ranking the top of the served ranking with the cross-encoder
(:class:`~cetd_phase1.modeling.reranker.Reranker`): the one place the final order is made, for
``retrieve`` and ``evaluate`` alike."""

from __future__ import annotations

import numpy as np

#: How many of the served ranking's best sections the re-ranker reads (the default of
#: ``retrieve --rerank-depth`` and ``Retriever(rerank_depth=...)``).
RERANK_DEPTH = 20


def top_sections(scores: np.ndarray, depth: int) -> np.ndarray:
    """Indices of the ``depth`` best ``scores``, best first, ties in app order."""
    top = np.argpartition(-scores, depth - 1)[:depth] if depth < len(scores) \
        else np.arange(len(scores))
    return top[np.lexsort((top, -scores[top]))]


def reranked(served: np.ndarray, top: np.ndarray,
             logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One requirement's final order: its best sections by ``served`` (``top``, from
    :func:`top_sections`) re-ordered by the re-ranker's ``logits`` for them, all above the
    other sections, which keep the served order.

    Returns ``(order, scores)``: every section index, first to last, and a score row [N] that
    sorts the same way (for the ranking metrics): the re-ranked ones lifted above the rest.
    """
    rest = np.setdiff1d(np.arange(len(served)), top)
    rest = rest[np.lexsort((rest, -served[rest]))]
    scores = served.astype(np.float64).copy()
    if not len(top):
        return rest, scores
    logits = np.asarray(logits, dtype=np.float64)
    ranked = top[np.lexsort((np.arange(len(top)), -logits))]  # ties keep the served order
    floor = scores[rest].max() if len(rest) else 0.0
    scores[top] = logits - logits.min() + floor + 1.0
    return np.concatenate([ranked, rest]), scores
