"""The Trainer of the bi-encoder: no-duplicates batches, the model's own loss, and evaluation by
ranking every validation requirement against all sections of its app.

Data flow of one training step::

    rows (one per (requirement, section) pair)  --group_queries-->  one item per requirement
    NoDuplicatesBatchSampler  -> B requirements, none of whose candidates is another's positive
    RetrievalCollator         -> 1 positive + up to n negatives each, tokenised and padded
    CETDRetriever.forward     -> InfoNCE over all B * (1 + n) candidates
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from cetd_phase1.evaluation.metrics import ranking_metric
from cetd_phase1.ranking.full_app import FullAppRanker, SectionItem
from cetd_phase1.ranking.config import RankingConfig
from cetd_phase1.training.collator import RetrievalCollator, SeededCollate
from cetd_phase1.training.sampler import NoDuplicatesBatchSampler

logger = logging.getLogger(__name__)


@dataclass
class Rankings:
    """Full-app rankings: per requirement, its candidates' scores and 0/1 labels."""

    query_ids: list[str]
    app_ids: list[str]
    scores: list[np.ndarray]
    labels: list[np.ndarray]


def _app_pools(sections: datasets.Dataset, apps: set[str]
               ) -> tuple[list[SectionItem], dict[str, list[int]]]:
    """The rows of ``sections`` belonging to ``apps`` as (file, qualname, kind, code) and, per
    app, their positions in that list."""
    cols = sections.select_columns(["app_id", "file", "qualname", "kind", "code"]).to_dict()
    items: list[SectionItem] = []
    by_app: dict[str, list[int]] = defaultdict(list)
    for app, file, qual, kind, code in zip(cols["app_id"], cols["file"], cols["qualname"],
                                           cols["kind"], cols["code"]):
        if app in apps:
            by_app[app].append(len(items))
            items.append((file, qual, kind, code))
    return items, by_app


def rank_full_app(ranker: FullAppRanker, rows: datasets.Dataset, sections: datasets.Dataset,
                  show_progress: bool = False) -> Rankings:
    """Score every requirement of ``rows`` against **all** sections of its app in ``sections``.

    A section is relevant when ``rows`` holds it as a positive (label 1) of that requirement,
    matched on (app_id, file, qualname). Every requirement and every section is encoded once.
    """
    cols = rows.select_columns(["query_id", "app_id", "requirement", "file", "qualname",
                                "label"]).to_dict()
    text: dict[str, str] = {}
    app_of: dict[str, str] = {}
    relevant: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for qid, app, req, file, qual, label in zip(cols["query_id"], cols["app_id"],
                                                cols["requirement"], cols["file"],
                                                cols["qualname"], cols["label"]):
        text[qid], app_of[qid] = req, app
        if label == 1:
            relevant[qid].add((file, qual))
    items, by_app = _app_pools(sections, set(app_of.values()))
    qids = list(text)
    queries = ranker.encode_requirements([text[q] for q in qids], show_progress)
    vectors = ranker.encode_sections(items, show_progress)
    asked: dict[str, list[int]] = defaultdict(list)  # app -> its queries' rows
    for qi, qid in enumerate(qids):
        asked[app_of[qid]].append(qi)
    scores: dict[str, np.ndarray] = {}  # query id -> scores of its app's sections
    for app, app_queries in asked.items():
        cand = by_app.get(app)
        if not cand:
            continue
        matrix = ranker.scores(queries.take(np.array(app_queries)), vectors.take(cand))
        for qi, row in zip(app_queries, matrix):
            scores[qids[qi]] = row
    out = Rankings([], [], [], [])
    for qid in qids:
        cand = by_app.get(app_of[qid], [])
        out.query_ids.append(qid)
        out.app_ids.append(app_of[qid])
        out.scores.append(scores[qid] if cand else np.zeros(0, np.float32))
        out.labels.append(np.array([items[c][:2] in relevant[qid] for c in cand], dtype=np.int8))
    return out


class RetrievalTrainer(Trainer):
    """``Trainer`` for the bi-encoder: no-duplicates batches, the model's own loss, and
    evaluation by full-app ranking (``eval_accuracy``, ``eval_map``, ``eval_mrr``,
    ``eval_recall@{1,5,10}``, ``eval_ndcg@10``).

    ``eval_dataset`` holds pair rows (the dataset's validation split) and ``eval_sections`` the
    candidate pool (``build_sections`` of the same split), ranked as ``ranking`` says (the
    settings saved beside every checkpoint). Under several processes every rank computes the
    same evaluation, so all agree on early stopping.
    """

    # compute_loss returns a per-batch mean: the Trainer divides it for gradient accumulation.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, eval_sections: datasets.Dataset | None = None,
                 ranking: RankingConfig | None = None, same_app_batches: bool = False,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_sections = eval_sections
        self.ranking = ranking or RankingConfig()
        self.same_app_batches = same_app_batches

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """The model's own loss (Tevatron style: the model computes it)."""
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def get_train_dataloader(self) -> DataLoader:
        """Grouped requirements through :class:`NoDuplicatesBatchSampler` (an ordinary random
        sampler could put a requirement's positive among another's negatives)."""
        if self.train_dataset is None:
            raise ValueError("RetrievalTrainer: training requires a train_dataset")
        gather = getattr(self.model.config, "gather_across_devices", False)
        sampler = NoDuplicatesBatchSampler(self.train_dataset, self._train_batch_size,
                                           seed=self.args.data_seed or self.args.seed,
                                           num_replicas=self.args.world_size if gather else 1,
                                           same_app=self.same_app_batches)
        collate = self.data_collator
        if isinstance(collate, RetrievalCollator):
            collate = SeededCollate(collate, sampler)
        loader = DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=collate,
                            num_workers=self.args.dataloader_num_workers,
                            pin_memory=self.args.dataloader_pin_memory
                            and torch.cuda.is_available())
        return self.accelerator.prepare(loader)

    def evaluate(self, eval_dataset: datasets.Dataset | None = None,
                 ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval",
                 sections: datasets.Dataset | None = None) -> dict[str, float]:
        """Rank each requirement of ``eval_dataset`` against all sections of its app and
        return (and log) the ranking metrics under ``metric_key_prefix``."""
        rows = eval_dataset if eval_dataset is not None else self.eval_dataset
        pool = sections if sections is not None else self.eval_sections
        if rows is None or pool is None:
            raise ValueError("RetrievalTrainer.evaluate needs eval rows and their sections")
        ranker = FullAppRanker(self.accelerator.unwrap_model(self.model), self.processing_class,
                               self.ranking, batch_size=self.args.per_device_eval_batch_size)
        rankings = rank_full_app(ranker, rows, pool, show_progress=not self.args.disable_tqdm)
        computed = ranking_metric().compute(predictions=[s.tolist() for s in rankings.scores],
                                            references=[l.tolist() for l in rankings.labels])
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in computed.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control,
                                                         metrics)
        return metrics

    # The Trainer only knows how to reload plain PreTrainedModels and bare PeftModels; our
    # LoRA checkpoints hold an adapter *inside* a PreTrainedModel, so both resuming and
    # restoring the best checkpoint go through the model's own loader.
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        (model or self.model).load_weights(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        logger.info("Loading best model from %s (score: %s)", self.state.best_model_checkpoint,
                    self.state.best_metric)
        self.accelerator.unwrap_model(self.model).load_weights(self.state.best_model_checkpoint)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The model as the Trainer saves it, and beside it the ranking settings it was
        evaluated with, so every checkpoint ranks as its metrics say."""
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            self.ranking.save(output_dir if output_dir is not None else self.args.output_dir)
