#!/usr/bin/env python
"""Index size against ranking quality for ways of storing late-interaction token vectors, and
for a MaxSim shortlist.

For each variant (``f16``: float16 token vectors as encoded; ``q2``: rotated 2-bit codes, the
shipped index; ``-p16``: float16 pooled vectors; ``@N``: MaxSim reads the N best sections by
the served score of the pooled cosines) the validation apps are indexed afresh and ranked as
served (hybrid) and by the model alone: the feature-request validation half and the stdlib
validation split. Prints one table: KB of index per section and MRR per benchmark.

    python bench/token_compression.py --checkpoint outputs/phase1-minilm/final \
        [--codecs f16 q2-p16 q2-p16@100] [--json FILE]

Validation data only: the codec is chosen here, the held-out halves are reported once.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import _bench  # noqa: F401  (puts the repository root on sys.path, sets HF_HUB_OFFLINE)
from cetd_phase1 import default_cache_dir
from feature_requests import prepare


def parse_codec(name: str):
    from cetd_phase1.ranking.compress import TokenCodec

    kind, *rest = name.split("@")[0].split("-")
    bits = {"f16": 16, "q2": 2}
    if kind not in bits or rest not in ([], ["p16"]):
        raise SystemExit(f"codec {name!r}: expected f16 or q2, then -p16 for float16 pooled "
                         f"vectors and @N for a MaxSim shortlist, e.g. q2-p16@100")
    return TokenCodec(bits=bits[kind], pooled_f16=bool(rest))


def index_bytes(cache: Path) -> int:
    return sum(p.stat().st_size for p in cache.rglob("*.npz"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--codecs", nargs="+", default=["f16", "q2-p16", "q2-p16@100"])
    parser.add_argument("--fr-cache", default=str(default_cache_dir() / "fr"))
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args()

    from cetd_phase1.evaluation.evaluate import run_evaluation

    apps = prepare("validation", Path(args.fr_cache))
    rows = {}
    for name in args.codecs:
        codec = parse_codec(name)
        shortlist = int(name.split("@")[1]) if "@" in name else None
        with tempfile.TemporaryDirectory(prefix="cetd-codec-") as tmp:
            cache = Path(tmp)
            results, sections = {}, 0
            for bench, kwargs in (("feature requests", dict(apps_dir=apps,
                                                            label_sources=("gold",))),
                                  ("stdlib", dict(split="validation"))):
                metrics = run_evaluation(args.checkpoint, cache / "out" / bench, hybrid=True,
                                         cache_dir=cache, backbone=args.checkpoint,
                                         codec=codec, shortlist=shortlist, **kwargs)
                sections += sum(metrics["apps"].values())
                results[bench] = {"served": metrics["baselines"]["model+bm25 (hybrid)"]
                                  ["full_app"]["mrr"], "model": metrics["full_app"]["mrr"]}
            kb = index_bytes(cache / "index") / 1024 / max(sections, 1)
            rows[name] = {"kb_per_section": round(kb, 1), **results}
        print(f"{name}: {rows[name]}", flush=True)
    print(f"\n{'codec':12} {'KB/section':>10} {'FR served':>10} {'FR model':>9} "
          f"{'stdlib served':>14} {'stdlib model':>13}")
    for name, r in rows.items():
        fr, sd = r["feature requests"], r["stdlib"]
        print(f"{name:12} {r['kb_per_section']:>10} {fr['served']:>10.3f} {fr['model']:>9.3f} "
              f"{sd['served']:>14.3f} {sd['model']:>13.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
