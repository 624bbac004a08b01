"""Retriever: index an application, answer requirement queries over it.

An app's *section index* holds the encoder's vectors of every section of the app. It is kept on
disk per source file under a hash of the file's text and the checkpoint
(:mod:`cetd_phase1.index`), so an edited app re-encodes only the files that changed, and in one
process also in memory, re-read only when a source file's size or mtime changes. The checkpoint
id hashes the weight and config files (names, sizes, mtimes, config contents), so a retrained
checkpoint never reuses stale vectors.

Usage::

    retriever = Retriever.from_pretrained("runs/minilm/final")
    for hit in retriever.retrieve("Parse valid JSON strings into Python objects", app="json"):
        print(f"{hit['score']:.3f} {hit['file']}::{hit['qualname']}")
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cetd_phase1 import default_cache_dir
from cetd_phase1.errors import CETDError, check_requirement
from cetd_phase1.index import INDEX_VERSION, FileIndex, IndexStore, assemble
from cetd_phase1.ranking.bm25 import BM25Scorer, bm25_tokenize
from cetd_phase1.ranking.rerank import RERANK_DEPTH, reranked, top_sections
from cetd_phase1.ranking.config import RankingConfig
from cetd_phase1.data.apps import App
from cetd_phase1.data.sections import ExtractionReport, Section
from cetd_phase1.text import format_section

if TYPE_CHECKING:  # the encoder imports torch; retrieve stays light until a model is loaded
    from cetd_phase1.modeling.reranker import Reranker
    from cetd_phase1.ranking.compress import TokenCodec
    from cetd_phase1.ranking.encode import Encoded
    from cetd_phase1.ranking.full_app import SectionVectors

logger = logging.getLogger(__name__)


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
    from cetd_phase1.data.apps import RegistryError
    from cetd_phase1.data.registry import registry_from

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


@dataclass
class AppIndex:
    """The encoded sections of one app."""

    name: str
    root: Path
    sections: list[Section]
    #: the vectors of every text the encoder reads (several for a long function)
    vectors: SectionVectors
    report: ExtractionReport
    #: the files behind it, each with its entry (what a re-index reuses)
    files: FileIndex = field(repr=False)
    _bm25: BM25Scorer | None = field(default=None, repr=False)

    @functools.cached_property
    def texts(self) -> list[str]:
        """Each section's first text: what BM25 reads."""
        return [section_text(s) for s in self.sections]

    @property
    def embeddings(self) -> np.ndarray:
        """Pooled embeddings of the encoder's texts, float32 [M, D]."""
        return self.vectors.encoded.pooled

    @property
    def bm25(self) -> BM25Scorer:
        """BM25 over the sections' texts, built on first use from each file's tokens
        (tokenized once per file content: most of the build on a large app)."""
        if self._bm25 is None:
            for entry in self.files.entries:
                if entry.bm25_tokens is None:
                    entry.bm25_tokens = bm25_tokenize(
                        [section_text(s) for s in entry.sections], return_ids=False)
            self._bm25 = BM25Scorer(tokens=[t for e in self.files.entries
                                            for t in e.bm25_tokens])
        return self._bm25

    @functools.cached_property
    def classes(self) -> np.ndarray:
        """Which sections are classes, bool [N]."""
        return np.array([s.kind == "class" for s in self.sections], dtype=bool)


