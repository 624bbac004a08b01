#!/usr/bin/env python
"""How many training negatives are false negatives: sections documented with (nearly) the same
words as the requirement they are a negative for. Measures issue 7's lever "filtering false
negatives" before building it: a filter can only help as much as there is to filter.

    python bench/false_negatives.py

For the stdlib docstring requirements of the train split, prints how many have (a) another
section of their app whose docstring's first paragraph shares at least 0.5 / 0.7 / 0.9 of its
words (Jaccard over lower-cased alphanumeric tokens) with the requirement, i.e. a possible
false negative among the same-app in-batch candidates, and (b) such a section as their first
BM25 hard negative (the one the default trains with) or among all three.
"""

from __future__ import annotations

import argparse
import re
import sys

import _bench  # noqa: F401  (repository root on sys.path, offline hub)
from _bench import machine, today

THRESHOLDS = (0.5, 0.7, 0.9)


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=8, help="closest pairs to print")
    args = parser.parse_args(argv)

    from cetd_phase1.dataset import build_dataset
    from cetd_phase1.labels import first_paragraph
    from cetd_phase1.registry import registry_from
    from cetd_phase1.sections import extract_sections

    docs: dict[tuple[str, str], str] = {}
    for app in registry_from(None).apps("train"):
        for s in extract_sections(app.source_path, app.name)[0]:
            if s.docstring:
                docs[(app.name, s.key)] = first_paragraph(s.docstring)
    rows = build_dataset("stdlib")["train"].filter(lambda r: r["label_source"] == "docstring")

    positives: dict[str, set[str]] = {}
    hard: dict[str, list[str]] = {}
    meta: dict[str, tuple[str, str]] = {}
    for r in rows:
        key = f"{r['file']}::{r['qualname']}"
        meta[r["query_id"]] = (r["app_name"], r["requirement"])
        if r["label"] == 1:
            positives.setdefault(r["query_id"], set()).add(key)
        elif r["origin"] == "bm25":
            hard.setdefault(r["query_id"], []).append(key)

    by_app: dict[str, list[tuple[str, set[str]]]] = {}
    for (app, key), doc in docs.items():
        by_app.setdefault(app, []).append((key, words(doc)))
    in_app = {t: 0 for t in THRESHOLDS}
    first_hard = {t: 0 for t in THRESHOLDS}
    any_hard = {t: 0 for t in THRESHOLDS}
    closest: list[tuple[float, str, str, str]] = []
    for qid, (app, req) in meta.items():
        q = words(req)
        best, best_key = 0.0, ""
        for key, w in by_app.get(app, []):
            if key not in positives.get(qid, ()) and (j := jaccard(q, w)) > best:
                best, best_key = j, key
        sims = [jaccard(q, words(docs.get((app, k), ""))) for k in hard.get(qid, [])]
        for t in THRESHOLDS:
            in_app[t] += best >= t
            first_hard[t] += bool(sims) and sims[0] >= t
            any_hard[t] += any(s >= t for s in sims)
        closest.append((best, app, req, best_key))

    n = len(meta)
    print(f"\n{today()}, {machine()}\n{n} stdlib train docstring requirements")
    print(f"{'word overlap':>14} {'same-app section':>18} {'first BM25 negative':>20} "
          f"{'any of 3 BM25':>14}")
    for t in THRESHOLDS:
        print(f"{'>= ' + str(t):>14} {in_app[t]:>10} ({in_app[t] / n:5.1%}) "
              f"{first_hard[t]:>11} ({first_hard[t] / n:5.1%}) "
              f"{any_hard[t]:>6} ({any_hard[t] / n:5.1%})")
    for best, app, req, key in sorted(closest, reverse=True)[:args.examples]:
        print(f"  {best:.2f} {app}: {req[:70]!r} ~ {key}: {docs[(app, key)][:70]!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
