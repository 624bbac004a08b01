"""The datasets builder: rows, negatives, caching/rebuild, split disjointness, the validator."""

from __future__ import annotations

from pathlib import Path

import datasets
import pytest

from cetd_phase1.data import dataset as ds_mod
from cetd_phase1.__main__ import main
from cetd_phase1.data.dataset import build_dataset, build_sections, validate_dataset
from cetd_phase1.data.registry import StdlibRegistry

FUNCS = ["parse the incoming request body", "render the page template to html",
         "store the session in the database", "send an email to the user",
         "compute the checksum of a file", "retry a failed network call"]


def _apps(root: Path, n_apps: int = 4) -> Path:
    for a in range(n_apps):
        lines = []
        for i, doc in enumerate(FUNCS):
            lines.append(f"def f{i}_{a}(x):\n    \"\"\"{doc.capitalize()} for app {a}.\"\"\"\n"
                         f"    return x + {i}\n")
        (root / f"app{a}").mkdir(parents=True)
        (root / f"app{a}" / "main.py").write_text("\n".join(lines))
    return root


def test_rows_negatives_and_columns(tmp_path):
    apps = _apps(tmp_path / "apps")
    dd = build_dataset(apps, cache_dir=tmp_path / "cache", hard_negatives=2, random_negatives=1,
                       label_sources=("docstring",))
    rows = [r for split in dd.values() for r in split]
    assert set(dd) == {"train", "validation", "holdout"}
    assert len(rows) == 4 * 6 * (1 + 2 + 1)
    by_query: dict[str, list[dict]] = {}
    for r in rows:
        by_query.setdefault(r["query_id"], []).append(r)
    for group in by_query.values():
        assert [r["origin"] for r in group] == ["positive", "bm25", "bm25", "random"]
        assert [r["label"] for r in group] == [1, 0, 0, 0]
        assert len({r["app_id"] for r in group}) == 1  # negatives from the same app
        assert len({r["qualname"] for r in group}) == 4  # no negative is the positive
        assert group[0]["requirement"] not in group[0]["code"]  # docstring cut from the code
        assert group[0]["label_source"] == "docstring"


def test_cache_is_reused_and_a_changed_source_rebuilds(tmp_path, monkeypatch):
    apps = _apps(tmp_path / "apps", 2)
    calls = []
    original = ds_mod.Phase1Builder._generate_examples

    def counting(self, split):
        calls.append(split)
        yield from original(self, split)

    monkeypatch.setattr(ds_mod.Phase1Builder, "_generate_examples", counting)
    first = build_dataset(apps, cache_dir=tmp_path / "cache", label_sources=("docstring",))
    assert len(calls) == 3
    second = build_dataset(apps, cache_dir=tmp_path / "cache", label_sources=("docstring",))
    assert len(calls) == 3  # served from the Arrow cache
    assert second["train"]["requirement"] == first["train"]["requirement"]
    build_dataset(apps, cache_dir=tmp_path / "cache", label_sources=("docstring",),
                  hard_negatives=1)
    assert len(calls) == 6  # a changed option rebuilds
    (apps / "app0" / "main.py").write_text('def g(x):\n    """Brand new requirement text here."""\n')
    rebuilt = build_dataset(apps, cache_dir=tmp_path / "cache", label_sources=("docstring",))
    assert len(calls) == 9  # a changed source file rebuilds
    reqs = {r for split in rebuilt.values() for r in split["requirement"]}
    assert "Brand new requirement text here." in reqs


def test_sections_table_is_the_full_app_pool(tmp_path):
    apps = _apps(tmp_path / "apps", 2)
    dd = build_sections(apps, cache_dir=tmp_path / "cache")
    names = sorted(q for split in dd.values() for q in split["qualname"])
    assert names == sorted(f"f{i}_{a}" for a in range(2) for i in range(6))


