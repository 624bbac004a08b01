"""Commit history mined once into a small label file: requirement -> sections, per PyPI release.

The ``git`` label source at scale. Mining needs each project's repository with its history (a
mirror); training must not. So the mined *labels* are shipped
(``data/commit_labels.jsonl.gz``, one JSON object a line, :class:`CommitLabel`) and the code
they point at is taken from the PyPI source distribution of the release that first contains
each commit (``registry.CommitRegistry``), so a fresh machine needs PyPI alone.

Mining (``data/mine_commit_labels.py`` runs it over mirrors) applies ``git_history``'s commit
rules (non-merge, descriptive subject, 1-8 changed sections of package code; tests, docs, CI,
version bumps, typos and reverts left out; the requirement is the subject and first body
paragraph with references and trailers removed), then:

* the release of a commit is the lowest final version, among the tags that name a version
  with a source distribution on PyPI, whose history holds the commit;
* its positives are the changed sections as they are at that release (``file::qualname``,
  ``file`` relative to the repository root, which is the source distribution's root too).
"""

from __future__ import annotations

import gzip
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Mapping

from tqdm.auto import tqdm

from cetd_phase1 import resource
from cetd_phase1.atomic import atomic_write, atomic_write_text
from cetd_phase1.errors import CETDError
from .commits import commit_text
from .pypi import NOT_PACKAGE_DIRS, lay_out_release
from .git_history import GitRepo, MiningReport, _app_file, exists, screen_commit

#: Files at the repository root that are build or task scripts, not package code.
NOT_PACKAGE_FILES = frozenset({"setup.py", "noxfile.py", "conftest.py", "fabfile.py",
                               "tasks.py", "build.py", "hatch_build.py"})

#: The shipped label file (``data/commit_labels.jsonl.gz`` in a checkout).
LABELS_FILE = resource("data", "commit_labels.jsonl.gz")
#: Releases a repository trained on unless a config says otherwise: those with the most labels.
RELEASES_PER_REPO = 2
#: Beside each laid-out release: its labels, as the ``git`` label source reads them.
APP_LABELS_NAME = "commit_labels.json"

_FIELDS = {"text": str, "package": str, "release": str, "repo": str, "commit": str,
           "sections": list}


@dataclass(frozen=True)
class CommitLabel:
    """One commit as a requirement: its text and the sections it changed, at ``release``."""

    text: str
    package: str  # PyPI project name
    release: str  # the first release (a PyPI version with an sdist) that contains the commit
    repo: str  # OWNER/NAME on GitHub, where the labels were mined
    commit: str  # full sha, for tracing a label back to its change
    sections: tuple[str, ...]  # sorted ``file::qualname``, file relative to the sdist root


def write_labels(labels: Iterable[CommitLabel], path: Path) -> int:
    """Write labels as gzip-compressed JSON lines (reproducible bytes: no timestamp), replacing
    ``path`` only once every label is written, so an interrupted run keeps the old file."""
    rows = [{**asdict(label), "sections": list(label.sections)} for label in labels]

    def write(raw) -> None:
        # the header names the final file, not the temporary one it is written through
        with gzip.GzipFile(Path(path).name, mode="wb", fileobj=raw, mtime=0) as out:
            for row in rows:
                out.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

    atomic_write(path, write)
    return len(rows)


def read_labels(path: Path) -> list[CommitLabel]:
    """The labels of a file :func:`write_labels` wrote; a malformed line is an error naming it."""
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise CETDError(f"{path}: cannot read the commit label file: {err}") from None
    labels = []
    for no, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise CETDError(f"{path}, line {no}: not JSON: {err}") from None
        problem = _schema_problem(row)
        if problem:
            raise CETDError(f"{path}, line {no}: {problem}")
        labels.append(CommitLabel(**{**row, "sections": tuple(row["sections"])}))
    return labels


