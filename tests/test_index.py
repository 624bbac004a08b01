"""The per-file section index: an edited app re-encodes only its changed files, two processes
may index one app at once, and a bad entry is recomputed."""

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tiny_models import make_tiny_encoder  # noqa: E402
from _vectors import as_float  # noqa: E402

from cetd_phase1.ranking import full_app  # noqa: E402
from cetd_phase1.retrieve import Retriever  # noqa: E402

FILES = {
    "a.py": "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n",
    "b.py": "def mul(a, b):\n    return a * b\n",
    "pkg/c.py": "class Box:\n    def get(self):\n        return self.item\n",
}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture
def app(tmp_path):
    root = tmp_path / "app"
    for rel, text in FILES.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture
def encoded(monkeypatch):
    """How many texts each encoding of sections encoded (queries are encoded one at a time)."""
    counts = []
    real = full_app.encode_for_ranking

    def counting(model, tokenizer, texts, **kwargs):
        if kwargs["max_length"] == model.config.max_code_length:
            counts.append(len(texts))
        return real(model, tokenizer, texts, **kwargs)

    monkeypatch.setattr(full_app, "encode_for_ranking", counting)
    return counts


def _same(index, other) -> None:
    assert [s.key for s in index.sections] == [s.key for s in other.sections]
    # encoded in other batches, stored as float16: equal up to its rounding
    np.testing.assert_allclose(index.embeddings, other.embeddings, atol=1e-3)


@pytest.mark.parametrize("late", [0.0, 0.5], ids=["cosine", "late-interaction"])
def test_edit_add_delete_encode_only_what_changed(tiny_model, app, tmp_path, encoded, late):
    r = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "cache", late_interaction=late)
    assert len(r.index(app).sections) == 5 and encoded == [5]
    (app / "b.py").write_text("def mul(a, b):\n    return b * a\n\n\ndef neg(a):\n    return -a\n")
    edited = r.index(app)
    assert encoded == [5, 2]  # b.py alone, its two sections now
    assert [s.qualname for s in edited.sections] == ["add", "sub", "mul", "neg", "Box",
                                                      "Box.get"]
    (app / "d.py").write_text("def div(a, b):\n    return a / b\n")
    assert "div" in {s.qualname for s in r.index(app).sections} and encoded == [5, 2, 1]
    (app / "a.py").unlink()
    removed = r.index(app)
    assert encoded == [5, 2, 1]  # a deleted file costs no encoding
    assert {s.file for s in removed.sections} == {"b.py", "pkg/c.py", "d.py"}
    encoded.clear()
    scratch = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "scratch",
                                        late_interaction=late).index(app)
    _same(removed, scratch)  # as if built from scratch
    if late:
        ours, theirs = removed.vectors.encoded, scratch.vectors.encoded
        np.testing.assert_array_equal(ours.offsets, theirs.offsets)
        # encoded in other batches, a value on a 2-bit code's edge may round the other way
        close = np.isclose(as_float(ours.tokens), as_float(theirs.tokens),
                           atol=1e-2)
        assert close.mean() > 0.995
    encoded.clear()
    again = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "cache",
                                      late_interaction=late).index(app)
    assert encoded == []  # a new process on the unchanged app encodes nothing
    _same(again, removed)


def test_a_moved_file_is_a_new_entry_and_a_touched_one_is_not(tiny_model, app, tmp_path,
                                                              encoded):
    r = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "cache")
    r.index(app)
    os.utime(app / "a.py", ns=(1, 1))  # same text, new mtime: read again, not encoded
    r.index(app)
    assert encoded == [5]
    (app / "a.py").rename(app / "e.py")  # the path is part of every section's text
    assert {s.file for s in r.index(app).sections} == {"e.py", "b.py", "pkg/c.py"}
    assert encoded == [5, 2]


def test_an_unchanged_app_is_checked_by_stat_alone_and_a_same_tick_edit_is_not_missed(
        tiny_model, app, tmp_path, encoded, monkeypatch):
    """A warm app is checked without listing a folder again: a new file shows in its folder's
    mtime, an edit in its file's. A file changed within a clock tick of the walk may keep its
    size and mtime, so it is read again until its mtime is older than the walk by a margin."""
    from cetd_phase1.data import sections as sections_lib

    old = 1_600_000_000
    for path in [*app.rglob("*"), app]:
        os.utime(path, (old, old))
    r = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "cache")
    first = r.index(app)
    walks = []
    real_walk = sections_lib.os.walk
    monkeypatch.setattr(sections_lib.os, "walk", lambda *a, **k: walks.append(1) or real_walk(
        *a, **k))
    assert r.index(app) is first and walks == []  # stats only
    (app / "pkg" / "d.py").write_text("def div(a, b):\n    return a / b\n")
    for path in (app / "pkg" / "d.py", app / "pkg"):  # long ago, yet not as first seen
        os.utime(path, (old + 10, old + 10))
    assert "div" in {s.qualname for s in r.index(app).sections} and walks == [1]
    b = app / "b.py"
    stat = b.stat()
    b.write_text(FILES["b.py"].replace("mul", "mux"))  # same size, and the same mtime:
    os.utime(b, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as one clock tick could leave it
    assert "mux" not in {s.qualname for s in r.index(app).sections}  # an old mtime is trusted
    recent = time.time_ns()
    b.write_text(FILES["b.py"])
    os.utime(b, ns=(recent, recent))
    assert "mul" in {s.qualname for s in r.index(app).sections}
    walked = len(walks)
    r.index(app)
    assert len(walks) == walked  # the recent file is read again, the folders not walked
    b.write_text(FILES["b.py"].replace("mul", "mux"))
    os.utime(b, ns=(recent, recent))  # changed in the same tick as the last read
    assert "mux" in {s.qualname for s in r.index(app).sections}


def test_a_large_app_is_encoded_a_few_files_at_a_time(tiny_model, app, tmp_path, encoded,
                                                       monkeypatch):
    """Entries are built a bounded chunk of texts at a time (a large app's float token vectors
    never all in memory at once), each file's vectors the same as built in one go."""
    from cetd_phase1 import index as index_lib

    whole = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "whole",
                                      late_interaction=0.5).index(app)
    assert encoded == [5]
    monkeypatch.setattr(index_lib, "_CHUNK_TEXTS", 2)
    chunked = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "chunked",
                                        late_interaction=0.5).index(app)
    assert encoded == [5, 2, 3]  # a.py's 2 texts, then b.py's 1 with pkg/c.py's 2
    _same(chunked, whole)
    np.testing.assert_array_equal(chunked.vectors.encoded.offsets, whole.vectors.encoded.offsets)


