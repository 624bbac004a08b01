"""Training the cross-encoder re-ranker with the same data as the bi-encoder: one group of pairs
per requirement (its positive, then its mined negatives), scored by the model, and the
:class:`~cetd_phase1.losses.GroupSoftmaxLoss` over each group.

Data flow of one step::

    grouped requirements (group_queries)  --RerankCollator-->  B groups of 1 + n pairs, flat
    AutoModelForSequenceClassification     -> one logit a pair
    GroupSoftmaxLoss                       -> cross-entropy of each group, positive first
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, Trainer

from cetd_phase1.losses import GroupSoftmaxLoss
from cetd_phase1.modeling.reranker import PairFormat


@dataclass
class RerankCollator:
    """Grouped requirements -> the flat pairs of their groups and each group's size.

    A group is one positive (drawn by a generator seeded with the requirement's id, so a
    resumed run sees the same pairs) and the requirement's first
    ``negatives_per_query`` negatives: the dataset lists the BM25-mined ones first, the
    confusable sections a first-stage ranking puts on top.
    """

    tokenizer: PreTrainedTokenizerBase
    pair_format: PairFormat
    negatives_per_query: int

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        requirements, sections, sizes = [], [], []
        for item in items:
            positive = random.Random(item["query_id"]).choice(item["positives"])
            group = [positive, *item["negatives"][:self.negatives_per_query]]
            requirements += [item["requirement"]] * len(group)
            sections += group
            sizes.append(len(group))
        batch = self.pair_format.encode(self.tokenizer, requirements, sections)
        batch["group_sizes"] = torch.tensor(sizes)
        return batch


class RerankTrainer(Trainer):
    """``Trainer`` whose loss is the re-ranker's softmax over each requirement's group."""

    # compute_loss returns a per-batch mean: the Trainer divides it for gradient accumulation.
    loss_is_scaled_for_ga = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.loss_fn = GroupSoftmaxLoss()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        sizes = inputs.pop("group_sizes")
        outputs = model(**inputs)
        loss = self.loss_fn(outputs.logits[:, 0], sizes)
        return (loss, outputs) if return_outputs else loss
