#!/usr/bin/env python
"""Dense + BM25 score fusion, measured: which way of combining the model's cosine scores with
BM25 ranks the sections best, on the stdlib validation split (docstrings) and the validation
half of the feature requests (gold labels only). Validation data only: use it to choose
``retrieve``/``evaluate``'s fusion, never the report half.

    python bench/fusion.py --checkpoint outputs/phase1-minilm/final

Prints full-app MRR and R@5 of what ``retrieve`` serves (the checkpoint's hybrid weight and class
penalty) and, for each dense model (the checkpoint and its untrained backbone), of:
the model alone, BM25 alone, reciprocal rank fusion for several k, and a convex combination
``w * z(dense) + (1 - w) * z(bm25)`` of per-query z-scored scores for several weights; then
three-way mixes of the model, its untrained backbone and BM25.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import _bench  # noqa: F401  (repository root on sys.path, offline hub)
from _bench import machine, today


#: (model, backbone) weights of the three-way z-score mix; BM25 takes the rest
THREE_WAY = [(0.6, 0.1), (0.5, 0.2), (0.6, 0.2), (0.4, 0.3), (0.5, 0.3), (0.4, 0.4)]


def rrf_fuse(*score_vectors: np.ndarray, k: int = 60) -> np.ndarray:
    """Reciprocal rank fusion (Cormack et al. 2009): sum over scorers of ``1 / (k + rank)``."""
    fused = np.zeros(len(score_vectors[0]), dtype=np.float64)
    for scores in score_vectors:
        ranks = np.empty(len(scores), dtype=np.int64)
        ranks[np.argsort(-np.asarray(scores), kind="stable")] = np.arange(1, len(scores) + 1)
        fused += 1.0 / (k + ranks)
    return fused


def score_sets(checkpoint: str, registry, split, label_sources,
               section_chunks: int | None = None, late_interaction: float | None = None,
               backbone: bool = True) -> dict:
    """Per method, the full-app score vectors and labels of every headline query; under
    ``"lines"`` each query's section lengths in lines and under ``"classes"`` which of its
    sections are classes (both in the same order as its scores).
    ``section_chunks`` and ``late_interaction``: the
    checkpoint's own unless given; ``backbone``: also score its untrained backbone."""
    from cetd_phase1.evaluation import (HEADLINE_SOURCES, Method, _backbone_path, _load_queries,
                                        score_queries)
    from cetd_phase1.model import resolve_backbone
    from cetd_phase1.retrieve import Retriever

    queries = _load_queries(registry, split, None, 3, 2, label_sources)
    apps = {a.app_id: a for a in registry.apps(split)}
    model = Retriever.from_pretrained(resolve_backbone(checkpoint), section_chunks=section_chunks,
                                      late_interaction=late_interaction)
    methods = [Method("model", model), Method("bm25", None)]
    backbone = backbone and _backbone_path(Path(resolve_backbone(checkpoint)), None)
    if backbone:
        methods.append(Method("backbone", Retriever.from_pretrained(
            backbone, max_query_length=model.max_query_length,
            max_code_length=model.max_code_length)))
    indexes = {a: model.index(apps[a]) for a in sorted({q.app_id for q in queries})}
    out = {}
    for m in methods:
        results = [r for r in score_queries(m, apps, queries, indexes, {})["full_app"]
                   if r.query.label_source in HEADLINE_SOURCES and r.labels.any()]
        out[m.name] = [(r.scores, r.labels) for r in results]
    # the same queries and section order under every method: the last one's results will do
    sections = [[indexes[r.query.app_id].sections[i] for i in r.section_ids] for r in results]
    out["lines"] = [np.array([s.line_end - s.line_start + 1 for s in row]) for row in sections]
    out["classes"] = [np.array([s.kind == "class" for s in row]) for row in sections]
    return out


def served_ranking(checkpoint: str) -> tuple[float, float]:
    """The checkpoint's ``hybrid_weight`` and ``class_penalty``: how ``retrieve`` fuses its
    scores with BM25 (the defaults of a checkpoint made before either was saved)."""
    from cetd_phase1.model import resolve_backbone
    from cetd_phase1.retrieve import HYBRID_WEIGHT

    config = json.loads((Path(resolve_backbone(checkpoint)) / "config.json").read_text())
    return config.get("hybrid_weight", HYBRID_WEIGHT), config.get("class_penalty", 0.0)


def served_scores(sets: dict, weight: float, penalty: float) -> list[tuple[np.ndarray,
                                                                         np.ndarray]]:
    """Per query of :func:`score_sets`'s ``sets``, the scores ``retrieve`` serves (the model's
    fused with BM25 at ``weight``, less ``penalty`` for a class) and the labels."""
    from cetd_phase1.retrieve import hybrid_fuse

    return [(hybrid_fuse(d, b, weight) - penalty * c, l)
            for (d, l), (b, _), c in zip(sets["model"], sets["bm25"], sets["classes"])]


