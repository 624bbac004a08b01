"""The evaluate command: rank each app's sections for its requirements, compare the model with
BM25 and the untrained backbone on the same queries (both protocols of
:mod:`~cetd_phase1.evaluation.results`), and write ``metrics.json``, ``report.md`` and
``recall_at_k.png``.

Each app is indexed once per method through :class:`~cetd_phase1.retrieve.Retriever`, whose
on-disk section embeddings make a re-run on the same checkpoint skip the encoding; the model
ranks as the Trainer's validation does (:mod:`cetd_phase1.ranking.full_app`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cetd_phase1.atomic import atomic_write_text
from cetd_phase1.errors import CETDError, check_output_dir
from cetd_phase1.evaluation.metrics import query_metrics
from cetd_phase1.evaluation.report import plot_recall, render_report
from cetd_phase1.evaluation.results import (CURVE_KS, HEADLINE_SOURCES, PROTOCOLS, Query,
                                            QueryResult, queries_from_rows, recall_curve,
                                            summarise)
from cetd_phase1.data.labels import DEFAULT_LABEL_SOURCES
from cetd_phase1.ranking.config import RankingConfig
from cetd_phase1.data.apps import App, Registry
from cetd_phase1.retrieve import AppIndex, Retriever

if TYPE_CHECKING:
    from cetd_phase1.ranking.compress import TokenCodec

#: All positives of a query are needed for full-app ranking, not the training cap.
EVAL_MAX_POSITIVES = 1000


def _section_key(index: AppIndex, i: int) -> tuple[str, str, int]:
    s = index.sections[i]
    return (s.file, s.qualname, s.line_start)


class Method:
    """A scorer over an app's sections: a dense retriever, BM25, a dense method mixed with
    BM25 (``hybrid_from``), or a method whose ranking the retriever's re-ranker re-orders
    (``reranked_from``)."""

    def __init__(self, name: str, retriever: Retriever | None, *,
                 hybrid_from: "Method | None" = None,
                 reranked_from: "Method | None" = None) -> None:
        self.name, self.retriever, self.hybrid_from = name, retriever, hybrid_from
        self.reranked_from = reranked_from
        # (app, requirements) -> dense matrix, kept only for a method another one reads (a
        # hybrid or a re-ranked one): MaxSim is the dearest step of an evaluation
        self._dense: dict[tuple[str, tuple[str, ...]], np.ndarray] | None = None
        for source in (hybrid_from, reranked_from):  # a dense method another one reads
            if source is not None and source.retriever is not None and \
                    source.hybrid_from is None and source.reranked_from is None \
                    and source._dense is None:
                source._dense = {}

    def scores(self, requirements: list[str], app: App, index: AppIndex) -> np.ndarray:
        """Score matrix [Q, N] over every section of the app."""
        if self.reranked_from is not None:
            first = self.reranked_from.scores(requirements, app, index)
            return np.stack([self.retriever.rerank(r, index, row)[1]
                             for r, row in zip(requirements, first)]) if requirements \
                else first
        if self.hybrid_from is not None:
            dense = self.hybrid_from.scores(requirements, app, index)
            return self.hybrid_from.retriever.served_scores(requirements, index, dense)[0]
        if self.retriever is None:
            return np.stack([index.bm25.scores(r) for r in requirements]) if requirements \
                else np.zeros((0, len(index.sections)))
        if self._dense is None:
            return self.retriever.dense_scores(requirements, self.retriever.index(app))
        key = (app.app_id, tuple(requirements))
        if key not in self._dense:
            self._dense[key] = self.retriever.dense_scores(requirements,
                                                           self.retriever.index(app))
        return self._dense[key]


def score_queries(method: Method, apps: dict[str, App], queries: Sequence[Query],
                  indexes: dict[str, AppIndex],
                  missing: dict[str, int]) -> dict[str, list[QueryResult]]:
    """Rank every query under ``method`` in both protocols."""
    by_app: dict[str, list[Query]] = defaultdict(list)
    for q in queries:
        by_app[q.app_id].append(q)
    out: dict[str, list[QueryResult]] = {p: [] for p in PROTOCOLS}
    for app_id, app_queries in by_app.items():
        index = indexes[app_id]
        position = {_section_key(index, i): i for i in range(len(index.sections))}
        matrix = method.scores([q.requirement for q in app_queries], apps[app_id], index)
        for q, row in zip(app_queries, matrix):
            found = [(position[k], label) for k, label in q.candidates if k in position]
            if len(found) < len(q.candidates):
                missing[q.app_name] = missing.get(q.app_name, 0) + len(q.candidates) - len(found)
            full_labels = np.zeros(len(index.sections), dtype=np.int8)
            for i, label in found:
                full_labels[i] = max(full_labels[i], label)
            cand_ids = np.array([i for i, _ in found], dtype=np.int64)
            cand_labels = np.array([label for _, label in found], dtype=np.int8)
            all_ids = np.arange(len(index.sections))
            for protocol, ids, labels in (("full_app", all_ids, full_labels),
                                          ("candidate_set", cand_ids, cand_labels)):
                scores = np.asarray(row, dtype=np.float64)[ids]
                out[protocol].append(QueryResult(q, scores, labels, ids,
                                                 query_metrics(scores, labels, CURVE_KS)))
    return out


# -- the command ----------------------------------------------------------------------------------

def _load_queries(registry: Registry, split: str | None, cache_dir, hard_negatives: int,
                  random_negatives: int, label_sources: Sequence[str]) -> list[Query]:
    from cetd_phase1.data.dataset import build_dataset

    dsd = build_dataset(registry=registry, hard_negatives=hard_negatives,
                        random_negatives=random_negatives, max_positives=EVAL_MAX_POSITIVES,
                        label_sources=tuple(label_sources), cache_dir=cache_dir)
    splits = [split] if split else list(dsd)
    queries = []
    for s in splits:
        if s in dsd and len(dsd[s]):
            cols = ["query_id", "app_id", "app_name", "requirement", "label_source", "file",
                    "qualname", "line_start", "label"]
            queries.extend(queries_from_rows(dsd[s].select_columns(cols).to_dict()))
    return queries


def _backbone_path(checkpoint: Path, override: str | None) -> str | None:
    """The untrained backbone of a CETD checkpoint; ``None`` when the checkpoint is itself one."""
    if override:
        return override
    try:
        config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CETDError(f"{checkpoint / 'config.json'}: cannot read: {err}") from None
    if config.get("model_type") != "cetd_retriever":
        return None
    return config.get("backbone") or config.get("backbone_name_or_path")


def run_evaluation(checkpoint: str | Path, out: str | Path, *, split: str | None = "holdout",
                   apps_dir: str | Path | None = None, registry: Registry | None = None,
                   hybrid: bool = False, backbone: str | None = None,
                   cache_dir: str | Path | None = None, hard_negatives: int = 3,
                   random_negatives: int = 2, batch_size: int = 64, command: str = "",
                   label_sources: Sequence[str] = DEFAULT_LABEL_SOURCES,
                   section_chunks: int | None = None,
                   late_interaction: float | None = None,
                   class_penalty: float | None = None,
                   shortlist: int | None = None,
                   reranker: str | Path | None = None,
                   rerank_depth: int | None = None, codec: TokenCodec | None = None) -> dict:
    """Evaluate ``checkpoint`` on ``split`` of ``registry`` (default: the stdlib, or PostgreSQL
    when ``$DATABASE_URL`` is set), or on every app of ``apps_dir`` (a folder of apps or a
    manifest), against BM25 and the untrained backbone; write the report files to ``out``.
    ``section_chunks``, ``late_interaction``, ``class_penalty`` and ``shortlist`` replace the
    checkpoint's ranking settings (``None``: its own; the untrained backbone reads one text a
    section and ranks by the cosine). ``reranker`` adds the ranking whose ``rerank_depth`` best sections
    (default :data:`~cetd_phase1.ranking.rerank.RERANK_DEPTH`) it re-orders: the hybrid's with
    ``hybrid``, else the model's. ``codec`` stores the model's index another way than the
    shipped one (``bench/token_compression.py``).

    Returns the ``metrics.json`` content.
    """
    from tqdm.auto import tqdm

    from cetd_phase1.modeling.backbone import resolve_backbone
    from cetd_phase1.data.apps import DirectoryRegistry
    from cetd_phase1.data.registry import registry_from

    checkpoint, out = Path(resolve_backbone(checkpoint)), Path(out)
    if not (checkpoint / "config.json").is_file():
        raise CETDError(f"{checkpoint}: not a model folder (no config.json)")
    check_output_dir(str(out))
    overrides = dict(section_chunks=section_chunks, late_interaction=late_interaction,
                     class_penalty=class_penalty, shortlist=shortlist)
    RankingConfig.load(checkpoint).override(**overrides)  # checked before any work
    if apps_dir is not None:
        if not Path(apps_dir).exists():
            raise CETDError(f"{apps_dir}: no such apps folder or manifest")
        # every app of the folder is evaluated, whatever split its name hashes to
        registry = DirectoryRegistry(Path(apps_dir), split="holdout")
        split = None
    elif registry is None:
        registry = registry_from(None)
    index_cache = Path(cache_dir) / "index" if cache_dir else None
    queries = _load_queries(registry, split, Path(cache_dir) / "datasets" if cache_dir else None,
                            hard_negatives, random_negatives, label_sources)
    if not queries:
        where = apps_dir or f"split {split!r}"
        raise CETDError(f"{where}: no labelled queries to evaluate (no docstring or gold labels)")
    apps = {a.app_id: a for a in registry.apps(split)}

    rerank = {} if rerank_depth is None else {"rerank_depth": rerank_depth}
    model = Retriever.from_pretrained(checkpoint, cache_dir=index_cache, batch_size=batch_size,
                                      show_progress=True, reranker=reranker, codec=codec,
                                      **rerank, **overrides)
    ranking = model.ranking
    methods = [Method("model", model)]
    notes = []
    if ranking.late_interaction:
        notes.append(f"`model` scores {1 - ranking.late_interaction:g} x cosine + "
                     f"{ranking.late_interaction:g} x MaxSim (late interaction).")
    if hybrid:
        methods.append(Method("model+bm25 (hybrid)", model, hybrid_from=methods[0]))
        notes.append(f"The hybrid mixes z-scores: {ranking.hybrid_weight:g} x model + "
                     f"{1 - ranking.hybrid_weight:g} x BM25"
                     + (f", less {ranking.class_penalty:g} for a class." if ranking.class_penalty
                        else "."))
    if reranker is not None:
        methods.append(Method(f"{methods[-1].name} + re-ranker", model,
                              reranked_from=methods[-1]))
        notes.append(f"The re-ranker ({reranker}) re-orders the {model.rerank_depth} best "
                     f"sections of `{methods[-2].name}`.")
    methods.append(Method("bm25", None))
    backbone_path = _backbone_path(checkpoint, backbone)
    if backbone_path is None:
        notes.append("The checkpoint is a plain backbone: `model` is the untrained baseline.")
    else:
        try:  # the same token limits as the model, so only the training differs
            base = Retriever.from_pretrained(backbone_path, cache_dir=index_cache,
                                             batch_size=batch_size, show_progress=True,
                                             max_req_length=model.ranker.max_query_length,
                                             max_code_length=model.ranker.max_code_length)
            methods.append(Method("backbone (untrained)", base))
        except (CETDError, OSError, ValueError) as err:
            notes.append(f"Untrained-backbone baseline skipped: {backbone_path}: {err}")

    used_apps = sorted({q.app_id for q in queries})
    indexes = {}
    for app_id in tqdm(used_apps, desc="index apps", unit="app"):
        indexes[app_id] = model.index(apps[app_id])
    results: dict[str, dict[str, list[QueryResult]]] = {}
    missing: dict[str, int] = {}
    for method in methods:
        results[method.name] = score_queries(method, apps, queries, indexes,
                                             missing if method.name == "model" else {})

    metrics = {
        "checkpoint": str(checkpoint),
        "queries_from": str(apps_dir) if apps_dir else f"{registry.describe()} split {split}",
        "headline_label_sources": list(HEADLINE_SOURCES),
        **{p: summarise(results["model"][p]) for p in PROTOCOLS},
        "baselines": {m.name: {p: summarise(results[m.name][p]) for p in PROTOCOLS}
                      for m in methods if m.name != "model"},
        "recall_at_k": {p: {m.name: recall_curve(results[m.name][p]) for m in methods}
                        for p in PROTOCOLS},
        "apps": {indexes[a].name: len(indexes[a].sections) for a in used_apps},
        "candidates_not_found": missing,
        "notes": notes,
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    atomic_write_text(out / "report.md", render_report(metrics, results, indexes, command))
    plot_recall(metrics["recall_at_k"], out / "recall_at_k.png")
    return metrics


