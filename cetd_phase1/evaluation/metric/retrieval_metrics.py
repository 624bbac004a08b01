"""``evaluate`` metric module for requirement -> code retrieval.

Load it without network: ``evaluate.load(cetd_phase1.evaluation.metrics.metric_module_path())``.
Each prediction is one query's score vector over its candidates, each reference the matching
binary label vector. The computation is :func:`cetd_phase1.evaluation.metrics.compute_ranking_metrics`
(ties broken against the model; queries without a positive excluded and counted).
"""

import datasets
import evaluate

from cetd_phase1.evaluation.metrics import DEFAULT_KS, compute_ranking_metrics

_DESCRIPTION = """Retrieval accuracy (every positive strictly above every negative), MAP, MRR,
Recall@K and nDCG@10 over per-query candidate lists; ties count against the model."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of per-query score lists (higher = more relevant).
    references: list of per-query label lists (1 = relevant, 0 = not), same lengths.
    ks: cut-offs for Recall@K (default (1, 5, 10)).
Returns:
    dict with accuracy, map, mrr, recall@K, ndcg@10, num_queries, num_skipped.
Example:
    >>> metric = evaluate.load(metric_module_path())
    >>> metric.compute(predictions=[[0.9, 0.1]], references=[[1, 0]])["mrr"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalMetrics(evaluate.Metric):
    """Ranking metrics of :mod:`cetd_phase1.evaluation.metrics` as an ``evaluate`` module."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.List(datasets.Value("float64")),
                "references": datasets.List(datasets.Value("int32")),
            }),
        )

    def _compute(self, predictions, references, ks=DEFAULT_KS):
        return compute_ranking_metrics(predictions, references, ks=tuple(ks))
