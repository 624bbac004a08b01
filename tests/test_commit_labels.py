"""Mined commit labels (``commit_labels.py``): the file's schema, the release each commit maps
to, and the code each label points at in a release's source distribution. Everything is built
here: a small repository with tags, its bare mirror, and sdists placed where PyPI downloads go,
so no network is used."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from cetd_phase1.data import commit_labels as cl
from cetd_phase1.data.dataset import build_dataset
from cetd_phase1.data.git_history import GitRepo
from cetd_phase1.data.registry import CommitRegistry, registry_from
from cetd_phase1.errors import CETDError
from test_git_history import Repo


@pytest.fixture(autouse=True)
def _isolated_git(monkeypatch):
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


CORE = '''def parse(text):
    return text.split()


def render(items):
    return " ".join(items)
'''


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A repository with releases 1.0 < 1.1 (and a 2.0rc1 pre-release, and a later unreleased
    commit), cloned bare as a mirror is."""
    base = tmp_path_factory.mktemp("commits")
    r = Repo(base / "work")
    r.write("src/demo/__init__.py", "")
    r.write("src/demo/core.py", CORE)
    r.write("docs/conf.py", "def setup(app):\n    return app\n")
    r.commit("root", "Initial import of the demo package")
    r.edit("src/demo/core.py", "    return text.split()\n", "    return text.split(',')\n")
    r.commit("split", "Split parsed text on commas instead of whitespace")
    r.git("tag", "v1.0")
    r.edit("src/demo/core.py", '    return " ".join(items)\n', '    return ", ".join(items)\n')
    r.commit("render", "Join rendered items with a comma and a space")
    r.edit("docs/conf.py", "    return app\n", "    return app or None\n")
    r.commit("docs_code", "Return nothing from the setup hook of the site builder")
    r.write("tests/test_core.py", "def test_parse():\n    assert True\n")
    r.commit("tests", "Cover parsing of comma separated values in tests")
    # renamed before the release: the label must name the function as 1.1 has it
    r.edit("src/demo/core.py", "def parse(text):\n    return text.split(',')\n",
           "def parse(text):\n    return text.split(';')\n")
    r.commit("semicolon", "Split parsed text on semicolons for the legacy format")
    r.edit("src/demo/core.py", "def parse(text):", "def parse_text(text):")
    r.commit("rename", "Give the parse function a more descriptive name")
    r.git("tag", "rel_1_1")
    r.edit("src/demo/core.py", '", ".join', '" | ".join')
    r.commit("pre", "Separate rendered items with a vertical bar for now")
    r.git("tag", "v2.0rc1")
    r.edit("src/demo/core.py", '" | ".join', '"|".join')
    r.commit("later", "Drop the spaces around the vertical bar separator")
    bare = base / "mirror.git"
    subprocess.run(["git", "clone", "-q", "--mirror", str(r.root), str(bare)], check=True,
                   capture_output=True)
    return bare, r.sha


def test_tags_map_to_published_final_versions_only() -> None:
    tags = ["v1.0", "rel_1_1", "demo-1.2", "v2.0rc1", "nightly", "v3.0"]
    assert cl.tag_versions(tags, ["1.0", "1.1", "1.2", "2.0rc1"]) == {
        "v1.0": "1.0", "rel_1_1": "1.1", "demo-1.2": "1.2"}


def test_each_commit_maps_to_the_lowest_release_that_contains_it(mirror) -> None:
    bare, sha = mirror
    first = cl.first_releases(GitRepo(bare, bare=True), {"v1.0": "1.0", "rel_1_1": "1.1"})
    assert first[sha["root"]] == first[sha["split"]] == "v1.0"
    assert first[sha["render"]] == first[sha["rename"]] == "rel_1_1"
    assert sha["pre"] not in first and sha["later"] not in first


