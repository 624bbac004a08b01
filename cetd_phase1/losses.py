"""The training objectives: the bi-encoder's InfoNCE over in-batch candidates with the
cross-device gather that lets it see every rank's candidates, and the re-ranker's softmax over
each requirement's own group (:class:`GroupSoftmaxLoss`). The bi-encoder's batch layout:

* ``q`` [B, D] requirement embeddings, ``p`` [C, D] candidate (code section) embeddings;
* ``labels`` [B]: index in ``p`` of requirement i's positive.

The batch sampler guarantees that no candidate in a batch is a positive of another requirement
of that batch, so every candidate other than ``labels[i]`` is a true negative for requirement i.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

#: ``(p, labels) -> (candidates, labels, weight)``: the candidates every requirement of this
#: process is scored against, its positives' indices among them, and the factor on this
#: process's mean loss that keeps the data-parallel gradient that of the global batch.
CandidateGather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor, float]]


def local_candidates(p: torch.Tensor, labels: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """This process's candidates only (one process, or DDP without cross-rank negatives: each
    rank's loss is the mean over its own batch, and DDP averages the ranks' gradients)."""
    return p, labels, 1.0


def all_ranks_candidates(p: torch.Tensor, labels: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The candidates of every rank, gathered differentiably, in rank order.

    torch's functional ``all_gather_single`` (the successor of the deprecated
    ``torch.distributed.nn.functional.all_gather``) carries gradient back to the rank that
    computed each embedding: its backward sums the ranks' gradients (a reduce-scatter). A plain
    ``dist.all_gather`` would silently train only on the local slice. Ranks may hold different
    numbers of requirements and candidates (the no-duplicates sampler makes short batches): the
    sizes are gathered first, candidates padded to the longest rank and the padding dropped.
    ``labels`` are offset by the candidates of the earlier ranks. The weight is
    ``W * B_r / sum_s B_s`` (see :class:`InfoNCELoss`). Without an initialised process group of
    more than one rank this is :func:`local_candidates`.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local_candidates(p, labels)
    from torch.distributed._functional_collectives import all_gather_single
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = torch.tensor([labels.numel(), p.size(0)], device=p.device)
    every = [torch.empty_like(sizes) for _ in range(world)]
    dist.all_gather(every, sizes)
    n_queries, n_candidates = (list(x) for x in zip(*(s.tolist() for s in every)))
    padded = F.pad(p, (0, 0, 0, max(n_candidates) - p.size(0)))
    gathered = all_gather_single(padded, 0, dist.group.WORLD).chunk(world)
    candidates = torch.cat([g[:n] for g, n in zip(gathered, n_candidates)])
    weight = world * labels.numel() / sum(n_queries)
    return candidates, labels + sum(n_candidates[:rank]), weight


class InfoNCELoss(nn.Module):
    r"""Contrastive cross-entropy over in-batch candidates (Multiple Negatives Ranking loss).

    For requirement :math:`q_i` with positive :math:`p_i^+` and the candidate set
    :math:`P` = every candidate of the batch (its own positive and hard negatives plus all
    other requirements' positives and negatives):

    .. math::

        \mathcal{L} = -\frac{1}{B}\sum_{i=1}^{B}
            \log \frac{\exp(s(q_i, p_i^+)/\tau)}{\sum_{p \in P} \exp(s(q_i, p)/\tau)}

    where :math:`s` is the cosine similarity (dot product of normalised embeddings) and
    :math:`\tau` the temperature (``training.temperature``; 0.05 is a scale of 20). Logits are computed in float32 and
    ``cross_entropy`` subtracts their maximum, so low temperatures do not overflow under fp16
    autocast.

    **Negatives per requirement.** With B requirements per process, n negatives each and W
    processes, :math:`P` holds ``B * (1 + n)`` candidates per process: a requirement sees
    ``B * (1 + n) - 1`` negatives with ``gather=local_candidates`` and ``W * B * (1 + n) - 1``
    with ``gather=all_ranks_candidates`` (fewer when a requirement has fewer than n negatives
    or a batch is short). Gradient accumulation does not add negatives.

    **Data-parallel gradient.** Rank r holds :math:`B_r` requirements and computes
    :math:`L_r = \frac{w_r}{B_r}\sum_{i \in r} \ell_i`, where :math:`\ell_i` reads the
    candidates of all ranks. The gather's backward sums every rank's gradient with respect to
    rank r's candidates into rank r, so rank r's parameter gradient is the part of
    :math:`\nabla_\theta \sum_s L_s` that flows through the embeddings rank r computed, and
    DDP's average over ranks gives :math:`\frac{1}{W}\nabla_\theta \sum_s L_s`. With
    :math:`w_r = W B_r / \sum_s B_s` that is :math:`\nabla_\theta \frac{1}{\sum_s B_s}
    \sum_i \ell_i`: exactly the single-process gradient over the global batch, also when
    batch sizes differ, with no ``loss * world_size`` correction (which would only be needed
    with a non-differentiable gather, and then only approximately). The logged loss, the mean
    of the ranks' :math:`L_r`, is the global-batch loss too. Without the gather
    (:math:`w_r = 1`) the step is DDP's usual one: the mean of the per-rank losses and
    gradients, each over its own in-batch negatives.
    """

    def __init__(self, temperature: float, gather: CandidateGather = local_candidates):
        super().__init__()
        self.temperature = temperature
        self.gather = gather

    def forward(self, q: torch.Tensor, p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        candidates, labels, weight = self.gather(p, labels)
        logits = q.float() @ candidates.float().T / self.temperature
        return weight * F.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, gather={getattr(self.gather, '__name__', self.gather)}"


class GroupSoftmaxLoss(nn.Module):
    r"""The re-ranker's objective: softmax cross-entropy over each requirement's group of
    scored pairs, its positive first.

    For requirement :math:`q_i` with positive :math:`p_i^+` and negatives :math:`N_i` (its
    BM25-mined and random ones), and :math:`s` the re-ranker's logit for a pair:

    .. math::

        \mathcal{L} = -\frac{1}{B}\sum_{i=1}^{B}
            \log \frac{\exp s(q_i, p_i^+)}{\sum_{p \in \{p_i^+\} \cup N_i} \exp s(q_i, p)}

    No temperature: the logit is unbounded and learns its own scale. A cross-encoder reads
    each pair whole, so there are no in-batch negatives. Groups may differ in size (a
    requirement with fewer negatives): ``group_sizes`` [B] says how many of the flat
    ``logits`` [sum(group_sizes)] each owns, and the missing places of a group count as
    probability 0.
    """

    def forward(self, logits: torch.Tensor, group_sizes: torch.Tensor) -> torch.Tensor:
        groups = torch.split(logits.float(), group_sizes.tolist())
        padded = nn.utils.rnn.pad_sequence(list(groups), batch_first=True,
                                           padding_value=float("-inf"))
        target = torch.zeros(len(groups), dtype=torch.long, device=logits.device)
        return F.cross_entropy(padded, target)


def build_loss(config: Any) -> nn.Module:
    """InfoNCE at ``config.loss_temperature``, over every rank's candidates when
    ``config.gather_across_devices``."""
    gather = (all_ranks_candidates if getattr(config, "gather_across_devices", False)
              else local_candidates)
    return InfoNCELoss(temperature=config.loss_temperature, gather=gather)
