#!/usr/bin/env python
"""``accelerate launch run_phase1.py [--config FILE] ...``: the training driver of
:mod:`cetd_phase1.train` (also ``cetd-phase1 train`` and ``python -m cetd_phase1 train``)."""

import sys

from cetd_phase1.train import main, resolve_checkpoint  # noqa: F401  (tests drive both)

if __name__ == "__main__":
    sys.exit(main())