def test_a_file_that_does_not_parse_is_reported_from_the_cache_too(tiny_model, app, tmp_path):
    (app / "broken.py").write_text("def broken(:\n")
    for _ in range(2):  # built, then read from the cache by a new process
        index = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "cache").index(app)
        assert [rel for rel, _ in index.report.skipped] == ["broken.py"]
        assert "syntax_error" in index.report.skipped[0][1]
        assert index.report.files_parsed == 3 and len(index.sections) == 5


@pytest.mark.parametrize("damage", ["garbage", "truncated", "another file's entry"])
def test_a_bad_entry_is_recomputed_never_trusted(tiny_model, app, tmp_path, encoded, damage):
    cache = tmp_path / "cache"
    first = Retriever.from_pretrained(tiny_model, cache_dir=cache).index(app)
    entries = {p.stat().st_size: p for p in cache.rglob("*.npz")}
    assert len(entries) == 3
    victim = next(p for p in cache.rglob("*.npz"))
    if damage == "garbage":
        victim.write_bytes(b"not an npz")
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:200])
    else:
        victim.write_bytes(next(p for p in cache.rglob("*.npz") if p != victim).read_bytes())
    encoded.clear()
    again = Retriever.from_pretrained(tiny_model, cache_dir=cache).index(app)
    assert len(encoded) == 1 and encoded[0] in (1, 2)  # that file alone
    _same(again, first)
    encoded.clear()
    Retriever.from_pretrained(tiny_model, cache_dir=cache).index(app)
    assert encoded == []  # rewritten whole


INDEXER = """
import sys
import numpy as np
from cetd_phase1.retrieve import Retriever
index = Retriever.from_pretrained(sys.argv[1], cache_dir=sys.argv[2]).index(sys.argv[3])
np.save(sys.argv[4], index.embeddings)
"""


def test_two_processes_index_one_app_at_once(tiny_model, app, tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", INDEXER, str(tiny_model), str(cache),
                               str(app), str(tmp_path / f"out{i}.npy")], env=env,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    outs = [np.load(tmp_path / f"out{i}.npy") for i in range(2)]
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-6)
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]  # no torn files
    index = Retriever.from_pretrained(tiny_model, cache_dir=cache).index(app)
    np.testing.assert_allclose(index.embeddings, outs[0], atol=1e-6)


@pytest.mark.parametrize("codec", ["default", "float16"])
def test_compact_entries_read_back_as_they_ranked_when_built(tiny_model, app, tmp_path,
                                                            monkeypatch, encoded, codec):
    """The default 2-bit codes and float16 token vectors beside float16 pooled ones: the
    process that builds an entry ranks with exactly what a later process reads back."""
    from cetd_phase1 import index as index_lib
    from cetd_phase1.ranking.compress import TokenCodec

    if codec != "default":
        monkeypatch.setattr(index_lib, "DEFAULT_CODEC", TokenCodec(bits=16, pooled_f16=True))
    cache = tmp_path / "cache"
    built = Retriever.from_pretrained(tiny_model, cache_dir=cache, late_interaction=0.5)
    first = built.index(app).vectors.encoded
    read = Retriever.from_pretrained(tiny_model, cache_dir=cache, late_interaction=0.5)
    again = read.index(app).vectors.encoded
    assert encoded == [5]  # the second process encoded nothing
    np.testing.assert_array_equal(first.pooled, again.pooled)
    np.testing.assert_array_equal(as_float(first.tokens), as_float(again.tokens))
    np.testing.assert_array_equal(first.offsets, again.offsets)
    query = "multiply two numbers"
    np.testing.assert_array_equal(built.dense_scores([query], built.index(app)),
                                  read.dense_scores([query], read.index(app)))


def test_the_default_two_bit_index_scores_queries_in_its_rotated_space(tiny_model, app,
                                                                      tmp_path):
    """The index keeps token vectors rotated at 2 bits and turns each query to match: its MaxSim
    scores are those of the decoded vectors turned back against the query as encoded (a query
    left unturned would score against noise)."""
    from dataclasses import replace

    from cetd_phase1 import index as index_lib
    from cetd_phase1.ranking.compress import rotation
    from cetd_phase1.ranking.full_app import SectionVectors

    assert index_lib.DEFAULT_CODEC.bits == 2
    r = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "cache", late_interaction=1.0)
    index = r.index(app)
    query = ["multiply two numbers", "read the configuration file"]
    stored = index.vectors.encoded
    vectors = as_float(stored.tokens)
    turned_back = replace(stored, tokens=vectors @ rotation(vectors.shape[1]).T, _matrix=None)
    exact = r.ranker.scores(r.ranker.encode_requirements(query),
                            SectionVectors(turned_back, index.vectors.starts))
    np.testing.assert_allclose(r.dense_scores(query, index), exact, atol=1e-2)
