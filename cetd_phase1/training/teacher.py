"""Teachers for distillation: the embeddings of every training text by one or more stronger
trained retrievers, computed once and cached, from which each step's teacher scores are read.

With k teachers each text's teacher vector is the k normalised embeddings side by side, each
scaled by ``1/sqrt(k)``: the dot product of two such vectors is the mean of the teachers'
cosines, so the loss reads an ensemble's score with one matrix product. Each teacher reads a
text as it was trained to (its own tokenizer, token limits and identifier splitting).
Written by hand because sentence-transformers' distillation losses take teacher scores per
listed pair, while ours are needed for every in-batch candidate of a step.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import datasets
import numpy as np
import torch

from cetd_phase1.errors import CETDError

logger = logging.getLogger(__name__)


@dataclass
class TeacherVectors:
    """Teacher vectors of the training texts: float16 ``matrix`` [N, D], its rows indexed by
    requirement text (``requirements``) and by section text (``sections``)."""

    requirements: dict[str, int]
    sections: dict[str, int]
    matrix: np.ndarray

    def lookup(self, requirements: Sequence[str], sections: Sequence[str]
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 vectors [B, D] and [C, D] of a batch's requirements and candidates."""
        try:
            q = [self.requirements[t] for t in requirements]
            p = [self.sections[t] for t in sections]
        except KeyError as err:  # the collator only sees the groups the vectors were built on
            raise CETDError(f"distillation: no teacher vector for the text "
                            f"{str(err)[:80]}...") from None
        return (torch.from_numpy(self.matrix[q].astype(np.float32)),
                torch.from_numpy(self.matrix[p].astype(np.float32)))


def _texts(groups: datasets.Dataset) -> tuple[list[str], list[str]]:
    requirements = sorted(set(groups["requirement"]))
    sections: set[str] = set()
    for column in ("positives", "negatives"):
        for texts in groups[column]:
            sections.update(texts)
    return requirements, sorted(sections)


def _fingerprint(folder: Path) -> str:
    """A checkpoint's identity: its config and weight files' bytes (a retrained folder of the
    same name is another teacher)."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir()
                   if p.name == "config.json" or p.suffix == ".safetensors")
    if not any(p.suffix == ".safetensors" for p in files):
        raise CETDError(f"training.teachers: {folder} holds no weights (*.safetensors); "
                        f"name the 'final' folder of a finished training")
    for path in files:
        digest.update(path.name.encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def _encode_with(folder: Path, requirements: list[str], sections: list[str],
                 show_progress: bool) -> np.ndarray:
    """One teacher's normalised embeddings [R + S, D] of requirements then sections."""
    from cetd_phase1.modeling.loading import load_retriever
    from cetd_phase1.ranking.encode import encode_texts

    model, tokenizer = load_retriever(folder)
    cfg = model.config
    q = encode_texts(model, tokenizer, requirements, max_length=cfg.max_req_length,
                     show_progress=show_progress)
    p = encode_texts(model, tokenizer, sections, max_length=cfg.max_code_length,
                     show_progress=show_progress)
    out = np.concatenate([q, p])
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def teacher_vectors(teachers: Sequence[str | os.PathLike], groups: datasets.Dataset,
                    cache_dir: str | os.PathLike | None = None,
                    show_progress: bool = True) -> TeacherVectors:
    """The teacher vectors of every requirement and section text of ``groups`` (grouped
    training requirements), read from ``cache_dir`` (default ``$CETD_CACHE/teachers``) when
    these teachers already encoded these texts, else encoded (minutes per teacher on a CPU)
    and cached there."""
    from cetd_phase1 import default_cache_dir
    from cetd_phase1.atomic import atomic_write

    folders = [Path(t) for t in teachers]
    for folder in folders:
        if not (folder / "config.json").is_file():
            raise CETDError(f"training.teachers: {folder} is not a trained checkpoint folder "
                            f"(no config.json); train the teacher first")
    requirements, sections = _texts(groups)
    texts = hashlib.sha256()
    for text in (*requirements, "\0", *sections):
        texts.update(text.encode() + b"\0")
    cache = Path(cache_dir) if cache_dir else default_cache_dir() / "teachers"
    parts = []
    for folder in folders:  # each teacher cached alone: an ensemble reuses its members
        key = hashlib.sha256(f"{_fingerprint(folder)}{texts.hexdigest()}".encode())
        path = cache / f"{key.hexdigest()[:24]}.npy"
        if path.is_file():
            logger.info("teacher vectors of %s read from %s", folder, path)
            parts.append(np.load(path))
            continue
        logger.info("encoding %d requirements and %d sections with the teacher %s (once; "
                    "cached in %s)", len(requirements), len(sections), folder, cache)
        vectors = _encode_with(folder, requirements, sections, show_progress).astype(np.float16)
        buffer = io.BytesIO()
        np.save(buffer, vectors)
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: f.write(buffer.getvalue()))
        parts.append(vectors)
    matrix = (np.concatenate(parts, axis=1).astype(np.float32)
              / np.sqrt(len(parts))).astype(np.float16)
    return TeacherVectors({t: i for i, t in enumerate(requirements)},
                          {t: len(requirements) + i for i, t in enumerate(sections)}, matrix)
