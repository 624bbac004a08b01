"""Retriever: index an application once, answer requirement queries over it; export the encoder
as a sentence-transformers folder.

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
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cetd_phase1 import default_cache_dir
from cetd_phase1.atomic import atomic_directory, atomic_write, atomic_write_text
from cetd_phase1.errors import CETDError, check_penalty, check_requirement, check_share
from cetd_phase1.registry import App
if TYPE_CHECKING:  # model imports torch; retrieve stays light until a model is loaded
    from cetd_phase1.model import Encoded
from cetd_phase1.sections import (ExtractionReport, Section, extract_sections, format_section,
                                  iter_python_files)

logger = logging.getLogger(__name__)

#: Share of the dense score in the hybrid score for the pooled cosine; chosen on validation data
#: only (``bench/fusion.py``: stdlib validation apps and the feature-request validation half).
#: A checkpoint carries its own (``CETDConfig.hybrid_weight``, this value by default).
HYBRID_WEIGHT = 0.7
#: Bumped when the index layout or the section text changes, to orphan old cache entries.
INDEX_VERSION = "1"
#: Used when the checkpoint config does not say (MiniLM-sized defaults).
DEFAULT_MAX_QUERY_LENGTH = 128
DEFAULT_MAX_CODE_LENGTH = 256


def section_text(section: Section) -> str:
    """What the encoder and BM25 read for a section: the same text as the training rows
    (:meth:`~cetd_phase1.sections.Section.encoder_code`: no docstring, own or nested)."""
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
    from cetd_phase1.registry import RegistryError, registry_from

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


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CAMEL = re.compile(r"([a-z0-9])([A-Z])")


def bm25_text(text: str) -> str:
    """Text as BM25 reads it: identifiers split into words (``parseJSON``, ``load_file`` ->
    ``parse JSON``, ``load file``) so prose matches them, and each compound identifier also
    kept whole so a requirement naming it (``stop_after_delay``) matches it exactly."""
    compounds = [w for w in _IDENTIFIER.findall(text)
                 if "_" in w.strip("_") or _CAMEL.search(w)]
    return " ".join([_CAMEL.sub(r"\1 \2", text).replace("_", " "), *compounds])


def bm25_tokenize(texts: list[str], return_ids: bool = True):
    """``bm25s`` tokens of :func:`bm25_text` with English stop words removed and Snowball
    stemming (``retries``/``retry``); compared on validation data in README."""
    import bm25s

    return bm25s.tokenize([bm25_text(t) for t in texts], stopwords="en", stemmer=_stemmer(),
                          return_ids=return_ids, show_progress=False)


@functools.lru_cache(maxsize=1)  # building one loads the algorithm tables: once per process
def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


class BM25Scorer:
    """BM25 (``bm25s``) over a fixed list of texts, scoring every text for a query.

    ``tokenize`` is :func:`bm25_tokenize` unless a caller compares other ways of reading text
    (``bench/bm25_tokens.py``); it takes the texts and ``return_ids`` as ``bm25s.tokenize`` does.
    """

    def __init__(self, texts: list[str], tokenize=None) -> None:
        import bm25s

        self.tokenize = tokenize or bm25_tokenize
        self.n = len(texts)
        self.model = bm25s.BM25()
        self.model.index(self.tokenize(texts), show_progress=False)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every text, float32 [N]; all zero when no query word is indexed."""
        ids = self.model.get_tokens_ids(self.tokenize([query], return_ids=False)[0])
        if not ids:
            return np.zeros(self.n, dtype=np.float32)
        return self.model.get_scores_from_ids(ids).astype(np.float32)


