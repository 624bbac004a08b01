#!/usr/bin/env python
"""A section-length prior, measured on validation data only: does adding ``g * z(log lines)``
to the served hybrid (and to the dense model alone) rank the sections better, on the stdlib
validation split (docstrings) and the validation half of the feature requests?

    python bench/length_prior.py --checkpoint outputs/phase1-minilm/final

Why it might: a change touches long functions more often than short ones, and a requirement is
rarely implemented by a two-line accessor; BM25 normalises length away and the dense cosine
ignores it. Prints full-app MRR / R@5 per prior weight ``g`` (0: no prior) and the mean MRR of
the two sets, the criterion of ``bench/ablation.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import _bench  # noqa: F401  (repository root on sys.path, offline hub)

PRIOR_WEIGHTS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)


def main(argv: list[str] | None = None) -> int:
    from fusion import (measure, print_validation_table, score_sets, validation_arguments,
                        validation_benches)

    args = validation_arguments(__doc__).parse_args(argv)

    from cetd_phase1.retrieve import HYBRID_WEIGHT, hybrid_fuse, zscore

    table: dict[str, dict[str, tuple[float, float]]] = {}
    for bench, (registry, split, sources) in validation_benches(Path(args.cache)).items():
        sets = score_sets(args.checkpoint, registry, split, sources, args.section_chunks)
        prior = [zscore(np.log(lines)) for lines in sets["lines"]]
        # where each relevant section's length falls among its app's sections (0.5: no bias)
        pct = [float((lines < lines[i]).mean()) for lines, (_, labels) in
               zip(sets["lines"], sets["bm25"]) for i in np.flatnonzero(labels)]
        print(f"{bench}: {len(pct)} relevant sections, length percentile in their app: "
              f"median {np.median(pct):.2f}, mean {np.mean(pct):.2f}")
        rows = {}
        for g in PRIOR_WEIGHTS:
            rows[f"dense + {g} prior"] = measure(
                [(zscore(d) + g * p, l) for (d, l), p in zip(sets["model"], prior)])
            rows[f"hybrid + {g} prior"] = measure(
                [(hybrid_fuse(d, b, HYBRID_WEIGHT) + g * p, l)
                 for (d, l), (b, _), p in zip(sets["model"], sets["bm25"], prior)])
            rows[f"bm25 + {g} prior"] = measure(
                [(zscore(b) + g * p, l) for (b, l), p in zip(sets["bm25"], prior)])
        table[bench] = rows
    print_validation_table(table, args.checkpoint, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
