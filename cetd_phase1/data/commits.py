"""Commit message -> requirement text, and which subjects are not requirements at all.

Used by ``git_history.py`` to turn a commit into a requirement:

* :func:`classify_subject` - the reason a subject is skipped (release / version bump, docs, CI,
  typo, style / lint, typing, refactor, revert, dependency, merge, fewer than
  :data:`MIN_SUBJECT_WORDS` words), judged on the subject with its gitmoji and conventional-commit
  prefix (``feat(x):``, ``ENH:``) removed, and on what those decorations themselves say;
* :func:`commit_text` - the subject and first body paragraph with decorations, issue and pull
  request references and trailers (``Signed-off-by:``, ``Fixes: #12``) removed, at most
  :data:`MAX_TEXT_CHARS` characters.

Pure text handling: :mod:`re` and :mod:`unicodedata` only.
"""

from __future__ import annotations

import re
import unicodedata

#: Longest requirement text kept; the benchmark texts are cut at the same length.
MAX_TEXT_CHARS = 400
#: A subject (decorations and references removed) with fewer words is not a requirement.
MIN_SUBJECT_WORDS = 5

# -- commit message classification -----------------------------------------------------------

#: Conventional-commit types (``feat(x):``, numpy's ``ENH:``) and what a skipped one means.
_CONVENTIONAL_TYPES = {
    "feat": None, "feature": None, "fix": None, "bugfix": None, "hotfix": None, "perf": None,
    "enh": None, "enhancement": None, "bug": None, "api": None, "security": None, "chore": None,
    "maint": None, "test": None, "tests": None, "tst": None, "improvement": None,
    "docs": "docs", "doc": "docs", "ci": "ci", "build": "ci", "bld": "ci",
    "style": "style", "sty": "style", "lint": "style", "format": "style",
    "refactor": "refactor", "revert": "revert", "deps": "dependency",
    "release": "version_bump", "rel": "version_bump", "bump": "version_bump",
    "typing": "typing", "types": "typing",
}
_CONVENTIONAL = re.compile(r"^(?P<type>[A-Za-z]+)(?:\([^)]*\))?!?:\s*")

#: Gitmoji (https://gitmoji.dev) whose meaning is a skipped category; others are just removed.
_GITMOJI_REASONS = {
    "📝": "docs", "memo": "docs", "🔖": "version_bump", "bookmark": "version_bump",
    "💚": "ci", "green_heart": "ci", "👷": "ci", "construction_worker": "ci",
    "🎨": "style", "art": "style", "🚨": "style", "rotating_light": "style",
    "⬆": "dependency", "arrow_up": "dependency", "⬇": "dependency", "arrow_down": "dependency",
    "📌": "dependency", "pushpin": "dependency", "➕": "dependency",
    "heavy_plus_sign": "dependency", "➖": "dependency", "heavy_minus_sign": "dependency",
    "♻": "refactor", "recycle": "refactor",
    "✏": "typo", "pencil2": "typo", "🏷": "typing", "label": "typing",
    "⏪": "revert", "rewind": "revert",
}
_SHORTCODE = re.compile(r"^:([a-z0-9_+-]+):\s*")

