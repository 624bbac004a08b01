"""One loader for every kind of model folder: a trained checkpoint (folder or hub id) or a plain
backbone such as the packaged MiniLM (the untrained baseline)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from cetd_phase1.errors import CETDError
from cetd_phase1.modeling.backbone import local_folder, resolve_backbone
from cetd_phase1.modeling.config import CETDConfig
from cetd_phase1.modeling.model import CETDRetriever
from cetd_phase1.modeling.tokens import load_tokenizer


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
        resolved = local_folder(path, None)  # a hub id: the cached (or downloaded) snapshot
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
