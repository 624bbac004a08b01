"""PyPI source distributions laid out as training apps (``pypi.py``), without any network:
the sdists are built here and placed in the cache pip would download into."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from cetd_phase1.data import pypi
from cetd_phase1.data.dataset import build_dataset
from cetd_phase1.errors import CETDError
from cetd_phase1.data.apps import RegistryError
from cetd_phase1.data.registry import CombinedRegistry, PyPIRegistry, StdlibRegistry, registry_from

FILES = {
    "demo_pkg-1.0/CHANGES.rst": "- Add :func:`demo_pkg.core.retry` with exponential backoff "
                                "between attempts.\n",
    "demo_pkg-1.0/setup.py": "def setup_helper():\n    return 1\n",
    "demo_pkg-1.0/src/demo_pkg/__init__.py": "",
    "demo_pkg-1.0/src/demo_pkg/core.py": "def retry(fn, attempts=3):\n    return fn()\n\n\n"
                                         "def other():\n    return 2\n",
    "demo_pkg-1.0/src/demo_pkg/sub/__init__.py": "def nested():\n    return 3\n",
    "demo_pkg-1.0/tests/__init__.py": "",
    "demo_pkg-1.0/tests/test_core.py": "def test_retry():\n    assert True\n",
}


def make_sdist(sdists: Path, files: dict[str, str] = FILES, name: str = "demo_pkg-1.0") -> None:
    sdists.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdists / f"{name}.tar.gz", "w:gz") as tf:
        for path, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(path)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture()
def packages(tmp_path: Path) -> Path:
    path = tmp_path / "packages.yaml"
    path.write_text("packages:\n  - demo-pkg==1.0\n")
    make_sdist(tmp_path / "cache" / "sdists")
    return path


def test_registry_lays_out_the_package_and_its_changelog_in_train(packages: Path,
                                                                  tmp_path: Path) -> None:
    registry = PyPIRegistry(packages, tmp_path / "cache")
    apps = registry.apps()
    assert [(a.name, a.split) for a in apps] == [("demo-pkg==1.0", "train")]
    root = apps[0].source_path
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == [
        "CHANGES.rst", "demo_pkg/__init__.py", "demo_pkg/core.py", "demo_pkg/sub/__init__.py"]
    assert registry.apps("validation") == [] and registry.apps("holdout") == []
    dd = build_dataset(registry=registry, label_sources=("changelog",), hard_negatives=1,
                       random_negatives=0, cache_dir=tmp_path / "arrow")
    positives = dd["train"].filter(lambda r: r["label"] == 1)
    assert positives["requirement"] == ["Add demo_pkg.core.retry with exponential backoff "
                                        "between attempts."]
    assert positives["qualname"] == ["retry"] and positives["file"] == ["demo_pkg/core.py"]


def test_a_package_that_cannot_be_fetched_is_a_clear_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(pypi, "sdist_files", lambda project, index=pypi.SIMPLE_INDEX: {})
    (tmp_path / "p.yaml").write_text("packages:\n  - nope==9\n")
    with pytest.raises(CETDError, match=r"nope==9: no source distribution on PyPI \(training on "
                                        r"PyPI apps needs PyPI"):
        PyPIRegistry(tmp_path / "p.yaml", tmp_path / "cache").apps()
    assert not any((tmp_path / "cache" / "apps").iterdir())  # nothing half laid out


def test_unpinned_or_changelog_less_packages_are_refused(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("packages:\n  - demo-pkg\n")
    with pytest.raises(CETDError, match="pinned as NAME==VERSION"):
        pypi.read_packages(tmp_path / "p.yaml")
    make_sdist(tmp_path / "cache" / "sdists",
               {k: v for k, v in FILES.items() if not k.endswith("CHANGES.rst")})
    (tmp_path / "p.yaml").write_text("packages:\n  - demo-pkg==1.0\n")
    with pytest.raises(CETDError, match="no changelog"):
        PyPIRegistry(tmp_path / "p.yaml", tmp_path / "cache").apps()


def test_combined_registry_keeps_each_source_split_and_refuses_repeated_names(
        packages: Path, tmp_path: Path) -> None:
    stdlib = tmp_path / "lib"
    stdlib.mkdir()
    (stdlib / "json_like.py").write_text("def parse(text):\n    return text\n")
    combined = CombinedRegistry(StdlibRegistry(stdlib), PyPIRegistry(packages, tmp_path / "cache"))
    names = {a.name: a.split for a in combined.apps()}
    assert names["demo-pkg==1.0"] == "train"
    assert names["json_like"] == StdlibRegistry(stdlib).apps()[0].split
    with pytest.raises(RegistryError, match="json_like"):
        CombinedRegistry(StdlibRegistry(stdlib), StdlibRegistry(stdlib)).apps()


def test_shipped_packages_are_pinned_and_never_a_feature_request_package() -> None:
    import yaml

    specs = pypi.read_packages()
    # the benchmark's own split file names every feature-request package; the release files
    # beside the checkout (when present) too
    repo = Path(__file__).resolve().parents[1]
    halves = yaml.safe_load((repo / "bench" / "feature_requests_split.yaml").read_text())
    evaluation_only = {name.lower() for half in halves.values() for name in half}
    requests = repo.parent / "shared" / "bench" / "feature-requests"
    evaluation_only |= {p.stem.split("==")[0].lower() for p in requests.glob("*.yaml")}
    assert len(evaluation_only) >= 10
    assert len(specs) == len(set(specs)) == 15
    for listed in (specs, pypi.read_packages(repo / "bench" / "pypi_packages_wide.yaml")):
        assert not {s.split("==")[0].lower() for s in listed} & evaluation_only


def test_pypi_apps_can_be_limited_to_their_changelog_requirements(packages: Path,
                                                                  tmp_path: Path) -> None:
    files = dict(FILES)
    files["demo_pkg-1.0/src/demo_pkg/core.py"] = (
        'def retry(fn, attempts=3):\n    """Call fn until it succeeds or attempts run out."""\n'
        "    return fn()\n")
    make_sdist(tmp_path / "cache" / "sdists", files)

    def requirements(registry) -> set[str]:
        dd = build_dataset(registry=registry, label_sources=("docstring", "changelog"),
                           hard_negatives=0, random_negatives=0, cache_dir=tmp_path / "arrow")
        return set(dd["train"]["label_source"])

    assert requirements(PyPIRegistry(packages, tmp_path / "cache")) == {"docstring", "changelog"}
    only = PyPIRegistry(packages, tmp_path / "cache", label_sources=("changelog",))
    assert requirements(only) == {"changelog"}


def _pypi_positives(packages: Path, tmp_path: Path, core_py: str, source: str,
                    label_sources: tuple[str, ...]) -> list[dict]:
    """The positive train rows of the PyPI part of registry ``source`` over the demo sdist
    with ``core_py`` as its ``demo_pkg/core.py``."""
    make_sdist(tmp_path / "cache" / "sdists",
               {**FILES, "demo_pkg-1.0/src/demo_pkg/core.py": core_py})
    pypi_part = registry_from(source, pypi_packages=packages).registries[1]
    assert pypi_part.packages_file == packages
    pypi_part.cache = tmp_path / "cache"  # the sdist built above, no network
    dd = build_dataset(registry=pypi_part, hard_negatives=0, random_negatives=0,
                       label_sources=label_sources, cache_dir=tmp_path / "arrow")
    return [r for r in dd["train"] if r["label"] == 1]


def test_a_config_can_name_its_own_package_list_and_pypi_apps_give_only_changelogs(
        packages: Path, tmp_path: Path) -> None:
    core_py = ('def retry(fn, attempts=3):\n'
               '    """Call fn until it succeeds or attempts run out."""\n    return fn()\n')
    dd = _pypi_positives(packages, tmp_path, core_py, "stdlib+pypi-changelog",
                         ("docstring", "changelog"))
    rows = {(r["requirement"], r["label_source"]) for r in dd}
    # the package's docstring is not a requirement here, its changelog entry is
    assert rows == {("Add demo_pkg.core.retry with exponential backoff between attempts.",
                     "changelog")}
