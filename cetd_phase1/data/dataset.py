"""The ``datasets`` builder: apps -> sections -> labelled examples + negatives -> cached Arrow.

Two builder configs share one cache: ``examples`` (one row per (requirement, section) pair,
label 1 for positives, 0 for BM25-mined hard and random negatives from the same app) and
``sections`` (every section of every app: the full-app candidate pool for evaluation).
A build is cached under a fingerprint of the registry's source files and the config; a changed
source file or option rebuilds, an unchanged one is served from the Arrow cache.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import datasets

from cetd_phase1 import default_cache_dir
from cetd_phase1.atomic import atomic_write_text
from cetd_phase1.data.changelog import find_changelog
from cetd_phase1.errors import CETDError
from cetd_phase1.data.labels import (DEFAULT_LABEL_SOURCES, LABEL_SOURCES, MIN_REQUIREMENT_WORDS,
                                     AppLabels, HeuristicLabeler, label_app)
from cetd_phase1.data.apps import SPLITS, App, Registry, RegistryError
from cetd_phase1.data.sections import ExtractionReport, Section, extract_sections
from cetd_phase1.text import format_section


_SECTION_FEATURES = {
    "app_id": datasets.Value("string"), "app_name": datasets.Value("string"),
    "split": datasets.Value("string"), "file": datasets.Value("string"),
    "qualname": datasets.Value("string"), "kind": datasets.Value("string"),
    "line_start": datasets.Value("int32"), "line_end": datasets.Value("int32"),
    "code": datasets.Value("string"),
}
EXAMPLE_FEATURES = datasets.Features({
    "query_id": datasets.Value("string"), "requirement": datasets.Value("string"),
    **_SECTION_FEATURES,
    "label": datasets.Value("int8"), "label_source": datasets.Value("string"),
    "origin": datasets.Value("string"),
})
SECTION_FEATURES = datasets.Features({**_SECTION_FEATURES, "docstring": datasets.Value("string")})


@dataclass
class BuildReport:
    """Extraction reports of every app plus labelling problems, for the CLI to show."""

    extraction: list[ExtractionReport] = field(default_factory=list)
    problems: list[tuple[str, str, bool]] = field(default_factory=list)  # (app, message, error)
    skipped_examples: dict[str, int] = field(default_factory=dict)

    @property
    def has_errors(self) -> bool:
        return any(err for _, _, err in self.problems)

    def to_json(self) -> str:
        import json

        return json.dumps({"extraction": [asdict(r) for r in self.extraction],
                           "problems": self.problems, "skipped_examples": self.skipped_examples})

    def problem_lines(self) -> list[str]:
        return [f"{'error' if is_error else 'warning'}: {app}: {message}"
                for app, message, is_error in self.problems]

    def summary_lines(self) -> list[str]:
        """What ``build-data`` prints: every skipped file, the counts, the problems."""
        from collections import Counter

        reasons: Counter = Counter()
        lines = []
        for r in self.extraction:
            reasons.update(r.counts_by_reason())
            lines += [f"skipped {r.app}/{path}: {reason}" for path, reason in r.skipped]
        files = sum(r.files_parsed for r in self.extraction)
        sections = sum(r.sections for r in self.extraction)
        by_reason = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items())) or "none"
        lines.append(f"extraction: {len(self.extraction)} apps, {files} files, {sections} "
                     f"sections; skipped files by reason: {by_reason}")
        lines += [f"examples dropped ({reason}): {n}"
                  for reason, n in sorted(self.skipped_examples.items())]
        return lines + self.problem_lines()

    def load_json(self, text: str) -> None:
        """Fill an empty report from :meth:`to_json` output (a build served from cache)."""
        import json

        data = json.loads(text)
        self.extraction = [ExtractionReport(app=r["app"], files_parsed=r["files_parsed"],
                                            sections=r["sections"],
                                            skipped=[tuple(x) for x in r["skipped"]])
                           for r in data["extraction"]]
        self.problems = [tuple(p) for p in data["problems"]]
        self.skipped_examples = data["skipped_examples"]


@dataclass
class Phase1BuilderConfig(datasets.BuilderConfig):
    """Options of one build; every field is part of the cache key."""

    source: str = "stdlib"
    hard_negatives: int = 3
    random_negatives: int = 2
    max_positives: int = 5
    label_sources: str = ",".join(DEFAULT_LABEL_SOURCES)
    seed: int = 0


def _section_row(app: App, s: Section, code: str | None = None) -> dict:
    return {"app_id": app.app_id, "app_name": app.name, "split": app.split, "file": s.file,
            "qualname": s.qualname, "kind": s.kind, "line_start": s.line_start,
            "line_end": s.line_end, "code": s.encoder_code() if code is None else code}


class _BM25Index:
    """Per-app BM25 over the text the encoder reads (``bm25s``: sparse, fast, maintained).

    Plain ``bm25s`` tokens, not ``retrieve.bm25_tokenize``: the mined negatives define the
    training data and the candidate-set protocol, which every reported number was measured on;
    switching them is a recipe change to measure as such.
    """

    def __init__(self, texts: list[str]) -> None:
        import bm25s

        self.n = len(texts)
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False),
                             show_progress=False)

    def top(self, queries: list[str], k: int) -> list[list[int]]:
        import bm25s

        k = min(k, self.n)
        tokens = bm25s.tokenize(queries, stopwords="en", show_progress=False)
        docs, _ = self.retriever.retrieve(tokens, k=k, show_progress=False, n_threads=1)
        return [list(map(int, row)) for row in docs]


def query_id(app: App, requirement: str) -> str:
    """Stable id of one requirement within one app."""
    return hashlib.sha1(f"{app.app_id}\0{requirement}".encode()).hexdigest()[:16]


def app_examples(app: App, sections: list[Section], labels: AppLabels, *,
                 hard_negatives: int, random_negatives: int, max_positives: int, seed: int,
                 skipped: dict[str, int]) -> Iterator[dict]:
    """Rows of one app: each requirement's positives, then its BM25 and random negatives."""
    if not labels.examples or not sections:
        return
    by_key = {s.key: s for s in sections}
    code = {s.key: s.encoder_code() for s in sections}
    texts = [format_section(s.file, s.qualname, code[s.key]) for s in sections]
    bm25 = _BM25Index(texts) if hard_negatives and len(sections) > 1 else None
    wanted = hard_negatives + max_positives + 8
    mined = bm25.top([e.requirement for e in labels.examples], wanted) if bm25 else None
    for i, ex in enumerate(labels.examples):
        positives = [by_key[k] for k in ex.positives[:max_positives]]
        # Leak guard: a requirement quoted verbatim in its positive would teach string matching.
        if any(ex.requirement in code[p.key] for p in positives):
            skipped["requirement_in_code"] = skipped.get("requirement_in_code", 0) + 1
            continue
        qid = query_id(app, ex.requirement)
        pos_keys = set(ex.positives)
        base = {"query_id": qid, "requirement": ex.requirement, "label_source": ex.label_source}
        for p in positives:
            yield {**base, **_section_row(app, p, code[p.key]), "label": 1, "origin": "positive"}
        taken = set(pos_keys)
        hard = []
        for j in (mined[i] if mined else []):
            if len(hard) == hard_negatives:
                break
            if sections[j].key not in taken:
                hard.append(sections[j])
                taken.add(sections[j].key)
        for s in hard:
            yield {**base, **_section_row(app, s, code[s.key]), "label": 0, "origin": "bm25"}
        rest = list({s.key: s for s in sections if s.key not in taken}.values())
        # seeded by name, not id, so every registry of the same apps draws the same negatives
        rng = random.Random(f"{seed}:{app.name}:{ex.requirement}")
        for s in rng.sample(rest, min(random_negatives, len(rest))):
            yield {**base, **_section_row(app, s, code[s.key]), "label": 0, "origin": "random"}


