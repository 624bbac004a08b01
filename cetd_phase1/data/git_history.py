"""Git history -> (requirement text, sections it changed) pairs: the ``git`` label source.

A commit whose description reads like a feature request ("retry failed uploads with backoff")
and whose diff touches a handful of functions is a feature-level requirement with its
implementing sections. This module mines such pairs from the repository an application folder
lives in, with the recipe used for ``bench/feature-requests`` (see its README):

* non-merge commits whose subject has at least 5 words and is not a release / version bump /
  docs / CI / typo / style / lint / typing / refactor / revert / dependency message (the
  message rules and the requirement text made of it are in ``commits.py``);
* that change lines of the app's non-test ``.py`` files;
* each changed line is attributed to the innermost def/class enclosing it (blank, comment and
  docstring lines ignored): removed lines on the parent's AST, added lines on the commit's;
* 1..``max_sections`` sections touched; the positives are the touched sections that exist at the
  parent commit, i.e. in the code the requirement is evaluated against.

Only the ``git`` CLI (argument lists, never a shell) and :mod:`ast` are used: nothing of the
analysed application is imported or executed.
"""

from __future__ import annotations

import ast
import codecs
import io
import logging
import re
import subprocess
import tokenize
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from tqdm.auto import tqdm

from cetd_phase1.errors import CETDError
from .commits import _paragraphs, classify_subject, commit_text
from .sections import Section, is_test_path, sections_from_source

logger = logging.getLogger(__name__)


# -- diff -> touched sections ----------------------------------------------------------------

@dataclass
class _FileDiff:
    old_path: str | None  # None when the commit adds the file
    new_path: str | None  # None when the commit deletes it
    removed: list[tuple[int, str]] = field(default_factory=list)  # (parent line number, text)
    added: list[tuple[int, str]] = field(default_factory=list)  # (commit line number, text)


_HUNK = re.compile(r"^@@ -(\d+)(?:,\d+)? \+(\d+)(?:,\d+)? @@")


def _diff_path(raw: str, prefix: str) -> str | None:
    raw = raw.rstrip("\t")  # git appends a tab after names holding spaces
    if raw == "/dev/null":
        return None
    if raw.startswith('"'):  # C-quoted name with octal escapes
        raw = codecs.escape_decode(raw[1:-1].encode("utf-8"))[0].decode("utf-8", "replace")
    return raw[len(prefix):] if raw.startswith(prefix) else raw


def _parse_unified_diff(diff: str) -> list[_FileDiff]:
    """Removed and added lines, with their line numbers, of every file of a ``git diff``
    made with ``--src-prefix=a/ --dst-prefix=b/``."""
    files: list[_FileDiff] = []
    current: _FileDiff | None = None
    old_no = new_no = 0
    in_header = False
    for line in diff.split("\n"):
        if line.startswith("diff --git "):
            current, in_header = None, True
        elif in_header and line.startswith("--- "):
            current = _FileDiff(_diff_path(line[4:], "a/"), None)
        elif in_header and line.startswith("+++ ") and current is not None:
            current.new_path = _diff_path(line[4:], "b/")
            files.append(current)
            in_header = False
        elif current is not None and (m := _HUNK.match(line)):
            old_no, new_no = int(m.group(1)), int(m.group(2))
        elif current is not None and not in_header and line[:1] == "-":
            current.removed.append((old_no, line[1:]))
            old_no += 1
        elif current is not None and not in_header and line[:1] == "+":
            current.added.append((new_no, line[1:]))
            new_no += 1
        elif current is not None and not in_header and line[:1] == " ":  # diff.interHunkContext
            old_no, new_no = old_no + 1, new_no + 1
    return files


@dataclass(frozen=True)
class _ParsedFile:
    sections: tuple[Section, ...]
    docstring_lines: frozenset[int]

    @property
    def qualnames(self) -> set[str]:
        return {s.qualname for s in self.sections}

    def innermost(self, line: int) -> str | None:
        """Qualname of the innermost def/class whose lines (decorators included) hold ``line``."""
        best: Section | None = None
        for s in self.sections:
            if s.line_start <= line <= s.line_end and (best is None
                                                        or s.line_start >= best.line_start):
                best = s
        return best.qualname if best else None


