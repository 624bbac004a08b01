"""An app's changelog -> (entry text, sections the entry names) pairs: feature-level requirements.

A changelog entry ("``echo()`` does not fail when no streams are attached") is written like the
feature requests users give, unlike a docstring, and often names the function or class it is
about. An entry whose names resolve to 1-8 sections of the app becomes a requirement with those
sections as positives. No library parses changelog bullets into identifiers, hence this module.

Recognised files at the app's root: ``CHANGES``, ``CHANGELOG``, ``HISTORY``, ``NEWS`` (any case,
``.rst``, ``.md``, ``.txt`` or none). Entries are bullet items (``-``, ``*``, ``+``) with their
indented continuation lines; names are taken from Sphinx roles (``:func:`~pkg.mod.name```),
double or single backquotes (reST and Markdown code spans).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from cetd_phase1.data.sections import Section

CHANGELOG_STEMS = ("changes", "changelog", "history", "news")
MIN_WORDS = 5
MAX_SECTIONS = 8
#: A bare name defined this many times or more in the app (``get``, ``__init__``) says too
#: little about which one the entry means.
MAX_AMBIGUOUS = 3

_BULLET = re.compile(r"^(\s*)[-*+]\s+(\S.*)$")
_ROLE_REF = re.compile(r":(?:py:)?(?:func|meth|class|attr|obj|exc|data|mod|const|deco)"
                       r":`([^`]+)`")
_OTHER_ROLE = re.compile(r":(?:issue|pr|user|bug|ghuser|gh|commit|cve|doc|ref|rfc|pep"
                         r"|kbd|file|envvar|option|term):`[^`]*`")
_CODE = re.compile(r"``([^`]+)``|`([^`]+)`")
_URL = re.compile(r"https?://\S+")
_REF_WORDS = r"(?:[Ii]ssues?|[Pp]ull(?: [Rr]equest)?s?|PRs?|pr|GH|gh|bpo|[Ff]ix(?:es)?|[Ss]ee)"
# "(Issue #12, Pull #34)", "#12", "gh-12": issue references, not requirement text
_HASH_REF = re.compile(rf"\((?:\s*{_REF_WORDS}?[\s-]*#?\d+[,;]?)+\s*\)"
                       rf"|(?:\b{_REF_WORDS}[\s-]*)?#\d+|\b(?:gh|GH|bpo)-\d+")
_THANKS = re.compile(r"\b(?:[Tt]hanks?(?: to)?|[Pp]atch by|[Cc]ontributed by)\s+@?\S+.*$")
_IDENT = re.compile(r"[A-Za-z_][\w.]*")


@dataclass(frozen=True)
class ChangelogEntry:
    """One bullet of a changelog: cleaned text and the dotted names it refers to."""

    text: str
    names: tuple[str, ...]


def find_changelog(app_root: Path) -> Path | None:
    """The app's changelog file at its root, if any (first by name order)."""
    root = Path(app_root)
    if not root.is_dir():
        return None
    for path in sorted(root.iterdir()):
        stem, suffix = path.stem.lower(), path.suffix.lower()
        if path.is_file() and stem in CHANGELOG_STEMS and suffix in ("", ".rst", ".md", ".txt"):
            return path
    return None


def _bullets(text: str) -> Iterable[str]:
    """Each bullet item with its continuation lines (indented deeper than the marker)."""
    current: list[str] = []
    indent = 0
    for line in text.splitlines():
        m = _BULLET.match(line)
        if m:
            if current:
                yield " ".join(current)
            indent, current = len(m.group(1)), [m.group(2)]
        elif current and line.strip() and len(line) - len(line.lstrip()) > indent:
            current.append(line.strip())
        else:
            if current:
                yield " ".join(current)
            current = []
    if current:
        yield " ".join(current)


def _name(ref: str) -> str | None:
    """``~pkg.Class.meth()`` / ``Class.meth(x=1)`` / ``@pkg.deco`` -> ``pkg.Class.meth``."""
    ref = ref.strip().lstrip("~!@")
    if "<" in ref and ref.endswith(">"):  # :func:`title <target>`
        ref = ref[ref.index("<") + 1:-1].lstrip("~!")
    m = _IDENT.match(ref)
    if not m:
        return None
    name = m.group(0).strip(".")
    rest = ref[m.end():].strip()
    # a code span that is an expression or a call with arguments names its callee; a span with
    # spaces or operators ("x = 1", "--flag") names nothing
    if rest and not rest.startswith("("):
        return None
    return name or None