def test_mining_a_mirror_labels_package_code_at_its_release(mirror) -> None:
    bare, sha = mirror
    mined = cl.mine_repo(bare, "owner/demo", "demo", ["1.0", "1.1", "2.0rc1"])
    by_commit = {label.commit: label for label in mined.labels}
    assert by_commit[sha["split"]] == cl.CommitLabel(
        text="Split parsed text on commas instead of whitespace", package="demo", release="1.0",
        repo="owner/demo", commit=sha["split"], sections=("src/demo/core.py::parse",))
    assert by_commit[sha["render"]].sections == ("src/demo/core.py::render",)
    assert by_commit[sha["render"]].release == "1.1"
    # changed as `parse`, released as `parse_text`: gone by the release, so no label
    skipped = dict(mined.report.skipped)
    assert skipped[sha["semicolon"]] == "gone_by_release"
    assert skipped[sha["docs_code"]] == "no_python_change"  # docs/ is not package code
    assert skipped[sha["tests"]] == "tests_only"
    assert skipped[sha["pre"]] == skipped[sha["later"]] == "unreleased"
    assert mined.releases == 2


def test_the_label_file_round_trips_and_a_bad_line_is_named(tmp_path: Path) -> None:
    labels = [cl.CommitLabel("Split parsed text on commas", "demo", "1.0", "owner/demo",
                             "a" * 40, ("src/demo/core.py::parse",))]
    path = tmp_path / "labels.jsonl.gz"
    assert cl.write_labels(labels, path) == 1
    first = path.read_bytes()
    cl.write_labels(labels, path)
    assert path.read_bytes() == first  # reproducible: no timestamp in the gzip header
    assert first[10:23] == b"labels.jsonl\x00"  # the file's name, not its temporary one's
    assert cl.read_labels(path) == labels
    for line, message in [('{"text": "x"}', "fields missing"),
                          ('{"text": "t", "package": "p", "release": "1", "repo": "o/p", '
                           '"commit": "c", "sections": ["no-separator"]}', "file::qualname"),
                          ("not json", "not JSON")]:
        with gzip.open(path, "wt") as f:
            f.write(line + "\n")
        with pytest.raises(CETDError, match=f"line 1: .*{message}"):
            cl.read_labels(path)


def test_the_shipped_label_file_is_valid_small_and_free_of_evaluation_packages() -> None:
    import yaml

    labels = cl.read_labels(cl.LABELS_FILE)
    assert len(labels) > 1000
    assert cl.LABELS_FILE.stat().st_size < 5_000_000
    repo = Path(__file__).resolve().parents[1]
    halves = yaml.safe_load((repo / "bench" / "feature_requests_split.yaml").read_text())
    evaluation_only = {name.lower() for half in halves.values() for name in half}
    assert len(evaluation_only) >= 10
    assert not evaluation_only & {label.package.lower() for label in labels}


def _sdist(sdists: Path, name: str, files: dict[str, str]) -> None:
    sdists.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdists / f"{name}.tar.gz", "w:gz") as tf:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{name}/{path}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