def _schema_problem(row: object) -> str | None:
    if not isinstance(row, dict):
        return "expected a JSON object"
    missing = [k for k in _FIELDS if k not in row]
    extra = [k for k in row if k not in _FIELDS]
    if missing or extra:
        return f"fields missing {missing}, unknown {extra}"
    wrong = [k for k, t in _FIELDS.items() if not isinstance(row[k], t) or not row[k]]
    if wrong:
        return f"fields {wrong} must be non-empty {', '.join(_FIELDS[k].__name__ for k in wrong)}"
    bad = [s for s in row["sections"] if not isinstance(s, str) or "::" not in s]
    return f"sections must be 'file::qualname' strings, not {bad}" if bad else None


def select_releases(labels: Iterable[CommitLabel], per_repo: int | None
                    ) -> dict[tuple[str, str], list[CommitLabel]]:
    """(package, release) -> its labels, for the ``per_repo`` releases of each repository with
    the most labels (all when None): each release is one source distribution to fetch (the
    12,345 shipped labels span 1,291 releases, 2.8 GB), and a release holds from one label to a
    few hundred."""
    by_release: dict[tuple[str, str, str], list[CommitLabel]] = {}
    for label in labels:
        by_release.setdefault((label.repo, label.package, label.release), []).append(label)
    chosen: dict[tuple[str, str], list[CommitLabel]] = {}
    taken: dict[str, int] = {}
    for (repo, package, release), group in sorted(by_release.items(),
                                                  key=lambda kv: (kv[0][0], -len(kv[1]), kv[0])):
        if per_repo is None or taken.get(repo, 0) < per_repo:
            taken[repo] = taken.get(repo, 0) + 1
            chosen[package, release] = group
    return chosen


def prepare_releases(labels: Iterable[CommitLabel], cache: Path, per_repo: int | None
                     ) -> list[tuple[str, Path]]:
    """``(NAME==VER, folder)`` of every selected release, laid out under ``cache/git-apps``
    from PyPI (fetching what is missing) with its labels written beside the code."""
    chosen = select_releases(labels, per_repo)
    apps_dir = cache / "git-apps"
    apps_dir.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = {key: pool.submit(lay_out_release, *key, cache / "sdists", apps_dir)
                for key in chosen}
        folders = {key: job.result() for key, job in tqdm(
            jobs.items(), desc="PyPI releases of commit labels", unit="release", disable=None)}
    out = []
    for (package, release), group in chosen.items():
        folder = folders[package, release]
        text = json.dumps([{"text": g.text, "relevant": list(g.sections)} for g in group],
                          ensure_ascii=False, indent=0)
        target = folder / APP_LABELS_NAME
        # rewritten only when the labels change: its mtime is part of the dataset's cache key
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            atomic_write_text(target, text)
        out.append((f"{package}=={release}", folder))
    return out


def read_app_labels(app_root: Path) -> list[tuple[str, list[str]]] | None:
    """(text, keys) of an app folder's ``commit_labels.json``; None when it has none."""
    path = Path(app_root) / APP_LABELS_NAME
    if not path.is_file():
        return None
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
        return [(r["text"], list(r["relevant"])) for r in rows]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CETDError(f"{path}: not a commit label list: {err}") from None


# -- releases ------------------------------------------------------------------------------

_TAG_VERSION = re.compile(r"(\d+(?:\.\d+)*(?:(?:a|b|rc|\.post|\.dev)\d+)?)$")


def tag_versions(tags: Iterable[str], published: Iterable[str]) -> dict[str, str]:
    """Tag -> version for the tags that name a final release in ``published`` (``v1.2``,
    ``1.2``, ``pkg-1.2``, ``rel_1_2``; the first tag wins when two name one version)."""
    from packaging.version import InvalidVersion, Version

    finals = {}
    for v in published:
        try:
            version = Version(v)
        except InvalidVersion:
            continue
        if not (version.is_prerelease or version.is_devrelease):
            finals[version] = v
    out: dict[str, str] = {}
    taken: set[str] = set()
    for tag in sorted(tags):
        m = _TAG_VERSION.search(tag.replace("_", "."))
        if not m:
            continue
        try:
            version = Version(m.group(1))
        except InvalidVersion:
            continue
        if version in finals and finals[version] not in taken:
            out[tag] = finals[version]
            taken.add(finals[version])
    return out