#: Subject patterns, first match wins. Each is kept narrow enough that ordinary feature
#: subjects ("Add a custom date format", "Release the lock on close") are not caught.
_SUBJECT_RULES: list[tuple[str, re.Pattern[str]]] = [(reason, re.compile(pattern, re.I)) for
                                                     reason, pattern in [
    ("merge", r"^merge (?:branch|pull request|remote-tracking|tag)\b"),
    ("revert", r"^[\"']?revert\b"),
    ("version_bump", r"\b(?:bump(?:ed|s|ing)?|set|update|change|increment)\b.{0,20}\bversion\b"
                     r"|\bversion (?:bump|to v?\d)|^v?\d+(?:\.\d+)+\S*$"
                     r"|^releas(?:e|ing|ed)\b(?:\s+(?:v(?:ersion)?\s*)?\d|\s*$|:)"
                     r"|^prepare (?:for )?(?:the )?(?:next )?release\b|\brelease v?\d+\.\d+"
                     r"|\b(?:back to|start(?:ing)?|open(?:ing)?) (?:\S+ )?development\b"),
    ("dependency", r"^bump \S+ from \S+ to \S+|\b(?:deps|dependabot|renovate)\b"
                   r"|^(?:update|upgrade|bump|pin|unpin|relax)\b.{0,40}\bdependenc(?:y|ies)\b"
                   r"|\bdependenc(?:y|ies) (?:update|upgrade|bump)s?\b"
                   r"|\brequirements[-_\w]*\.txt\b"
                   r"|^(?:update|upgrade|bump|pin|unpin)\s+\S+\s+(?:to|from)\s+v?\d+\.\d+"),
    ("docs", r"^(?:docs?|documentation|document(?:ed|s|ing)?|readme|changelog|news)\b"
             r"|\b(?:readme|changelog|docs|documentation|sphinx|mkdocs|read ?the ?docs)\b"
             r"|^(?:add|update|fix|improve|clarify|expand|tweak|correct)\s+"
             r"(?:the\s+|some\s+|a\s+|missing\s+|more\s+)*docstrings?\b"),
    ("ci", r"^ci\b|\b(?:ci|github actions?|gh actions|travis|appveyor|circleci|azure pipelines"
           r"|tox|nox|pre-commit)\b"),
    ("typo", r"\btypos?\b|\bspelling\b|\bmisspel|\bgrammar\b"),
    ("style", r"^(?:re)?format(?:ted|ting)?\b|^style\b"
              r"|\b(?:flake8|pylint|ruff|isort|pyupgrade|autopep8|yapf|pep ?8|linters?"
              r"|lint(?:ing)?|trailing whitespace|code style|coding style)\b"
              r"|\b(?:apply|applied|run|ran|with)\s+black\b"
              r"|\b(?:apply|applied|run|ran|fix|fixed)\s+(?:code\s+)?formatting\b"),
    ("typing", r"\b(?:mypy|pyright|pytype|type[- ]?hints?|type[- ]?hinting|type annotations?"
               r"|typecheck(?:ing|er)?|type[- ]check(?:ing|er)?|py\.typed|stubs?)\b"
               r"|\btyping\b(?![._])"
               r"|^(?:add|fix|improve|update|correct)\s+(?:\S+\s+)?types?\s*(?:$|for\b|to\b|in\b)"),
    ("refactor", r"\brefactor(?:ed|ing|s)?\b"
                 r"|^(?:minor\s+)?(?:code\s+)?clean(?:-|\s)?ups?$"),
]]


def _strip_decorations(subject: str) -> tuple[str, str | None]:
    """Remove gitmoji and a conventional prefix from a subject; return it and the category
    they name (``None`` when they name none or a kept one)."""
    reason = None
    for _ in range(3):  # e.g. "✨ feat(x): …" or "feat(x): ✨ …"
        before = subject
        m = _SHORTCODE.match(subject)
        if m:
            reason = reason or _GITMOJI_REASONS.get(m.group(1))
            subject = subject[m.end():]
        i = 0
        # Emoji are non-ASCII symbols, joiners and variation selectors ("♻️", "🧑‍💻").
        while i < len(subject) and ord(subject[i]) > 127 and unicodedata.category(
                subject[i]) in ("So", "Sk", "Cf", "Mn"):
            i += 1
        if i:
            emoji = subject[:i].replace("\ufe0f", "").replace("\u200d", "")
            reason = reason or next((r for e, r in _GITMOJI_REASONS.items() if e in emoji), None)
            subject = subject[i:].lstrip()
        m = _CONVENTIONAL.match(subject)
        if m and m.group("type").lower() in _CONVENTIONAL_TYPES:
            reason = reason or _CONVENTIONAL_TYPES[m.group("type").lower()]
            subject = subject[m.end():]
        if subject == before:
            break
    return subject, reason


