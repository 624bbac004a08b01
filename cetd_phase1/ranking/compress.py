"""Compact token vectors for late interaction: 2 bits a value after a rotation, with one scale
a vector (the shipped index), or float16 as encoded (lossless, for comparison).

At 2 bits a value, a vector's energy must be spread evenly over its dimensions first (a few
outlier dimensions would take every level otherwise): each block of ``2^k`` dimensions is
multiplied by random signs and a Walsh-Hadamard matrix, an exact, seed-fixed orthogonal map (as
in QuaRot / RaBitQ), which makes the values close to Gaussian. Each value is then coded by the
Lloyd-Max quantiser of a Gaussian of the vector's RMS (Max, 1960: 4 levels), and one scale
per vector, the least-squares fit of the levels to the vector, is kept. Decoded vectors
stay in the rotated space and the requirement's token vectors are rotated instead
(:meth:`TokenCodec.index_space`): MaxSim's dot products are unchanged by an orthogonal map, and
one small rotation a query costs less than one per stored token.

An app's 2-bit token vectors stay coded in memory (:class:`PackedTokens`, a quarter of the bytes
of int8 and an eighth of bfloat16) and MaxSim decodes only the rows it reads, through a table of
the 4 decoded values of each of the 256 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

#: The 4 Lloyd-Max levels of a unit Gaussian (Max, 1960): a value's 2-bit code is the nearest
#: (thresholds are the midpoints). 4 bits a value (16 levels) took twice the space for no
#: better ranking (docs/experiments.md).
_LEVELS = np.array([-1.5104, -0.4528, 0.4528, 1.5104], np.float32)
_PER_BYTE = 4


@dataclass(frozen=True)
class TokenCodec:
    """How an index stores vectors: token vectors at ``bits`` a value (2: rotated Lloyd-Max
    codes; 16: float16 as encoded); the pooled embeddings as float16 when ``pooled_f16`` (else
    float32). Token pooling and int8 codes were measured and dropped (docs/experiments.md)."""

    bits: int = 16
    pooled_f16: bool = False

    def __post_init__(self) -> None:
        if self.bits not in (16, 2):
            raise ValueError(f"bits must be 16 or 2, not {self.bits}")

    @property
    def name(self) -> str:
        return {16: "f16", 2: "q2"}[self.bits] + ("-p16" if self.pooled_f16 else "")

    def pack_pooled(self, pooled: np.ndarray) -> np.ndarray:
        return pooled.astype(np.float16 if self.pooled_f16 else np.float32)

    def pack(self, tokens: np.ndarray) -> dict[str, np.ndarray]:
        """The arrays that store ``tokens`` (float16 [T, D])."""
        if self.bits == 16:
            return {"tokens": tokens.astype(np.float16)}
        codes, scales = quantize_rotated(tokens)
        return {"token_bits": codes, "token_scales": scales}

    def index_space(self, tokens: np.ndarray) -> np.ndarray:
        """A requirement's token vectors [L, D] in the space :meth:`unpack` returns, so MaxSim
        against unpacked vectors gives the dot products of the original ones."""
        if self.bits == 16:
            return tokens
        # torch's product: numpy's BLAS threads would then contend with torch's for the cores
        return (torch.from_numpy(tokens.astype(np.float32))
                @ torch.from_numpy(rotation(tokens.shape[1]))).numpy()

    def unpack(self, arrays) -> "np.ndarray | PackedTokens":
        """The token vectors from :meth:`pack`'s arrays (``KeyError`` when they are another
        codec's): float16 [T, D], or at 2 bits still coded (:class:`PackedTokens`, rotated:
        :meth:`index_space`)."""
        if self.bits == 16:
            return arrays["tokens"]
        return PackedTokens([(arrays["token_bits"], arrays["token_scales"])])


@dataclass
class PackedTokens:
    """Token vectors [T, D] as 2-bit codes (:func:`quantize_rotated`), kept in parts (one per
    source file of an app) so joining an app's files copies no vector; decoded only where
    MaxSim reads them (:meth:`decode`)."""

    parts: list[tuple[np.ndarray, np.ndarray]]  # (codes uint8 [t, D / 4], scales float16 [t])
    _bases: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return int(self.bases[-1])

    @property
    def width(self) -> int:
        """D, the vector width."""
        return self.parts[0][0].shape[1] * _PER_BYTE if self.parts else 0

    @property
    def bases(self) -> np.ndarray:
        """The first row of each part, then the row count [parts + 1]."""
        if self._bases is None:
            self._bases = np.concatenate(
                [[0], np.cumsum([len(c) for c, _ in self.parts])]).astype(np.int64)
        return self._bases

    def take(self, rows: np.ndarray) -> "PackedTokens":
        """The vectors at ``rows`` (one part)."""
        codes, scales = self._rows(np.asarray([0]), np.asarray([len(self)]))
        return PackedTokens([(codes[rows], scales[rows])])

    def decode(self, starts: np.ndarray, ends: np.ndarray,
               dtype: torch.dtype) -> tuple[torch.Tensor, np.ndarray]:
        """The rows ``starts[i]`` to ``ends[i]`` one after another: their codes' levels
        [R, D] in ``dtype`` (bfloat16 or float32) and their scales float32 [R] (a vector is
        its levels times its scale; scaling the R dot products instead of the R x D values
        costs less)."""
        codes, scales = self._rows(starts, ends)
        # one table row a pair of code bytes (8 levels): half the lookups of a byte table, and
        # the table (1 MB in bfloat16) stays in cache; torch's gather takes int32 indices and
        # uses every intra-op thread, numpy's one
        pairs = codes.shape[1] % 2 == 0
        index = codes.view("<u2") if pairs else codes
        levels = torch.index_select(_code_table(dtype, 2 if pairs else 1), 0,
                                    torch.from_numpy(index.astype(np.int32)).reshape(-1))
        return levels.view(dtype).reshape(len(codes), -1), scales.astype(np.float32)

    def _rows(self, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Codes and scales of the rows ``starts[i]`` to ``ends[i]``, one after another."""
        if len(self.parts) == 1 and len(starts) == 1 and starts[0] == 0 \
                and ends[0] == len(self):
            return self.parts[0]
        bases = self.bases.tolist()
        first = (np.searchsorted(self.bases, starts, side="right") - 1).tolist()
        codes, scales = [], []
        for start, end, part in zip(starts.tolist(), ends.tolist(), first):
            while start < end:  # a span may cross parts (a join of several files' texts)
                local, stop = start - bases[part], min(end, bases[part + 1]) - bases[part]
                codes.append(self.parts[part][0][local:stop])
                scales.append(self.parts[part][1][local:stop])
                start, part = start + stop - local, part + 1
        width = self.parts[0][0].shape[1] if self.parts else 0
        return (np.concatenate(codes) if codes else np.zeros((0, width), np.uint8),
                np.concatenate(scales) if scales else np.zeros(0, np.float16))


