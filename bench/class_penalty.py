#!/usr/bin/env python
"""A penalty on class sections, measured on validation data only: subtract ``d`` from every
class's served hybrid score (z-units, ``model.class_penalty``), on the stdlib validation split
(docstrings) and the validation half of the feature requests.

    python bench/class_penalty.py --checkpoint outputs/phase1-minilm/final

Why it might help: a class's text is its header and then its methods' code, so a class matches
whatever its first methods match, and a feature-level requirement names the function that
changed, not the class around it: on the feature requests' validation half the top section is
often a class whose own method is the answer. Prints how many queries have a class among their
relevant sections and, per penalty ``d`` (0: none), how many rank an unlabelled class first, then full-app MRR / R@5 of the hybrid and the mean MRR
of the two sets, the criterion of ``bench/ablation.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import _bench  # noqa: F401  (repository root on sys.path, offline hub)

PENALTIES = (0.0, 0.1, 0.2, 0.3, 0.5)


def main(argv: list[str] | None = None) -> int:
    from fusion import (measure, print_validation_table, score_sets, served_ranking,
                        served_scores, validation_arguments, validation_benches)

    parser = validation_arguments(__doc__)
    parser.add_argument("--late-interaction", type=float, default=None,
                        help="model.late_interaction to rank with (default: the checkpoint's)")
    parser.add_argument("--hybrid-weight", type=float, default=None,
                        help="model.hybrid_weight to fuse with (default: the checkpoint's)")
    args = parser.parse_args(argv)

    weight = served_ranking(args.checkpoint)[0] if args.hybrid_weight is None \
        else args.hybrid_weight
    table: dict[str, dict[str, tuple[float, float]]] = {}
    for bench, (registry, split, sources) in validation_benches(Path(args.cache)).items():
        sets = score_sets(args.checkpoint, registry, split, sources, args.section_chunks,
                          late_interaction=args.late_interaction, backbone=False)
        wanted = sum(bool((c & (l > 0)).any()) for c, (_, l) in zip(sets["classes"],
                                                                     sets["model"]))
        print(f"{bench}: {wanted} of {len(sets['model'])} queries have a class among their "
              "relevant sections")
        rows = {}
        for d in PENALTIES:
            served = served_scores(sets, weight, d)
            rows[f"hybrid - {d} x class"] = measure(served)
            wrong = sum(bool(c[s.argmax()] and not l[s.argmax()])
                        for (s, l), c in zip(served, sets["classes"]))
            print(f"{bench}, d {d}: {wrong} of {len(served)} queries rank an unlabelled class "
                  "first")
        table[bench] = rows
    print_validation_table(table, args.checkpoint, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