def classify_subject(subject: str) -> str | None:
    """The skip reason a commit subject alone gives (``"docs"``, ``"version_bump"``,
    ``"short_subject"``, ...), or ``None`` when the subject may be a requirement."""
    stripped, reason = _strip_decorations(subject.strip())
    if reason:
        return reason
    for reason, pattern in _SUBJECT_RULES:
        if pattern.search(subject) or pattern.search(stripped):
            return reason
    if len(_clean(stripped).split()) < MIN_SUBJECT_WORDS:
        return "short_subject"
    return None


# -- commit message -> requirement text --------------------------------------------------------

#: Git trailers ("Signed-off-by: …") and issue-link trailers ("Fixes: #12").
_TRAILER = re.compile(r"^\s*(?:[A-Za-z][\w-]*-by|Change-Id|Cc|Bug|Closes|Fixes|Fixed|Resolves"
                      r"|Refs?|Issue|PR|Link|See-also|Reviewed-on|Reported-at)\s*:\s*\S", re.I)
#: An issue or pull request: ``#12``, ``gh-12``, ``owner/repo#12`` or its URL.
_REF = (r"(?:https?://\S+?/(?:issues|pull|pulls|merge_requests)/\d+[^\s)\]]*"
        r"|(?:[\w.-]+/[\w.-]+)?(?:#|gh-)\d+\b)")
_REF_PHRASE = re.compile(
    r"(?:\b(?:fix(?:e[sd])?|close[sd]?|resolve[sd]?|refs?|references?|see|related to|"
    r"addresse[sd]|part of|issue|pr)\s*:?\s*)?"
    rf"{_REF}(?:\s*(?:,|and|&)\s*{_REF})*", re.I)
_BULLET = re.compile(r"^\s*[*+-]\s")


def _clean(text: str) -> str:
    """Drop issue/PR references and tidy what they leave behind; normalise whitespace."""
    text = _REF_PHRASE.sub("", text)
    text = re.sub(r"\(\s*[,;:]?\s*\)|\[\s*\](?:\(\s*\))?", "", text)  # emptied () [] [](…)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([.,;:!?])(?=\s|$)", r"\1", text)  # "ignored ." but not " .svg"
    text = re.sub(r"\s+\)", ")", text)
    text = re.sub(r"[,;:](?=[.!?](?:\s|$))", "", text)
    text = re.sub(r"([.,;:!?])(?:\s*\1)+(?=\s|$)", r"\1", text)
    return text.strip(" -:;,")


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in re.split(r"\n\s*\n", text.replace("\r\n", "\n")) if p.strip()]


def commit_text(message: str) -> str:
    """Requirement text of a commit message: subject (gitmoji, conventional prefix removed) and
    the first body paragraph, unless the body is a bulleted list of squashed commits; issue
    references and trailers removed, whitespace normalised, at most 400 characters."""
    paragraphs = _paragraphs(message)
    if not paragraphs:
        return ""
    subject = _clean(_strip_decorations(" ".join(paragraphs[0].split()))[0])
    # Trailers are looked for in the body only: a subject such as "Fixed: …" is kept.
    body_lines = [line for line in "\n\n".join(paragraphs[1:]).split("\n")
                  if not _TRAILER.match(line)]
    body_paragraphs = _paragraphs("\n".join(body_lines))
    body = ""
    if body_paragraphs and not _BULLET.match(body_paragraphs[0]):
        body = _clean(body_paragraphs[0])
    text = f"{subject} {body}".strip() if re.search(r"\w", body) else subject
    if len(text) > MAX_TEXT_CHARS:
        cut = text[:MAX_TEXT_CHARS]
        if not text[MAX_TEXT_CHARS].isspace() and " " in cut:
            cut = cut.rsplit(" ", 1)[0]  # do not end on half a word
        text = cut.rstrip(" ,;:-")
    return text