class Phase1Builder(datasets.GeneratorBasedBuilder):
    """Builds the ``examples`` and ``sections`` tables from a :class:`Registry`."""

    BUILDER_CONFIG_CLASS = Phase1BuilderConfig
    BUILDER_CONFIGS = [Phase1BuilderConfig(name="examples"), Phase1BuilderConfig(name="sections")]
    DEFAULT_CONFIG_NAME = "examples"

    def __init__(self, *args, registry: Registry, report: BuildReport | None = None,
                 heuristic: HeuristicLabeler | None = None, **kwargs) -> None:
        self.registry = registry
        self.report = report if report is not None else BuildReport()
        self.heuristic = heuristic
        super().__init__(*args, **kwargs)

    def _info(self) -> datasets.DatasetInfo:
        features = SECTION_FEATURES if self.config.name == "sections" else EXAMPLE_FEATURES
        return datasets.DatasetInfo(description=__doc__, features=features)

    def _split_generators(self, dl_manager) -> list[datasets.SplitGenerator]:
        return [datasets.SplitGenerator(name=split, gen_kwargs={"split": split})
                for split in SPLITS]

    def _generate_examples(self, split: str):
        from tqdm.auto import tqdm

        sources = [s for s in self.config.label_sources.split(",") if s]
        heuristic = self.heuristic
        if "heuristic" in sources and heuristic is None:
            heuristic = self.heuristic = HeuristicLabeler()
        apps = self.registry.apps(split)
        # apps the registry could not use (bad source_path) are reported, never silently dropped
        for name, reason in getattr(self.registry, "problems", ()):
            self.report.extraction.append(ExtractionReport(app=name, skipped=[("<source>", reason)]))
        # inside datasets' own bar: on a terminal only (disable=None), since two nested bars
        # drawn into a log file leave a cursor-up escape on every line
        for app in tqdm(apps, desc=f"{self.config.name}/{split}", unit="app", leave=False,
                        disable=None):
            sections, extraction = extract_sections(app.source_path, app.name)
            self.report.extraction.append(extraction)
            if self.config.name == "sections":
                for k, s in enumerate(sections):
                    yield f"{app.app_id}/{k}", {**_section_row(app, s),
                                                "docstring": s.docstring or ""}
                continue
            own = [s for s in sources if app.label_sources is None or s in app.label_sources]
            labels = label_app(app.source_path, sections, sources=own, heuristic=heuristic)
            for p in labels.problems:
                self.report.problems.append((app.name, f"{p.file}: {p.reason}", p.is_error))
            if not sections:
                self.report.problems.append((app.name, f"{app.source_path}: no code sections (no "
                                             f"parsable non-test .py file): no examples", False))
            elif not labels.examples:
                self.report.problems.append((app.name, f"{app.source_path}: no labelled "
                                             f"requirement (no docstring of {MIN_REQUIREMENT_WORDS}+"
                                             f" words, no gold annotation): no examples", False))
            rows = app_examples(app, sections, labels, hard_negatives=self.config.hard_negatives,
                                random_negatives=self.config.random_negatives,
                                max_positives=self.config.max_positives, seed=self.config.seed,
                                skipped=self.report.skipped_examples)
            for k, row in enumerate(rows):
                yield f"{app.app_id}/{k}", row