def test_labels_take_their_code_from_the_release_sdist(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _sdist(cache / "sdists", "demo-1.1", {
        "src/demo/__init__.py": "",
        "src/demo/core.py": CORE.replace("def parse(", "def parse_text("),
        "docs/conf.py": "def setup(app):\n    return app\n",
        "tests/test_core.py": "def test_parse():\n    assert True\n"})
    _sdist(cache / "sdists", "demo-1.0", {"src/demo/core.py": CORE})
    labels = [
        cl.CommitLabel("Join rendered items with a comma and a space", "demo", "1.1",
                       "owner/demo", "b" * 40, ("src/demo/core.py::render",)),
        cl.CommitLabel("Give the parse function a more descriptive name", "demo", "1.1",
                       "owner/demo", "c" * 40,
                       ("src/demo/core.py::parse_text", "src/demo/gone.py::lost")),
        cl.CommitLabel("Split parsed text on commas instead of whitespace", "demo", "1.0",
                       "owner/demo", "d" * 40, ("src/demo/core.py::parse",)),
    ]
    file = tmp_path / "labels.jsonl.gz"
    cl.write_labels(labels, file)

    # one release a repository: the one with the most labels
    registry = CommitRegistry(file, cache=cache, per_repo=1)
    (app,) = registry.apps()
    assert (app.name, app.split, app.label_sources) == ("git:demo==1.1", "train", ("git",))
    assert not (app.source_path / "docs").exists()
    assert registry.apps("validation") == []

    dd = build_dataset(registry=registry, label_sources=("docstring", "git"),
                       cache_dir=tmp_path / "ds", hard_negatives=1, random_negatives=0)
    rows = dd["train"].filter(lambda r: r["label"] == 1).to_list()
    assert {(r["requirement"], r["file"], r["qualname"], r["label_source"]) for r in rows} == {
        ("Join rendered items with a comma and a space", "src/demo/core.py", "render", "git"),
        ("Give the parse function a more descriptive name", "src/demo/core.py", "parse_text",
         "git")}
    assert all("def parse_text" in r["code"] for r in rows if r["qualname"] == "parse_text")

    # two releases a repository: both are laid out, each with its own labels
    names = sorted(a.name for a in CommitRegistry(file, cache=cache, per_repo=2).apps())
    assert names == ["git:demo==1.0", "git:demo==1.1"]


def test_the_commit_source_adds_the_releases_to_the_stdlib_and_changelogs() -> None:
    registry = registry_from("stdlib+pypi-changelog+git", commit_releases_per_repo=5)
    assert [type(r).__name__ for r in registry.registries] == [
        "StdlibRegistry", "PyPIRegistry", "CommitRegistry"]
    assert registry.registries[2].per_repo == 5
    # the stdlib folder may lie in a git work tree (a pyenv clone): its history is never mined
    stdlib = registry.registries[0].apps()
    assert stdlib and all("git" not in a.label_sources and "docstring" in a.label_sources
                          for a in stdlib)


def _mining_script(monkeypatch):
    """``data/mine_commit_labels.py`` as a module, PyPI's version list replaced by the demo's."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "data" / "mine_commit_labels.py"
    spec = importlib.util.spec_from_file_location("mine_commit_labels", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "sdist_files", lambda package: ["1.0", "1.1", "2.0rc1"])
    return script


def test_the_mining_script_refreshes_mirrored_repositories_and_keeps_the_others(
        mirror, tmp_path: Path, monkeypatch, capsys) -> None:
    bare, sha = mirror
    script = _mining_script(monkeypatch)
    repos = tmp_path / "repos.yaml"
    repos.write_text("repos:\n  owner/gone: gone\n  owner/demo: demo\n")
    out = tmp_path / "labels.jsonl.gz"
    gone = cl.CommitLabel("Keep the old behaviour", "gone", "0.1", "owner/gone", "b" * 40,
                          ("gone/core.py::run",))
    stale = cl.CommitLabel("A label mined long ago", "demo", "1.0", "owner/demo", "c" * 40,
                           ("src/demo/core.py::parse",))
    cl.write_labels([stale, gone], out)
    before = out.read_bytes()

    args = ["--repos", str(repos), "--out", str(out), "--jobs", "1"]
    assert script.main(["--mirrors", str(tmp_path / "none"), *args]) == 1
    assert "no mirror" in capsys.readouterr().err
    assert out.read_bytes() == before  # nothing mined: the file is left as it was

    mirrors = tmp_path / "mirrors" / "owner+demo"
    mirrors.mkdir(parents=True)
    (mirrors / "repo").symlink_to(bare)
    assert script.main(["--mirrors", str(tmp_path / "mirrors"), *args]) == 0
    labels = cl.read_labels(out)
    assert labels[0] == gone  # no mirror: its labels kept, in the order of the repository list
    demo = [label.commit for label in labels[1:]]
    assert sha["split"] in demo and sha["render"] in demo and stale.commit not in demo
    assert "owner/gone" in capsys.readouterr().out
