"""Retriever: index an application once, answer requirement queries over it.

An app's *section index* is the encoder's embedding of every section of the app. It is computed
once per (checkpoint, section texts) and kept on disk as ``.npy`` under
``<cache>/index/<checkpoint id>/<content hash>.npy`` (``.npz`` with the token vectors too for a
late-interaction checkpoint); in one process it is also kept in memory
and only rebuilt when a source file's size or mtime changes. The checkpoint id hashes the weight
and config files (names, sizes, mtimes, config contents), the content hash the exact texts the
encoder reads, so a retrained checkpoint or an edited app never reuses stale embeddings.

Usage::

    retriever = Retriever.from_pretrained("runs/minilm/final")
    for hit in retriever.retrieve("Parse valid JSON strings into Python objects", app="json"):
        print(f"{hit['score']:.3f} {hit['file']}::{hit['qualname']}")
"""

from __future__ import annotations

import functools
import hashlib
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cetd_phase1 import default_cache_dir
from cetd_phase1.atomic import atomic_write
from cetd_phase1.errors import CETDError, check_requirement
from cetd_phase1.ranking.bm25 import BM25Scorer
from cetd_phase1.ranking.fusion import served_scores
from cetd_phase1.ranking.settings import RankingConfig
from cetd_phase1.data.registry import App
from cetd_phase1.data.sections import ExtractionReport, Section, extract_sections, format_section, iter_python_files

if TYPE_CHECKING:  # the encoder imports torch; retrieve stays light until a model is loaded
    from cetd_phase1.ranking.encode import Encoded
    from cetd_phase1.ranking.full_app import FullAppRanker, SectionVectors

logger = logging.getLogger(__name__)

#: Bumped when the index layout or the section text changes, to orphan old cache entries.
INDEX_VERSION = "1"


def section_text(section: Section) -> str:
    """What the encoder and BM25 read for a section: the same text as the training rows
    (:meth:`~cetd_phase1.data.sections.Section.encoder_code`: no docstring, own or nested)."""
    return format_section(section.file, section.qualname, section.encoder_code())