def _docstring_lines(tree: ast.Module) -> frozenset[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            first = node.body[0] if node.body else None
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return frozenset(lines)


def _decode(data: bytes) -> str:
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    # Keep git's line numbering: only BOM and CRLF are normalised (as sections.read_source does).
    return data.decode(encoding).lstrip("\ufeff").replace("\r\n", "\n")


#: What a file that cannot be decoded or parsed raises.
_UNPARSEABLE = (SyntaxError, ValueError, LookupError, RecursionError)


def _is_code_line(text: str) -> bool:
    stripped = text.strip()
    return bool(stripped) and not stripped.startswith("#")


# -- git -------------------------------------------------------------------------------------

class GitRepo:
    """The ``git`` CLI run in the application folder (paths and pathspecs relative to it)."""

    def __init__(self, app_dir: Path, bare: bool = False) -> None:
        self.app_dir = app_dir
        # a bare repository (a mirror) has no work tree, so ``rev:./path`` cannot be used
        self._blob_prefix = "" if bare else "./"
        self._parsed: dict[tuple[str, str], _ParsedFile | None] = {}

    def run(self, *args: str) -> bytes:
        cmd = ["git", "-c", "core.quotePath=false", "-C", str(self.app_dir), *args]
        try:
            proc = subprocess.run(cmd, capture_output=True, check=False)
        except FileNotFoundError as err:
            raise CETDError("git is not installed or not on PATH (needed for the git "
                            "label source)") from err
        if proc.returncode != 0:
            msg = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise CETDError(f"{self.app_dir}: git {args[0]} failed: "
                            f"{msg[0] if msg else f'exit status {proc.returncode}'}")
        return proc.stdout

    def parsed(self, rev: str, path: str) -> _ParsedFile | None:
        """Sections of ``path`` at ``rev`` (cached: a file is read at both ends of many
        commits); ``None`` if missing there; ``SyntaxError`` etc. propagate when it does not
        parse."""
        if (rev, path) not in self._parsed:
            try:
                data = self.run("cat-file", "blob", f"{rev}:{self._blob_prefix}{path}")
            except CETDError:
                self._parsed[rev, path] = None
            else:
                source = _decode(data)
                tree = ast.parse(source, filename=path)
                self._parsed[rev, path] = _ParsedFile(
                    tuple(sections_from_source(source, path)), _docstring_lines(tree))
        return self._parsed[rev, path]


# -- mining ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class MinedPair:
    """One commit turned into a requirement with its implementing sections."""

    text: str
    commit: str  # full sha
    parent: str  # full sha of the code the requirement is evaluated against
    relevant: tuple[str, ...]  # sorted ``file::qualname`` keys at the parent, file relative to app
    relevant_at_head: tuple[str, ...]  # those of ``relevant`` that still exist at HEAD


@dataclass
class MiningReport:
    """What happened to every examined commit."""

    app: str
    commits: int = 0
    pairs: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (commit sha, reason)

    def skip(self, commit: str, reason: str) -> None:
        self.skipped.append((commit, reason))

    def counts_by_reason(self) -> dict[str, int]:
        return dict(Counter(reason for _, reason in self.skipped))

    def summary(self) -> str:
        """One line for the terminal."""
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts_by_reason().items()))
        return (f"{self.app}: {self.commits} commits, {self.pairs} pairs"
                + (f"; skipped {len(self.skipped)} ({counts})" if self.skipped else ""))


def _app_file(path: str | None) -> bool:
    """A non-test ``.py`` file that :func:`sections.extract_sections` would read."""
    if path is None or not path.endswith(".py"):
        return False
    rel = PurePosixPath(path)
    return not is_test_path(rel) and not any(p.startswith(".") for p in rel.parts)


@dataclass(frozen=True)
class _Touched:
    """The sections one commit changed."""

    sections: set[tuple[str, str]]  # (parent path or new path, qualname)
    at_parent: set[str]  # ``file::qualname`` keys of those that exist at the parent
    at_commit: set[str]  # ... and of those that exist at the commit itself


def _touched(git: GitRepo, parent: str, commit: str, diffs: list[_FileDiff]) -> _Touched:
    """Sections a commit touches, on both sides of its diff."""
    touched: set[tuple[str, str]] = set()
    at_parent: set[str] = set()
    at_commit: set[str] = set()
    for fd in diffs:
        old = git.parsed(parent, fd.old_path) if fd.old_path else None
        new = git.parsed(commit, fd.new_path) if fd.new_path else None
        quals: set[str] = set()
        for side, lines in ((old, fd.removed), (new, fd.added)):
            if side is None:
                continue
            for no, text in lines:
                if _is_code_line(text) and no not in side.docstring_lines:
                    qual = side.innermost(no)
                    if qual:
                        quals.add(qual)
        name = fd.old_path or fd.new_path or ""
        touched.update((name, q) for q in quals)
        if old is not None:
            at_parent.update(f"{fd.old_path}::{q}" for q in quals & old.qualnames)
        if new is not None:
            at_commit.update(f"{fd.new_path}::{q}" for q in quals & new.qualnames)
    return _Touched(touched, at_parent, at_commit)


