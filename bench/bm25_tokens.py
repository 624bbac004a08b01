#!/usr/bin/env python
"""BM25 tokenisation variants, full-app MRR / R@5 on VALIDATION data only (stdlib validation
docstrings and the validation half of the feature requests). How ``retrieve``'s BM25 - and so
the hybrid ranking and the BM25 baseline of ``evaluate`` - reads text was chosen from this table.

    python bench/bm25_tokens.py

split: identifiers split into words (the first BM25); +whole: each compound identifier also kept
whole; +stem: Snowball stemming (PyStemmer). The package's ``bm25_text``/``bm25_tokenize`` is
split+whole+stem.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

import _bench  # noqa: F401  (repository root on sys.path, offline hub)
from _bench import machine, today


def split_only(text: str) -> str:
    return re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", text).replace("_", " ")


def tokenizer(to_text, stemmer):
    """A ``BM25Scorer`` tokenizer: ``to_text`` then ``bm25s.tokenize`` (English stop words)."""
    def tokenize(texts: list[str], return_ids: bool = True):
        return bm25s.tokenize([to_text(t) for t in texts], stopwords="en", stemmer=stemmer,
                              return_ids=return_ids, show_progress=False)
    return tokenize


def bench_mrr(registry, split, label_sources, tokenize) -> tuple[int, float, float]:
    """(queries, MRR, R@5) of BM25 over every section of each query's app."""
    from cetd_phase1.evaluation import HEADLINE_SOURCES, _load_queries
    from cetd_phase1.metrics import compute_ranking_metrics
    from cetd_phase1.retrieve import BM25Scorer, section_text
    from cetd_phase1.sections import extract_sections

    queries = [q for q in _load_queries(registry, split, None, 3, 2, label_sources)
               if q.label_source in HEADLINE_SOURCES]
    apps = {a.app_id: a for a in registry.apps(split)}
    scores, labels = [], []
    for app_id in sorted({q.app_id for q in queries}):
        app = apps[app_id]
        sections, _ = extract_sections(Path(app.source_path), app.name)
        bm25 = BM25Scorer([section_text(s) for s in sections], tokenize=tokenize)
        position = {(s.file, s.qualname, s.line_start): i for i, s in enumerate(sections)}
        for q in (q for q in queries if q.app_id == app_id):
            label = np.zeros(len(sections), np.int8)
            label[[position[k] for k in q.positives if k in position]] = 1
            if label.any():
                scores.append(bm25.scores(q.requirement).astype(np.float64))
                labels.append(label)
    m = compute_ranking_metrics(scores, labels)
    return len(scores), float(m["mrr"]), float(m["recall@5"])


def main() -> int:
    from feature_requests import prepare

    from cetd_phase1.registry import DirectoryRegistry, registry_from
    from cetd_phase1.retrieve import bm25_text

    stem = Stemmer.Stemmer("english")
    variants = {"split": (split_only, None), "split+whole": (bm25_text, None),
                "split+stem": (split_only, stem), "split+whole+stem": (bm25_text, stem)}
    benches = {
        "stdlib validation": (registry_from(None), "validation", ("docstring",)),
        "feature requests validation": (
            DirectoryRegistry(prepare("validation", Path.home() / ".cache" / "cetd_phase1" / "fr"),
                              split="holdout"), None, ("gold",)),
    }
    print(f"{today()}, {machine()}\nBM25 full-app MRR / R@5")
    for bench, (registry, split, sources) in benches.items():
        for name, (to_text, stemmer) in variants.items():
            n, mrr, r5 = bench_mrr(registry, split, sources, tokenizer(to_text, stemmer))
            print(f"{bench:28} {name:18} {n:4d} queries  MRR {mrr:.3f}  R@5 {r5:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
