"""A frozen BERT retriever's layers with their weights pre-packed for oneDNN, which serving
uses to encode requirements on a CPU.

A one-requirement query is a dozen tokens: at that size a linear layer's cost is not its
products but laying its weights out for oneDNN again on every call, and transformers' BERT adds
as long again in Python and per-module casts. Here each weight is laid out once
(``torch.ops.mkldnn._reorder_linear_weight``) and each layer is five oneDNN linears (the GELU
fused into the first feed-forward one), torch's SDPA and two layer norms: written out by hand
because no library packs a BERT for oneDNN short of a compiler. The weights are copied, so a
model that trains on would leave the copy stale: only a
:class:`~cetd_phase1.retrieve.Retriever`, whose model never changes, builds one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import BertModel

from cetd_phase1.modeling.model import CETDRetriever

#: BERT activations oneDNN fuses into a linear the same way: (post-op, its algorithm).
_ACTIVATIONS = {"gelu": ("gelu", "none"), "relu": ("relu", "")}

#: The row count oneDNN lays weights out for: a query's tokens (any count computes correctly).
_ROWS_HINT = 16


class PrepackedEncoder:
    """:meth:`CETDRetriever.encode` through pre-packed oneDNN linears in one dtype (bfloat16
    where the CPU computes it natively, else float32): cosines within bfloat16's rounding of
    the model's own (tests/test_model.py)."""

    def __init__(self, model: CETDRetriever, dtype: torch.dtype) -> None:
        bert = model.backbone
        config = bert.config
        self.model, self.dtype = model, dtype
        self.heads, self.eps = config.num_attention_heads, config.layer_norm_eps
        self.activation = _ACTIVATIONS[config.hidden_act]
        self.layers = [self._pack_layer(layer) for layer in bert.encoder.layer]

    @classmethod
    def from_model(cls, model: CETDRetriever, dtype: torch.dtype | None) -> "PrepackedEncoder | None":
        """The packed copy of ``model`` in ``dtype`` (``None``: float32), or ``None`` where its
        backbone does not map onto it: not BERT (a decoder), LoRA adapters, relative positions
        or another activation, weights on a GPU, or a torch built without oneDNN."""
        bert = model.backbone
        if not isinstance(bert, BertModel) or next(bert.parameters()).device.type != "cpu" \
                or not torch.backends.mkldnn.is_available() \
                or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
            return None
        config = bert.config
        if config.is_decoder or config.hidden_act not in _ACTIVATIONS \
                or getattr(config, "position_embedding_type", "absolute") != "absolute":
            return None
        return cls(model, dtype or torch.float32)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               tokens: bool = False) -> torch.Tensor:
        """As :meth:`CETDRetriever.encode`; call it without autocast."""
        with torch.inference_mode():
            hidden = self.model.backbone.embeddings(input_ids=input_ids).to(self.dtype)
            batch, length, width = hidden.shape
            keys = attention_mask.bool()[:, None, None, :]  # padding is never attended to
            x = hidden.reshape(batch * length, width)
            for layer in self.layers:
                qkv = self._linear(x, *layer["qkv"])
                q, k, v = qkv.view(batch, length, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
                attended = F.scaled_dot_product_attention(q, k, v, attn_mask=keys)
                attended = attended.transpose(1, 2).reshape(batch * length, width)
                x = F.layer_norm(self._linear(attended, *layer["out"]) + x, (width,),
                                 *layer["norm1"], self.eps)
                inner = self._linear(x, *layer["up"], self.activation)
                x = F.layer_norm(self._linear(inner, *layer["down"]) + x, (width,),
                                 *layer["norm2"], self.eps)
            mixed = self.dtype != torch.float32  # a projection head's weights are in self.dtype
            with torch.autocast("cpu", dtype=self.dtype if mixed else None, enabled=mixed):
                return self.model.represent(x.view(batch, length, width).float(),
                                            attention_mask, tokens)

    @staticmethod
    def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                activation: tuple[str, str] = ("none", "")) -> torch.Tensor:
        post_op, algorithm = activation
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, post_op, [], algorithm)

    def _pack_layer(self, layer: torch.nn.Module) -> dict[str, tuple[torch.Tensor, ...]]:
        """One BERT layer's weights: linears as (packed weight, bias), norms as (weight, bias);
        query, key and value in one linear."""
        attention, output = layer.attention, layer.output
        projections = (attention.self.query, attention.self.key, attention.self.value)

        def cast(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to(self.dtype).contiguous()

        def linear(weight: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return (torch.ops.mkldnn._reorder_linear_weight(cast(weight), _ROWS_HINT),
                    cast(bias))

        return {"qkv": linear(torch.cat([p.weight for p in projections]),
                              torch.cat([p.bias for p in projections])),
                "out": linear(attention.output.dense.weight, attention.output.dense.bias),
                "norm1": (cast(attention.output.LayerNorm.weight),
                          cast(attention.output.LayerNorm.bias)),
                "up": linear(layer.intermediate.dense.weight, layer.intermediate.dense.bias),
                "down": linear(output.dense.weight, output.dense.bias),
                "norm2": (cast(output.LayerNorm.weight), cast(output.LayerNorm.bias))}
