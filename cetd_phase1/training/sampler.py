"""Training order: rows (one per (requirement, section) pair) grouped into one item per
requirement, and batches of them in which no candidate is another requirement's positive."""

from __future__ import annotations

import logging
import random
from typing import Any, Iterator

import datasets
from torch.utils.data import Sampler

from cetd_phase1.text import format_section

logger = logging.getLogger(__name__)

GROUP_FEATURES = datasets.Features({
    "query_id": datasets.Value("string"), "app_id": datasets.Value("string"),
    "requirement": datasets.Value("string"),
    "positives": datasets.Sequence(datasets.Value("string")),
    "negatives": datasets.Sequence(datasets.Value("string")),
})


def group_queries(rows: datasets.Dataset) -> datasets.Dataset:
    """One item per requirement (``query_id``): its text and the encoder texts
    (:func:`~cetd_phase1.text.format_section`) of its positive and negative sections.
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
    pass) cannot give every rank one and is left out of that pass (``skipped``).

    **Epochs of one length.** The greedy passes differ in length (how many requirements
    conflict depends on the shuffle), while the Trainer sizes a ``max_steps`` run and places a
    resumed run from the length of the first epoch. So the batches form one stream of passes
    (pass p shuffled with ``seed + p``) cut into epochs of the first pass's length: epoch 0 is
    pass 0, and a later epoch may end in the next pass. A requirement then comes once per pass,
    not once per epoch.

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
        self.skipped = 0  # requirements left out of the newest pass (see above)
        self.seed = seed
        self.epoch = 0
        ids: dict[str, int] = {}  # text -> small int: exact and the same in every process
        self.positives = [frozenset(ids.setdefault(t, len(ids)) for t in ps)
                          for ps in groups["positives"]]
        self.candidates = [pos | frozenset(ids.setdefault(t, len(ids)) for t in ns)
                           for pos, ns in zip(self.positives, groups["negatives"])]
        self._passes: list[list[list[int]]] = []  # greedy passes built so far, in order

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _pass(self, p: int) -> list[list[int]]:
        while len(self._passes) <= p:
            self._passes.append(self._build(len(self._passes)))
        return self._passes[p]

    def batches(self) -> list[list[int]]:
        """The batches of the current epoch: positions ``epoch * L`` to ``(epoch + 1) * L`` of
        the stream of passes, ``L`` the length of pass 0."""
        length = len(self._pass(0))
        start, out, p = self.epoch * length, [], 0
        while len(out) < length:
            batches = self._pass(p)
            if start < len(batches):
                out += batches[start:start + length - len(out)]
                start = 0
            else:
                start -= len(batches)
            p += 1
        return out

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
