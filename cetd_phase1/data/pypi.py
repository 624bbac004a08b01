"""PyPI source distributions as training applications, each with its changelog.

Docstrings teach what a function does; a package's changelog says what users asked of it, in
the words of feature requests (``changelog.py`` turns its entries into requirements). The pinned
packages of ``data/pypi_packages.yaml`` are downloaded once from PyPI into a cache, several at
a time, each checked against PyPI's sha256, and laid out as ``<cache>/apps/NAME==VER/``: the
package's code (its import root) plus its changelog file. PyPI is the only network the project
uses besides pip installs.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cetd_phase1 import resource
from cetd_phase1.data.changelog import find_changelog
from cetd_phase1.errors import CETDError

#: Top-level folders of a repository that hold no package code.
NOT_PACKAGE_DIRS = frozenset({"docs", "doc", "examples", "example", "benchmarks", "bench",
                              "scripts", "tools", "build", "dist", "ci", "misc", "extra",
                              "contrib", "changelog.d", "changes"})

PACKAGES_FILE = resource("data", "pypi_packages.yaml")
_NOT_CODE = {"tests", "test", "testing", "docs", "doc", "examples", "example", "benchmarks",
             "bench", "scripts", "tools", "build", "dist"}


def read_packages(path: Path = PACKAGES_FILE) -> list[str]:
    """The pinned ``NAME==VER`` specs of a packages file."""
    import yaml

    try:
        specs = yaml.safe_load(Path(path).read_text(encoding="utf-8"))["packages"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        raise CETDError(f"{path}: cannot read the package list: {err}") from None
    bad = [s for s in specs if not isinstance(s, str) or s.count("==") != 1]
    if bad:
        raise CETDError(f"{path}: packages must be pinned as NAME==VERSION, not {bad}")
    return specs


def _sdist_in(sdists: Path, spec: str) -> Path | None:
    name, version = spec.lower().split("==")
    names = {name, name.replace("-", "_"), name.replace("_", "-")}
    for p in sorted(sdists.glob("*.tar.gz")):
        stem_name, _, stem_version = p.name.lower().removesuffix(".tar.gz").rpartition("-")
        if stem_name in names and stem_version == version:
            return p
    return None


def fetch_sdist(spec: str, sdists: Path) -> Path:
    """The source distribution of ``NAME==VER``, downloaded once into ``sdists``
    (:func:`download_sdist`: straight from PyPI, its sha256 checked)."""
    name, version = spec.split("==")
    try:
        return download_sdist(name, version, sdists)
    except CETDError as err:
        raise CETDError(f"{err} (training on PyPI apps needs PyPI; without it use "
                        f"dataset.source: stdlib)") from None


SIMPLE_INDEX = "https://pypi.org/simple"


def sdist_files(project: str, index: str = SIMPLE_INDEX) -> dict[str, dict]:
    """Version -> ``{"url", "sha256"}`` of every source distribution of ``project`` on PyPI
    (the JSON simple API, PEP 691)."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{index}/{project}/",
                                     headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            files = json.load(response)["files"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as err:
        raise CETDError(f"cannot list {project} on PyPI: {err}") from None
    out = {}
    for f in files:
        name = f["filename"]
        if f.get("yanked") or not name.endswith(".tar.gz") or "sha256" not in f.get("hashes", {}):
            continue
        out[name.removesuffix(".tar.gz").rpartition("-")[2]] = {"url": f["url"],
                                                                "sha256": f["hashes"]["sha256"]}
    return out


def download_sdist(project: str, version: str, sdists: Path, index: str = SIMPLE_INDEX) -> Path:
    """The ``.tar.gz`` of ``project==version``, downloaded once into ``sdists`` and checked
    against PyPI's sha256. Fetched directly, not with ``pip download``, which would run each
    package's build backend to read metadata that is not needed here."""
    import hashlib
    import os
    import urllib.request

    sdists.mkdir(parents=True, exist_ok=True)
    found = _sdist_in(sdists, f"{project}=={version}")  # also one pip fetched, as before
    if found is not None:
        return found
    target = sdists / f"{project.lower()}-{version}.tar.gz"
    info = sdist_files(project, index).get(version)
    if info is None:
        raise CETDError(f"{project}=={version}: no source distribution on PyPI")
    try:
        with urllib.request.urlopen(info["url"], timeout=300) as response:
            data = response.read()
    except OSError as err:
        raise CETDError(f"cannot download {project}=={version} from PyPI: {err}") from None
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise CETDError(f"{project}=={version}: the download does not match PyPI's sha256")
    partial = target.with_name(f".{target.name}.{os.getpid()}")
    partial.write_bytes(data)
    partial.replace(target)
    return target


def import_root(tree: Path) -> Path:
    """The top-level package (or single module) with the most Python files outside tests/docs."""
    candidates = []
    for init in tree.rglob("__init__.py"):
        pkg = init.parent
        if any(p in _NOT_CODE for p in pkg.relative_to(tree).parts):
            continue
        if not (pkg.parent / "__init__.py").exists():
            candidates.append((sum(1 for _ in pkg.rglob("*.py")), str(pkg), pkg))
    if candidates:
        return max(candidates)[2]
    modules = [p for p in [*tree.glob("*.py"), *tree.glob("src/*.py")]
               if p.name not in ("setup.py", "conftest.py") and not p.name.startswith("test")]
    if not modules:
        raise CETDError(f"{tree.name}: no package or module in the source distribution")
    return max(modules, key=lambda p: p.stat().st_size)


def lay_out(spec: str, sdists: Path, apps_dir: Path) -> Path:
    """``apps_dir/NAME==VER/`` with the package's code and its changelog (made once)."""
    app = apps_dir / spec
    if app.is_dir():
        return app
    sdist = fetch_sdist(spec, sdists)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            with tarfile.open(sdist) as tf:
                tf.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as err:
            raise CETDError(f"{sdist}: cannot unpack: {err}") from None
        trees = [p for p in Path(tmp).iterdir() if p.is_dir()]
        if len(trees) != 1:
            raise CETDError(f"{sdist}: expected one top-level folder, found {len(trees)}")
        changelog = find_changelog(trees[0])
        if changelog is None:
            raise CETDError(f"{spec}: no changelog at the root of its source distribution")
        root = import_root(trees[0])
        staging = Path(tempfile.mkdtemp(dir=apps_dir))
        try:
            if root.is_dir():
                shutil.copytree(root, staging / root.name)
            else:
                shutil.copy2(root, staging / root.name)
            shutil.copy2(changelog, staging / changelog.name)
            staging.rename(app)  # a killed run never leaves a half-laid app behind
        except OSError:
            if not app.is_dir():  # else another rank laid out the same package first
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return app


def lay_out_release(project: str, version: str, sdists: Path, apps_dir: Path) -> Path:
    """``apps_dir/NAME==VER/``: the source distribution's tree (its root is the repository's,
    so ``file::qualname`` keys mined from history match), without docs/examples/scripts
    folders; made once."""
    app = apps_dir / f"{project}=={version}"
    if app.is_dir():
        return app
    sdist = download_sdist(project, version, sdists)
    staging = Path(tempfile.mkdtemp(dir=apps_dir))
    try:
        try:
            with tarfile.open(sdist) as tf:
                tf.extractall(staging, filter="data")
        except (tarfile.TarError, OSError) as err:
            raise CETDError(f"{sdist}: cannot unpack: {err}") from None
        trees = [p for p in staging.iterdir() if p.is_dir()]
        if len(trees) != 1:
            raise CETDError(f"{sdist}: expected one top-level folder, found {len(trees)}")
        for folder in trees[0].iterdir():
            if folder.is_dir() and folder.name in NOT_PACKAGE_DIRS:
                shutil.rmtree(folder)
        try:
            trees[0].rename(app)  # a killed run never leaves a half-laid app behind
        except OSError:
            if not app.is_dir():  # else another rank laid out the same release first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return app


def prepare_apps(specs: list[str], cache: Path) -> list[Path]:
    """Every package laid out under ``cache/apps`` (fetching what is missing), in spec order."""
    from tqdm.auto import tqdm

    apps_dir = cache / "apps"
    apps_dir.mkdir(parents=True, exist_ok=True)
    missing = [s for s in specs if not (apps_dir / s).is_dir()]
    if missing:
        # downloads wait on the network, not the CPU: several at once
        with ThreadPoolExecutor(max_workers=8) as pool:
            jobs = [pool.submit(lay_out, s, cache / "sdists", apps_dir) for s in missing]
            for job in tqdm(jobs, desc="PyPI source distributions", unit="package"):
                job.result()
    return [apps_dir / s for s in specs]