def checkpoint_identity(path: str | Path) -> str:
    """Short hash naming a checkpoint's weights and config (cache key of its indexes)."""
    root = Path(path).resolve()
    h = hashlib.sha256(f"{INDEX_VERSION}\0{root}\0".encode())
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        # Trainer's intermediate checkpoints and logs are not part of this model
        if not p.is_file() or any(part.startswith("checkpoint-") or part == "runs"
                                  for part in rel.parts[:-1]):
            continue
        st = p.stat()
        h.update(f"{rel.as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        if p.suffix == ".json" and st.st_size < 1_000_000:
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def resolve_app(app: str | Path | App) -> tuple[str, Path]:
    """``(name, source path)`` of an app given as an :class:`App`, a path, or the id/name of an
    app of the default registry (the stdlib, e.g. ``"stdlib/json"`` or ``"json"``; PostgreSQL
    when ``$DATABASE_URL`` is set)."""
    if isinstance(app, App):
        return app.name, Path(app.source_path)
    path = Path(app)
    if path.exists():
        return path.resolve().name, path
    from cetd_phase1.data.registry import RegistryError, registry_from

    registry = registry_from(None)
    try:
        candidates = registry.apps()
    except RegistryError as err:
        raise CETDError(str(err)) from None
    wanted = str(app)
    for candidate in candidates:
        if wanted in (candidate.app_id, candidate.name):
            return candidate.name, Path(candidate.source_path)
    raise CETDError(f"{app}: no such app folder or file, and no app of that id or name in "
                    f"{registry.describe()}")


def _stat_fingerprint(root: Path) -> str:
    """Cheap change detector for the in-memory index: every source file's size and mtime."""
    h = hashlib.sha256()
    for path, rel in iter_python_files(root, ExtractionReport(app=str(root))):
        try:
            st = path.stat()
        except OSError:
            continue
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


@dataclass
class AppIndex:
    """The encoded sections of one app."""

    name: str
    root: Path
    sections: list[Section]
    #: each section's first text: what BM25 reads
    texts: list[str]
    #: the vectors of every text the encoder reads (several for a long function)
    vectors: SectionVectors
    content_hash: str
    report: ExtractionReport
    _bm25: BM25Scorer | None = field(default=None, repr=False)

    @property
    def embeddings(self) -> np.ndarray:
        """Pooled embeddings of the encoder's texts, float32 [M, D]."""
        return self.vectors.encoded.pooled

    @property
    def bm25(self) -> BM25Scorer:
        """BM25 over the sections' texts, built on first use."""
        if self._bm25 is None:
            self._bm25 = BM25Scorer(self.texts)
        return self._bm25

    @functools.cached_property
    def classes(self) -> np.ndarray:
        """Which sections are classes, bool [N]."""
        return np.array([s.kind == "class" for s in self.sections], dtype=bool)


class Retriever:
    """A bi-encoder, the ranking settings it was chosen with, and a per-app index cache.

    ``retrieve`` ranks by the served hybrid score (the model's and BM25's scores, z-scored and
    mixed, :func:`~cetd_phase1.ranking.fusion.served_scores`) unless ``hybrid=False``: on
    feature-level requirements the dense model alone ranks below the hybrid.
    """

    def __init__(self, model, tokenizer, *, identity: str, ranking: RankingConfig | None = None,
                 batch_size: int = 64, cache_dir: str | Path | None = None, hybrid: bool = True,
                 show_progress: bool = False) -> None:
        from cetd_phase1.ranking.full_app import FullAppRanker

        self.ranker: FullAppRanker = FullAppRanker(model, tokenizer, ranking or RankingConfig(),
                                                   batch_size=batch_size)
        self.identity = identity
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "index"
        self.hybrid = hybrid
        self.show_progress = show_progress
        self._indexes: dict[str, tuple[str, AppIndex]] = {}

    @property
    def model(self):
        return self.ranker.model

    @property
    def tokenizer(self):
        return self.ranker.tokenizer

    @property
    def ranking(self) -> RankingConfig:
        return self.ranker.ranking

    @classmethod
    def from_pretrained(cls, path: str | Path, *, section_chunks: int | None = None,
                        late_interaction: float | None = None,
                        hybrid_weight: float | None = None, class_penalty: float | None = None,
                        max_req_length: int | None = None, max_code_length: int | None = None,
                        **kwargs: Any) -> "Retriever":
        """Open a trained checkpoint or a plain backbone folder (the untrained baseline) with
        the ranking settings saved beside it, each replaced by its argument when that is given;
        ``max_req_length``/``max_code_length`` replace the token limits the model reads with.

        Other keyword arguments go to :class:`Retriever` (``cache_dir``, ``hybrid``,
        ``batch_size``...).
        """
        from cetd_phase1.modeling.backbone import local_folder, resolve_backbone
        from cetd_phase1.modeling.loading import load_retriever

        name = str(path)
        path = Path(resolve_backbone(path))  # MiniLM aliases name the packaged copy
        if not path.exists() and name.count("/") == 1 and not name.startswith("."):
            path = local_folder(name, None)  # a hub id: its cached (or downloaded) snapshot
        if not (path / "config.json").is_file():
            raise CETDError(f"{path}: not a model folder (no config.json)")
        ranking = RankingConfig.load(path).override(
            section_chunks=section_chunks, late_interaction=late_interaction,
            hybrid_weight=hybrid_weight, class_penalty=class_penalty)
        model, tokenizer = load_retriever(path)
        for key, value in (("max_req_length", max_req_length),
                           ("max_code_length", max_code_length)):
            if value is not None:
                setattr(model.config, key, value)
        try:
            import torch

            if torch.cuda.is_available():
                model = model.to("cuda")
        except ImportError:
            pass
        return cls(model, tokenizer, identity=checkpoint_identity(path), ranking=ranking,
                   **kwargs)

    # -- indexing ----------------------------------------------------------------------------

    def index(self, app: str | Path | App) -> AppIndex:
        """The section index of ``app``: from memory, else from disk, else encoded (and saved)."""
        from cetd_phase1.ranking.full_app import SectionVectors

        name, root = resolve_app(app)
        key = str(Path(root).resolve())
        stamp = _stat_fingerprint(Path(root))
        cached = self._indexes.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        sections, report = extract_sections(Path(root), name)
        encoded, starts = self.ranker.texts(
            [(s.file, s.qualname, s.kind, s.encoder_code()) for s in sections])
        # each section's first text is its section_text(), what BM25 reads
        texts = encoded if starts is None else [encoded[i] for i in starts]
        digest = hashlib.sha256(f"{self.ranker.max_code_length}\0".encode()
                                + "\0".join(encoded).encode()).hexdigest()[:24]
        late = bool(self.ranking.late_interaction)
        path = self.cache_dir / self.identity / f"{digest}.{'npz' if late else 'npy'}"
        vectors = self._load_cached(path, len(encoded))
        if vectors is None:
            vectors = self.ranker.encode_texts(encoded, starts,
                                               show_progress=self.show_progress).encoded
            if late:
                atomic_write(path, lambda f: np.savez(f, pooled=vectors.pooled,
                                                      tokens=vectors.tokens,
                                                      offsets=vectors.offsets))
            else:
                atomic_write(path, lambda f: np.save(f, vectors.pooled))
        index = AppIndex(name=name, root=Path(root), sections=sections, texts=texts,
                         vectors=SectionVectors(vectors, starts), content_hash=digest,
                         report=report)
        self._indexes[key] = (stamp, index)
        return index

    @staticmethod
    def _load_cached(path: Path, rows: int) -> Encoded | None:
        """The cached :class:`~cetd_phase1.ranking.encode.Encoded` of ``rows`` texts at
        ``path``, or ``None`` (absent, corrupt or of another shape: recomputed, never trusted)."""
        from cetd_phase1.ranking.encode import Encoded

        if not path.is_file():
            return None
        try:
            if path.suffix == ".npy":
                arr = np.load(path)
                return Encoded(arr) if arr.ndim == 2 and arr.shape[0] == rows else None
            with np.load(path) as z:
                vectors = Encoded(z["pooled"], z["tokens"], z["offsets"])
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None
        ok = (vectors.pooled.ndim == 2 and vectors.pooled.shape[0] == rows
              and vectors.offsets.shape == (rows + 1,) and vectors.tokens.ndim == 2
              and int(vectors.offsets[-1]) == vectors.tokens.shape[0])
        return vectors if ok else None

    # -- querying ----------------------------------------------------------------------------

    def encode_queries(self, requirements: list[str]) -> np.ndarray:
        """Requirement embeddings, float32 [Q, D]."""
        return self.ranker.encode_requirements(list(requirements)).pooled

    def dense_scores(self, requirements: list[str], index: AppIndex) -> np.ndarray:
        """The model's scores [Q, N] of requirements against every section of ``index``."""
        if not index.sections:
            return np.zeros((len(requirements), 0), dtype=np.float32)
        return self.ranker.scores(self.ranker.encode_requirements(list(requirements)),
                                  index.vectors)

    def fuse(self, dense: np.ndarray, requirement: str, index: AppIndex) -> np.ndarray:
        """The served score of every section of ``index`` from the model's ``dense`` scores
        for ``requirement`` (:func:`~cetd_phase1.ranking.fusion.served_scores`)."""
        return served_scores(dense, index.bm25.scores(requirement), index.classes, self.ranking)

    def retrieve(self, requirement: str, app: str | Path | App, k: int = 5,
                 hybrid: bool | None = None) -> list[dict]:
        """Top-``k`` sections of ``app`` for ``requirement``, best first.

        Each hit: ``score`` (the served score, or the model's with ``hybrid=False``),
        ``dense_score``, ``file``, ``qualname``, ``name`` (= qualname, the seed's key),
        ``kind``, ``line_start``, ``line_end``, ``code`` (the full source, docstring included).
        """
        if k < 1:
            raise CETDError(f"k must be at least 1, got {k}")
        check_requirement(requirement)
        index = self.index(app)
        if not index.sections:
            return []
        dense = self.dense_scores([requirement], index)[0]
        use_hybrid = self.hybrid if hybrid is None else hybrid
        scores = self.fuse(dense, requirement, index) if use_hybrid else dense
        top = np.argsort(-scores, kind="stable")[:k]
        return [{"score": float(scores[i]), "dense_score": float(dense[i]),
                 "file": index.sections[i].file, "qualname": index.sections[i].qualname,
                 "name": index.sections[i].qualname, "kind": index.sections[i].kind,
                 "line_start": index.sections[i].line_start,
                 "line_end": index.sections[i].line_end, "code": index.sections[i].code}
                for i in top]
