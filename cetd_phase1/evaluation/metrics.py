"""Ranking metrics for requirement -> code retrieval, per query and averaged.

One query is a score vector over its candidates plus a binary label vector (1 = implements the
requirement). Every metric ranks the candidates by score with **ties broken against the model**:
a negative tied with a positive is ranked above it, so a constant scorer never looks good and a
tie never counts as a win. Queries without any positive have no defined metric; they are
excluded from the averages and counted in ``num_skipped``.

* ``accuracy`` - the seed's retrieval accuracy: 1 when every positive scores strictly above every
  negative (vacuously 1 when the query has no negative), else 0;
* ``map`` - average precision over the positives' ranks, divided by the number of positives;
* ``recall@K`` - positives in the top K / all positives;
* ``mrr`` - reciprocal rank of the first positive (no cut-off);
* ``ndcg@10`` - binary-gain nDCG with a ``log2(rank + 1)`` discount over the top 10.

The ``evaluate`` module under ``cetd_phase1/evaluation/metric/`` (:func:`ranking_metric`)
computes them for the Trainer's validation and holdout metrics; the evaluate command reads the
same functions per query (its per-app tables and curves).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10)
NDCG_CUTOFF = 10
#: The averaged metrics, in the order every table prints them.
METRIC_NAMES = ("accuracy", "map", "mrr", *(f"recall@{k}" for k in DEFAULT_KS),
                f"ndcg@{NDCG_CUTOFF}")


def rank_order(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Candidate indices best first; among equal scores negatives come before positives.

    NaN scores rank last (a broken score must not help the model).
    """
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    relevant = np.asarray(labels) > 0
    # lexsort's last key is primary: descending score, then negatives (False) before positives.
    return np.lexsort((relevant, -scores))


def positive_ranks(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """1-based ranks of the positives under :func:`rank_order`, ascending."""
    relevant = np.asarray(labels)[rank_order(scores, labels)] > 0
    return np.flatnonzero(relevant) + 1


def query_metrics(scores: np.ndarray, labels: np.ndarray,
                  ks: Sequence[int] = DEFAULT_KS) -> dict[str, float] | None:
    """All metrics of one query, or ``None`` when it has no positive (undefined)."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if scores.shape != labels.shape:
        raise ValueError(f"scores ({scores.shape[0]}) and labels ({labels.shape[0]}) "
                         "differ in length")
    ranks = positive_ranks(scores, labels)
    n_pos = len(ranks)
    if n_pos == 0:
        return None
    # Positives are ranked below every tied negative, so "last positive above first negative"
    # in rank order is exactly "every positive strictly above every negative".
    n_neg = len(labels) - n_pos
    accuracy = float(n_neg == 0 or ranks[-1] == n_pos)
    out = {
        "accuracy": accuracy,
        "map": float(np.mean(np.arange(1, n_pos + 1) / ranks)),
        "mrr": float(1.0 / ranks[0]),
    }
    for k in ks:
        out[f"recall@{k}"] = float(np.sum(ranks <= k) / n_pos)
    discounts = 1.0 / np.log2(np.arange(2, NDCG_CUTOFF + 2))
    dcg = float(np.sum(discounts[ranks[ranks <= NDCG_CUTOFF] - 1]))
    idcg = float(np.sum(discounts[:min(n_pos, NDCG_CUTOFF)]))
    out[f"ndcg@{NDCG_CUTOFF}"] = dcg / idcg
    return out


def per_query_metrics(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                      ks: Sequence[int] = DEFAULT_KS) -> list[dict[str, float] | None]:
    """:func:`query_metrics` of every query, ``None`` where a query has no positive."""
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} score vectors but {len(labels)} label vectors")
    return [query_metrics(s, l, ks) for s, l in zip(scores, labels)]


def average_metrics(per_query: Sequence[dict[str, float] | None],
                    ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean of each metric over the defined queries, plus ``num_queries`` and ``num_skipped``.

    With no defined query every metric is ``nan`` (not 0: nothing was measured).
    """
    defined = [m for m in per_query if m is not None]
    keys = ["accuracy", "map", "mrr", *(f"recall@{k}" for k in ks), f"ndcg@{NDCG_CUTOFF}"]
    out: dict[str, float] = {
        key: float(np.mean([m[key] for m in defined])) if defined else float("nan")
        for key in keys
    }
    out["num_queries"] = len(defined)
    out["num_skipped"] = len(per_query) - len(defined)
    return out


def compute_ranking_metrics(scores: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                            ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Average metrics over queries: keys ``accuracy``, ``map``, ``mrr``, ``recall@K`` for each
    K in ``ks``, ``ndcg@10``, ``num_queries`` (queries with a positive) and ``num_skipped``."""
    return average_metrics(per_query_metrics(scores, labels, ks), ks)


def metric_module_path() -> str:
    """Local path of the ``evaluate`` metric script: ``evaluate.load(metric_module_path())``
    works without network."""
    return str(Path(__file__).resolve().parent / "metric" / "retrieval_metrics.py")


def ranking_metric():
    """The metrics as an ``evaluate`` module (:func:`metric_module_path`), loaded without
    network and kept in memory: no cache files, so ranks and parallel runs share nothing."""
    import evaluate
    return evaluate.load(metric_module_path(), keep_in_memory=True)
