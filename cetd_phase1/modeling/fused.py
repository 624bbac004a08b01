"""A frozen BERT retriever's layers as torch's fused transformer encoder layers, which
serving uses to encode requirements on a CPU.

A one-requirement query is a dozen tokens: there, transformers' BERT spends as long in Python
and per-module casts as in its products, and torch's fused layer (``nn.TransformerEncoderLayer``
in eval mode, one native call a layer) encodes it in about two thirds of the time
(``bench/retrieve_latency.py``). The weights are copied, so a model that trains on would leave
the copy stale: only a :class:`~cetd_phase1.retrieve.Retriever`, whose model never changes,
builds one.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertModel

from cetd_phase1.modeling.model import CETDRetriever

#: BERT activations torch's fused layer computes the same way (exact erf GELU, ReLU).
_ACTIVATIONS = ("gelu", "relu")


class FusedEncoder:
    """:meth:`CETDRetriever.encode` through fused encoder layers in one dtype (bfloat16 where
    the CPU computes it natively, else float32): cosines within bfloat16's rounding of the
    model's own (tests/test_model.py)."""

    def __init__(self, model: CETDRetriever, dtype: torch.dtype) -> None:
        bert = model.backbone
        self.model, self.dtype = model, dtype
        self.layers = nn.ModuleList(_fused_layer(layer, bert.config, dtype)
                                    for layer in bert.encoder.layer).eval().requires_grad_(False)

    @classmethod
    def from_model(cls, model: CETDRetriever, dtype: torch.dtype | None) -> "FusedEncoder | None":
        """The fused copy of ``model`` in ``dtype`` (``None``: float32), or ``None`` where its
        backbone does not map onto the fused layer: not BERT (a decoder), LoRA adapters,
        relative positions or another activation, or weights on a GPU."""
        bert = model.backbone
        if not isinstance(bert, BertModel) or next(bert.parameters()).device.type != "cpu":
            return None
        config = bert.config
        if config.is_decoder or config.hidden_act not in _ACTIVATIONS \
                or getattr(config, "position_embedding_type", "absolute") != "absolute":
            return None
        return cls(model, dtype or torch.float32)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               tokens: bool = False) -> torch.Tensor:
        """As :meth:`CETDRetriever.encode`; call it without autocast and without grad, else
        torch takes its slow path."""
        hidden = self.model.backbone.embeddings(input_ids=input_ids).to(self.dtype)
        padding = attention_mask == 0
        for layer in self.layers:
            hidden = layer(hidden, src_key_padding_mask=padding)
        mixed = self.dtype != torch.float32  # a projection head's weights are in self.dtype
        with torch.autocast("cpu", dtype=self.dtype if mixed else None, enabled=mixed):
            return self.model.represent(hidden.float(), attention_mask, tokens)


def _fused_layer(layer: nn.Module, config, dtype: torch.dtype) -> nn.TransformerEncoderLayer:
    """One BERT layer's weights in a post-norm ``nn.TransformerEncoderLayer``."""
    attention, output = layer.attention, layer.output
    fused = nn.TransformerEncoderLayer(
        config.hidden_size, config.num_attention_heads, config.intermediate_size, dropout=0.0,
        activation=config.hidden_act, layer_norm_eps=config.layer_norm_eps, batch_first=True)
    projections = (attention.self.query, attention.self.key, attention.self.value)
    with torch.no_grad():
        fused.self_attn.in_proj_weight.copy_(torch.cat([p.weight for p in projections]))
        fused.self_attn.in_proj_bias.copy_(torch.cat([p.bias for p in projections]))
        for target, source in ((fused.self_attn.out_proj, attention.output.dense),
                               (fused.norm1, attention.output.LayerNorm),
                               (fused.linear1, layer.intermediate.dense),
                               (fused.linear2, output.dense), (fused.norm2, output.LayerNorm)):
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
    return fused.to(dtype)