def mine_commits(repo_dir: Path, app_subdir: str = "", *, max_sections: int = 8,
                 max_commits: int | None = None, rev_range: str = "HEAD",
                 report: MiningReport | None = None) -> list[MinedPair]:
    """Mine (commit description -> sections changed) pairs from the git history of an app.

    ``repo_dir / app_subdir`` is the application root (anywhere inside a git work tree); keys
    are ``file::qualname`` with ``file`` relative to it. Commits of ``rev_range`` (anything
    ``git log`` accepts, e.g. ``v1.0..HEAD``) that change the app folder are examined newest
    first, at most ``max_commits`` of them; pairs come out in that order, and of identical
    texts only the newest is kept. ``relevant`` holds the keys at each pair's parent commit;
    ``relevant_at_head`` those of them still found at HEAD (the checked-out pool). Every
    skipped commit is recorded with its reason in ``report`` when one is given.
    """
    app_dir = Path(repo_dir) / app_subdir
    if not app_dir.is_dir():
        raise CETDError(f"{app_dir}: application folder does not exist")
    if max_sections < 1:
        raise CETDError(f"max_sections must be at least 1, got {max_sections}")
    if max_commits is not None and max_commits < 1:
        raise CETDError(f"max_commits must be at least 1, got {max_commits}")
    if rev_range.startswith("-"):
        raise CETDError(f"{rev_range!r}: a revision range cannot start with '-'")
    report = report if report is not None else MiningReport(app=app_dir.name)
    git = GitRepo(app_dir)
    git.run("rev-parse", "--show-toplevel")  # a clear error outside a work tree
    try:
        head = git.run("rev-parse", "--verify", "--quiet", "HEAD^{commit}").decode().strip()
    except CETDError as err:
        raise CETDError(f"{app_dir}: the git repository has no commits") from err

    log_args = ["log", "-z", "--no-show-signature", "--encoding=UTF-8", "--full-history",
                "--format=%H%x1f%P%x1f%B"]
    if max_commits is not None:
        log_args.append(f"--max-count={max_commits}")
    records = [r for r in git.run(*log_args, "--end-of-options", rev_range, "--", ".")
               .decode("utf-8", "replace").split("\0") if r.strip()]

    pairs: list[MinedPair] = []
    seen_texts: set[str] = set()
    for record in tqdm(records, desc=f"git history of {app_dir.name}", unit="commit",
                       leave=False, disable=None):
        sha, parents, message = record.lstrip("\n").split("\x1f", 2)
        report.commits += 1
        mined = _mine_one(git, sha, parents.split(), message, head, max_sections)
        if isinstance(mined, MinedPair) and mined.text in seen_texts:
            mined = "duplicate_text"
        if isinstance(mined, str):
            report.skip(sha, mined)
            continue
        seen_texts.add(mined.text)
        pairs.append(mined)
    report.pairs = len(pairs)
    logger.info("git history: %s", report.summary())
    return pairs


def screen_commit(git: GitRepo, sha: str, parents: list[str], message: str, max_sections: int,
                  is_code: Callable[[str | None], bool] = _app_file) -> _Touched | str:
    """The sections one commit changed in files ``is_code`` accepts, or the reason the commit
    is not a requirement (merge, message rules, no or too many changed sections)."""
    if len(parents) > 1:
        return "merge"
    if not parents:  # the root commit, or the boundary of a shallow clone
        return "root_commit"
    reason = classify_subject(" ".join((_paragraphs(message) or [""])[0].split()))
    if reason:
        return reason
    diff = git.run("diff", "--no-color", "--no-ext-diff", "--no-textconv", "-U0", "-M",
                   "--src-prefix=a/", "--dst-prefix=b/", "--relative",
                   parents[0], sha, "--", ".").decode("utf-8", "replace")
    py = [fd for fd in _parse_unified_diff(diff)
          if (fd.old_path or "").endswith(".py") or (fd.new_path or "").endswith(".py")]
    app = [fd for fd in py if is_code(fd.old_path) or is_code(fd.new_path)]
    if not app:
        return ("tests_only" if py and all(is_test_path(PurePosixPath(fd.new_path or fd.old_path))
                                           for fd in py) else "no_python_change")
    try:
        touched = _touched(git, parents[0], sha, app)
    except _UNPARSEABLE:
        return "syntax_error"
    if not touched.sections:
        return "no_sections"
    if len(touched.sections) > max_sections:
        return "too_many_sections"
    return touched


def _mine_one(git: GitRepo, sha: str, parents: list[str], message: str, head: str,
              max_sections: int) -> MinedPair | str:
    """The pair one commit gives, or the reason it gives none."""
    touched = screen_commit(git, sha, parents, message, max_sections)
    if isinstance(touched, str):
        return touched
    if not touched.at_parent:
        return "no_parent_sections"
    relevant = tuple(sorted(touched.at_parent))
    at_head = tuple(k for k in relevant if exists(git, head, k))
    return MinedPair(text=commit_text(message), commit=sha, parent=parents[0], relevant=relevant,
                     relevant_at_head=at_head)


def exists(git: GitRepo, rev: str, key: str) -> bool:
    """Whether the section ``file::qualname`` is defined at ``rev``."""
    path, qual = key.split("::", 1)
    try:
        parsed = git.parsed(rev, path)
    except _UNPARSEABLE:
        return False
    return parsed is not None and qual in parsed.qualnames
