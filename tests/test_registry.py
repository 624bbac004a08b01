"""Registries without a database: stdlib, folder, manifest; the factory; source checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cetd_phase1.errors import CETDError
from cetd_phase1.data.postgres import DatabaseError, PostgresRegistry, source_problem
from cetd_phase1.data.apps import SPLITS, DirectoryRegistry, RegistryError, hash_split
from cetd_phase1.data.registry import StdlibRegistry, registry_from


def test_hash_split_is_deterministic_and_roughly_proportional():
    names = [f"app{i}" for i in range(2000)]
    first = [hash_split(n) for n in names]
    assert first == [hash_split(n) for n in names]
    counts = {s: first.count(s) for s in SPLITS}
    assert 0.65 < counts["train"] / 2000 < 0.75
    assert 0.07 < counts["validation"] / 2000 < 0.13
    assert 0.15 < counts["holdout"] / 2000 < 0.25


def test_stdlib_splits_are_disjoint_and_cover_every_app():
    registry = StdlibRegistry()
    everything = registry.apps()
    per_split = {s: {a.name for a in registry.apps(s)} for s in SPLITS}
    assert sum(len(v) for v in per_split.values()) == len(everything)
    assert set().union(*per_split.values()) == {a.name for a in everything}
    assert all(not (per_split[a] & per_split[b])
               for a in SPLITS for b in SPLITS if a < b)
    names = {a.name for a in everything}
    assert {"json", "email", "argparse"} <= names
    assert not names & {"test", "idlelib", "tkinter", "antigravity"}
    assert all(a.split == hash_split(a.name) for a in everything)


def test_folder_registry_lists_subfolders(tmp_path):
    for name in ("beta", "alpha", ".hidden", "_private"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("not an app")
    apps = DirectoryRegistry(tmp_path).apps()
    assert [a.name for a in apps] == ["alpha", "beta"]
    assert [a.split for a in apps] == [hash_split("alpha"), hash_split("beta")]
    assert [a.name for a in DirectoryRegistry(tmp_path, split="holdout").apps("holdout")] == [
        "alpha", "beta"]
    with pytest.raises(RegistryError, match="no such file"):
        DirectoryRegistry(tmp_path / "absent").apps()


def test_a_folder_of_modules_or_one_py_file_is_one_app_and_other_files_are_refused(tmp_path):
    app = tmp_path / "mytool"
    (app / "sub").mkdir(parents=True)
    (app / "cli.py").write_text("def main():\n    pass\n")
    (app / "sub" / "util.py").write_text("def helper():\n    pass\n")
    (found,) = DirectoryRegistry(app).apps()
    assert (found.name, found.source_path, found.split) == ("mytool", app, hash_split("mytool"))
    (single,) = DirectoryRegistry(app / "cli.py", split="holdout").apps()
    assert (single.name, single.source_path, single.split) == ("cli", app / "cli.py", "holdout")
    (tmp_path / "notes.txt").write_text("- not: an app\n")
    with pytest.raises(RegistryError, match=r"notes.txt: not an app source; give a folder"):
        DirectoryRegistry(tmp_path / "notes.txt").apps()
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="empty: no app here"):
        DirectoryRegistry(tmp_path / "empty").apps()


def test_manifest_resolves_relative_paths_and_defaults_split(tmp_path):
    manifest = tmp_path / "sub" / "apps.yaml"
    manifest.parent.mkdir()
    manifest.write_text("- {name: a, source_path: ../src/a, split: validation}\n"
                        "- {name: b, source_path: /abs/b}\n")
    apps = {a.name: a for a in DirectoryRegistry(manifest).apps()}
    assert apps["a"].split == "validation"
    assert apps["a"].source_path == tmp_path / "sub" / ".." / "src" / "a"
    assert apps["b"].source_path == Path("/abs/b") and apps["b"].split == hash_split("b")


@pytest.mark.parametrize("text, message", [
    ("name: a\n", "a YAML list"),
    ("- {name: a}\n", "entry 0 needs name and source_path"),
    ("- {name: a, source_path: x, split: test}\n", "unknown split 'test'"),
    ("- {name: a, source_path: x}\n- {name: a, source_path: y}\n", "duplicate app name 'a'"),
    ("- [unclosed\n", "cannot read manifest"),
])
def test_manifest_errors_name_the_file(tmp_path, text, message):
    manifest = tmp_path / "apps.yaml"
    manifest.write_text(text)
    with pytest.raises(RegistryError, match=message) as err:
        DirectoryRegistry(manifest).apps()
    assert str(manifest) in str(err.value)


def test_unknown_split_is_refused(tmp_path):
    with pytest.raises(RegistryError, match="unknown split 'dev'"):
        DirectoryRegistry(tmp_path).apps("dev")


def test_registry_from_chooses_by_source_and_database_url(tmp_path, monkeypatch):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    assert isinstance(registry_from(None), StdlibRegistry)
    assert isinstance(registry_from("stdlib"), StdlibRegistry)
    assert isinstance(registry_from(str(tmp_path)), DirectoryRegistry)
    assert isinstance(registry_from(tmp_path), DirectoryRegistry)
    with pytest.raises(DatabaseError, match="DATABASE_URL"):
        registry_from("postgres")

    url = "postgresql://u:s3cr3t@db.example:6543/apps"
    from_url = registry_from(url, source_roots=[tmp_path])
    assert isinstance(from_url, PostgresRegistry) and from_url.source_roots == [tmp_path.resolve()]
    assert from_url.describe() == "postgres:postgresql://u@db.example:6543/apps"
    assert registry_from("postgresql", database_url=url).database_url == url

    monkeypatch.setenv("DATABASE_URL", url)
    assert registry_from(None).database_url == url
    assert registry_from("postgres").database_url == url
    assert isinstance(registry_from("stdlib"), StdlibRegistry)  # explicit beats the environment


@pytest.mark.parametrize("source", ["stdlib+pypi", "stdlib+pypi-summaries", "stdlib+pyp"])
def test_an_unknown_stdlib_source_is_an_error_naming_it_not_a_missing_folder(source, tmp_path,
                                                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CETDError, match=rf"unknown data source '{re.escape(source)}'.*"
                                        r"'stdlib\+pypi-changelog'"):
        registry_from(source)
    (tmp_path / source).mkdir()  # a folder of apps that happens to be called so still is one
    assert isinstance(registry_from(source), DirectoryRegistry)


def test_invalid_database_url_is_not_echoed():
    with pytest.raises(DatabaseError) as err:
        PostgresRegistry("user=u password=pa55 nonsense").describe()
    assert "pa55" not in str(err.value) and "invalid database URL" in str(err.value)


def test_source_problem(tmp_path):
    root, app = tmp_path / "root", tmp_path / "root" / "app"
    app.mkdir(parents=True)
    (root / "file.py").write_text("x = 1\n")
    (tmp_path / "elsewhere").mkdir()
    (root / "link").symlink_to(tmp_path / "elsewhere")
    assert source_problem(app, [root]) is None
    assert source_problem(app, []) is None
    assert source_problem(root / "gone", [root]).startswith("missing:")
    assert source_problem(root / "file.py", [root]).startswith("not_a_directory:")
    assert source_problem(tmp_path / "elsewhere", [root]).startswith("outside_roots:")
    # a link inside the root that points out of it is outside
    assert source_problem(root / "link", [root]).startswith("outside_roots:")
    assert source_problem(root / ".." / "elsewhere", [root]).startswith("outside_roots:")
