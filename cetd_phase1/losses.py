"""Training objectives of the bi-encoder. Both take the same batch layout:

* ``q`` [B, D] requirement embeddings, ``p`` [C, D] candidate (code section) embeddings;
* ``labels`` [B]: index in ``p`` of requirement i's positive;
* ``owners`` [C]: index of the requirement each candidate was drawn for (its positive or one of
  its hard/random negatives).

The batch sampler guarantees that no candidate in a batch is a positive of another requirement
of that batch, so every candidate other than ``labels[i]`` is a true negative for requirement i.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

#: ``(p, labels) -> (candidates, labels)``: which candidates every requirement is scored against.
CandidateGather = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def local_candidates(p: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's candidates only (single process, or DDP without cross-rank negatives).

    The seam for cross-rank negatives: a replacement returns the candidates of *all* ranks,
    gathered differentiably (``torch.distributed.nn.all_gather``, or the local slice keeps no
    gradient), with ``labels`` offset by the number of candidates on earlier ranks.
    """
    return p, labels


class InfoNCELoss(nn.Module):
    r"""Contrastive cross-entropy over in-batch candidates (Multiple Negatives Ranking loss).

    For requirement :math:`q_i` with positive :math:`p_i^+` and the candidate set
    :math:`P` = every candidate of the batch (its own positive and hard negatives plus all
    other requirements' positives and negatives):

    .. math::

        \mathcal{L} = -\frac{1}{B}\sum_{i=1}^{B}
            \log \frac{\exp(s(q_i, p_i^+)/\tau)}{\sum_{p \in P} \exp(s(q_i, p)/\tau)}

    where :math:`s` is the cosine similarity (dot product of normalised embeddings) and
    :math:`\tau` the temperature (0.05, i.e. a scale of 20). With B requirements and n negatives
    each, a requirement sees ``B * (1 + n) - 1`` negatives per process (times the world size
    with a cross-rank gather). Logits are computed in float32 and ``cross_entropy`` subtracts
    their maximum, so low temperatures do not overflow under fp16 autocast.
    """

    def __init__(self, temperature: float = 0.05, gather: CandidateGather = local_candidates):
        super().__init__()
        self.temperature = temperature
        self.gather = gather

    def forward(self, q: torch.Tensor, p: torch.Tensor, labels: torch.Tensor,
                owners: torch.Tensor | None = None) -> torch.Tensor:
        candidates, labels = self.gather(p, labels)
        logits = q.float() @ candidates.float().T / self.temperature
        return F.cross_entropy(logits, labels)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"


class BCELoss(nn.Module):
    r"""The seed's objective: binary cross-entropy on each (requirement, own candidate) pair.

    Only the requirement's own candidates (positive + its negatives) are scored, as in the seed.
    The seed fed raw cosines (in [-1, 1]) to ``BCEWithLogitsLoss``, so a perfect ranking still
    had a probability of at most 0.73 and a large loss; here the logit is

    .. math::  z = \text{scale} \cdot \cos(q, p) + b

    with a fixed scale (20 = 1/0.05) and a bias :math:`b` (learnable by default, initialised at
    -10 so that with few positives the starting probabilities are low, as in SigLIP), and
    :math:`\mathcal{L} = \text{mean}_{(i,j)}\ \text{BCE}(\sigma(z_{ij}), y_{ij})`.
    """

    def __init__(self, scale: float = 20.0, bias: float = -10.0, learnable_bias: bool = True):
        super().__init__()
        self.scale = scale
        bias_tensor = torch.tensor(float(bias))
        if learnable_bias:
            self.bias = nn.Parameter(bias_tensor)
        else:
            self.register_buffer("bias", bias_tensor)

    def forward(self, q: torch.Tensor, p: torch.Tensor, labels: torch.Tensor,
                owners: torch.Tensor | None = None) -> torch.Tensor:
        if owners is None:
            raise ValueError("BCELoss needs `owners` (the requirement of each candidate)")
        cos = (q.float()[owners] * p.float()).sum(dim=-1)
        logits = self.scale * cos + self.bias.float()
        targets = torch.zeros_like(logits)
        targets[labels] = 1.0
        return F.binary_cross_entropy_with_logits(logits, targets)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


LOSSES = ("infonce", "bce")


def build_loss(config: Any) -> nn.Module:
    """The loss named by ``config.loss`` with its settings from the config."""
    if config.loss == "infonce":
        return InfoNCELoss(temperature=config.loss_temperature)
    if config.loss == "bce":
        return BCELoss(scale=config.bce_scale, bias=config.bce_bias,
                       learnable_bias=config.bce_learnable_bias)
    raise ValueError(f"unknown loss {config.loss!r}; expected one of {', '.join(LOSSES)}")
