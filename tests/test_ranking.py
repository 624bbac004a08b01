"""The ranking settings saved beside a checkpoint (one place for their defaults and checks), and
what they do to the scores."""

import json

import numpy as np
import pytest
import torch
from _vectors import as_float

from cetd_phase1.errors import CETDError
from cetd_phase1.ranking.config import RANKING_CONFIG, RankingConfig


def test_saved_settings_round_trip_and_a_plain_folder_has_the_defaults(tmp_path):
    settings = RankingConfig(section_chunks=8, late_interaction=0.75, hybrid_weight=0.8,
                             class_penalty=0.3)
    settings.save(tmp_path)
    assert json.loads((tmp_path / RANKING_CONFIG).read_text())["late_interaction"] == 0.75
    assert RankingConfig.load(tmp_path) == settings
    assert RankingConfig.load(tmp_path / "backbone") == RankingConfig()
    assert settings.override(class_penalty=0.0, late_interaction=None) == RankingConfig(
        section_chunks=8, late_interaction=0.75, hybrid_weight=0.8, class_penalty=0.0)


def test_a_checkpoint_from_before_the_settings_file_ranks_as_its_config_says(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "cetd_retriever", "pooling": "mean", "section_chunks": 4,
        "late_interaction": 0.5, "hybrid_weight": 0.8, "class_penalty": 0.3}))
    assert RankingConfig.load(tmp_path) == RankingConfig(4, 0.5, 0.8, 0.3)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert",
                                                      "section_chunks": 4}))
    assert RankingConfig.load(tmp_path) == RankingConfig()  # another model's keys are not ours


@pytest.mark.parametrize("values, message", [
    ({"section_chunks": 0}, "section_chunks must be an integer >= 1"),
    ({"section_chunks": 2.5}, "section_chunks must be an integer >= 1"),
    ({"late_interaction": 1.5}, r"late_interaction must be in \[0, 1\]"),
    ({"hybrid_weight": float("nan")}, r"hybrid_weight must be in \[0, 1\]"),
    ({"class_penalty": float("inf")}, "class_penalty must be a number >= 0"),
])
def test_out_of_range_settings_are_refused_wherever_they_come_from(tmp_path, values, message):
    with pytest.raises(CETDError, match=message):
        RankingConfig(**values)
    with pytest.raises(CETDError, match=message):
        RankingConfig().override(**values)
    (tmp_path / RANKING_CONFIG).write_text(json.dumps(values))
    with pytest.raises(CETDError, match=f"{RANKING_CONFIG}: {message}"):
        RankingConfig.load(tmp_path)


def test_a_bad_settings_file_names_itself_and_the_key(tmp_path):
    (tmp_path / RANKING_CONFIG).write_text('{"late_interation": 0.5}')
    with pytest.raises(CETDError, match="unknown ranking settings .*late_interation"):
        RankingConfig.load(tmp_path)
    (tmp_path / RANKING_CONFIG).write_text("{not json")
    with pytest.raises(CETDError, match="unreadable ranking settings"):
        RankingConfig.load(tmp_path)


def _unit(rng, n, d=8):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_shortlist_runs_maxsim_on_the_best_pooled_sections_and_a_sample_only(monkeypatch):
    """MaxSim reads the shortlist, within its token budget, and a sample of the others, spread
    over their pooled scores; every other section's MaxSim lies on the line fitted to the
    sample."""
    from cetd_phase1.ranking import encode
    from cetd_phase1.ranking.encode import SHORTLIST_SAMPLE, Encoded, reads_shortlist

    rng = np.random.default_rng(0)
    n = 60
    sizes = rng.integers(1, 6, size=n)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    texts = Encoded(_unit(rng, n), _unit(rng, int(offsets[-1])).astype(np.float16), offsets)
    query = Encoded(_unit(rng, 1), _unit(rng, 3).astype(np.float16), np.array([0, 3]))
    exhaustive = texts.scores(query, 0.5)[0]
    assert not reads_shortlist(n, n - SHORTLIST_SAMPLE)  # too few left out: every section
    assert np.array_equal(texts.scores(query, 0.5, shortlist=n - SHORTLIST_SAMPLE)[0],
                          exhaustive)
    short = texts.scores(query, 0.5, shortlist=4)[0]
    cosine = texts._pooled_scores(query.pooled)[0]  # as the ranking computes them
    read = np.isclose(short, exhaustive, atol=1e-6)
    assert read[np.argsort(-cosine)[:4]].all()  # exact where read: the shortlist
    assert read.sum() >= 4 + SHORTLIST_SAMPLE - 1  # and the sample (one may tie)
    estimated = ~read
    slope, intercept = np.polyfit(cosine[estimated], short[estimated], 1)
    np.testing.assert_allclose(short[estimated], intercept + slope * cosine[estimated],
                               atol=1e-5)  # on one line of the pooled score
    monkeypatch.setattr(encode, "SHORTLIST_TOKENS", 1)  # a budget of long sections:
    monkeypatch.setattr(encode, "SHORTLIST_MIN", 2)  # the best 2 only
    budget = texts.scores(query, 0.5, shortlist=4)[0]
    read = np.isclose(budget, exhaustive, atol=1e-6)
    order = np.argsort(-cosine)
    assert read[order[:2]].all() and not read[order[2:4]].all()
    with pytest.raises(CETDError, match="shortlist must be an integer >= 0"):
        RankingConfig(shortlist=-1)