def test_stdlib_splits_are_disjoint_and_deterministic():
    apps = StdlibRegistry().apps()
    assert 150 <= len(apps) <= 260
    names = [a.name for a in apps]
    assert "json" in names and "test" not in names and "idlelib" not in names
    splits = {s: {a.name for a in StdlibRegistry().apps(s)} for s in ("train", "validation",
                                                                       "holdout")}
    assert not (splits["train"] & splits["holdout"]) and not (splits["train"] & splits["validation"])
    assert sum(map(len, splits.values())) == len(apps)
    assert 0.55 < len(splits["train"]) / len(apps) < 0.85
    assert {a.name: a.split for a in apps} == {a.name: a.split for a in StdlibRegistry().apps()}


def _table(rows: list[dict]) -> datasets.Dataset:
    base = {"query_id": "q", "requirement": "r", "app_id": "a", "app_name": "a", "split": "train",
            "file": "f.py", "qualname": "f", "kind": "function", "line_start": 1, "line_end": 2,
            "code": "def f(): pass", "label": 1, "label_source": "docstring",
            "origin": "positive"}
    return datasets.Dataset.from_list([{**base, **r} for r in rows])


def test_validator_catches_each_violation():
    clean = datasets.DatasetDict({
        "train": _table([{}, {"qualname": "g", "label": 0, "origin": "bm25"}]),
        "holdout": _table([{"app_id": "b", "split": "holdout"}])})
    assert validate_dataset(clean).violations == []
    leaked_app = datasets.DatasetDict({"train": _table([{}]), "holdout": _table([{}])})
    assert any("several splits" in v for v in validate_dataset(leaked_app).violations)
    quoted = datasets.DatasetDict({"train": _table([{"requirement": "return x",
                                                     "code": "def f():\n    return x"}])})
    assert any("verbatim" in v for v in validate_dataset(quoted).violations)
    no_pos = validate_dataset(datasets.DatasetDict({"train": _table([{"label": 0}])}))
    assert no_pos.stats["train"]["requirements_without_positive"] == 1
    dupes = validate_dataset(datasets.DatasetDict({"train": _table([{}, {}])}))
    assert dupes.stats["train"]["duplicate_rows"] == 1


def test_cli_build_and_validate_report_skipped_files(tmp_path, capsys):
    apps = _apps(tmp_path / "apps", 2)
    (apps / "app0" / "broken.py").write_text("def broken(:\n")
    (apps / "app1" / "gold_annotations.yaml").write_text("Something: [main.py::missing]\n")
    code = main(["build-data", "--apps", str(apps), "--cache-dir", str(tmp_path / "c"),
                 "--label-sources", "docstring,gold"])
    out = capsys.readouterr().out
    assert code == 1  # the bad annotation is an error, yet every app was built
    assert "skipped app0/broken.py: syntax_error" in out
    assert "main.py::missing" in out and "gold_annotations.yaml" in out
    assert main(["validate-data", "--apps", str(apps), "--cache-dir", str(tmp_path / "c"),
                 "--label-sources", "docstring"]) == 0
    out, err = capsys.readouterr()
    assert "ok: no leakage" in err
    import json
    assert json.loads(out)  # stdout is the statistics' JSON alone, whatever was warned


def test_unknown_apps_folder_is_a_clear_error(tmp_path, capsys):
    assert main(["build-data", "--apps", str(tmp_path / "nope"),
                 "--cache-dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope" in err and "Traceback" not in err


def test_a_build_logged_to_a_file_leaves_no_cursor_escapes(tmp_path, capfd):
    """Our per-app bar runs inside datasets' own; drawn into a log file (not a terminal) two
    nested bars would leave cursor-up escapes on every line, so ours shows on terminals only."""
    build_dataset(_apps(tmp_path / "apps"), cache_dir=tmp_path / "cache",
                  label_sources=("docstring",))
    assert "\x1b[A" not in capfd.readouterr().err
