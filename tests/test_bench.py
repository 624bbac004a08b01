"""Every shipped benchmark starts: its imports resolve against today's package and its command
line parses (``--help``), so a renamed name fails here, not in the next long measurement."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def test_the_benchmarks_are_all_listed():
    assert {p.name for p in SCRIPTS} >= {"ablation.py", "feature_requests.py",
                                         "retrieve_latency.py", "train_throughput.py"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_benchmark_starts_and_prints_its_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.syspath_prepend(str(BENCH))  # the scripts import their helpers by name
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code in (0, None)
    assert "usage:" in capsys.readouterr().out
