"""What an evaluation holds: queries (a requirement of one app with its labelled sections), each
query's scores and metrics under a method and protocol, and their summaries.

Two protocols, never mixed:

* ``full_app`` (the headline) - every section of the app is a candidate;
* ``candidate_set`` - the query's positives plus its sampled negatives (BM25 + random) from the
  dataset rows, comparable with the seed's targets.

Queries are grouped by ``label_source``; heuristic labels (the seed's embedding + keyword guess)
are reported on their own and never enter the headline averages.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from cetd_phase1.evaluation.metrics import METRIC_NAMES, average_metrics

PROTOCOLS = ("full_app", "candidate_set")
#: Label sources whose queries make the headline; heuristic labels are a guess, not ground truth.
HEADLINE_SOURCES = ("docstring", "gold", "git")
CURVE_KS = tuple(range(1, 21))


@dataclass
class Query:
    """One requirement of one app with its candidate-set rows, as section keys."""

    query_id: str
    app_id: str
    app_name: str
    requirement: str
    label_source: str
    candidates: list[tuple[tuple[str, str, int], int]] = field(default_factory=list)  # (key, label)

    @property
    def positives(self) -> list[tuple[str, str, int]]:
        return [key for key, label in self.candidates if label]


@dataclass
class QueryResult:
    """Scores of one query under one method and protocol, with its metrics."""

    query: Query
    scores: np.ndarray
    labels: np.ndarray
    section_ids: np.ndarray  # index into the app's sections of each score
    metrics: dict[str, float] | None


def queries_from_rows(rows: dict[str, list]) -> list[Query]:
    """Group dataset columns (one row per (requirement, section)) into queries, in row order."""
    by_id: dict[str, Query] = {}
    for i, qid in enumerate(rows["query_id"]):
        q = by_id.get(qid)
        if q is None:
            q = by_id[qid] = Query(qid, rows["app_id"][i], rows["app_name"][i],
                                   rows["requirement"][i], rows["label_source"][i])
        key = (rows["file"][i], rows["qualname"][i], int(rows["line_start"][i]))
        q.candidates.append((key, int(rows["label"][i])))
    return list(by_id.values())


def summarise(results: list[QueryResult]) -> dict:
    """Headline averages, then per app and per label source (heuristic kept apart)."""
    def avg(rs: list[QueryResult]) -> dict:
        full = average_metrics([r.metrics for r in rs], CURVE_KS)
        keys = [*METRIC_NAMES, "num_queries", "num_skipped"]
        # Recall@K is trivially 1 once K reaches the candidate count: say what that count is.
        sizes = [len(r.scores) for r in rs if r.metrics is not None]
        return {**{k: full[k] for k in keys},
                "mean_candidates": float(np.mean(sizes)) if sizes else float("nan")}

    headline = [r for r in results if r.query.label_source in HEADLINE_SOURCES]
    per_app: dict[str, list[QueryResult]] = defaultdict(list)
    for r in headline:
        per_app[r.query.app_name].append(r)
    by_source: dict[str, list[QueryResult]] = defaultdict(list)
    for r in results:
        by_source[r.query.label_source].append(r)
    return {**avg(headline),
            "label_sources": sorted({r.query.label_source for r in headline}),
            "per_app": {name: avg(rs) for name, rs in sorted(per_app.items())},
            "by_label_source": {s: avg(rs) for s, rs in sorted(by_source.items())}}


def recall_curve(results: list[QueryResult]) -> list[float]:
    """Mean Recall@K for K = 1..20 over the headline queries."""
    full = average_metrics([r.metrics for r in results
                            if r.query.label_source in HEADLINE_SOURCES], CURVE_KS)
    return [full[f"recall@{k}"] for k in CURVE_KS]