def zscore(scores: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` over one query's scores; all zero when they are all equal."""
    x = np.asarray(scores, dtype=np.float64)
    sd = x.std()
    return (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)


def hybrid_fuse(dense: np.ndarray, bm25: np.ndarray, weight: float = HYBRID_WEIGHT) -> np.ndarray:
    """``weight * z(dense) + (1 - weight) * z(bm25)`` over one query's scores of one app.

    Z-scoring puts cosines and unbounded BM25 scores on one scale per query; unlike reciprocal
    rank fusion it keeps *how far* a section is ahead. Measured on validation data it beat RRF
    (k = 10, 30, 60) on both docstrings and feature-level requirements. A query with no word in
    the app's BM25 vocabulary ranks by the dense score alone.
    """
    check_share("hybrid weight", weight)
    return weight * zscore(dense) + (1.0 - weight) * zscore(bm25)


@dataclass
class AppIndex:
    """The encoded sections of one app."""

    name: str
    root: Path
    sections: list[Section]
    texts: list[str]
    #: model.Encoded of the M texts (section i's from row chunk_starts[i]): pooled embeddings
    #: and, ranked with late interaction, token vectors
    vectors: Encoded
    content_hash: str
    report: ExtractionReport
    chunk_starts: np.ndarray | None = None  # None: one row per section
    _bm25: BM25Scorer | None = field(default=None, repr=False)

    @property
    def embeddings(self) -> np.ndarray:
        """Pooled embeddings, float32 [M, D]."""
        return self.vectors.pooled

    @property
    def token_vectors(self) -> np.ndarray | None:
        """Every text's token vectors one after another, float16 [T, D] (late interaction)."""
        return self.vectors.tokens

    @property
    def token_offsets(self) -> np.ndarray | None:
        """Where text i's token vectors start (row i) and end (row i + 1), [M + 1]."""
        return self.vectors.offsets

    @property
    def bm25(self) -> BM25Scorer:
        """BM25 over the same texts, built on first use."""
        if self._bm25 is None:
            self._bm25 = BM25Scorer(self.texts)
        return self._bm25

    @functools.cached_property
    def classes(self) -> np.ndarray:
        """Which sections are classes, bool [N]."""
        return np.array([s.kind == "class" for s in self.sections], dtype=bool)


class Retriever:
    """A bi-encoder plus a per-app section index cache.

    ``retrieve`` ranks by the hybrid score (:func:`hybrid_fuse` of the model's and BM25's
    scores) unless ``hybrid=False``: on feature-level requirements the dense model alone ranks
    below BM25 (README, "Feature-level requirements").
    """

    def __init__(self, model, tokenizer, *, identity: str,
                 max_query_length: int = DEFAULT_MAX_QUERY_LENGTH,
                 max_code_length: int = DEFAULT_MAX_CODE_LENGTH, batch_size: int = 64,
                 cache_dir: str | Path | None = None, hybrid: bool = True,
                 hybrid_weight: float | None = None, show_progress: bool = False,
                 section_chunks: int | None = None,
                 late_interaction: float | None = None,
                 class_penalty: float | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.identity = identity
        self.max_query_length, self.max_code_length = max_query_length, max_code_length
        self.batch_size = batch_size
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir() / "index"
        self.hybrid = hybrid
        # None: what the checkpoint was chosen with (hybrid weight, late interaction share,
        # class penalty)
        self.hybrid_weight = check_share(
            "hybrid weight", model.config.hybrid_weight if hybrid_weight is None else hybrid_weight)
        self.late_interaction = check_share(
            "late_interaction",
            model.config.late_interaction if late_interaction is None else late_interaction)
        self.class_penalty = check_penalty(
            "class_penalty", model.config.class_penalty if class_penalty is None else class_penalty)
        self.show_progress = show_progress
        from cetd_phase1.model import check_section_chunks

        # texts per long function (model.section_texts); None: what the checkpoint was made with
        self.section_chunks = check_section_chunks(
            model.config.section_chunks if section_chunks is None else section_chunks)
        self._indexes: dict[str, tuple[str, AppIndex]] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "Retriever":
        """Open a trained checkpoint or a plain backbone folder (the untrained baseline).

        Keyword arguments go to :class:`Retriever` (``cache_dir``, ``hybrid``, ``batch_size``...).
        """
        from cetd_phase1.model import _local_folder, load_retriever, resolve_backbone

        name = str(path)
        path = Path(resolve_backbone(path))  # MiniLM aliases name the packaged copy
        if not path.exists() and name.count("/") == 1 and not name.startswith("."):
            path = _local_folder(name, None)  # a hub id: its cached (or downloaded) snapshot
        if not (path / "config.json").is_file():
            raise CETDError(f"{path}: not a model folder (no config.json)")
        model, tokenizer = load_retriever(path)
        try:
            import torch

            if torch.cuda.is_available():
                model = model.to("cuda")
        except ImportError:
            pass
        config = model.config
        kwargs.setdefault("max_query_length",
                          getattr(config, "max_req_length", None) or DEFAULT_MAX_QUERY_LENGTH)
        kwargs.setdefault("max_code_length",
                          getattr(config, "max_code_length", None) or DEFAULT_MAX_CODE_LENGTH)
        return cls(model, tokenizer, identity=checkpoint_identity(path), **kwargs)

    # -- encoding ----------------------------------------------------------------------------

    def _encode(self, texts: list[str], max_length: int, show_progress: bool) -> Encoded:
        from cetd_phase1 import model as model_lib

        return model_lib.encode_for_ranking(self.model, self.tokenizer, texts,
                                            max_length=max_length, batch_size=self.batch_size,
                                            show_progress=show_progress,
                                            tokens=bool(self.late_interaction))

    def encode_queries(self, requirements: list[str]) -> np.ndarray:
        """Requirement embeddings, float32 [Q, D]."""
        return self._encode(list(requirements), self.max_query_length, False).pooled

    # -- indexing ----------------------------------------------------------------------------

    def index(self, app: str | Path | App) -> AppIndex:
        """The section index of ``app``: from memory, else from disk, else encoded (and saved)."""
        from cetd_phase1 import model as model_lib

        name, root = resolve_app(app)
        key = str(Path(root).resolve())
        stamp = _stat_fingerprint(Path(root))
        cached = self._indexes.get(key)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        sections, report = extract_sections(Path(root), name)
        encoded, starts = model_lib.section_texts(
            [(s.file, s.qualname, s.kind, s.encoder_code()) for s in sections], self.tokenizer,
            self.max_code_length, self.section_chunks)
        # each section's first text is its section_text(), what BM25 reads
        texts = encoded if starts is None else [encoded[i] for i in starts]
        digest = hashlib.sha256(
            f"{self.max_code_length}\0".encode() + "\0".join(encoded).encode()).hexdigest()[:24]
        late = bool(self.late_interaction)
        path = self.cache_dir / self.identity / f"{digest}.{'npz' if late else 'npy'}"
        vectors = self._load_cached(path, len(encoded))
        if vectors is None:
            vectors = self._encode(encoded, self.max_code_length, self.show_progress)
            if late:
                atomic_write(path, lambda f: np.savez(f, pooled=vectors.pooled,
                                                      tokens=vectors.tokens,
                                                      offsets=vectors.offsets))
            else:
                atomic_write(path, lambda f: np.save(f, vectors.pooled))
        index = AppIndex(name=name, root=Path(root), sections=sections, texts=texts,
                         vectors=vectors, content_hash=digest, report=report,
                         chunk_starts=starts)
        self._indexes[key] = (stamp, index)
        return index

    @staticmethod
    def _load_cached(path: Path, rows: int) -> Encoded | None:
        """The cached :class:`~cetd_phase1.model.Encoded` of ``rows`` texts at ``path``, or
        ``None`` (absent, corrupt or of another shape: recomputed, never trusted)."""
        from cetd_phase1.model import Encoded

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

    def dense_scores(self, requirements: list[str], index: AppIndex) -> np.ndarray:
        """The model's scores [Q, N] of requirements against every section of ``index``: cosines,
        mixed with late interaction at ``late_interaction``."""
        if not index.sections:
            return np.zeros((len(requirements), 0), dtype=np.float32)
        queries = self._encode(list(requirements), self.max_query_length, False)
        return index.vectors.scores(queries, self.late_interaction, index.chunk_starts)

    def fuse(self, dense: np.ndarray, requirement: str, index: AppIndex) -> np.ndarray:
        """The served hybrid score of every section of ``index`` from the model's ``dense``
        scores for ``requirement``: :func:`hybrid_fuse` with BM25 at ``hybrid_weight``, less
        ``class_penalty`` for each class (its text is its methods' code: it matches what they
        match, and a feature-level requirement names the function that changed)."""
        fused = hybrid_fuse(dense, index.bm25.scores(requirement), self.hybrid_weight)
        return fused - self.class_penalty * index.classes if self.class_penalty else fused

    def retrieve(self, requirement: str, app: str | Path | App, k: int = 5,
                 hybrid: bool | None = None) -> list[dict]:
        """Top-``k`` sections of ``app`` for ``requirement``, best first.

        Each hit: ``score`` (the hybrid score, or cosine/dot with ``hybrid=False``),
        ``dense_score``, ``file``,
        ``qualname``, ``name`` (= qualname, the seed's key), ``kind``, ``line_start``,
        ``line_end``, ``code`` (the full source, docstring included).
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


# -- export to sentence-transformers --------------------------------------------------------------

_ST_POOLING = {"mean": "mean", "cls": "cls", "last_token": "lasttoken"}


def _append_eos_in_tokenizer(tokenizer) -> None:
    """Make a fast tokenizer append EOS itself, as our encoder does for decoder backbones, so
    sentence-transformers' last-token pooling reads the same token. Truncation then keeps room
    for it, matching :func:`cetd_phase1.model.tokenize`.

    The special tokens the tokenizer already adds are found by probing, and the post-processor
    becomes one template with EOS after them (a ``processors.Sequence`` of templates is not
    supported by ``tokenizers`` in batch mode).
    """
    from tokenizers import processors

    if not getattr(tokenizer, "is_fast", False):
        raise CETDError("exporting a decoder backbone needs a fast tokenizer (to append EOS)")
    with_special = tokenizer("a", padding=False, truncation=False)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False, padding=False)["input_ids"]
    at = next(i for i in range(len(with_special)) if with_special[i:i + len(plain)] == plain)
    prefix, suffix = with_special[:at], with_special[at + len(plain):]
    ids = prefix + ["$A"] + suffix + [tokenizer.eos_token_id]
    names = [i if i == "$A" else tokenizer.convert_ids_to_tokens(i) for i in ids]
    special = {(tokenizer.convert_ids_to_tokens(i), i) for i in ids if i != "$A"}
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join(names), special_tokens=sorted(special))


def _check_export_target(out_dir: Path) -> None:
    """The export replaces ``out_dir`` whole, so it may only be new, an empty folder or an earlier
    sentence-transformers folder (``modules.json``): anything else is the user's and is kept."""
    if not out_dir.exists() or (out_dir / "modules.json").is_file() or \
            (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    what = "a folder that is not a sentence-transformers export (no modules.json)" \
        if out_dir.is_dir() else "a file"
    raise CETDError(f"{out_dir}: exists and is {what}; the export replaces its target whole, "
                    "so choose a new or empty folder")


def export_sentence_transformers(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``model_dir`` (trained checkpoint or plain backbone) as a sentence-transformers folder.

    ``SentenceTransformer(out_dir)`` then gives the same embeddings as :class:`Retriever`
    (Transformer -> Pooling -> [Dense projection] -> [Normalize]); ``encode_query`` and
    ``encode_document`` use our requirement and code length limits. A LoRA adapter is merged
    into the backbone first; for decoder backbones the tokenizer appends EOS, as our encoder does.
    A model trained with ``split_identifiers`` expects its texts split at camelCase boundaries,
    which a sentence-transformers folder cannot do by itself: the caller passes them through
    :func:`~cetd_phase1.sections.split_camel_case` (a warning says so). Likewise a model with
    ``section_chunks`` > 1 ranks a long function by the best of several texts, which the caller
    builds with :func:`~cetd_phase1.model.section_texts` (a warning says so).
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (Dense, Normalize, Pooling,
                                                                    Transformer)

    from cetd_phase1.model import load_retriever

    out_dir = Path(out_dir)
    _check_export_target(out_dir)
    model, tokenizer = load_retriever(model_dir)
    config = model.config
    if config.split_identifiers:
        logger.warning("%s reads camelCase identifiers as words (split_identifiers): pass texts "
                       "through cetd_phase1.sections.split_camel_case before "
                       "SentenceTransformer.encode, or the embeddings differ", model_dir)
    if config.section_chunks > 1:
        logger.warning("%s ranks a long function by the best of up to %d texts (section_chunks):"
                       " build them with cetd_phase1.model.section_texts and keep each "
                       "section's best score", model_dir, config.section_chunks)
    if config.late_interaction:
        logger.warning("%s scores %g x cosine + %g x token-level MaxSim (late_interaction); the "
                       "sentence-transformers folder gives the pooled embeddings, the cosine "
                       "part only", model_dir, 1 - config.late_interaction,
                       config.late_interaction)
    backbone = model.backbone
    if getattr(config, "use_lora", False):
        backbone = backbone.merge_and_unload()
    with tempfile.TemporaryDirectory(prefix="cetd-export-") as tmp:
        backbone.save_pretrained(tmp)
        if config.append_eos:
            _append_eos_in_tokenizer(tokenizer)
        tokenizer.save_pretrained(tmp)
        transformer = Transformer(tmp, max_seq_length=config.max_code_length,
                                  query_length=config.max_req_length,
                                  document_length=config.max_code_length)
        hidden = backbone.config.hidden_size
        modules = [transformer, Pooling(hidden, pooling_mode=_ST_POOLING[config.pooling])]
        if model.head is not None:
            linear = model.head.dense
            modules.append(Dense(hidden, linear.out_features, bias=linear.bias is not None,
                                 activation_function=torch.nn.Identity(),
                                 init_weight=linear.weight.detach().clone(),
                                 init_bias=None if linear.bias is None
                                 else linear.bias.detach().clone()))
        if config.normalize:
            modules.append(Normalize())
        st = SentenceTransformer(modules=modules, device="cpu")
        with atomic_directory(out_dir) as staging:
            st.save(str(staging))
            # sentence-transformers' own card says "Base model: Unknown": write what it is
            from cetd_phase1.hub import CARD, model_card
            loading = (f"from sentence_transformers import SentenceTransformer\n"
                       f'model = SentenceTransformer("{out_dir}")\n'
                       f"queries = model.encode_query([...]); code = model.encode_document([...])")
            atomic_write_text(Path(staging) / CARD, model_card(
                config.to_dict(), out_dir.resolve().name, training_config=None, metrics={},
                loading=loading))
    return out_dir
