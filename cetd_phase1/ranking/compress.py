"""Compact token vectors for late interaction: fewer vectors per text (similar tokens pooled)
and fewer bytes per vector (int8 with one scale per vector).

Token pooling follows Clavié et al. (2024), "Reducing the Footprint of Multi-Vector Retrieval
with Minimal Performance Impact via Token Pooling": a text's token vectors are clustered
(Ward linkage on the unit vectors) into ``ceil(n / factor)`` groups and each group is replaced by
its renormalised mean, so a run of near-identical vectors (indentation, repeated names) keeps
one. Quantisation stores each unit vector as ``round(127 * x / max|x|)`` with the scale
``max|x| / 127``: MaxSim reads the dequantised vector, within 1/254 of the original per value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenCodec:
    """How an index stores vectors: token vectors pooled by ``pool_factor`` (1 = every token)
    and as ``int8`` (else float16); the pooled embeddings as float16 when ``pooled_f16`` (else
    float32)."""

    pool_factor: float = 1.0
    int8: bool = False
    pooled_f16: bool = False

    @property
    def name(self) -> str:
        return (f"pool{self.pool_factor:g}-{'int8' if self.int8 else 'f16'}"
                + ("-p16" if self.pooled_f16 else ""))

    def pack_pooled(self, pooled: np.ndarray) -> np.ndarray:
        return pooled.astype(np.float16 if self.pooled_f16 else np.float32)

    def pool(self, tokens: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every text's tokens pooled to ``ceil(n / pool_factor)`` vectors, with new offsets."""
        if self.pool_factor <= 1:
            return tokens, offsets
        parts, sizes = [], []
        for start, end in zip(offsets[:-1], offsets[1:]):
            pooled = pool_tokens(tokens[start:end], self.pool_factor)
            parts.append(pooled)
            sizes.append(len(pooled))
        flat = np.concatenate(parts) if parts else tokens[:0]
        return flat, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def pack(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays that store ``tokens`` (float16 [T, D])."""
        if not self.int8:
            return {"tokens": tokens.astype(np.float16)}
        codes, scales = quantize(tokens)
        return {"token_codes": codes, "token_scales": scales}

    def unpack(self, arrays) -> np.ndarray:
        """float16 [T, D] from :meth:`pack`'s arrays (``KeyError`` when they are another
        codec's)."""
        if not self.int8:
            return arrays["tokens"]
        return dequantize(arrays["token_codes"], arrays["token_scales"])


def pool_tokens(vectors: np.ndarray, factor: float) -> np.ndarray:
    """``vectors`` [n, D] (unit length) as ``ceil(n / factor)`` renormalised cluster means."""
    n = len(vectors)
    k = max(1, math.ceil(n / factor))
    if n <= k or n < 3:
        return vectors
    from scipy.cluster.hierarchy import fcluster, linkage

    x = vectors.astype(np.float32)
    labels = fcluster(linkage(x, method="ward"), t=k, criterion="maxclust")
    pooled = np.stack([x[labels == c].mean(axis=0) for c in np.unique(labels)])
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(vectors.dtype)


def quantize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int8 codes [T, D] and float16 scales [T] of ``vectors`` (one scale per vector)."""
    x = vectors.astype(np.float32)
    scale = np.abs(x).max(axis=1) / 127.0 if len(x) else np.zeros(0, np.float32)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float16)
    codes = np.clip(np.rint(x / scale.astype(np.float32)[:, None]), -127, 127).astype(np.int8)
    return codes, scale


def dequantize(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """float16 [T, D] from :func:`quantize`'s codes and scales."""
    return (codes.astype(np.float32) * scales.astype(np.float32)[:, None]).astype(np.float16)
