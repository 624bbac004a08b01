"""The evaluate command: rank each app's sections for its requirements, compare the model with
BM25 and the untrained backbone on the same queries, and write ``metrics.json``, ``report.md``
and ``recall_at_k.png``.

Two protocols, never mixed:

* ``full_app`` (the headline) - every section of the app is a candidate;
* ``candidate_set`` - the query's positives plus its sampled negatives (BM25 + random) from the
  dataset rows, comparable with the seed's targets.

Queries are grouped by ``label_source``; heuristic labels (the seed's embedding + keyword guess)
are reported on their own and never enter the headline averages.

Each app is indexed once per method through :class:`~cetd_phase1.retrieve.Retriever`, whose
on-disk section embeddings make a re-run on the same checkpoint skip the encoding.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cetd_phase1.errors import CETDError, check_output_dir, check_penalty, check_share
from cetd_phase1.labels import DEFAULT_LABEL_SOURCES
from cetd_phase1.metrics import DEFAULT_KS, average_metrics, positive_ranks, query_metrics
from cetd_phase1.registry import App, Registry
from cetd_phase1.atomic import atomic_write, atomic_write_text
from cetd_phase1.retrieve import AppIndex, BM25Scorer, Retriever

PROTOCOLS = ("full_app", "candidate_set")
#: Label sources whose queries make the headline; heuristic labels are a guess, not ground truth.
HEADLINE_SOURCES = ("docstring", "gold", "git")
CURVE_KS = tuple(range(1, 21))
#: All positives of a query are needed for full-app ranking, not the training cap.
EVAL_MAX_POSITIVES = 1000
WORST_QUERIES = 20
#: The seed's Week-6 exit criteria (candidate-set protocol).
SEED_TARGETS = {"accuracy": 0.70, "map": 0.75, "recall@5": 0.90}


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


def _section_key(index: AppIndex, i: int) -> tuple[str, str, int]:
    s = index.sections[i]
    return (s.file, s.qualname, s.line_start)


class Method:
    """A scorer over an app's sections: a dense retriever, BM25, or a dense method fused with
    BM25 (``fused_from``)."""

    def __init__(self, name: str, retriever: Retriever | None, *,
                 fused_from: "Method | None" = None) -> None:
        self.name, self.retriever, self.fused_from = name, retriever, fused_from
        # (app, requirements) -> dense matrix, kept only for a method a hybrid fuses from: the
        # hybrid reuses the model's scores, whose MaxSim is the dearest step of an evaluation
        self._dense: dict[tuple[str, tuple[str, ...]], np.ndarray] | None = None
        if fused_from is not None and fused_from._dense is None:
            fused_from._dense = {}

    def scores(self, requirements: list[str], app: App, index: AppIndex) -> np.ndarray:
        """Score matrix [Q, N] over every section of the app."""
        if self.fused_from is not None:
            dense = self.fused_from.scores(requirements, app, index)
            return np.stack([self.fused_from.retriever.fuse(d, r, index)
                             for d, r in zip(dense, requirements)])
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


def _summary_keys() -> list[str]:
    return ["accuracy", "map", "mrr", *(f"recall@{k}" for k in DEFAULT_KS), "ndcg@10"]


def summarise(results: list[QueryResult]) -> dict:
    """Headline averages, then per app and per label source (heuristic kept apart)."""
    def avg(rs: list[QueryResult]) -> dict:
        full = average_metrics([r.metrics for r in rs], CURVE_KS)
        keys = _summary_keys() + ["num_queries", "num_skipped"]
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


# -- the command ----------------------------------------------------------------------------------

def _load_queries(registry: Registry, split: str | None, cache_dir, hard_negatives: int,
                  random_negatives: int, label_sources: Sequence[str]) -> list[Query]:
    from cetd_phase1.dataset import build_dataset

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
                   class_penalty: float | None = None) -> dict:
    """Evaluate ``checkpoint`` on ``split`` of ``registry`` (default: the stdlib, or PostgreSQL
    when ``$DATABASE_URL`` is set), or on every app of ``apps_dir`` (a folder of apps or a
    manifest), against BM25 and the untrained backbone; write the report files to ``out``.
    ``section_chunks`` overrides how many texts the checkpoint reads a long function as (None:
    its own ``model.section_chunks``; the backbone always reads one); ``late_interaction`` the
    share of MaxSim in its score (None: its own; the backbone ranks by the cosine);
    ``class_penalty`` what the hybrid takes off a class (None: its own).

    Returns the ``metrics.json`` content.
    """
    from tqdm.auto import tqdm

    from cetd_phase1.registry import DirectoryRegistry, registry_from

    from cetd_phase1.model import check_section_chunks, resolve_backbone

    checkpoint, out = Path(resolve_backbone(checkpoint)), Path(out)
    if not (checkpoint / "config.json").is_file():
        raise CETDError(f"{checkpoint}: not a model folder (no config.json)")
    check_output_dir(str(out))
    if section_chunks is not None:  # before any work, not after the queries are built
        check_section_chunks(section_chunks)
    if late_interaction is not None:
        check_share("late_interaction", late_interaction)
    if class_penalty is not None:
        check_penalty("class_penalty", class_penalty)
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

    model = Retriever.from_pretrained(checkpoint, cache_dir=index_cache, batch_size=batch_size,
                                      show_progress=True, section_chunks=section_chunks,
                                      late_interaction=late_interaction,
                                      class_penalty=class_penalty)
    methods = [Method("model", model)]
    notes = []
    if model.late_interaction:
        notes.append(f"`model` scores {1 - model.late_interaction:g} x cosine + "
                     f"{model.late_interaction:g} x MaxSim (late interaction).")
    if hybrid:
        methods.append(Method("model+bm25 (hybrid)", model, fused_from=methods[0]))
        notes.append(f"The hybrid mixes z-scores: {model.hybrid_weight:g} x model + "
                     f"{1 - model.hybrid_weight:g} x BM25"
                     + (f", less {model.class_penalty:g} for a class." if model.class_penalty
                        else "."))
    methods.append(Method("bm25", None))
    backbone_path = _backbone_path(checkpoint, backbone)
    if backbone_path is None:
        notes.append("The checkpoint is a plain backbone: `model` is the untrained baseline.")
    else:
        try:
            base = Retriever.from_pretrained(backbone_path, cache_dir=index_cache,
                                             batch_size=batch_size, show_progress=True,
                                             max_query_length=model.max_query_length,
                                             max_code_length=model.max_code_length)
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


# -- report and plot -----------------------------------------------------------------------------

def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"


def _table(rows: list[tuple[str, dict]], first: str) -> list[str]:
    keys = _summary_keys()
    lines = [f"| {first} | " + " | ".join(keys) + " | queries | candidates/query |",
             "|---" * (len(keys) + 3) + "|"]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(m[k]) for k in keys)
                     + f" | {m['num_queries']} | {m['mean_candidates']:.1f} |")
    return lines


def _worst(results: list[QueryResult], indexes: dict[str, AppIndex], n: int) -> list[str]:
    """The ``n`` headline queries whose first positive ranks lowest, with what beat it."""
    scored = [r for r in results if r.metrics is not None and r.metrics["mrr"] < 1
              and r.query.label_source in HEADLINE_SOURCES]
    scored.sort(key=lambda r: (r.metrics["mrr"], r.metrics["map"]))
    lines = []
    for r in scored[:n]:
        index = indexes[r.query.app_id]
        ranks = positive_ranks(r.scores, r.labels)
        order = np.lexsort((r.labels > 0, -r.scores))
        above = [index.sections[r.section_ids[j]] for j in order[:min(3, ranks[0] - 1)]]
        expected = [index.sections[r.section_ids[j]] for j in np.flatnonzero(r.labels > 0)]
        req = r.query.requirement.replace("|", "\\|")
        lines.append(f"- **{r.query.app_name}** ({r.query.label_source}): \"{req[:160]}\"  \n"
                     f"  expected `{', '.join(s.key for s in expected[:3])}` at rank "
                     f"{', '.join(map(str, ranks[:3]))}; retrieved instead: "
                     + ", ".join(f"`{s.key}`" for s in above))
    return lines


def render_report(metrics: dict, results: dict[str, dict[str, list[QueryResult]]],
                  indexes: dict[str, AppIndex], command: str = "") -> str:
    """``report.md``: methods side by side per protocol, per-app table, worst queries."""
    lines = ["# Retrieval evaluation", "",
             f"- checkpoint: `{metrics['checkpoint']}`",
             f"- queries: {metrics['queries_from']}, {metrics['full_app']['num_queries']} headline "
             f"queries over {len(metrics['apps'])} apps "
             f"(label sources {', '.join(metrics['full_app']['label_sources']) or 'none'}; "
             "heuristic labels reported apart, never in the headline)"]
    if command:
        lines.append(f"- command: `{command}`")
    lines += [f"- note: {n}" for n in metrics["notes"]]
    if metrics["candidates_not_found"]:
        lines.append(f"- candidates missing from the current sources (dropped): "
                     f"{metrics['candidates_not_found']}")
    for protocol, title in (("full_app", "Full app (headline): every section is a candidate"),
                            ("candidate_set", "Candidate set: positives + sampled negatives "
                                              "(the seed's protocol)")):
        rows = [("model", metrics[protocol])] + [
            (name, b[protocol]) for name, b in metrics["baselines"].items()]
        lines += ["", f"## {title}", ""] + _table(rows, "method")
        if protocol == "candidate_set":
            lines += ["", "The hard negatives of this protocol were mined with BM25, so BM25 is "
                          "handicapped here; compare it on the full-app protocol."]
    cs = metrics["candidate_set"]
    lines += ["", "Seed targets (candidate set): " + ", ".join(
        f"{k} {_fmt(cs[k])} vs > {v:.2f} {'met' if cs[k] > v else 'not met'}"
        for k, v in SEED_TARGETS.items())]
    by_source = metrics["full_app"]["by_label_source"]
    if by_source:
        lines += ["", "## Model by label source (full app)", ""] + _table(
            sorted(by_source.items()), "label source")
    names = list(metrics["baselines"])
    lines += ["", "## Per app (full app, headline queries; MRR)", "",
              "| app | sections | queries | model MRR | model R@5 | "
              + " | ".join(f"{n} MRR" for n in names) + " |",
              "|---" * (5 + len(names)) + "|"]
    for app, m in metrics["full_app"]["per_app"].items():
        others = [metrics["baselines"][n]["full_app"]["per_app"].get(app, {}).get("mrr")
                  for n in names]
        lines.append(f"| {app} | {metrics['apps'].get(app, '?')} | {m['num_queries']} | "
                     f"{_fmt(m['mrr'])} | {_fmt(m['recall@5'])} | "
                     + " | ".join(_fmt(o) for o in others) + " |")
    lines += ["", f"## {WORST_QUERIES} worst queries (model, full app)", ""]
    lines += _worst(results["model"]["full_app"], indexes, WORST_QUERIES) or [
        "None: every headline query ranks a positive first."]
    lines += ["", "![Recall@K](recall_at_k.png)", ""]
    return "\n".join(lines)


def plot_recall(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Recall@K for K = 1..20, one line per method, one panel per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.5), squeeze=False)
    for ax, (protocol, by_method) in zip(axes[0], curves.items()):
        for name, values in by_method.items():
            ax.plot(CURVE_KS, values, marker="o", markersize=3, label=name)
        ax.set(title=protocol, xlabel="K", ylabel="Recall@K", ylim=(0, 1.02),
               xticks=[1, 5, 10, 15, 20])
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
