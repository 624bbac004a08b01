#!/usr/bin/env python
"""Late interaction, measured on validation data only: rank by ``(1 - a) * cosine + a *
MaxSim`` (``model.late_interaction`` = a) and fuse with BM25 at weight ``w``
(``model.hybrid_weight``), on the stdlib validation split (docstrings) and the validation half
of the feature requests.

    python bench/late_interaction.py --checkpoint outputs/phase1-minilm/final

Why it might help: the pooled embedding averages a section into one vector, so a requirement's
one distinctive term (an identifier, a protocol name) is diluted by the rest of the body; MaxSim
matches every requirement token to its best code token (ColBERT). The token vectors come from
the same forward pass, so it costs no training, only their storage in the index. Prints
full-app MRR / R@5 of the model alone and of the hybrid for each (a, w), and the mean MRR of the
two sets, the criterion of ``bench/ablation.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import _bench  # noqa: F401  (repository root on sys.path, offline hub)

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
WEIGHTS = (0.6, 0.7, 0.8, 0.9)


def main(argv: list[str] | None = None) -> int:
    from fusion import (measure, print_validation_table, score_sets, validation_arguments,
                        validation_benches)

    args = validation_arguments(__doc__).parse_args(argv)

    from cetd_phase1.retrieve import hybrid_fuse

    table: dict[str, dict[str, tuple[float, float]]] = {}
    for bench, (registry, split, sources) in validation_benches(Path(args.cache)).items():
        # the score is linear in a: the cosine (a 0) and MaxSim (a 1) once each, mixed per a,
        # instead of encoding the queries and multiplying their tokens again for every share
        cosine, late = (score_sets(args.checkpoint, registry, split, sources,
                                   late_interaction=a, section_chunks=args.section_chunks,
                                   backbone=False) for a in (0.0, 1.0))
        rows = {}
        for a in SHARES:
            model = [((1.0 - a) * c + a * m, l) for (c, l), (m, _) in zip(cosine["model"],
                                                                          late["model"])]
            rows[f"a {a} dense"] = measure(model)
            for w in WEIGHTS:
                rows[f"a {a} hybrid w {w}"] = measure(
                    [(hybrid_fuse(d, b, w), l) for (d, l), (b, _) in zip(model, late["bm25"])])
        rows["bm25"] = measure(late["bm25"])
        table[bench] = rows
    print_validation_table(table, args.checkpoint, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