def join_packed(parts: list[PackedTokens]) -> PackedTokens:
    """The vectors of ``parts`` one after another (their arrays are shared, not copied)."""
    return PackedTokens([p for packed in parts for p in packed.parts])


@lru_cache(maxsize=4)
def _code_table(dtype: torch.dtype, nbytes: int) -> torch.Tensor:
    """The levels of every value of ``nbytes`` (1 or 2) code bytes read as one little-endian
    integer, the first code in the low bits: [256 ** nbytes, levels] as raw bytes of ``dtype``
    viewed as int64, so decoding is one row gather."""
    value = np.arange(256 ** nbytes, dtype=np.uint32)
    shifts = np.arange(_PER_BYTE * nbytes, dtype=np.uint32) * 2
    levels = _LEVELS[(value[:, None] >> shifts) & 3]
    return torch.from_numpy(np.ascontiguousarray(levels)).to(dtype).view(torch.int64)


@lru_cache(maxsize=8)
def rotation(dim: int) -> np.ndarray:
    """The seed-fixed orthogonal [dim, dim] map applied before 2-bit coding: random signs
    then a Walsh-Hadamard matrix on each block of the largest power of 2 dividing ``dim``
    (128 for MiniLM's 384). Built from integers and a frozen random stream, so every machine
    decodes an entry the same way."""
    block = max(dim & -dim, 1)  # an empty index entry has width 0
    hadamard = np.ones((1, 1), np.float32)
    while len(hadamard) < block:
        hadamard = np.block([[hadamard, hadamard], [hadamard, -hadamard]])
    hadamard /= np.sqrt(block)
    stream = np.random.RandomState(0)  # RandomState's stream is frozen across numpy versions
    signs = stream.choice(np.array([-1.0, 1.0], np.float32), size=dim)
    mixed = np.kron(np.eye(dim // block, dtype=np.float32), hadamard) * signs[:, None]
    return mixed[stream.permutation(dim)].T.astype(np.float32)  # blocks interleaved


def quantize_rotated(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Packed 2-bit codes uint8 [T, D / 4] and float16 scales [T] of ``vectors`` (rotated,
    then each value coded by the Lloyd-Max quantiser at the vector's RMS)."""
    x = vectors.astype(np.float32) @ rotation(vectors.shape[1])
    rms = np.sqrt((x * x).mean(axis=1, keepdims=True)) if len(x) else np.ones((0, 1))
    cuts = (_LEVELS[1:] + _LEVELS[:-1]) / 2
    codes = np.searchsorted(cuts, x / np.where(rms > 0, rms, 1.0)).astype(np.uint8)
    approx = _LEVELS[codes]
    # least squares, the smallest error; a scale that keeps each dot product unbiased instead
    # (|x|^2 / <x, levels>) enlarges the error, and on validation it cost the served stdlib
    # ranking 0.006 MRR against int8 where least squares cost nothing
    denom = (approx * approx).sum(axis=1)
    scale = np.where(denom > 0, (approx * x).sum(axis=1) / np.where(denom > 0, denom, 1), 0)
    return _pack_codes(codes), scale.astype(np.float16)


def _pack_codes(codes: np.ndarray) -> np.ndarray:
    """2-bit codes [T, D] as bytes [T, D / 4], the first code in the low bits."""
    if codes.shape[1] % _PER_BYTE:
        raise ValueError(f"2-bit codes need a vector width divisible by {_PER_BYTE}, "
                         f"not {codes.shape[1]}")
    grouped = codes.reshape(len(codes), codes.shape[1] // _PER_BYTE, _PER_BYTE)
    shifts = np.arange(_PER_BYTE, dtype=np.uint8) * 2
    return np.bitwise_or.reduce(grouped << shifts, axis=2)
