#!/usr/bin/env python
"""Feature-level evaluation: real requirements (commit descriptions) -> the functions they changed.

Fetches each release's wheel from PyPI with pip into a cache, lays the code pool out as an apps
folder whose ``gold_annotations.yaml`` holds the requirements, and runs the evaluate command on it
(gold labels only: the packages' own docstrings are not feature requests), next to the stdlib
docstring holdout so both benchmarks are read side by side.

    python bench/feature_requests.py --checkpoint outputs/phase1-minilm/final --half validation

The packages are for evaluation and model selection only: never train on their requirements.
The halves are fixed in ``bench/feature_requests_split.yaml``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import yaml

import _bench  # noqa: F401  (puts the repository root on sys.path, sets HF_HUB_OFFLINE)
from cetd_phase1 import default_cache_dir

REPO = Path(__file__).resolve().parents[1]
REQUESTS = REPO.parent / "shared" / "bench" / "feature-requests"
SPLIT_FILE = Path(__file__).with_name("feature_requests_split.yaml")


def fetch_wheel(package: str, version: str, wheels: Path) -> Path:
    """The pure-Python wheel of ``package==version``, downloaded once into ``wheels``."""
    wheels.mkdir(parents=True, exist_ok=True)
    stem = package.replace("-", "_").lower()
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-")]
    if found:
        return found[0]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", f"{package}=={version}", "-d", str(wheels)],
                   check=True)
    found = [w for w in wheels.glob("*.whl") if w.name.lower().startswith(f"{stem}-{version}-")]
    if not found:
        raise SystemExit(f"pip downloaded no wheel for {package}=={version}")
    return found[0]


def lay_out(spec_file: Path, wheels: Path, apps_dir: Path) -> Path:
    """``apps_dir/NAME==VER/`` holding the wheel's import root and the requirements as gold."""
    spec = yaml.safe_load(spec_file.read_text(encoding="utf-8"))
    app = apps_dir / spec_file.stem
    if (app / "gold_annotations.yaml").is_file():
        return app
    wheel = fetch_wheel(spec["package"], str(spec["version"]), wheels)
    root = spec["import_root"].rstrip("/") + "/"
    tmp = Path(tempfile.mkdtemp(dir=apps_dir))
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(tmp, [n for n in zf.namelist() if n.startswith(root)])
    annotations = {"requirements": [{"text": r["text"], "relevant": r["relevant"]}
                                    for r in spec["requirements"]]}
    (tmp / "gold_annotations.yaml").write_text(yaml.safe_dump(annotations, sort_keys=False),
                                               encoding="utf-8")
    if app.exists():
        shutil.rmtree(app)
    tmp.rename(app)  # a killed run never leaves a half-laid app behind
    return app


def prepare(half: str, cache: Path, requests: Path = REQUESTS) -> Path:
    """Lay out every release of the packages of ``half`` under ``cache/apps/<half>``."""
    packages = set(yaml.safe_load(SPLIT_FILE.read_text(encoding="utf-8"))[half])
    apps_dir = cache / "apps" / half
    apps_dir.mkdir(parents=True, exist_ok=True)
    specs = sorted(p for p in requests.glob("*.yaml") if p.stem.split("==")[0] in packages)
    if not specs:
        raise SystemExit(f"no feature-request files for {sorted(packages)} in {requests}")
    for spec in specs:
        lay_out(spec, cache / "wheels", apps_dir)
    return apps_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="trained model folder, or a plain backbone for the untrained baseline")
    parser.add_argument("--half", choices=("validation", "report"), default="validation")
    parser.add_argument("--out", default=None, help="report folder (default outputs/fr-<half>)")
    parser.add_argument("--cache", default=str(default_cache_dir() / "fr"),
                        help="wheels and laid-out apps (default $CETD_CACHE/fr)")
    parser.add_argument("--requests", default=str(REQUESTS))
    parser.add_argument("--hybrid", action="store_true", help="also report BM25+dense fusion")
    parser.add_argument("--reranker", default=None,
                        help="a re-ranker folder: also report its re-ordering of the ranking")
    parser.add_argument("--skip-stdlib", action="store_true",
                        help="do not evaluate the stdlib docstring split beside it")
    args = parser.parse_args()

    from cetd_phase1.evaluation.evaluate import run_evaluation

    out = Path(args.out or f"outputs/fr-{args.half}")
    apps = prepare(args.half, Path(args.cache), Path(args.requests))
    command = " ".join(["python"] + sys.argv)
    fr = run_evaluation(args.checkpoint, out / "feature_requests", apps_dir=apps,
                        label_sources=("gold",), hybrid=args.hybrid, reranker=args.reranker,
                        command=command)
    tables = {"feature requests (" + args.half + ")": fr}
    if not args.skip_stdlib:
        docsplit = "validation" if args.half == "validation" else "holdout"
        tables[f"stdlib docstrings ({docsplit})"] = run_evaluation(
            args.checkpoint, out / "stdlib", split=docsplit, hybrid=args.hybrid,
            reranker=args.reranker, command=command)
    print(f"\nfull-app ranking, checkpoint {args.checkpoint}")
    print(f"{'benchmark':36} {'method':24} {'queries':>7} {'MRR':>6} {'MAP':>6} "
          f"{'R@1':>6} {'R@5':>6} {'R@10':>6}")
    for name, m in tables.items():
        rows = {"model": m["full_app"], **{k: v["full_app"] for k, v in m["baselines"].items()}}
        for method, r in rows.items():
            print(f"{name:36} {method:24} {r['num_queries']:>7} {r['mrr']:6.3f} {r['map']:6.3f} "
                  f"{r['recall@1']:6.3f} {r['recall@5']:6.3f} {r['recall@10']:6.3f}")
    (out / "summary.json").write_text(json.dumps(tables, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
