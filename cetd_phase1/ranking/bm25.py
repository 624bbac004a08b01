"""BM25 (``bm25s``) over an app's section texts, reading identifiers as words: the lexical half
of the served hybrid ranking and a baseline of ``evaluate``."""

from __future__ import annotations

import functools

import numpy as np

from cetd_phase1.text import bm25_text


def bm25_tokenize(texts: list[str], return_ids: bool = True):
    """``bm25s`` tokens of :func:`bm25_text` with English stop words removed and Snowball
    stemming (``retries``/``retry``), which ranked best on validation data."""
    import bm25s

    return bm25s.tokenize([bm25_text(t) for t in texts], stopwords="en", stemmer=_stemmer(),
                          return_ids=return_ids, show_progress=False)


@functools.lru_cache(maxsize=1)  # building one loads the algorithm tables: once per process
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


class BM25Scorer:
    """BM25 (``bm25s``) over a fixed list of texts, scoring every text for a query; built from
    the texts or from their :func:`bm25_tokenize` tokens (``tokens``: an app keeps each file's
    tokens, so an edit tokenizes one file again, not the app)."""

    def __init__(self, texts: list[str] | None = None, *,
                 tokens: list[list[str]] | None = None) -> None:
        import bm25s

        if tokens is None:
            tokens = bm25_tokenize(texts or [], return_ids=False)
        self.n = len(tokens)
        self.model = bm25s.BM25()
        self.model.index(tokens, show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every text, float32 [N]; all zero when no query word is indexed."""
        ids = self.model.get_tokens_ids(bm25_tokenize([query], return_ids=False)[0])
        if not ids:
            return np.zeros(self.n, dtype=np.float32)
        return self.model.get_scores_from_ids(ids).astype(np.float32)