def clean_text(bullet: str) -> str:
    """Markup and references removed: roles become their target name, code spans their text."""
    text = re.sub(r"\[([^\]]*)\]\(\S*?\)", lambda m: "" if m.group(1).lstrip("#").isdigit()
                  else m.group(1), bullet)  # markdown links: an issue number goes, words stay
    text = _OTHER_ROLE.sub("", text)
    text = _ROLE_REF.sub(lambda m: (_name(m.group(1)) or m.group(1)).split(".")[-1]
                         if m.group(1).startswith("~") else (_name(m.group(1)) or m.group(1)),
                         text)
    text = _CODE.sub(lambda m: m.group(1) or m.group(2), text)
    text = _URL.sub("", text)
    text = _HASH_REF.sub("", text)
    text = _THANKS.sub("", text)
    text = re.sub(r"\(\s*[,;]?\s*\)", "", text)
    # what the removed references leave behind: "-- by", a dangling "(cf." or "( <"
    text = re.sub(r"\s*(?:--|\u2014)\s*by\b\.?|\s*\((?:cf\.|see)?[^()]*$", "", text)
    text = re.sub(r"\s+([:;,.])", r"\1", " ".join(text.split()))
    return text.strip(" ,;:")


def parse_changelog(text: str) -> list[ChangelogEntry]:
    """Every bullet that names at least one identifier, in file order."""
    entries = []
    for bullet in _bullets(text):
        names = [_name(m.group(1)) for m in _ROLE_REF.finditer(bullet)]
        spans = _CODE.finditer(_ROLE_REF.sub("", bullet))
        names += [_name(m.group(1) or m.group(2)) for m in spans]
        names = [n for n in dict.fromkeys(names) if n]
        if names:
            entries.append(ChangelogEntry(clean_text(bullet), tuple(names)))
    return entries


class _SectionIndex:
    """Resolves a dotted name to sections: the longest suffix that is a qualname, narrowed by the
    module path the name's prefix gives."""

    def __init__(self, sections: Sequence[Section]) -> None:
        self.by_qualname: dict[str, list[Section]] = {}
        for s in sections:
            self.by_qualname.setdefault(s.qualname, []).append(s)

    def resolve(self, name: str) -> list[Section]:
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            found = self.by_qualname.get(".".join(parts[-n:]))
            if not found:
                continue
            prefix = parts[:-n]
            if len(found) > 1 and prefix:
                in_module = [s for s in found if _module_matches(s.file, prefix)]
                found = in_module or found
            return found if len(found) < MAX_AMBIGUOUS else []
        return []


def _module_matches(file: str, prefix: list[str]) -> bool:
    """``click/termui.py`` matches the prefix ``click.termui`` (or its last component)."""
    module = file[:-3].replace("/", ".") if file.endswith(".py") else file
    module = module.removesuffix(".__init__")
    return module.endswith(".".join(prefix)) or module.split(".")[-1] == prefix[-1]


def changelog_pairs(app_root: Path, sections: Sequence[Section]) -> list[tuple[str, list[str]]]:
    """(requirement, positive keys) from the app's changelog; empty without one.

    Kept: entries of at least :data:`MIN_WORDS` words whose names resolve to 1-8 sections. An
    entry naming something absent from the code (removed since, or another package's API) keeps
    the sections it does resolve. Identical texts are kept once.
    """
    path = find_changelog(app_root)
    if path is None:
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    index = _SectionIndex(sections)
    pairs: dict[str, list[str]] = {}
    for entry in parse_changelog(text):
        if len(entry.text.split()) < MIN_WORDS or entry.text in pairs:
            continue
        keys = list(dict.fromkeys(s.key for n in entry.names for s in index.resolve(n)))
        if 1 <= len(keys) <= MAX_SECTIONS:
            pairs[entry.text] = keys
    return list(pairs.items())
