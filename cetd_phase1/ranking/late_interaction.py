"""ColBERT's late interaction (MaxSim) of a requirement's token vectors against sections'."""

from __future__ import annotations

import numpy as np
import torch


def maxsim(query: np.ndarray, tokens: torch.Tensor, starts: np.ndarray,
           scales: np.ndarray | None = None) -> np.ndarray:
    r"""ColBERT's late interaction (Khattab & Zaharia 2020) of one requirement against N texts:
    ``query`` [Lq, D] its token vectors, ``tokens`` [T, D] the texts' token vectors one after
    another (text i from row ``starts[i]``, every text at least one token), all L2-normalised:

    .. math::  s(q, p) = \frac{1}{|q|} \sum_{i \in q} \max_{j \in p} \cos(q_i, p_j)

    Each requirement word is matched to its best code token wherever it sits in the section,
    which one pooled vector blurs. One matrix product over the concatenated tokens and a
    segmented max (``np.maximum.reduceat``), no padding. The product runs in ``tokens``'s
    dtype (float32, or bfloat16 from :meth:`Encoded.scores` where the CPU has it natively).
    With ``scales`` [T], row j of ``tokens`` stands for ``scales[j]`` times itself (2-bit
    codes' levels, :class:`~cetd_phase1.ranking.compress.PackedTokens`).
    """
    query = torch.from_numpy(np.asarray(query, dtype=np.float32)).to(tokens.dtype)
    sim = (query @ tokens.T).float().numpy()  # [Lq, T]
    if scales is not None:
        sim *= scales
    return np.maximum.reduceat(sim, starts, axis=1).mean(axis=0)

