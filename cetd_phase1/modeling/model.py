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

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from cetd_phase1.errors import CETDError
from cetd_phase1.losses import build_loss
from cetd_phase1.modeling.backbone import (as_dtype, config_for, load_base, local_folder,
                                           resolve_backbone)
from cetd_phase1.modeling.config import CETDConfig
from cetd_phase1.modeling.pooling import RetrievalHead, pool

#: Texts per length-sorted chunk on a CPU when the config does not say: small chunks stay in
#: cache (bench/encode_throughput.py, batch 64: 21.7 sections/s in one piece, 26.0 in chunks of 8).
CPU_CHUNK_SIZE = 8
HEAD_WEIGHTS = "head.safetensors"
FULL_WEIGHTS = "model.safetensors"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass
class RetrievalOutput(ModelOutput):
    """``loss`` (when labels were given), ``scores`` [B, C] (similarities, before temperature),
    ``q_reps`` [B, D] and ``p_reps`` [C, D]."""

    loss: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    q_reps: torch.Tensor | None = None
    p_reps: torch.Tensor | None = None



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
    def from_backbone(cls, backbone: str | os.PathLike, *,
                      attention_dropout: float | None = None,
                      **settings: Any) -> "CETDRetriever":
        """A new retriever on pretrained backbone weights; ``settings`` are :class:`CETDConfig`
        fields (pooling, projection_dim, use_lora, ...). ``attention_dropout`` replaces the
        backbone's dropout on attention probabilities (``None``: keep it)."""
        path = resolve_backbone(backbone)
        try:
            base = load_base(path, attention_dropout)
        except (OSError, ValueError, SafetensorError) as err:
            raise CETDError(f"cannot load backbone {str(backbone)!r} ({path}): {err}") from err
        return cls(config_for(str(backbone), base.config, settings), backbone=base)

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
        return self.represent(out.last_hidden_state, attention_mask, tokens)

    def represent(self, hidden: torch.Tensor, attention_mask: torch.Tensor,
                  tokens: bool = False) -> torch.Tensor:
        """What :meth:`encode` returns, from the backbone's last hidden states [B, L, H]."""
        reps = pool(hidden, attention_mask, self.config.pooling)
        if self.head is not None:
            reps = self.head(reps)
        reps = reps.float()  # scores and loss in fp32, also under fp16 autocast
        reps = F.normalize(reps, dim=-1) if self.config.normalize else reps
        if not tokens:
            return reps
        vectors = hidden if self.head is None else self.head(hidden)
        vectors = F.normalize(vectors.float(), dim=-1) * attention_mask.unsqueeze(-1)
        return torch.cat([reps.unsqueeze(1), vectors], dim=1)

    def forward(self, q_input_ids: torch.Tensor, q_attention_mask: torch.Tensor,
                p_input_ids: torch.Tensor, p_attention_mask: torch.Tensor,
                labels: torch.Tensor | None = None, **_: Any) -> RetrievalOutput:
        """Encode B requirements and C candidates; with ``labels`` (index of each requirement's
        positive among the candidates) also compute the loss."""
        q = self.encode(q_input_ids, q_attention_mask)
        p = self.encode(p_input_ids, p_attention_mask)
        loss = self.loss_fn(q, p, labels) if labels is not None else None
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
            from cetd_phase1.atomic import atomic_write_text, final_path
            from cetd_phase1.hub import CARD, model_card
            published = final_path(out)  # the folder's name once a staging folder is renamed
            atomic_write_text(out / CARD, model_card(
                self.config.to_dict(), published.resolve().name, training_config=None,
                metrics={}, loading=f'from cetd_phase1 import CETDRetriever\n'
                                    f'model = CETDRetriever.from_pretrained("{published}")'))
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
        wanted = as_dtype(dtype if dtype is not None else torch_dtype)
        directory = local_folder(pretrained_model_name_or_path, revision, token)
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
                base = load_base(path)
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


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; a truncated or corrupt file is a CETDError naming it."""
    try:
        return load_file(str(path))
    except (OSError, SafetensorError) as err:
        raise CETDError(f"{path}: unreadable or corrupt weights file ({err})") from None