def source_fingerprint(registry: Registry) -> str:
    """Hash of every app's split, path and each ``.py``/gold file's size and mtime, plus this
    package's data-flow code (so a fix in labelling invalidates stale caches)."""
    h = hashlib.sha256(registry.describe().encode())
    here = Path(__file__).parent
    for name in ("sections.py", "labels.py", "dataset.py", "git_history.py", "commits.py",
                 "changelog.py", "commit_labels.py"):
        if (here / name).is_file():
            h.update((here / name).read_bytes())
    for app in registry.apps():
        h.update(f"{app.app_id}\0{app.split}\0{app.source_path}\0".encode())
        root = Path(app.source_path)
        changelog = None if root.is_file() else find_changelog(root)
        paths = [root] if root.is_file() else sorted(
            p for p in root.rglob("*")
            if p.suffix in (".py", ".md", ".yaml", ".json") and "__pycache__" not in p.parts)
        paths += [changelog] if changelog is not None else []
        for p in paths:
            try:
                st = p.stat()
            except OSError:
                continue
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()[:16]


def _build(config_name: str, source, registry, cache_dir, report, heuristic,
           **options) -> datasets.DatasetDict:
    from cetd_phase1.data.registry import registry_from

    registry = registry if registry is not None else registry_from(source)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "datasets"
    try:
        fingerprint = source_fingerprint(registry)
        builder = Phase1Builder(cache_dir=str(cache_dir), config_name=config_name,
                                hash=fingerprint, registry=registry, report=report,
                                heuristic=heuristic, source=registry.describe(), **options)
        report = builder.report
        cached = Path(builder.cache_dir).is_dir()
        builder.download_and_prepare()
    except RegistryError as err:
        raise CETDError(str(err)) from None
    # The report lives beside the Arrow files so a cached build can still show it.
    report_file = Path(builder.cache_dir) / "build_report.json"
    if cached and report_file.is_file():
        report.load_json(report_file.read_text(encoding="utf-8"))
    elif not cached:
        atomic_write_text(report_file, report.to_json())
    out = {}
    for split in SPLITS:
        info = builder.info.splits.get(split)
        if info is not None and info.num_examples:
            out[split] = builder.as_dataset(split=split)
        else:  # the reader refuses empty splits; an empty table keeps the schema
            out[split] = datasets.Dataset.from_dict(
                {k: [] for k in builder.info.features}, features=builder.info.features)
    return datasets.DatasetDict(out)


