"""Training batches and the Trainer: dataset rows -> grouped requirements -> no-duplicates
batches -> tokenised tensors; evaluation ranks every requirement against its whole app.

Data flow of one training step::

    rows (one per (requirement, section) pair)  --group_queries-->  one item per requirement
    NoDuplicatesBatchSampler  -> B requirements, none of whose candidates is another's positive
    RetrievalCollator         -> 1 positive + up to n negatives each, tokenised and padded
    CETDRetriever.forward     -> loss (InfoNCE over all B * (1 + n) candidates by default)
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Iterator

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler
from transformers import PreTrainedTokenizerBase, Trainer

from cetd_phase1.metrics import compute_ranking_metrics
from cetd_phase1.model import (CETDRetriever, encode_for_ranking, pad,
                               section_texts, tokenize)
from cetd_phase1.sections import format_section

logger = logging.getLogger(__name__)

GROUP_FEATURES = datasets.Features({
    "query_id": datasets.Value("string"), "app_id": datasets.Value("string"),
    "requirement": datasets.Value("string"),
    "positives": datasets.Sequence(datasets.Value("string")),
    "negatives": datasets.Sequence(datasets.Value("string")),
})


def group_queries(rows: datasets.Dataset) -> datasets.Dataset:
    """One item per requirement (``query_id``): its text and the encoder texts
    (:func:`~cetd_phase1.sections.format_section`) of its positive and negative sections.
    Requirements without a positive cannot be trained on and are left out."""
    groups: dict[str, dict[str, Any]] = {}
    # Streamed in slices: one to_dict() of every column would hold all rows as Python
    # objects at once, beside the groups, and that peak stays in the training's peak RSS.
    columns = rows.select_columns(["query_id", "app_id", "requirement", "file", "qualname",
                                   "code", "label"])
    for cols in columns.iter(batch_size=2048):
        for qid, app, req, file, qual, code, label in zip(
                cols["query_id"], cols["app_id"], cols["requirement"], cols["file"],
                cols["qualname"], cols["code"], cols["label"]):
            group = groups.setdefault(qid, {"query_id": qid, "app_id": app, "requirement": req,
                                            "positives": [], "negatives": []})
            group["positives" if label == 1 else "negatives"].append(
                format_section(file, qual, code))
    kept = [g for g in groups.values() if g["positives"]]
    if len(kept) < len(groups):
        logger.warning("%d requirement(s) without a positive section left out of training",
                       len(groups) - len(kept))
    return datasets.Dataset.from_list(kept, features=GROUP_FEATURES)


class NoDuplicatesBatchSampler(Sampler[list[int]]):
    """Batches of grouped requirements in which no candidate is another requirement's positive.

    In-batch negatives are only negatives if they do not implement the requirement: a section
    that is a positive of one requirement and a (hard) negative of another - common within one
    app - must not share a batch with both. Greedy per epoch: shuffle (seeded by ``seed +
    epoch``), then fill each batch with the next requirements that conflict with nothing in it,
    deferring the others to later batches. A batch is only smaller than ``batch_size`` when the
    remaining requirements all conflict. Candidates are compared by their exact text.

    The size limit is ``max_batch_size``, deliberately not ``batch_size``: accelerate's
    ``BatchSamplerShard`` (several processes) takes a sampler with a ``batch_size`` for one of
    fixed size and silently drops every round of batches holding a short one, which leaves the
    ranks with different numbers of steps; without it, each rank gets every n-th batch as is.

    With cross-rank negatives (``num_replicas`` W > 1) each requirement is scored against the
    candidates of all ranks, so the no-duplicates guarantee must hold for the *global* batch:
    batches of up to ``W * batch_size`` are built as above and each is split into W parts
    (sizes differing by at most one), yielded one after the other: accelerate's round-robin
    hands them to ranks 0..W-1, so the ranks of one step hold one conflict-free global batch. A global
    batch of fewer than W requirements (its requirements conflict with all others left in the
    epoch) cannot give every rank one and is left out of that epoch (``skipped``).

    ``same_app``: fill batches app by app (apps in a shuffled order, each app's requirements
    shuffled), then shuffle the batches. The in-batch negatives of a requirement are then
    sections of its own app - the candidates it is ranked against at retrieval time - rather
    than code from unrelated apps that is easy to tell apart. An app's last, partial batch is
    topped up from the next app.
    """

    def __init__(self, groups: datasets.Dataset, batch_size: int, seed: int = 0,
                 num_replicas: int = 1, same_app: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.max_batch_size = batch_size
        self.num_replicas = num_replicas
        self.apps = list(groups["app_id"]) if same_app else None
        self.skipped = 0  # requirements left out of the current epoch (see above)
        self.seed = seed
        self.epoch = 0
        ids: dict[str, int] = {}  # text -> small int: exact and the same in every process
        self.positives = [frozenset(ids.setdefault(t, len(ids)) for t in ps)
                          for ps in groups["positives"]]
        self.candidates = [pos | frozenset(ids.setdefault(t, len(ids)) for t in ns)
                           for pos, ns in zip(self.positives, groups["negatives"])]
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[list[int]]:
        """The batches of the current epoch (computed once per epoch)."""
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self._build(self.epoch))
        return self._cache[1]

    def _build(self, epoch: int) -> list[list[int]]:
        world = self.num_replicas
        if world == 1:
            return self._greedy(epoch, self.max_batch_size)
        out = []
        self.skipped = 0
        for batch in self._greedy(epoch, world * self.max_batch_size):
            if len(batch) < world:
                self.skipped += len(batch)
                continue
            out += [batch[r::world] for r in range(world)]
        if self.skipped:
            logger.info("epoch %d: %d requirement(s) conflict with all others left and sit out "
                        "the epoch (cross-rank batches need one per rank)", epoch, self.skipped)
        return out

    def _greedy(self, epoch: int, size: int) -> list[list[int]]:
        rng = random.Random(self.seed + epoch)
        remaining = list(range(len(self.positives)))
        rng.shuffle(remaining)
        if self.apps is not None:
            order = sorted(set(self.apps))
            rng.shuffle(order)
            rank = {app: i for i, app in enumerate(order)}
            remaining.sort(key=lambda idx: rank[self.apps[idx]])  # stable: keeps the shuffle
        out = []
        while remaining:
            batch: list[int] = []
            batch_pos: set[int] = set()
            batch_cand: set[int] = set()
            deferred: list[int] = []
            for j, idx in enumerate(remaining):
                if len(batch) == size:
                    deferred.extend(remaining[j:])
                    break
                if self.positives[idx] & batch_cand or self.candidates[idx] & batch_pos:
                    deferred.append(idx)
                    continue
                batch.append(idx)
                batch_pos |= self.positives[idx]
                batch_cand |= self.candidates[idx]
            out.append(batch)
            remaining = deferred
        if self.apps is not None:
            rng.shuffle(out)  # no run of steps on one app
        return out

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        return len(self.batches())


@dataclass
class RetrievalCollator:
    """Grouped requirements -> model inputs.

    Each requirement contributes one positive (drawn at random among its positives) and up to
    ``negatives_per_query`` of its negatives (drawn at random), so a step sees different pairs
    every epoch. Requirements and code are truncated to their own limits and padded to the
    longest text of the batch (rounded up to a multiple of 8), never to a fixed length.
    Outputs: ``q_input_ids``/``q_attention_mask`` [B, Lq], ``p_input_ids``/``p_attention_mask``
    [C, Lp], ``labels`` [B] (index of each positive in the candidates), ``owners`` [C].
    """

    tokenizer: PreTrainedTokenizerBase
    max_req_length: int = 128
    max_code_length: int = 256
    negatives_per_query: int = 5
    append_eos: bool = False
    split_identifiers: bool = False
    pad_to_multiple_of: int = 8

    def __call__(self, items: list[dict[str, Any]],
                 rng: random.Random | None = None) -> dict[str, torch.Tensor]:
        """Collate ``items``, drawing positives and negatives from ``rng`` (default: the
        global generator)."""
        draw = rng or random
        requirements, candidates, labels, owners = [], [], [], []
        for i, item in enumerate(items):
            negatives = item["negatives"]
            chosen = draw.sample(negatives, min(self.negatives_per_query, len(negatives)))
            requirements.append(item["requirement"])
            labels.append(len(candidates))
            candidates += [draw.choice(item["positives"]), *chosen]
            owners += [i] * (1 + len(chosen))
        q = pad(self.tokenizer, tokenize(self.tokenizer, requirements, self.max_req_length,
                                         self.append_eos, self.split_identifiers),
                self.pad_to_multiple_of)
        p = pad(self.tokenizer, tokenize(self.tokenizer, candidates, self.max_code_length,
                                         self.append_eos, self.split_identifiers),
                self.pad_to_multiple_of)
        return {"q_input_ids": q["input_ids"], "q_attention_mask": q["attention_mask"],
                "p_input_ids": p["input_ids"], "p_attention_mask": p["attention_mask"],
                "labels": torch.tensor(labels), "owners": torch.tensor(owners)}


@dataclass
class SeededCollate:
    """``collate_fn`` drawing each batch's positives and negatives from a generator seeded by
    (seed, epoch, the batch's query ids) instead of the global one.

    The DataLoader collates one batch ahead and a resumed run skips batches without collating
    them, so draws from the global generator would differ after ``resume_from_checkpoint``;
    seeded per batch, a resumed run sees exactly the pairs of an uninterrupted one.
    """

    collator: RetrievalCollator
    sampler: NoDuplicatesBatchSampler

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        key = f"{self.sampler.seed}:{self.sampler.epoch}:" + ",".join(i["query_id"] for i in items)
        return self.collator(items, rng=random.Random(key))


@dataclass
class Rankings:
    """Full-app rankings: per requirement, its candidates' scores and 0/1 labels."""

    query_ids: list[str]
    app_ids: list[str]
    scores: list[np.ndarray]
    labels: list[np.ndarray]


def _app_pools(sections: datasets.Dataset, apps: set[str]
               ) -> tuple[list[tuple[str, str, str, str]], dict[str, list[int]]]:
    """The rows of ``sections`` belonging to ``apps`` as (file, qualname, kind, code) and, per
    app, their positions in that list."""
    cols = sections.select_columns(["app_id", "file", "qualname", "kind", "code"]).to_dict()
    items: list[tuple[str, str, str, str]] = []
    by_app: dict[str, list[int]] = defaultdict(list)
    for app, file, qual, kind, code in zip(cols["app_id"], cols["file"], cols["qualname"],
                                           cols["kind"], cols["code"]):
        if app in apps:
            by_app[app].append(len(items))
            items.append((file, qual, kind, code))
    return items, by_app


def rank_full_app(model: CETDRetriever, tokenizer: PreTrainedTokenizerBase,
                  rows: datasets.Dataset, sections: datasets.Dataset, *, max_req_length: int,
                  max_code_length: int, batch_size: int = 64,
                  show_progress: bool = False) -> Rankings:
    """Score every requirement of ``rows`` against **all** sections of its app in ``sections``.

    A section is relevant when ``rows`` holds it as a positive (label 1) of that requirement,
    matched on (app_id, file, qualname). Each app's sections are encoded once, as the retriever
    reads them (:func:`~cetd_phase1.model.section_texts`, the model's ``section_chunks``).
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
    queries = encode_for_ranking(model, tokenizer, [text[q] for q in qids],
                                 max_length=max_req_length, batch_size=batch_size,
                                 show_progress=show_progress)
    texts, starts = section_texts(items, tokenizer, max_code_length, model.config.section_chunks)
    encoded = encode_for_ranking(model, tokenizer, texts, max_length=max_code_length,
                                 batch_size=batch_size, show_progress=show_progress)
    bounds = np.append(starts, len(texts)) if starts is not None else np.arange(len(texts) + 1)
    share = model.config.late_interaction
    asked: dict[str, list[int]] = defaultdict(list)  # app -> its queries' rows
    for qi, qid in enumerate(qids):
        asked[app_of[qid]].append(qi)
    scores: dict[str, np.ndarray] = {}  # query id -> scores of its app's sections
    for app, app_queries in asked.items():
        cand = by_app.get(app)
        if not cand:
            continue
        spans = [np.arange(bounds[c], bounds[c + 1]) for c in cand]
        local = np.cumsum([0] + [len(s) for s in spans[:-1]]) if starts is not None else None
        matrix = encoded.take(np.concatenate(spans)).scores(
            queries.take(np.array(app_queries)), share, local)
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
    candidate pool (``build_sections`` of the same split). Under several processes every rank
    computes the same evaluation, so all agree on early stopping.
    """

    # compute_loss returns a per-batch mean: the Trainer divides it for gradient accumulation.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, eval_sections: datasets.Dataset | None = None,
                 same_app_batches: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_sections = eval_sections
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
        collator = self.data_collator
        rankings = rank_full_app(self.accelerator.unwrap_model(self.model),
                                 self.processing_class, rows, pool,
                                 max_req_length=collator.max_req_length,
                                 max_code_length=collator.max_code_length,
                                 batch_size=self.args.per_device_eval_batch_size,
                                 show_progress=not self.args.disable_tqdm)
        metrics = {f"{metric_key_prefix}_{k}": float(v) for k, v in
                   compute_ranking_metrics(rankings.scores, rankings.labels).items()}
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
