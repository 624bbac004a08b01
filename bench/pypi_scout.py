"""Which PyPI packages would give training requirements: fetch each one's newest source
distribution with pip, lay it out as the PyPI registry does, and count its changelog entries that
name 1-8 of its sections (label source ``changelog``). It never reads the feature-request
packages.

This is how the pinned list ``data/pypi_packages.yaml`` (and ``bench/pypi_packages_wide.yaml``)
is regenerated: run it with ``--min-entries 20`` on candidate names and paste the printed lines.

    python bench/pypi_scout.py --cache outputs/pypi-scout setuptools psutil yarl ...
    python bench/pypi_scout.py --cache outputs/pypi-scout --min-entries 20 NAMES...  # YAML lines
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import _bench  # noqa: F401  (puts the repository root on sys.path)
from feature_requests import REQUESTS

from cetd_phase1.data.changelog import changelog_pairs
from cetd_phase1.errors import CETDError
from cetd_phase1.data.pypi import lay_out
from cetd_phase1.data.sections import extract_sections


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def evaluation_packages() -> set[str]:
    """Names of the feature-request packages (evaluation only: never scouted for training)."""
    return {_canonical(p.name.split("==")[0]) for p in REQUESTS.glob("*==*.yaml")}


def newest_spec(name: str, sdists: Path) -> str:
    """``NAME==VER`` of the newest source distribution pip finds for ``name`` (fetched)."""
    if "==" in name:
        return name
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                           "--no-binary=:all:", name, "-d", str(sdists)],
                          capture_output=True, text=True)
    stems = {_canonical(name), _canonical(name).replace("-", "_")}
    found = [p for p in sdists.glob("*.tar.gz")
             if p.name.lower().removesuffix(".tar.gz").rpartition("-")[0] in stems]
    if not found:
        detail = (done.stderr.strip().splitlines() or ["no .tar.gz source distribution"])[-1]
        raise CETDError(f"{name}: {detail}")
    newest = max(found, key=lambda p: p.stat().st_mtime)
    return f"{name}=={newest.name.removesuffix('.tar.gz').rpartition('-')[2]}"


def scout(name: str, cache: Path) -> tuple[str, int, int, str]:
    """(spec, sections, changelog pairs, problem or '')."""
    try:
        spec = newest_spec(name, cache / "sdists")
        app = lay_out(spec, cache / "sdists", cache / "apps")
    except CETDError as err:
        return name, 0, 0, str(err)
    sections, _ = extract_sections(app, spec)
    return spec, len(sections), len(changelog_pairs(app, sections)), ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="+", help="package names (NAME or NAME==VER)")
    ap.add_argument("--cache", type=Path, default=Path("outputs/pypi-scout"))
    ap.add_argument("--min-entries", type=int, default=0,
                    help="also print the YAML lines of packages with this many changelog pairs")
    args = ap.parse_args()
    banned = evaluation_packages()
    names = [n for n in args.names if _canonical(n.split("==")[0]) not in banned]
    for n in sorted(set(args.names) - set(names)):
        print(f"skipped {n}: a feature-request package (evaluation only)")
    (args.cache / "sdists").mkdir(parents=True, exist_ok=True)
    (args.cache / "apps").mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=4) as pool:
        rows = list(pool.map(lambda n: scout(n, args.cache), names))
    print(f"{'package':40} {'sections':>8} {'changelog':>9}  problem")
    for spec, n_sections, n_changelog, problem in sorted(rows, key=lambda r: -r[2]):
        print(f"{spec:40} {n_sections:8} {n_changelog:9}  {problem[:60]}")
    if args.min_entries:
        print("\n".join(f"  - {r[0]}" for r in rows if r[2] >= args.min_entries and not r[3]))


if __name__ == "__main__":
    main()