def build_dataset(source: str | Path | None = "stdlib", *, registry: Registry | None = None,
                  hard_negatives: int = 3, random_negatives: int = 2, max_positives: int = 5,
                  label_sources: tuple[str, ...] = DEFAULT_LABEL_SOURCES,
                  cache_dir: str | Path | None = None, seed: int = 0,
                  report: BuildReport | None = None,
                  heuristic: HeuristicLabeler | None = None) -> datasets.DatasetDict:
    """Labelled (requirement, section, label) rows per split, built once and cached as Arrow."""
    unknown = set(label_sources) - set(LABEL_SOURCES)
    if unknown:
        raise CETDError(f"unknown label source(s) {sorted(unknown)}; "
                        f"expected some of {', '.join(LABEL_SOURCES)}")
    return _build("examples", source, registry, cache_dir, report, heuristic,
                  hard_negatives=hard_negatives, random_negatives=random_negatives,
                  max_positives=max_positives, label_sources=",".join(label_sources), seed=seed)


def build_sections(source: str | Path | None = "stdlib", *, registry: Registry | None = None,
                   cache_dir: str | Path | None = None,
                   report: BuildReport | None = None) -> datasets.DatasetDict:
    """Every section of every app per split: the full-app candidate pools."""
    return _build("sections", source, registry, cache_dir, report, None)


@dataclass
class Validation:
    """Dataset statistics and the leakage violations that fail ``validate-data``."""

    stats: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)


def validate_dataset(dd: datasets.DatasetDict) -> Validation:
    """Counts per split, label balance, positive-less requirements, duplicates, section spread;
    violations: an app in two splits, or a requirement found verbatim in its positive's code."""
    import numpy as np

    result = Validation()
    app_splits: dict[str, set[str]] = {}
    for split, ds in dd.items():
        cols = ds.select_columns(["query_id", "requirement", "app_id", "file", "qualname",
                                  "code", "label", "label_source"]).to_dict()
        n = len(cols["label"])
        positives = sum(cols["label"])
        queries: dict[str, int] = {}
        seen, dupes = set(), 0
        per_app: dict[str, set[str]] = {}
        for i in range(n):
            qid, app = cols["query_id"][i], cols["app_id"][i]
            queries[qid] = queries.get(qid, 0) + cols["label"][i]
            app_splits.setdefault(app, set()).add(split)
            key = (qid, cols["file"][i], cols["qualname"][i])
            dupes += key in seen
            seen.add(key)
            per_app.setdefault(app, set()).add(f"{cols['file'][i]}::{cols['qualname'][i]}")
            if cols["label"][i] == 1 and cols["requirement"][i] in cols["code"][i]:
                result.violations.append(
                    f"{split}: requirement quoted verbatim in its positive "
                    f"{app} {cols['file'][i]}::{cols['qualname'][i]}")
        without_pos = sum(1 for v in queries.values() if v == 0)
        spread = np.array([len(v) for v in per_app.values()] or [0])
        sources: dict[str, int] = {}
        for src in cols["label_source"]:
            sources[src] = sources.get(src, 0) + 1
        result.stats[split] = {
            "rows": n, "apps": len(per_app), "requirements": len(queries),
            "positives": positives, "negatives": n - positives,
            "positive_fraction": round(positives / n, 3) if n else 0.0,
            "requirements_without_positive": without_pos, "duplicate_rows": dupes,
            "sections_per_app": {"min": int(spread.min()), "median": float(np.median(spread)),
                                 "max": int(spread.max())},
            "label_sources": sources,
        }
        if without_pos:
            result.warnings.append(f"{split}: {without_pos} requirements without a positive")
        if dupes:
            result.warnings.append(f"{split}: {dupes} duplicate (requirement, section) rows")
    for app, splits in sorted(app_splits.items()):
        if len(splits) > 1:
            result.violations.append(f"app {app} appears in several splits: {sorted(splits)}")
    return result
