"""Mine the `git` training labels from repository mirrors into data/commit_labels.jsonl.gz.

Each repository of data/commit_repos.yaml is read from a local mirror with its history and tags
(`git clone --mirror https://github.com/OWNER/NAME`); its commits become requirement -> sections
labels at the PyPI release that first contains them (cetd_phase1/data/commit_labels.py). Only
PyPI's package index is contacted, to learn which versions have a source distribution.

    python data/mine_commit_labels.py --mirrors DIR [--max-commits 3000] [--jobs 2]

A mirror is looked up as DIR/OWNER+NAME/repo, DIR/OWNER/NAME.git, DIR/NAME.git or DIR/NAME; a
repository without one keeps the labels the output file already holds for it, so extending the
file with a new repository needs only its mirror. Prints how many labels each repository gave
(the table in docs/data.md).
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:  # runs from a checkout without `pip install -e .`
    sys.path.insert(0, str(HERE.parent))

from cetd_phase1 import resource  # noqa: E402
from cetd_phase1.data.commit_labels import (RepoMining, mine_repo, read_labels,  # noqa: E402
                                           write_labels)
from cetd_phase1.data.pypi import sdist_files  # noqa: E402
from cetd_phase1.errors import CETDError  # noqa: E402


def find_mirror(mirrors: Path, repo: str) -> Path | None:
    owner, name = repo.split("/")
    for candidate in (mirrors / f"{owner}+{name}" / "repo", mirrors / owner / f"{name}.git",
                      mirrors / f"{name}.git", mirrors / name):
        if candidate.is_dir():
            return candidate
    return None


def mine_one(args: tuple[Path, str, str, int]) -> RepoMining:
    mirror, repo, package, max_commits = args
    return mine_repo(mirror, repo, package, sdist_files(package), max_commits=max_commits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mirrors", type=Path, required=True, help="folder of git mirrors")
    parser.add_argument("--repos", type=Path, default=HERE / "commit_repos.yaml")
    parser.add_argument("--out", type=Path, default=resource("data", "commit_labels.jsonl.gz"))
    parser.add_argument("--max-commits", type=int, default=3000,
                        help="newest non-merge commits examined per repository")
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)

    try:
        repos = yaml.safe_load(args.repos.read_text(encoding="utf-8"))["repos"]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as err:
        print(f"error: {args.repos}: cannot read the repositories: {err}", file=sys.stderr)
        return 1
    try:
        kept = read_labels(args.out) if args.out.is_file() else []
    except CETDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    jobs, missing = [], []
    for repo, package in repos.items():
        mirror = find_mirror(args.mirrors, repo)
        if mirror is None:
            missing.append(repo)
        else:
            jobs.append((mirror, repo, package, args.max_commits))
    if not jobs:
        print(f"error: no mirror in {args.mirrors} for any repository of {args.repos}; "
              f"{args.out} left as it was", file=sys.stderr)
        return 1
    mined: dict[str, RepoMining] = {}
    try:
        with (ProcessPoolExecutor(max_workers=args.jobs) if args.jobs > 1
              else nullcontext()) as pool:
            for done in (pool.map if pool else map)(mine_one, jobs):
                print(done.report.summary(), file=sys.stderr, flush=True)
                mined[done.report.app] = done
    except CETDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    # a repository without a mirror keeps the labels the file holds for it: extending the file
    # with one new repository needs only that repository's mirror
    labels = [label for repo in repos for label in
              (mined[repo].labels if repo in mined else [k for k in kept if k.repo == repo])]
    n = write_labels(labels, args.out)
    print("| repository | commits examined | releases | labels |\n|---|---|---|---|")
    for r in mined.values():
        print(f"| {r.report.app} | {r.report.commits} | {r.releases} | {r.report.pairs} |")
    print(f"\n{n} labels ({len(mined)} repositories mined) -> {args.out}"
          + (f"; no mirror for {', '.join(missing)}, their labels kept from the file"
             if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
