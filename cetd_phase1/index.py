"""The section index of an application, kept per source file under a hash of that file's text
and the checkpoint, so re-indexing an edited app encodes only its new or changed files.

One entry per source file: ``<cache>/index/<checkpoint id>/<key[:2]>/<key>.npz``, ``key`` the
hash of the index version, the checkpoint id, how the encoder reads the file (code length,
texts per long function, token vectors or not), its path in the app and its text. An entry
holds the file's sections and their vectors. Entries are written atomically (two processes
indexing one app at once never see a torn one); an entry that does not load, or does not fit
its file, is recomputed and rewritten, never trusted. A removed file's entry is simply no
longer read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cetd_phase1.atomic import atomic_write
from cetd_phase1.data.sections import (DEFAULT_MAX_FILE_BYTES, ExtractionReport, Section,
                                       iter_python_files, parse_sections, read_source)
from cetd_phase1.ranking.compress import PackedTokens, TokenCodec

if TYPE_CHECKING:  # the encoder imports torch; a warm index is read without it
    from cetd_phase1.ranking.encode import Encoded
    from cetd_phase1.ranking.full_app import FullAppRanker, SectionVectors

#: Bumped when the entry layout or the section text changes, to orphan old entries.
INDEX_VERSION = "3"
#: How entries store vectors: every token vector at 2 bits a value after a seed-fixed rotation
#: (Lloyd-Max codes, one scale a vector), pooled vectors as float16. On the validation apps
#: (bench/token_compression.py, docs/results.md) that took 17.5 KB a section instead of 64 KB
#: as int8 and ranked within 0.005 MRR of it, served and model alone; pooling token vectors by 4
#: reached the same size but cost the model alone 0.014 / 0.008 MRR (feature requests / stdlib).
DEFAULT_CODEC = TokenCodec(bits=2, pooled_f16=True)
#: How close to a walk a file or folder may have changed and still be trusted unchanged by
#: its mtime: file-system clocks tick every few ms (some network file systems every second).
RACY_NS = 1_000_000_000
#: Texts encoded together when building entries: ~16 batches, a few hundred MB of float token
#: vectors before they are coded.
_CHUNK_TEXTS = 1024


@dataclass
class FileEntry:
    """One source file as the index holds it: its sections (none when it does not parse,
    ``skip`` saying why), the vectors of their texts and the row of each section's first text."""

    key: str
    sections: list[Section]
    vectors: Encoded | None  # None when the file has no section
    starts: np.ndarray  # [len(sections)], rows into vectors
    skip: str = ""
    #: what BM25 reads of each section, once tokenized (in memory only)
    bm25_tokens: list[list[str]] | None = field(default=None, repr=False)


@dataclass
class _Seen:
    """What the last index of an app read from one file: its path, stat, text digest and
    entry."""

    path: str
    size: int
    mtime_ns: int
    entry: FileEntry | None  # None: read_source refused the file (the reason is in ``skip``)
    skip: str = ""
    digest: str = ""  # of the text read; "" when read_source refused it

    def same_text(self, rel: str) -> bool:
        """Whether the file still holds the text read (read again to know)."""
        text = read_source(Path(self.path), rel, ExtractionReport(app=""))
        return bool(self.digest) and text is not None and _digest(text) == self.digest


@dataclass
class FileIndex:
    """An app's files, each read, parsed and encoded once per content."""

    entries: list[FileEntry]
    report: ExtractionReport
    seen: dict[str, _Seen] = field(default_factory=dict, repr=False)
    #: the mtime of every folder the walk read, and when the walk began (time.time_ns)
    folders: dict[str, int] = field(default_factory=dict, repr=False)
    walked_ns: int = 0

    def unchanged(self) -> bool:
        """True when no source file was added, removed or changed since this index was read:
        every folder has its mtime (adding, removing or renaming a file in a folder changes
        it) and every file its size and mtime; a folder changed within :data:`RACY_NS` of the
        walk counts as changed, and a file changed that close is read again (a change in the
        same clock tick as the read could leave the mtime as it was). No folder is listed
        again."""
        recent = self.walked_ns - RACY_NS
        try:
            for folder, mtime in self.folders.items():
                if mtime >= recent or os.stat(folder).st_mtime_ns != mtime:
                    return False
            for rel, old in self.seen.items():
                st = os.stat(old.path)
                if (old.size, old.mtime_ns) != (st.st_size, st.st_mtime_ns) \
                        or (old.mtime_ns >= recent and not old.same_text(rel)):
                    return False
        except OSError:
            return False
        return True

    @property
    def sections(self) -> list[Section]:
        return [s for e in self.entries for s in e.sections]