def test_coded_token_vectors_are_decoded_for_the_shortlist_a_first_stage_picks() -> None:
    """2-bit token vectors kept coded in parts (one a file) score as the same vectors decoded
    whole, exhaustively and on a shortlist, and the shortlist is the best by the first stage
    when one is given (the served ranking's pooled cosine + BM25), not by the pooled cosine."""
    from cetd_phase1.ranking.compress import TokenCodec, join_packed
    from cetd_phase1.ranking.encode import Encoded

    rng = np.random.default_rng(1)
    n = 40
    sizes = rng.integers(1, 6, size=n)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    codec = TokenCodec(bits=2)
    tokens = _unit(rng, int(offsets[-1]), 64).astype(np.float16)
    cut = int(offsets[5])  # a file boundary inside the app
    packed = join_packed([codec.unpack(codec.pack(tokens[:cut])),
                          codec.unpack(codec.pack(tokens[cut:]))])
    assert len(packed.parts) == 2 and len(packed) == len(tokens)
    pooled = _unit(rng, n, 64)
    coded = Encoded(pooled, packed, offsets)
    plain = Encoded(pooled, as_float(packed).astype(np.float16), offsets)
    query = Encoded(_unit(rng, 1, 64), codec.index_space(_unit(rng, 3, 64)).astype(np.float16),
                    np.array([0, 3]))
    np.testing.assert_allclose(coded.scores(query, 0.5), plain.scores(query, 0.5), atol=2e-2)
    lexical = np.zeros(n)
    lexical[np.argsort(query.pooled @ pooled.T)[0][:4]] = 10.0  # the 4 worst by cosine
    short = coded.scores(query, 0.5, shortlist=4, first_stage=lambda p: p + lexical)[0]
    exact = plain.scores(query, 0.5)[0]
    np.testing.assert_allclose(short[lexical > 0], exact[lexical > 0], atol=2e-2)
    assert (~np.isclose(short, exact, atol=2e-2)).sum() > 0  # the rest: estimated


def test_pooled_scores_of_unit_vectors_come_from_float16_within_its_rounding() -> None:
    from cetd_phase1.ranking.encode import Encoded

    rng = np.random.default_rng(3)
    texts, queries = Encoded(_unit(rng, 500, 384)), _unit(rng, 3, 384)
    exact = queries @ texts.pooled.T
    scores = texts._pooled_scores(queries)
    assert scores.dtype == np.float32 and not np.array_equal(scores, exact)  # the half product
    np.testing.assert_allclose(scores, exact, atol=5e-4)
    large = Encoded(texts.pooled * 300)  # not unit vectors: float16 products could overflow
    np.testing.assert_allclose(large._pooled_scores(queries), exact * 300, atol=1e-4)
    texts.pooled = texts.pooled[:10]  # a replaced array is read, not the old copy
    assert texts._pooled_scores(queries).shape == (3, 10)


@pytest.mark.parametrize("width", [12, 64])  # 3 code bytes a vector (odd), 16 (even)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decoding_reads_each_code_byte_first_code_lowest(width, dtype) -> None:
    from cetd_phase1.ranking.compress import _LEVELS, PackedTokens

    rng = np.random.default_rng(5)
    parts = [(rng.integers(0, 256, (n, width // 4), dtype=np.uint8),
              rng.random(n).astype(np.float16)) for n in (3, 5)]
    packed = PackedTokens(parts)
    starts, ends = np.array([4, 1]), np.array([8, 5])  # the second span crosses the parts
    levels, scales = packed.decode(starts, ends, dtype)
    codes = np.concatenate([c for c, _ in parts])[np.r_[4:8, 1:5]]
    expected = _LEVELS[(codes[:, :, None] >> (np.arange(4, dtype=np.uint8) * 2)) & 3]
    np.testing.assert_allclose(levels.float().numpy(), expected.reshape(8, width), rtol=4e-3)
    np.testing.assert_array_equal(scales, np.concatenate([s for _, s in parts])[np.r_[4:8, 1:5]])


def test_rotated_codes_spread_an_outlier_dimension_and_decode_close_to_the_vector() -> None:
    from cetd_phase1.ranking.compress import TokenCodec, quantize_rotated, rotation

    rot = rotation(384)
    np.testing.assert_allclose(rot @ rot.T, np.eye(384), atol=1e-5)
    assert np.array_equal(rot, rotation.__wrapped__(384))  # seed-fixed: every build the same
    rng = np.random.default_rng(2)
    tokens = rng.standard_normal((40, 384)).astype(np.float32)
    tokens[:, 7] += 12.0  # one dimension holds most of the energy, as in real activations
    tokens = (tokens / np.linalg.norm(tokens, axis=1, keepdims=True)).astype(np.float16)
    codec = TokenCodec(bits=2, pooled_f16=True)
    arrays = codec.pack(tokens)
    assert arrays["token_bits"].shape == (40, 96)  # 4 values a byte
    back = as_float(codec.unpack(arrays))  # rotated: queries are rotated to match
    cosine = (back * (tokens @ rot)).sum(1) / np.linalg.norm(back, axis=1)
    assert cosine.min() > 0.9
    query = tokens[:3].astype(np.float32)
    np.testing.assert_allclose(codec.index_space(query) @ back.T, query @ tokens.T.astype(
        np.float32), atol=0.15)
    assert codec.name == "q2-p16"
    for dropped in (4, 8):  # measured and dropped (docs/experiments.md)
        with pytest.raises(ValueError, match="bits must be"):
            TokenCodec(bits=dropped)
    for empty in ((0, 0), (0, 384)):  # a file without sections is stored as an empty entry
        back = codec.unpack(codec.pack(np.zeros(empty, np.float16)))
        assert (len(back), back.width) == empty
    with pytest.raises(ValueError, match="divisible by"):
        quantize_rotated(tokens[:, :15])