def first_releases(git: GitRepo, releases: Mapping[str, str]) -> dict[str, str]:
    """Commit sha -> the tag of the lowest version (of ``releases``: tag -> version) that
    contains it. Commits in no release are absent."""
    from packaging.version import Version

    ordered = sorted(releases, key=lambda t: Version(releases[t]))
    first: dict[str, str] = {}
    for i, tag in enumerate(tqdm(ordered, desc="releases", unit="tag", leave=False,
                                 disable=None)):
        # commits reachable from this tag and from no lower version's tag
        out = git.run("rev-list", f"refs/tags/{tag}^{{commit}}", "--not",
                      *(f"refs/tags/{t}^{{commit}}" for t in ordered[:i]), "--")
        for sha in out.decode().split():
            first.setdefault(sha, tag)
    return first


# -- mining --------------------------------------------------------------------------------

def is_package_code(path: str | None) -> bool:
    """A non-test ``.py`` file outside docs/examples/scripts folders and build scripts."""
    if not _app_file(path):
        return False
    parts = PurePosixPath(path).parts
    return parts[0] not in NOT_PACKAGE_DIRS and not (len(parts) == 1
                                                     and parts[0] in NOT_PACKAGE_FILES)


@dataclass
class RepoMining:
    """What mining one repository gave and skipped."""

    report: MiningReport
    releases: int = 0
    labels: list[CommitLabel] = field(default_factory=list)


def mine_repo(git_dir: Path, repo: str, package: str, published: Iterable[str], *,
              max_commits: int | None = None, max_sections: int = 8) -> RepoMining:
    """Labels of one repository (a bare mirror or a work tree), newest commit first.

    ``published`` are the versions of ``package`` with a source distribution on PyPI. Of the
    newest ``max_commits`` non-merge commits, those in a release that pass
    :func:`~cetd_phase1.data.git_history.screen_commit` and whose changed sections still exist
    at that release become labels; identical texts are kept once (the newest).
    """
    git_dir = Path(git_dir)
    if not git_dir.is_dir():
        raise CETDError(f"{git_dir}: no such repository folder")
    bare = git_dir.name.endswith(".git") or (git_dir / "HEAD").is_file()
    git = GitRepo(git_dir, bare=bare)
    tags = git.run("tag", "--list").decode().split()
    releases = tag_versions(tags, published)
    result = RepoMining(MiningReport(app=repo), releases=len(releases))
    first = first_releases(git, releases)
    log = ["log", "-z", "--no-merges", "--no-show-signature", "--encoding=UTF-8",
           "--format=%H%x1f%P%x1f%B"] + ([f"--max-count={max_commits}"] if max_commits else [])
    records = [r for r in git.run(*log, "HEAD", "--").decode("utf-8", "replace").split("\0")
               if r.strip()]
    seen: set[str] = set()
    for record in tqdm(records, desc=repo, unit="commit", leave=False, disable=None):
        sha, parents, message = record.lstrip("\n").split("\x1f", 2)
        result.report.commits += 1
        label = _label(git, sha, parents.split(), message, first, releases, repo, package,
                       max_sections)
        if isinstance(label, CommitLabel) and label.text in seen:
            label = "duplicate_text"
        if isinstance(label, str):
            result.report.skip(sha, label)
            continue
        seen.add(label.text)
        result.labels.append(label)
    result.report.pairs = len(result.labels)
    return result


def _label(git: GitRepo, sha: str, parents: list[str], message: str, first: dict[str, str],
           releases: Mapping[str, str], repo: str, package: str,
           max_sections: int) -> CommitLabel | str:
    tag = first.get(sha)
    if tag is None:
        return "unreleased"
    touched = screen_commit(git, sha, parents, message, max_sections, is_package_code)
    if isinstance(touched, str):
        return touched
    at_release = sorted(k for k in touched.at_commit
                        if exists(git, f"refs/tags/{tag}^{{commit}}", k))
    if not at_release:
        return "gone_by_release"
    text = commit_text(message)
    if not text:
        return "no_text"
    return CommitLabel(text=text, package=package, release=releases[tag], repo=repo,
                       commit=sha, sections=tuple(at_release))
