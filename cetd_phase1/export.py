"""Export a checkpoint (or a plain backbone) as a sentence-transformers folder that gives the
same embeddings as :class:`~cetd_phase1.retrieve.Retriever`."""

from __future__ import annotations

import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cetd_phase1.atomic import atomic_directory, atomic_write_text
from cetd_phase1.errors import CETDError

logger = logging.getLogger(__name__)

_ST_POOLING = {"mean": "mean", "cls": "cls", "last_token": "lasttoken"}


def _append_eos_in_tokenizer(tokenizer) -> None:
    """Make a fast tokenizer append EOS itself, as our encoder does for decoder backbones, so
    sentence-transformers' last-token pooling reads the same token. Truncation then keeps room
    for it, matching :func:`cetd_phase1.modeling.tokens.tokenize`.

    The special tokens the tokenizer already adds are found by probing, and the post-processor
    becomes one template with EOS after them (a ``processors.Sequence`` of templates is not
    supported by ``tokenizers`` in batch mode).
    """
    from tokenizers import processors

    if not getattr(tokenizer, "is_fast", False):
        raise CETDError("exporting a decoder backbone needs a fast tokenizer (to append EOS)")
    with_special = tokenizer("a", padding=False, truncation=False)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False, padding=False)["input_ids"]
    at = next(i for i in range(len(with_special)) if with_special[i:i + len(plain)] == plain)
    prefix, suffix = with_special[:at], with_special[at + len(plain):]
    ids = prefix + ["$A"] + suffix + [tokenizer.eos_token_id]
    names = [i if i == "$A" else tokenizer.convert_ids_to_tokens(i) for i in ids]
    special = {(tokenizer.convert_ids_to_tokens(i), i) for i in ids if i != "$A"}
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=" ".join(names), special_tokens=sorted(special))


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers' warnings off inside (restored after)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def _check_export_target(out_dir: Path) -> None:
    """The export replaces ``out_dir`` whole, so it may only be new, an empty folder or an earlier
    sentence-transformers folder (``modules.json``): anything else is the user's and is kept."""
    if not out_dir.exists() or (out_dir / "modules.json").is_file() or \
            (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    what = "a folder that is not a sentence-transformers export (no modules.json)" \
        if out_dir.is_dir() else "a file"
    raise CETDError(f"{out_dir}: exists and is {what}; the export replaces its target whole, "
                    "so choose a new or empty folder")


def export_sentence_transformers(model_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``model_dir`` (trained checkpoint or plain backbone) as a sentence-transformers folder.

    ``SentenceTransformer(out_dir)`` then gives the same embeddings as :class:`Retriever`
    (Transformer -> Pooling -> [Dense projection] -> [Normalize]); ``encode_query`` and
    ``encode_document`` use our requirement and code length limits. A LoRA adapter is merged
    into the backbone first; for decoder backbones the tokenizer appends EOS, as our encoder does.
    A model trained with ``split_identifiers`` expects its texts split at camelCase boundaries,
    which a sentence-transformers folder cannot do by itself: the caller passes them through
    :func:`~cetd_phase1.text.split_camel_case` (a warning says so). Likewise a model with
    ``section_chunks`` > 1 ranks a long function by the best of several texts, which the caller
    builds with :func:`~cetd_phase1.ranking.chunks.section_texts` (a warning says so).
    """
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import (Dense, Normalize, Pooling,
                                                                    Transformer)

    from cetd_phase1.modeling.loading import load_retriever
    from cetd_phase1.ranking.config import RankingConfig

    out_dir = Path(out_dir)
    _check_export_target(out_dir)
    model, tokenizer = load_retriever(model_dir)
    config = model.config
    ranking = RankingConfig.load(model_dir)
    if config.split_identifiers:
        logger.warning("%s reads camelCase identifiers as words (split_identifiers): pass texts "
                       "through cetd_phase1.text.split_camel_case before "
                       "SentenceTransformer.encode, or the embeddings differ", model_dir)
    if ranking.section_chunks > 1:
        logger.warning("%s ranks a long function by the best of up to %d texts (section_chunks):"
                       " build them with cetd_phase1.ranking.chunks.section_texts and keep each "
                       "section's best score", model_dir, ranking.section_chunks)
    if ranking.late_interaction:
        logger.warning("%s scores %g x cosine + %g x token-level MaxSim (late_interaction); the "
                       "sentence-transformers folder gives the pooled embeddings, the cosine "
                       "part only", model_dir, 1 - ranking.late_interaction,
                       ranking.late_interaction)
    backbone = model.backbone
    if getattr(config, "use_lora", False):
        backbone = backbone.merge_and_unload()
    with tempfile.TemporaryDirectory(prefix="cetd-export-") as tmp:
        backbone.save_pretrained(tmp)
        if config.append_eos:
            _append_eos_in_tokenizer(tokenizer)
        tokenizer.save_pretrained(tmp)
        with _quiet_transformers():  # its load report lists the pooler our pooling never uses
            transformer = Transformer(tmp, max_seq_length=config.max_code_length,
                                      query_length=config.max_req_length,
                                      document_length=config.max_code_length)
        hidden = backbone.config.hidden_size
        modules = [transformer, Pooling(hidden, pooling_mode=_ST_POOLING[config.pooling])]
        if model.head is not None:
            linear = model.head.dense
            modules.append(Dense(hidden, linear.out_features, bias=linear.bias is not None,
                                 activation_function=torch.nn.Identity(),
                                 init_weight=linear.weight.detach().clone(),
                                 init_bias=None if linear.bias is None
                                 else linear.bias.detach().clone()))
        if config.normalize:
            modules.append(Normalize())
        st = SentenceTransformer(modules=modules, device="cpu")
        with atomic_directory(out_dir) as staging:
            st.save(str(staging))
            # sentence-transformers' own card says "Base model: Unknown": write what it is
            from cetd_phase1.hub import CARD, model_card
            loading = (f"from sentence_transformers import SentenceTransformer\n"
                       f'model = SentenceTransformer("{out_dir}")\n'
                       f"queries = model.encode_query([...]); code = model.encode_document([...])")
            atomic_write_text(Path(staging) / CARD, model_card(
                config.to_dict(), out_dir.resolve().name, training_config=None, metrics={},
                loading=loading, merged=bool(config.use_lora)))
    return out_dir
