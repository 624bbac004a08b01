"""Pooling token states into one embedding, and the optional projection head."""

from __future__ import annotations

import torch
from torch import nn

#: The ``pooling`` names :func:`pool` knows.
POOLINGS = ("mean", "last_token", "cls")


class RetrievalHead(nn.Module):
    """The seed's projection head, applied to *both* sides (the seed projected only the
    query, which cannot be compared with unprojected code embeddings)."""

    def __init__(self, hidden_size: int, projection_dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, projection_dim)

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.dense.weight)
        nn.init.zeros_(self.dense.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(x)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Pool ``hidden`` [B, L, H] over the tokens where ``mask`` [B, L] is 1.

    ``last_token`` and ``cls`` find the last / first *real* token from the mask itself, so they
    are right with left padding and with right padding.
    """
    mask = mask.to(hidden.dtype)
    if how == "mean":
        summed = (hidden * mask.unsqueeze(-1)).sum(dim=1)
        return summed / mask.sum(dim=1, keepdim=True).clamp(min=1.0)
    rows = torch.arange(hidden.size(0), device=hidden.device)
    if how == "last_token":
        length = mask.size(1)
        last = length - 1 - mask.flip(dims=[1]).argmax(dim=1)
        return hidden[rows, last]
    if how == "cls":
        return hidden[rows, mask.argmax(dim=1)]
    raise ValueError(f"unknown pooling {how!r}")

