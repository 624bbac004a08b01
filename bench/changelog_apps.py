#!/usr/bin/env python
"""Training apps whose changelogs give feature-level requirements: PyPI sdists + the stdlib.

Fetches each pinned source distribution of ``bench/changelog_packages.yaml`` with pip into a
cache, lays out ``APPS/NAME==VER/`` as the package's code (its import root) plus its changelog
file, and writes a manifest that lists the stdlib apps with their usual splits and these apps in
the train split only. Train on it with the ``changelog`` label source:

    python bench/changelog_apps.py                     # prints the manifest path
    python run_phase1.py --train_file MANIFEST --label_sources docstring,gold,heuristic,changelog

None of the feature-request packages (evaluation only) may be listed; the script refuses them.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import yaml

import _bench  # noqa: F401  (puts the repository root on sys.path, sets HF_HUB_OFFLINE)
from feature_requests import REQUESTS

from cetd_phase1.changelog import find_changelog
from cetd_phase1.dataset import default_cache_dir
from cetd_phase1.registry import StdlibRegistry

PACKAGES = Path(__file__).with_name("changelog_packages.yaml")
MANIFEST = default_cache_dir() / "changelog" / "manifest.yaml"
MIN_PAIRS = 20
_NOT_CODE = {"tests", "test", "testing", "docs", "doc", "examples", "example", "benchmarks",
             "bench", "scripts", "tools", "build", "dist"}


def fetch_sdist(spec: str, sdists: Path) -> Path:
    """The source distribution of ``NAME==VER``, downloaded once into ``sdists``."""
    name, version = spec.split("==")
    stems = {name.lower(), name.lower().replace("-", "_"), name.lower().replace("_", "-")}

    def found() -> list[Path]:
        return [p for p in sdists.glob("*.tar.gz")
                if p.name.lower().removesuffix(".tar.gz").rpartition("-")[::2]
                in {(s, version) for s in stems}]

    sdists.mkdir(parents=True, exist_ok=True)
    if not found():
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-binary=:all:", spec, "-d", str(sdists)],
                       check=True)
    if not found():
        raise SystemExit(f"pip downloaded no sdist for {spec}")
    return found()[0]


def _import_root(tree: Path) -> Path:
    """The package folder (or single module) with the most Python files outside tests/docs."""
    candidates = []
    for init in tree.rglob("__init__.py"):
        pkg = init.parent
        rel = pkg.relative_to(tree).parts
        if any(p in _NOT_CODE for p in rel) or (pkg.parent / "__init__.py").exists():
            continue
        candidates.append((sum(1 for _ in pkg.rglob("*.py")), pkg))
    if candidates:
        return max(candidates)[1]
    modules = [p for p in [*tree.glob("*.py"), *tree.glob("src/*.py")]
               if p.name not in ("setup.py", "conftest.py") and not p.name.startswith("test")]
    if not modules:
        raise SystemExit(f"{tree}: no package or module found")
    return max(modules, key=lambda p: p.stat().st_size)


def lay_out(spec: str, sdists: Path, apps_dir: Path) -> Path | None:
    """``apps_dir/NAME==VER/`` holding the code and the changelog; None without a changelog."""
    app = apps_dir / spec
    if app.is_dir():
        return app
    sdist = fetch_sdist(spec, sdists)
    with tempfile.TemporaryDirectory() as tmp:
        with tarfile.open(sdist) as tf:
            tf.extractall(tmp, filter="data")
        tree = next(p for p in Path(tmp).iterdir() if p.is_dir())
        changelog = find_changelog(tree)
        if changelog is None:
            print(f"{spec}: no changelog at the sdist's root; skipped", file=sys.stderr)
            return None
        root = _import_root(tree)
        staging = Path(tempfile.mkdtemp(dir=apps_dir))
        try:
            if root.is_dir():
                shutil.copytree(root, staging / root.name)
            else:
                shutil.copy2(root, staging / root.name)
            shutil.copy2(changelog, staging / changelog.name)
            staging.rename(app)  # a killed run never leaves a half-laid app behind
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return app


def changelog_count(app: Path) -> int:
    """How many changelog requirements the app gives."""
    from cetd_phase1.changelog import changelog_pairs
    from cetd_phase1.sections import extract_sections

    return len(changelog_pairs(app, extract_sections(app, app.name)[0]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=MANIFEST.parent)
    ap.add_argument("--min-pairs", type=int, default=MIN_PAIRS,
                    help=f"leave out apps with fewer changelog requirements (default {MIN_PAIRS}): "
                         "they would add only docstrings")
    args = ap.parse_args()
    specs = yaml.safe_load(PACKAGES.read_text(encoding="utf-8"))["packages"]
    evaluation_only = {p.stem.split("==")[0].lower() for p in REQUESTS.glob("*.yaml")}
    clash = sorted(s for s in specs if s.split("==")[0].lower() in evaluation_only)
    if clash:
        raise SystemExit(f"feature-request packages are for evaluation only: {clash}")
    apps_dir = args.cache / "apps"
    apps_dir.mkdir(parents=True, exist_ok=True)
    entries = [{"name": a.name, "source_path": str(a.source_path), "split": a.split}
               for a in StdlibRegistry().apps()]
    for spec in specs:
        app = lay_out(spec, args.cache / "sdists", apps_dir)
        n = 0 if app is None else changelog_count(app)
        print(f"{spec}: {n} changelog requirements" + ("" if n >= args.min_pairs else
                                                        "; left out"), file=sys.stderr)
        if n >= args.min_pairs:
            entries.append({"name": spec, "source_path": str(app), "split": "train"})
    manifest = args.cache / "manifest.yaml"
    manifest.write_text(yaml.safe_dump(entries, sort_keys=False), encoding="utf-8")
    print(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
