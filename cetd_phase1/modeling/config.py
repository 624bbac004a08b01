"""The model's configuration: what :class:`~cetd_phase1.modeling.model.CETDRetriever` needs to
be rebuilt and to read text (backbone, pooling, head, loss, LoRA, token limits). How its scores
rank an app lives in :mod:`cetd_phase1.ranking.config`."""

from __future__ import annotations

from typing import Any, Sequence

from transformers import AutoConfig, PreTrainedConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

from cetd_phase1.config import DatasetSection, ModelSection, TrainingSection
from cetd_phase1.errors import CETDError
from cetd_phase1.modeling.pooling import POOLINGS

# A model built without a config file gets the YAML sections' defaults (declared there only).
_MODEL, _TRAINING, _DATASET = ModelSection(), TrainingSection(), DatasetSection()


def is_decoder_backbone(backbone_config: PreTrainedConfig) -> bool:
    """True for decoder-only backbones (Qwen2, Llama, ...): they read left to right, so only
    the last token has seen the whole text. Encoders are the masked-LM architectures."""
    return backbone_config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


class CETDConfig(PreTrainedConfig):
    """Configuration of :class:`CETDRetriever`.

    Args:
        backbone: name or path of the backbone (a MiniLM alias, a folder or a hub id).
        backbone_config: the backbone's own config as a dict (lets a full fine-tune reload
            without the base weights); filled in by :meth:`CETDRetriever.from_backbone`.
        pooling: ``"mean"`` (encoders), ``"last_token"`` (decoders) or ``"cls"``; ``None``
            picks by architecture.
        append_eos: append the tokenizer's EOS to every text (decoders; ``None`` = by
            architecture) so the last token is the same summary token everywhere.
        normalize: L2-normalise embeddings, so scores are cosine similarities.
        projection_dim: output size of a linear head shared by both sides (the seed's
            ``RetrievalHead``), or ``None`` for no head.
        loss_temperature: InfoNCE temperature tau (logits are ``cos / tau``,
            :mod:`cetd_phase1.losses`); not called
            ``temperature``, which transformers reserves for generation.
        gather_across_devices: InfoNCE scores each process's requirements against the
            candidates of all processes (differentiable all-gather); no effect in one process.
        use_lora, lora_r, lora_alpha, lora_dropout, lora_target_modules: peft LoRA settings.
        max_req_length, max_code_length: token limits for requirements and code sections.
        encode_chunk_size: encode a batch in length-sorted chunks of this many texts, each cut
            to its own longest text. Same embeddings; on a CPU it skips the padding of a batch
            of mixed lengths (about half its tokens) and small chunks stay in cache.
            ``None``: 8 on a CPU, the batch in one piece on a GPU.
        split_identifiers: split camelCase identifiers into words in every text before
            tokenizing (:func:`~cetd_phase1.text.split_camel_case`), requirements and
            code alike; for uncased WordPiece vocabularies, which shred them otherwise.
    """

    model_type = "cetd_retriever"

    def __init__(self, backbone: str = _MODEL.base_model, backbone_config: dict | None = None,
                 pooling: str | None = _MODEL.pooling, append_eos: bool | None = None,
                 normalize: bool = _MODEL.normalize,
                 projection_dim: int | None = _MODEL.projection_dim,
                 loss_temperature: float = _TRAINING.temperature,
                 gather_across_devices: bool = _TRAINING.gather_across_devices,
                 use_lora: bool = _TRAINING.use_lora, lora_r: int = _TRAINING.lora_r,
                 lora_alpha: int = _TRAINING.lora_alpha,
                 lora_dropout: float = _TRAINING.lora_dropout,
                 lora_target_modules: Sequence[str] | None = _TRAINING.target_modules,
                 max_req_length: int = _DATASET.max_req_length,
                 max_code_length: int = _DATASET.max_code_length,
                 encode_chunk_size: int | None = _MODEL.encode_chunk_size,
                 split_identifiers: bool = _MODEL.split_identifiers,
                 **kwargs: Any) -> None:
        if pooling is not None and pooling not in POOLINGS:
            raise CETDError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if loss_temperature <= 0:
            raise CETDError(f"temperature must be > 0, got {loss_temperature}")
        if encode_chunk_size is not None and encode_chunk_size < 1:
            raise CETDError(f"encode_chunk_size must be >= 1 or null, got {encode_chunk_size}")
        self.backbone = backbone
        self.backbone_config = backbone_config
        self.pooling = pooling
        self.append_eos = append_eos
        self.normalize = normalize
        self.projection_dim = projection_dim
        self.loss_temperature = loss_temperature
        self.gather_across_devices = gather_across_devices
        self.use_lora = use_lora
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = list(lora_target_modules) if lora_target_modules else None
        self.max_req_length = max_req_length
        self.max_code_length = max_code_length
        self.encode_chunk_size = encode_chunk_size
        self.split_identifiers = split_identifiers
        super().__init__(**kwargs)


# Lets AutoConfig/AutoTokenizer read a saved checkpoint's config.json by its model_type
# (AutoModel is registered below the model class).
AutoConfig.register(CETDConfig.model_type, CETDConfig, exist_ok=True)

