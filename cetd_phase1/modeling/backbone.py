"""Finding and loading a backbone: the packaged aliases (:mod:`~cetd_phase1.modeling.packaged`),
local folders and hub snapshots, in float32 master weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel

from cetd_phase1.errors import CETDError
from cetd_phase1.modeling.config import CETDConfig, is_decoder_backbone
from cetd_phase1.modeling.packaged import packaged_path


def resolve_backbone(name: str | os.PathLike | None) -> str:
    """Local path (or hub id) of a backbone; the packaged aliases (MiniLM, all-mpnet-base-v2)
    resolve to their installed copy, so configs and saved checkpoints stay portable across
    machines."""
    text = "" if name is None else str(name)
    return packaged_path(text) or text


#: Backbone config keys of the dropout on attention probabilities (BERT-like, Qwen2/Llama).
ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout")


def load_base(path: str, attention_dropout: float | None = None) -> PreTrainedModel:
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



def check_text_lengths(backbone: str, backbone_config: PreTrainedConfig | None,
                       settings: dict[str, Any]) -> None:
    """A CETDError when ``settings``' token limits exceed the backbone's positions (longer
    inputs fail deep in the forward); ``backbone_config`` ``None`` reads it from ``backbone``,
    so a driver checks before it builds any data."""
    if backbone_config is None:
        try:
            backbone_config = AutoConfig.from_pretrained(resolve_backbone(backbone))
        except (OSError, ValueError) as err:
            raise CETDError(f"cannot read the config of backbone {backbone!r}: {err}") from err
    positions = getattr(backbone_config, "max_position_embeddings", None)
    for key in ("max_req_length", "max_code_length"):
        if positions and settings.get(key, 0) > positions:
            raise CETDError(f"dataset.{key} {settings[key]} is more than the {positions} "
                            f"positions of backbone {backbone!r}: set it to {positions} or less")


def config_for(backbone: str, backbone_config: PreTrainedConfig,
                settings: dict[str, Any]) -> CETDConfig:
    decoder = is_decoder_backbone(backbone_config)
    check_text_lengths(backbone, backbone_config, settings)
    settings = dict(settings)
    if settings.get("pooling") is None:
        settings["pooling"] = "last_token" if decoder else "mean"
    if settings.get("append_eos") is None:
        settings["append_eos"] = decoder
    return CETDConfig(backbone=backbone, backbone_config=backbone_config.to_dict(), **settings)


def as_dtype(value: torch.dtype | str | None) -> torch.dtype | None:
    """``from_pretrained``'s dtype argument as a torch dtype; ``None`` keeps float32."""
    if value is None or value == "auto":
        return None
    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise CETDError(f"dtype {value!r} is not a torch dtype (e.g. float32, bfloat16)")
    return found


def local_folder(name_or_path: str | os.PathLike, revision: str | None,
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


