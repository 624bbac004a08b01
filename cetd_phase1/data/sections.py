"""Application source tree -> code sections (functions, methods, classes).

Only :mod:`ast` is used: the analysed application is never imported or executed.
Every file that cannot be read is recorded with its reason in an :class:`ExtractionReport`,
so nothing is silently dropped.
"""

from __future__ import annotations

import ast
import io
import os
import tokenize
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

#: Files larger than this are skipped (generated tables, vendored blobs): they would dominate
#: the corpus while holding few meaningful sections.
DEFAULT_MAX_FILE_BYTES = 1_000_000

#: Folders never walked: tooling, caches and virtual environments, not application code.
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".tox", ".nox", ".venv", "venv",
              "node_modules", ".mypy_cache", ".pytest_cache", "site-packages", ".eggs"}
_TEST_DIRS = {"test", "tests", "testing"}


@dataclass(frozen=True)
class Section:
    """One function, async function, method or class of an application."""

    file: str  # posix path relative to the application root
    qualname: str  # dotted path of enclosing classes/functions, e.g. ``Outer.method.inner``
    kind: str  # "function" | "async_function" | "method" | "async_method" | "class"
    line_start: int
    line_end: int
    signature: str
    docstring: str | None
    code: str  # source segment, docstring included
    #: 0-based line ranges inside ``code`` (end exclusive) of the docstrings of this section
    #: and of every def/class nested in it, each with whether it is its def's whole body
    docstrings: tuple[tuple[int, int, bool], ...] = ()

    @property
    def key(self) -> str:
        """The ``file::qualname`` identifier used by gold annotations."""
        return f"{self.file}::{self.qualname}"

    def encoder_code(self) -> str:
        """What the encoder and BM25 read: the code without any docstring, its own (so a
        docstring-derived requirement never appears verbatim in its positive) or its methods'
        and nested functions' (those are sections of their own: a class quoting its methods'
        docstrings outranks them on their own requirements)."""
        lines = self.code.split("\n")
        kept: list[str] = []
        done = 0
        for start, end, whole_body in self.docstrings:
            kept += lines[done:start]
            if whole_body:  # a docstring-only body must stay valid Python
                indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
                kept.append(f"{indent}...")
            done = end
        kept += lines[done:]
        return "\n".join(kept)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ExtractionReport:
    """What happened to every candidate file of one application."""

    app: str
    files_parsed: int = 0
    sections: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append((path, reason))

    def counts_by_reason(self) -> dict[str, int]:
        """Skipped files counted by the first word group of their reason."""
        return dict(Counter(reason.split(":", 1)[0] for _, reason in self.skipped))

    def summary(self) -> str:
        """One line for the terminal."""
        counts = ", ".join(f"{k}={v}" for k, v in sorted(self.counts_by_reason().items()))
        skipped = f"; skipped {len(self.skipped)} ({counts})" if self.skipped else ""
        return f"{self.app}: {self.files_parsed} files, {self.sections} sections{skipped}"


def is_test_path(rel: PurePosixPath) -> bool:
    """True for test code, judged by path *component*, never by substring.

    ``tests/x.py``, ``test/x.py``, ``test_x.py``, ``x_test.py`` and ``conftest.py`` are tests;
    ``contest.py`` and ``attestation/x.py`` are not.
    """
    if any(part in _TEST_DIRS for part in rel.parts[:-1]):
        return True
    name = rel.name
    return name == "conftest.py" or name.startswith("test_") or name.endswith("_test.py")


def iter_python_files(root: Path, report: ExtractionReport,
                      folders: dict[str, int] | None = None) -> Iterator[tuple[Path, str]]:
    """Yield ``(path, relative posix path)`` of every non-test ``.py`` file below ``root``;
    with ``folders``, also record the mtime of every folder walked (a file added, removed or
    renamed in a folder changes its mtime).

    Symlinked folders are followed once; a loop is recorded, not followed again.
    """
    if not root.exists():
        report.skip(str(root), "missing: application directory does not exist")
        return
    if root.is_file() and root.suffix == ".py":  # a single-module application
        yield root, root.name
        return
    if not root.is_dir():
        report.skip(str(root), "not_a_directory: application source is not a directory")
        return
    seen_dirs: set[str] = set()

    def onerror(err: OSError) -> None:
        report.skip(str(err.filename), f"unreadable: {err.strerror}")

    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
        real = os.path.realpath(dirpath)
        rel_dir = PurePosixPath(Path(dirpath).relative_to(root).as_posix())
        if real in seen_dirs:
            report.skip(str(rel_dir), "symlink_loop: folder already visited through a link")
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        if folders is not None:
            try:
                folders[dirpath] = os.stat(dirpath).st_mtime_ns
            except OSError:
                pass  # gone since the walk listed it: the next check sees it missing
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        for name in sorted(filenames):
            rel = rel_dir / name if str(rel_dir) != "." else PurePosixPath(name)
            if not os.path.exists(os.path.join(dirpath, name)):  # os.walk lists it as a file
                report.skip(rel.as_posix(), "dangling_link: the link's target does not exist")
                continue
            if not name.endswith(".py"):
                continue
            if is_test_path(rel):
                continue
            yield Path(dirpath) / name, rel.as_posix()