def validation_benches(cache: Path) -> dict:
    """name -> (registry, split, label sources) of the two validation sets every row is chosen
    on: the stdlib validation split (docstrings) and the feature requests' validation half."""
    from feature_requests import prepare

    from cetd_phase1.registry import DirectoryRegistry, registry_from

    return {
        "stdlib validation": (registry_from(None), "validation", ("docstring", "gold", "heuristic")),
        "feature requests validation": (
            DirectoryRegistry(prepare("validation", cache), split="holdout"), None, ("gold",)),
    }


def validation_arguments(doc: str) -> argparse.ArgumentParser:
    """The arguments of a script that scores one checkpoint on :func:`validation_benches`."""
    parser = argparse.ArgumentParser(description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "cetd_phase1" / "fr"))
    parser.add_argument("--json", default=None, help="also write the table here")
    parser.add_argument("--section-chunks", type=int, default=None,
                        help="texts per long function for the checkpoint "
                             "(model.section_chunks; default: the checkpoint's own)")
    return parser


def print_validation_table(table: dict[str, dict[str, tuple[float, float]]], checkpoint: str,
                           json_path: str | None) -> None:
    """Rows x validation sets of MRR / R@5 with the mean MRR of the sets (the criterion of
    ``bench/ablation.py``); also written as JSON to ``json_path`` when given."""
    print(f"\n{today()}, {machine()}\nfull-app MRR / R@5, checkpoint {checkpoint}")
    print(f"{'ranking':24}" + "".join(f"{b:>32}" for b in table) + f"{'mean MRR':>10}")
    for n in next(iter(table.values())):
        mean = sum(table[b][n][0] for b in table) / len(table)
        print(f"{n:24}" + "".join(f"{table[b][n][0]:>22.3f} / {table[b][n][1]:.3f}"
                                   for b in table) + f"{mean:>10.4f}")
    if json_path:
        Path(json_path).write_text(json.dumps(table, indent=2) + "\n")


def measure(vectors: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    from cetd_phase1.metrics import compute_ranking_metrics
    m = compute_ranking_metrics([s for s, _ in vectors], [l for _, l in vectors])
    return float(m["mrr"]), float(m["recall@5"])


def main(argv: list[str] | None = None) -> int:
    args = validation_arguments(__doc__).parse_args(argv)

    from cetd_phase1.retrieve import hybrid_fuse, zscore

    benches = validation_benches(Path(args.cache))
    weight, penalty = served_ranking(args.checkpoint)
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for bench, (registry, split, sources) in benches.items():
        sets = score_sets(args.checkpoint, registry, split, sources, args.section_chunks)
        rows = {"served": measure(served_scores(sets, weight, penalty))}
        sets.pop("lines"), sets.pop("classes")
        bm25 = sets["bm25"]
        rows["bm25"] = measure(bm25)
        for dense_name in [n for n in sets if n != "bm25"]:
            dense = sets[dense_name]
            rows[dense_name] = measure(dense)
            for k in (10, 30, 60):
                rows[f"{dense_name} rrf k={k}"] = measure(
                    [(rrf_fuse(d, b, k=k), l) for (d, l), (b, _) in zip(dense, bm25)])
            for w in (0.5, 0.6, 0.7, 0.8, 0.9):
                rows[f"{dense_name} z-convex w={w}"] = measure(
                    [(hybrid_fuse(d, b, w), l) for (d, l), (b, _) in zip(dense, bm25)])
        if "backbone" in sets:
            # the trained model, its untrained backbone and BM25 together: the backbone keeps
            # the generality that docstring training gives up on feature-level requirements
            for wm, wb in THREE_WAY:
                rows[f"z model {wm} + backbone {wb}"] = measure(
                    [(wm * zscore(m) + wb * zscore(b0) + (1 - wm - wb) * zscore(b), l)
                     for (m, l), (b0, _), (b, _) in zip(sets["model"], sets["backbone"], bm25)])
        table[bench] = rows
    chunks = "" if args.section_chunks is None else f", section_chunks {args.section_chunks}"
    print(f"\n{today()}, {machine()}\nfull-app MRR / R@5, checkpoint {args.checkpoint}{chunks}")
    names = list(next(iter(table.values())))
    print(f"{'method':32}" + "".join(f"{b:>32}" for b in table))
    for n in names:
        print(f"{n:32}" + "".join(f"{table[b][n][0]:>22.3f} / {table[b][n][1]:.3f}"
                                   for b in table))
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