class IndexStore:
    """Reads and writes the per-file entries of one checkpoint, encoding what is missing."""

    def __init__(self, folder: Path, ranker: FullAppRanker, show_progress: bool = False,
                 codec: TokenCodec | None = None) -> None:
        self.folder, self.ranker, self.show_progress = folder, ranker, show_progress
        self.codec = codec if codec is not None else DEFAULT_CODEC
        r = ranker.ranking
        late = self.codec.name if r.late_interaction else "pooled"
        self._salt = (f"{INDEX_VERSION}\0{folder.name}\0{ranker.max_code_length}\0"
                      f"{r.section_chunks}\0{late}\0").encode()

    def key(self, rel: str, text: str) -> str:
        return hashlib.sha256(self._salt + rel.encode() + b"\0" + text.encode()).hexdigest()[:32]

    def entry_path(self, key: str) -> Path:
        """Where the entry ``key`` is (or would be) on disk."""
        return self.folder / key[:2] / f"{key}.npz"

    def index(self, root: Path, name: str, previous: dict[str, _Seen] | None = None,
              max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> FileIndex:
        """The entries of every file of the app at ``root``; a file whose size and mtime are
        those ``previous`` saw is not read again."""
        previous = previous or {}
        report = ExtractionReport(app=name)
        slots: list[tuple[str, FileEntry | None]] = []  # (rel, entry or None: to build)
        pending: dict[str, tuple[str, str]] = {}  # rel -> (key, text) of files to build
        seen: dict[str, _Seen] = {}
        folders: dict[str, int] = {}
        walked_ns = time.time_ns()
        for path, rel in iter_python_files(root, report, folders):
            try:
                st = path.stat()
            except OSError as err:
                report.skip(rel, f"unreadable: {err.strerror or err}")
                continue
            old = previous.get(rel)
            if old is not None and old.path == str(path) \
                    and (old.size, old.mtime_ns) == (st.st_size, st.st_mtime_ns) \
                    and old.mtime_ns < walked_ns - RACY_NS:
                seen[rel] = old
                if old.entry is None:
                    report.skip(rel, old.skip)
                else:
                    slots.append((rel, old.entry))
                continue
            text = read_source(path, rel, report, max_file_bytes)
            if text is None:  # read_source recorded why in the report
                seen[rel] = _Seen(str(path), st.st_size, st.st_mtime_ns, None,
                                  report.skipped[-1][1])
                continue
            key = self.key(rel, text)
            entry = old.entry if old is not None and old.entry is not None \
                and old.entry.key == key else self._load(key, rel)
            if entry is None:
                pending[rel] = (key, text)
            slots.append((rel, entry))
            seen[rel] = _Seen(str(path), st.st_size, st.st_mtime_ns, entry, digest=_digest(text))
        built = self._build(pending) if pending else {}
        entries = []
        for rel, entry in slots:
            entry = entry if entry is not None else built[rel]
            seen[rel].entry = entry
            if entry.skip:
                report.skip(rel, entry.skip)
                continue
            report.files_parsed += 1
            entries.append(entry)
        report.sections = sum(len(e.sections) for e in entries)
        return FileIndex(entries, report, seen=seen, folders=folders, walked_ns=walked_ns)

    # -- one entry -------------------------------------------------------------------------

    def _load(self, key: str, rel: str) -> FileEntry | None:
        """The entry at ``key``, or ``None`` when absent, unreadable or not this file's."""
        from cetd_phase1.ranking.encode import Encoded

        path = self.entry_path(key)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(zlib.decompress(z["meta"].tobytes()).decode("utf-8"))
                starts = z["starts"].astype(np.int64)
                late = "offsets" in z
                vectors = Encoded(z["pooled"].astype(np.float32),
                                  self.codec.unpack(z) if late else None,
                                  z["offsets"] if late else None)
            sections = [Section(**{**s, "docstrings": tuple(map(tuple, s["docstrings"]))})
                        for s in meta["sections"]]
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile,
                zlib.error):
            return None
        rows = len(vectors)
        late = bool(self.ranker.ranking.late_interaction)
        ok = (meta.get("file") == rel and len(starts) == len(sections)
              and vectors.pooled.ndim == 2 and (not sections or rows >= len(sections))
              and (not len(starts) or (starts[0] == 0 and np.all(np.diff(starts) > 0)
                                       and starts[-1] < rows))
              and all(s.file == rel for s in sections)
              and (vectors.tokens is not None) == late)
        if ok and late:
            ok = (vectors.offsets.shape == (rows + 1,) and _well_formed(vectors.tokens)
                  and int(vectors.offsets[-1]) == len(vectors.tokens))
        if not ok:
            return None
        return FileEntry(key, sections, vectors if sections else None, starts,
                         meta.get("skip", ""))

    def _save(self, entry: FileEntry, rel: str, tokens: dict[str, np.ndarray] | None) -> None:
        """Write ``entry`` with ``tokens``, its token vectors as :meth:`TokenCodec.pack` stored
        them (packing the decoded vectors again would not give them back: a rotating codec
        decodes into its rotated space)."""
        meta = json.dumps({"file": rel, "skip": entry.skip,
                           "sections": [s.to_dict() for s in entry.sections]})
        # the sections' source is most of it and compresses ~4x; vectors barely do
        packed = np.frombuffer(zlib.compress(meta.encode("utf-8"), 6), dtype=np.uint8)
        arrays = {"meta": packed, "starts": entry.starts}
        if entry.vectors is not None:
            arrays["pooled"] = self.codec.pack_pooled(entry.vectors.pooled)
            if entry.vectors.tokens is not None:
                arrays.update(tokens, offsets=entry.vectors.offsets)
        else:
            arrays["pooled"] = np.zeros((0, 0), np.float32)
            if self.ranker.ranking.late_interaction:
                arrays.update(self.codec.pack(np.zeros((0, 0), np.float16)),
                              offsets=np.zeros(1, np.int64))
        atomic_write(self.entry_path(entry.key), lambda f: np.savez(f, **arrays))

    def _build(self, pending: dict[str, tuple[str, str]]) -> dict[str, FileEntry]:
        """Parse the ``pending`` files and encode their texts a few files' worth at a time
        (length-sorted batches across files pad less than file by file; a bounded chunk keeps
        a large app's float token vectors from filling memory before they are coded), saving
        an entry per file."""
        from tqdm.auto import tqdm

        parsed: dict[str, tuple[list[Section], str, list[str], np.ndarray]] = {}
        # these bars run inside evaluate's per-app bar: on a terminal only (None), since
        # nested bars drawn into a log file leave a cursor-up escape on every line
        shown = None if self.show_progress else True
        for rel, (_, text) in tqdm(pending.items(), desc="parsing", unit="file",
                                   disable=True if len(pending) < 100 else shown):
            sections, problem = parse_sections(text, rel)
            file_texts, starts = self.ranker.texts(
                [(s.file, s.qualname, s.kind, s.encoder_code()) for s in sections])
            parsed[rel] = (sections, problem or "", file_texts,
                           np.arange(len(sections), dtype=np.int64) if starts is None else starts)
        out: dict[str, FileEntry] = {}
        chunk: list[str] = []
        size = 0  # texts in the chunk
        with tqdm(total=sum(len(p[2]) for p in parsed.values()), desc="encoding", unit="text",
                  disable=shown) as bar:
            for n, rel in enumerate(pending):
                chunk.append(rel)
                size += len(parsed[rel][2])
                if n + 1 < len(pending) and size < _CHUNK_TEXTS:
                    continue
                texts = [t for r in chunk for t in parsed[r][2]]
                encoded = self.ranker.encode_texts(texts).encoded
                first = 0
                for r in chunk:
                    sections, skip, file_texts, starts = parsed[r]
                    rows = np.arange(first, first + len(file_texts))
                    first += len(file_texts)
                    out[r] = self._entry(pending[r][0], r, sections, skip, starts,
                                         encoded.take(rows) if sections else None)
                bar.update(len(texts))
                chunk, size = [], 0
        return out

    def _entry(self, key: str, rel: str, sections: list[Section], skip: str, starts: np.ndarray,
               vectors: Encoded | None) -> FileEntry:
        """The entry of one built file, saved; its vectors held as a later process reads them
        back (one ranking whichever process built the entry)."""
        packed = None
        if vectors is not None:
            vectors.pooled = self.codec.pack_pooled(vectors.pooled).astype(np.float32)
            if vectors.tokens is not None:
                packed = self.codec.pack(vectors.tokens)
                vectors.tokens = self.codec.unpack(packed)
        entry = FileEntry(key, sections, vectors, starts, skip)
        self._save(entry, rel, packed)
        return entry


def assemble(entries: list[FileEntry]) -> SectionVectors:
    """One app's vectors from its files' entries, in file order."""
    from cetd_phase1.ranking.encode import concat_encoded
    from cetd_phase1.ranking.full_app import SectionVectors

    parts = [e for e in entries if e.vectors is not None]
    starts, row = [], 0
    for e in parts:
        starts.append(e.starts + row)
        row += len(e.vectors)
    n_sections = sum(len(e.starts) for e in parts)
    encoded = concat_encoded([e.vectors for e in parts])
    flat = np.concatenate(starts) if starts else np.zeros(0, np.int64)
    return SectionVectors(encoded, None if row == n_sections else flat)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _well_formed(tokens) -> bool:
    """Whether an entry's token vectors have the shape of one: [T, D] float16, or 2-bit codes
    [T, D / 4] with one scale a vector."""
    if isinstance(tokens, PackedTokens):
        return all(codes.ndim == 2 and scales.shape == (len(codes),) and codes.dtype == np.uint8
                   for codes, scales in tokens.parts)
    return tokens.ndim == 2