def read_source(path: Path, rel: str, report: ExtractionReport,
                max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> str | None:
    """Read a Python file honouring its PEP 263 encoding; ``None`` (with a reason) if unusable."""
    try:
        size = path.stat().st_size
    except OSError as err:
        report.skip(rel, f"unreadable: {err.strerror or err}")
        return None
    if size > max_file_bytes:
        report.skip(rel, f"too_large: {size} bytes > cap {max_file_bytes}")
        return None
    try:
        data = path.read_bytes()
    except OSError as err:
        report.skip(rel, f"unreadable: {err.strerror or err}")
        return None
    if b"\x00" in data:
        report.skip(rel, "binary: file holds NUL bytes")
        return None
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        text = data.decode(encoding)
    except (SyntaxError, LookupError, UnicodeDecodeError) as err:
        report.skip(rel, f"undecodable: {err}")
        return None
    # Normalise BOM and CRLF so line numbers and segments are stable across platforms.
    return text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _signature(node: ast.AST, source_lines: list[str]) -> str:
    """The def/class header up to its colon, on one line."""
    if isinstance(node, ast.ClassDef):
        bases = [ast.unparse(b) for b in node.bases] + [ast.unparse(k) for k in node.keywords]
        return f"class {node.name}({', '.join(bases)})" if bases else f"class {node.name}"
    prefix = "async def" if isinstance(node, ast.AsyncFunctionDef) else "def"
    ret = f" -> {ast.unparse(node.returns)}" if node.returns is not None else ""
    return f"{prefix} {node.name}({ast.unparse(node.args)}){ret}"


def _docstrings(node: ast.AST, start: int) -> tuple[tuple[int, int, bool], ...]:
    """The docstrings of ``node`` and every def/class inside it, as 0-based line ranges from
    line ``start`` (end exclusive), in order; one sharing its line with the header is kept."""
    spans = []
    for n in ast.walk(node):
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and n.body:
            first = n.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str) and first.lineno > n.lineno):
                spans.append((first.lineno - start, first.end_lineno - start + 1,
                              len(n.body) == 1))
    return tuple(sorted(spans))


def _segment(node: ast.AST, lines: list[str]) -> str:
    """Source of ``node`` including decorators, dedented to its own indentation."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    chunk = lines[start - 1:node.end_lineno]
    indent = node.col_offset
    return "\n".join(l[indent:] if l[:indent].strip() == "" else l.lstrip() for l in chunk)


def sections_from_source(source: str, rel: str) -> list[Section]:
    """Every def/class of one module, in source order. Raises ``SyntaxError``/``ValueError``."""
    tree = ast.parse(source, filename=rel)
    lines = source.split("\n")
    out: list[Section] = []

    def visit(body: list[ast.stmt], prefix: str, in_class: bool) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual = f"{prefix}.{node.name}" if prefix else node.name
                if isinstance(node, ast.ClassDef):
                    kind = "class"
                else:
                    is_async = isinstance(node, ast.AsyncFunctionDef)
                    kind = ("async_" if is_async else "") + ("method" if in_class else "function")
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                out.append(Section(
                    file=rel, qualname=qual, kind=kind,
                    line_start=start,
                    line_end=node.end_lineno or node.lineno,
                    signature=_signature(node, lines),
                    docstring=ast.get_docstring(node),
                    code=_segment(node, lines),
                    docstrings=_docstrings(node, start),
                ))
                visit(node.body, qual, isinstance(node, ast.ClassDef))
            else:
                # defs under if/try/with blocks at this level still belong to this scope
                for child_body in _nested_bodies(node):
                    visit(child_body, prefix, in_class)

    visit(tree.body, "", False)
    return out


def _nested_bodies(node: ast.stmt) -> Iterator[list[ast.stmt]]:
    for name in ("body", "orelse", "finalbody"):
        body = getattr(node, name, None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            yield body
    for handler in getattr(node, "handlers", []) or []:
        yield handler.body
    for case in getattr(node, "cases", []) or []:
        yield case.body


def parse_sections(source: str, rel: str) -> tuple[list[Section], str | None]:
    """:func:`sections_from_source`, or no sections and the skip reason of a file that does
    not parse (``syntax_error: ... (line N)``)."""
    try:
        return sections_from_source(source, rel), None
    except (SyntaxError, ValueError, RecursionError) as err:
        line = getattr(err, "lineno", None)
        where = f" (line {line})" if line else ""
        return [], f"syntax_error: {getattr(err, 'msg', err)}{where}"


def extract_sections(root: Path, app: str | None = None,
                     max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
                     ) -> tuple[list[Section], ExtractionReport]:
    """Extract every section of the application at ``root``.

    Returns the sections (sorted by file, then line) and the extraction report, which names
    every skipped file with its reason.
    """
    root = Path(root)
    report = ExtractionReport(app=app or root.name)
    sections: list[Section] = []
    for path, rel in iter_python_files(root, report):
        source = read_source(path, rel, report, max_file_bytes)
        if source is None:
            continue
        found, problem = parse_sections(source, rel)
        if problem:
            report.skip(rel, problem)
            continue
        report.files_parsed += 1
        sections.extend(found)
    report.sections = len(sections)
    return sections, report
