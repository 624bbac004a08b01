"""Ranking metrics on hand-computed cases (ties, several positives, skipped queries) and the
``evaluate`` module loaded from the package without network."""

import math
import os

import numpy as np
import pytest

from cetd_phase1.evaluation.metrics import (compute_ranking_metrics, metric_module_path,
                                            positive_ranks, query_metrics)

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_perfect_single_positive():
    m = query_metrics(np.array([0.9, 0.1, 0.3]), np.array([1, 0, 0]))
    assert m == {"accuracy": 1.0, "map": 1.0, "mrr": 1.0, "recall@1": 1.0, "recall@5": 1.0,
                 "recall@10": 1.0, "ndcg@10": 1.0}


def test_single_positive_at_rank_three():
    m = query_metrics(np.array([0.5, 0.9, 0.1, 0.7]), np.array([1, 0, 0, 0]))
    assert m["accuracy"] == 0.0
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["map"] == pytest.approx(1 / 3)
    assert m["recall@1"] == 0.0 and m["recall@5"] == 1.0
    assert m["ndcg@10"] == pytest.approx(1 / math.log2(4))


def test_two_positives_hand_computed():
    # order: n(0.9) p(0.8) n(0.7) p(0.6) n(0.1): positives at ranks 2 and 4
    scores = np.array([0.8, 0.9, 0.6, 0.7, 0.1])
    labels = np.array([1, 0, 1, 0, 0])
    m = query_metrics(scores, labels)
    assert list(positive_ranks(scores, labels)) == [2, 4]
    assert m["map"] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert m["mrr"] == pytest.approx(0.5)
    assert m["recall@1"] == 0.0
    assert m["recall@5"] == 1.0
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(5)) / idcg)
    assert m["accuracy"] == 0.0


def test_recall_counts_fraction_of_positives_in_top_k():
    # three positives at ranks 1, 3, 7 -> recall@1 = 1/3, recall@5 = 2/3, recall@10 = 1
    scores = -np.arange(10, dtype=float)
    labels = np.zeros(10, dtype=int)
    labels[[0, 2, 6]] = 1
    m = query_metrics(scores, labels)
    assert (m["recall@1"], m["recall@5"], m["recall@10"]) == pytest.approx((1 / 3, 2 / 3, 1.0))
    assert m["accuracy"] == 0.0


def test_multi_positive_accuracy_needs_every_positive_above_every_negative():
    assert query_metrics(np.array([0.9, 0.8, 0.2]), np.array([1, 1, 0]))["accuracy"] == 1.0
    assert query_metrics(np.array([0.9, 0.1, 0.2]), np.array([1, 1, 0]))["accuracy"] == 0.0


def test_ties_count_against_the_model():
    # positive tied with two negatives: ranked after both
    m = query_metrics(np.array([0.5, 0.5, 0.5, 0.1]), np.array([0, 1, 0, 0]))
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["accuracy"] == 0.0
    assert m["recall@1"] == 0.0
    # a constant scorer never looks good
    const = query_metrics(np.zeros(4), np.array([1, 0, 0, 0]))
    assert const["mrr"] == pytest.approx(1 / 4) and const["accuracy"] == 0.0
    # a tie only with another positive costs nothing
    both = query_metrics(np.array([0.5, 0.5, 0.1]), np.array([1, 1, 0]))
    assert both["map"] == 1.0 and both["accuracy"] == 1.0


def test_nan_scores_rank_last():
    m = query_metrics(np.array([np.nan, 0.1]), np.array([1, 0]))
    assert m["mrr"] == 0.5


def test_query_without_positive_is_skipped_and_counted():
    assert query_metrics(np.array([0.3, 0.2]), np.array([0, 0])) is None
    avg = compute_ranking_metrics([np.array([0.9, 0.1]), np.array([0.3, 0.2]),
                                   np.array([0.1, 0.9])],
                                  [np.array([1, 0]), np.array([0, 0]), np.array([1, 0])])
    assert avg["num_queries"] == 2 and avg["num_skipped"] == 1
    assert avg["mrr"] == pytest.approx((1 + 0.5) / 2)
    assert avg["accuracy"] == pytest.approx(0.5)
    assert set(avg) == {"accuracy", "map", "mrr", "recall@1", "recall@5", "recall@10",
                        "ndcg@10", "num_queries", "num_skipped"}


def test_no_defined_query_gives_nan_not_zero():
    avg = compute_ranking_metrics([np.array([0.1])], [np.array([0])])
    assert math.isnan(avg["map"]) and avg["num_queries"] == 0


def test_custom_ks_and_length_mismatch():
    m = query_metrics(-np.arange(20, dtype=float), np.eye(20, dtype=int)[14], ks=(10, 15, 20))
    assert (m["recall@10"], m["recall@15"], m["recall@20"]) == (0.0, 1.0, 1.0)
    with pytest.raises(ValueError):
        query_metrics(np.zeros(3), np.zeros(2))


def test_evaluate_module_loads_locally_and_matches():
    import evaluate

    metric = evaluate.load(metric_module_path())
    preds = [[0.9, 0.1, 0.5], [0.2, 0.2], [0.4, 0.3]]
    refs = [[1, 0, 1], [0, 1], [0, 0]]
    got = metric.compute(predictions=preds, references=refs)
    want = compute_ranking_metrics([np.array(p) for p in preds], [np.array(r) for r in refs])
    assert got == pytest.approx(want)
    assert got["mrr"] == pytest.approx(0.75) and got["num_skipped"] == 1
