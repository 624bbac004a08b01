"""Token vectors as plain float32 arrays, whichever way an index holds them."""

from __future__ import annotations

import numpy as np
import torch

from cetd_phase1.ranking.compress import PackedTokens


def as_float(tokens) -> np.ndarray:
    """float32 [T, D] of float16 vectors or of 2-bit codes (decoded: levels times scale, in
    the rotated space they are stored in)."""
    if not isinstance(tokens, PackedTokens):
        return np.asarray(tokens, dtype=np.float32)
    levels, scales = tokens.decode(np.zeros(1, np.int64), np.array([len(tokens)]),
                                   torch.float32)
    return levels.numpy().reshape(len(tokens), tokens.width) * scales[:, None]