class Retriever:
    """A bi-encoder, the ranking settings it was chosen with, and a per-app index cache.

    ``retrieve`` ranks by the served hybrid score (the model's and BM25's scores, z-scored and
    mixed, :meth:`~cetd_phase1.ranking.full_app.FullAppRanker.served_scores`) unless
    ``hybrid=False``: on feature-level requirements the dense model alone ranks below the
    hybrid. With a ``reranker`` the ``rerank_depth`` best of that ranking are re-ordered by the
    cross-encoder (:mod:`cetd_phase1.ranking.rerank`). ``codec`` stores the index's vectors
    another way than the shipped :data:`~cetd_phase1.index.DEFAULT_CODEC` (a benchmark's
    comparison).

    The model is frozen here: requirements are encoded by a pre-packed copy of it taken at
    construction (:class:`~cetd_phase1.modeling.prepacked.PrepackedEncoder`), and indexes are
    cached under the checkpoint's identity, so changed weights need a new ``Retriever``.
    """

    def __init__(self, model, tokenizer, *, identity: str, ranking: RankingConfig | None = None,
                 batch_size: int = 64, cache_dir: str | Path | None = None, hybrid: bool = True,
                 show_progress: bool = False, reranker: Reranker | None = None,
                 rerank_depth: int = RERANK_DEPTH, codec: TokenCodec | None = None) -> None:
        from cetd_phase1.modeling.prepacked import PrepackedEncoder
        from cetd_phase1.modeling.precision import autocast_dtype
        from cetd_phase1.ranking.full_app import FullAppRanker

        prepacked = PrepackedEncoder.from_model(model, autocast_dtype(model.device))
        self.ranker = FullAppRanker(model, tokenizer, ranking or RankingConfig(),
                                    batch_size=batch_size, requirement_encoder=prepacked)
        self.identity = identity
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "index"
        self.hybrid = hybrid
        if rerank_depth < 1:
            raise CETDError(f"rerank_depth must be at least 1, got {rerank_depth}")
        self.reranker, self.rerank_depth = reranker, rerank_depth
        self.store = IndexStore(self.cache_dir / identity, self.ranker, show_progress, codec)
        self._indexes: dict[str, AppIndex] = {}

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
                        shortlist: int | None = None, max_req_length: int | None = None,
                        max_code_length: int | None = None,
                        reranker: str | Path | Reranker | None = None,
                        **kwargs: Any) -> "Retriever":
        """Open a trained checkpoint or a plain backbone folder (the untrained baseline) with
        the ranking settings saved beside it, each replaced by its argument when that is given;
        ``max_req_length``/``max_code_length`` replace the token limits the model reads with;
        ``reranker`` is a re-ranker folder (``cetd-phase1 train-reranker``) or one loaded.

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
            hybrid_weight=hybrid_weight, class_penalty=class_penalty, shortlist=shortlist)
        model, tokenizer = load_retriever(path)
        for key, value in (("max_req_length", max_req_length),
                           ("max_code_length", max_code_length)):
            if value is not None:
                setattr(model.config, key, value)
        import torch

        from cetd_phase1.modeling.precision import weights_for_autocast

        if torch.cuda.is_available():
            model = model.to("cuda")
        weights_for_autocast(model)
        if reranker is not None:
            from cetd_phase1.modeling.reranker import Reranker
            if not isinstance(reranker, Reranker):
                reranker = Reranker.from_pretrained(reranker)
        return cls(model, tokenizer, identity=checkpoint_identity(path), ranking=ranking,
                   reranker=reranker, **kwargs)

    # -- indexing ----------------------------------------------------------------------------

    def index(self, app: str | Path | App) -> AppIndex:
        """The section index of ``app``: from memory while no source file changed; else each
        file from memory or disk when its text did not change, encoded (and saved) when it did.
        """
        name, root = resolve_app(app)
        key = str(Path(root).resolve())
        cached = self._indexes.get(key)
        if cached is not None and cached.files.unchanged():
            return cached
        files = self.store.index(Path(root), name, cached.files.seen if cached else None)
        if cached is not None and [e.key for e in files.entries] == \
                [e.key for e in cached.files.entries]:  # touched, or a folder changed, not a text
            cached.files, cached.report = files, files.report
            return cached
        sections = files.sections
        index = AppIndex(name=name, root=Path(root), sections=sections,
                         vectors=assemble(files.entries), report=files.report, files=files)
        self._indexes[key] = index
        return index

    # -- querying ----------------------------------------------------------------------------

    def encode_queries(self, requirements: list[str]) -> np.ndarray:
        """Requirement embeddings, float32 [Q, D]."""
        return self.ranker.encode_requirements(list(requirements)).pooled

    def _queries(self, requirements: list[str]) -> Encoded:
        queries = self.ranker.encode_requirements(list(requirements))
        if queries.tokens is not None:  # the index may hold its token vectors rotated
            queries.tokens = self.store.codec.index_space(queries.tokens)
        return queries

    def dense_scores(self, requirements: list[str], index: AppIndex) -> np.ndarray:
        """The model's scores [Q, N] of requirements against every section of ``index``
        (MaxSim's shortlist, where it binds, the best by the pooled scores)."""
        if not index.sections:
            return np.zeros((len(requirements), 0), dtype=np.float32)
        return self.ranker.scores(self._queries(requirements), index.vectors)

    def shortlist_binds(self, index: AppIndex) -> bool:
        """Whether MaxSim reads only a shortlist of ``index``'s sections."""
        from cetd_phase1.ranking.encode import reads_shortlist

        return bool(self.ranking.late_interaction) and reads_shortlist(len(index.sections),
                                                                      self.ranking.shortlist)

    def served_scores(self, requirements: list[str], index: AppIndex,
                      dense: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The served scores [Q, N] and the model's [Q, N] (:meth:`FullAppRanker.served_scores
        <cetd_phase1.ranking.full_app.FullAppRanker.served_scores>`); the model's scores
        ``dense`` are reused when given and MaxSim reads every section."""
        bm25 = [index.bm25.scores(r) for r in requirements]
        if index.sections and (dense is None or self.shortlist_binds(index)):
            return self.ranker.served_scores(self._queries(requirements), index.vectors, bm25,
                                             index.classes)
        if dense is None:
            dense = self.dense_scores(requirements, index)
        return self.ranker.served(dense, bm25, index.classes), dense

    def rerank(self, requirement: str, index: AppIndex,
               scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``scores``' order with its ``rerank_depth`` best re-ordered by the re-ranker:
        ``(order, final scores, re-ranker logits [N], NaN outside the depth)``."""
        top = top_sections(scores, self.rerank_depth)
        logits = self.reranker.scores(requirement, [index.texts[i] for i in top])
        order, final = reranked(scores, top, logits)
        read = np.full(len(scores), np.nan)
        read[top] = logits
        return order, final, read

    def retrieve(self, requirement: str, app: str | Path | App, k: int = 5,
                 hybrid: bool | None = None) -> list[dict]:
        """Top-``k`` sections of ``app`` for ``requirement``, best first.

        Each hit: ``score`` (the served score, or the model's with ``hybrid=False``),
        ``dense_score``, ``file``, ``qualname``, ``name`` (= qualname, the seed's key),
        ``kind``, ``line_start``, ``line_end``, ``code`` (the full source, docstring included).
        With a re-ranker, also ``rerank_score`` (its logit; ``None`` past ``rerank_depth``),
        and the hits within the depth come first, ordered by it.
        """
        if k < 1:
            raise CETDError(f"k must be at least 1, got {k}")
        check_requirement(requirement)
        index = self.index(app)
        if not index.sections:
            return []
        if self.hybrid if hybrid is None else hybrid:
            served, dense = self.served_scores([requirement], index)
            scores, dense = served[0], dense[0]
        else:
            scores = dense = self.dense_scores([requirement], index)[0]
        if self.reranker is None:
            top, read = top_sections(scores, k), None
        else:
            order, _, read = self.rerank(requirement, index, scores)
            top = order[:k]
        hits = [{"score": float(scores[i]), "dense_score": float(dense[i]),
                 "file": index.sections[i].file, "qualname": index.sections[i].qualname,
                 "name": index.sections[i].qualname, "kind": index.sections[i].kind,
                 "line_start": index.sections[i].line_start,
                 "line_end": index.sections[i].line_end, "code": index.sections[i].code}
                for i in top]
        if read is not None:
            for hit, i in zip(hits, top):
                hit["rerank_score"] = None if np.isnan(read[i]) else float(read[i])
        return hits
