"""Publishing a trained retriever to a (private) HuggingFace hub repository.

:func:`prepare_upload` copies from a saved model folder exactly what
``CETDRetriever.from_pretrained`` needs - ``config.json``, the LoRA adapter and
``head.safetensors`` (or, for a full fine-tune, its ``model.safetensors``), the tokenizer -
and writes a model card (``README.md``) with the evaluation metrics and the training
configuration. The base model's weights are never uploaded: ``config.json`` names the base
model, which the loader fetches from its own repository. :func:`push` creates the repository
(private by default) and uploads that folder in one commit.

The token is never handled here: ``huggingface_hub`` reads it from ``HF_TOKEN`` or the cached
``hf auth login``, so it cannot reach logs, configs or cards.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from cetd_phase1.errors import CETDError
from cetd_phase1.evaluation.metrics import METRIC_NAMES
from cetd_phase1.ranking.config import RANKING_CONFIG, RankingConfig

logger = logging.getLogger(__name__)

LORA_FILES = ("config.json", "adapter_config.json", "adapter_model.safetensors",
              "head.safetensors")
FULL_FILES = ("config.json", "model.safetensors")
TOKENIZER_PATTERNS = ("tokenizer*.json", "tokenizer.model", "special_tokens_map.json",
                      "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                      "chat_template.*")
CARD = "README.md"

_URL_PASSWORD = re.compile(r"(://[^:/@\s]+):[^@\s]+@")


def redact(value: Any) -> Any:
    """``value`` (nested dicts/lists) with passwords of URLs (a ``dataset.source`` database
    URL) replaced by ``***``."""
    if isinstance(value, dict):
        return {k: redact(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return _URL_PASSWORD.sub(r"\1:***@", value)
    return value


def model_card(model_config: dict[str, Any], repo_id: str, *,
               training_config: dict[str, Any] | None,
               metrics: dict[str, dict[str, float]], loading: str | None = None,
               ranking: dict[str, Any] | None = None, merged: bool = False) -> str:
    """The ``README.md`` of a published retriever: hub metadata, how to load it (``loading``:
    another snippet, e.g. for a sentence-transformers export), the metrics of each evaluated
    split (``metrics[split]`` holds ``<prefix>_<metric>`` keys) and the training
    configuration (passwords redacted; ``None``: not known where the card is written).
    ``merged``: the folder holds the weights with a LoRA adapter merged into them."""
    from huggingface_hub import ModelCardData

    from cetd_phase1.modeling.packaged import hub_id

    base = str(model_config.get("backbone", ""))
    lora = bool(model_config.get("use_lora")) and not merged
    looks_like_id = base.count("/") == 1 and not base.startswith(("/", "."))
    data = ModelCardData(library_name="peft" if lora else None, pipeline_tag="sentence-similarity",
                         tags=["cetd-phase1", "code-retrieval", "bi-encoder"],
                         base_model=hub_id(base) or (base if looks_like_id else None))
    rows = []
    for split, values in metrics.items():
        cells = {name.split("_", 1)[1]: v for name, v in values.items()
                 if name.split("_", 1)[-1] in METRIC_NAMES}
        if cells:
            rows.append(f"| {split} | " + " | ".join(f"{cells[k]:.3f}" if k in cells else ""
                                                     for k in METRIC_NAMES) + " |")
    header = "| split | " + " | ".join(METRIC_NAMES) + " |"
    rule = "|---" * (len(METRIC_NAMES) + 1) + "|"
    table = "\n".join([header, rule, *rows]) if rows else "(not evaluated)"
    if loading is None:
        loading = ("from cetd_phase1 import CETDRetriever\n"
                   f'model = CETDRetriever.from_pretrained("{repo_id}")  '
                   '# revision="..." for a fixed commit')
    head = " and projection head" if model_config.get("projection_dim") else ""
    weights = (f"a LoRA adapter (r={model_config.get('lora_r')}){head} on `{base}`; the base "
               f"weights are not in this repository and are loaded from `{base}`"
               if lora else f"all weights of `{base}` with a LoRA adapter (r="
               f"{model_config.get('lora_r')}){head} merged into them" if merged
               else f"all weights of a full fine-tune of `{base}`")
    return f"""---
{data.to_yaml()}
---

# {repo_id.split('/')[-1]}

A requirement -> code retriever (bi-encoder) trained with `cetd-phase1`: it ranks the code
sections (functions, methods, classes) of one Python application by how likely they implement a
requirement. This repository holds {weights}.

```python
{loading}
```

Pooling `{model_config.get('pooling')}`, embedding size
{model_config.get('projection_dim') or 'of the backbone'}, trained with InfoNCE at temperature
`{model_config.get('loss_temperature')}`.{_ranking_line(ranking)}

## Evaluation (full-app ranking)

{table}

{_training_section(training_config)}"""


def _ranking_line(ranking: dict[str, Any] | None) -> str:
    if not ranking:
        return ""
    settings = ", ".join(f"{k} `{v}`" for k, v in ranking.items())
    return f" Ranked with {settings} (`ranking_config.json`)."


def _training_section(training_config: dict[str, Any] | None) -> str:
    if training_config is None:
        return ""
    dumped = yaml.safe_dump(redact(training_config), sort_keys=False).strip()
    return f"## Training configuration\n\n```yaml\n{dumped}\n```\n"


def prepare_upload(model_dir: str | Path, upload_dir: str | Path, *, repo_id: str,
                   training_config: dict[str, Any],
                   metrics: dict[str, dict[str, float]]) -> list[str]:
    """Fill ``upload_dir`` (emptied first) with the files to publish from the saved model
    folder ``model_dir`` plus the model card; returns their names, sorted."""
    model_dir, upload_dir = Path(model_dir), Path(upload_dir)
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        raise CETDError(f"{model_dir}: no config.json (not a saved retriever)")
    model_config = json.loads(config_file.read_text())
    base = str(model_config.get("backbone", ""))
    if model_config.get("use_lora") and Path(base).is_absolute():
        logger.warning("the base model %s is a local folder: the published adapter only "
                       "reloads where that folder exists (train on a hub id to share it)", base)
    names = LORA_FILES if model_config.get("use_lora") else FULL_FILES
    weights = [model_dir / n for n in names]
    missing = [p.name for p in weights if not p.is_file() and p.name != "head.safetensors"]
    if missing:
        raise CETDError(f"{model_dir}: incomplete model folder, missing {', '.join(missing)}")
    tokenizer = sorted({p for pattern in TOKENIZER_PATTERNS for p in model_dir.glob(pattern)})
    if upload_dir.exists():
        shutil.rmtree(upload_dir)
    upload_dir.mkdir(parents=True)
    ranking = model_dir / RANKING_CONFIG  # how the metrics below were ranked
    for path in [p for p in [*weights, ranking] if p.is_file()] + tokenizer:
        shutil.copy2(path, upload_dir / path.name)
    (upload_dir / CARD).write_text(model_card(
        model_config, repo_id, training_config=training_config, metrics=metrics,
        ranking=asdict(RankingConfig.load(model_dir))), encoding="utf-8")
    return sorted(p.name for p in upload_dir.iterdir())


def push(upload_dir: str | Path, repo_id: str, *, private: bool = True,
         commit_message: str = "Upload CET-D retriever") -> str:
    """Create ``repo_id`` if needed (``private``) and upload ``upload_dir`` in one commit;
    returns the commit URL. Refuses to upload a private model into an existing public repo
    (``create_repo`` keeps an existing repo's visibility)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()  # token: HF_TOKEN or the cached login, never passed around here
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        if private and not api.repo_info(repo_id).private:
            raise CETDError(f"hub repo {repo_id} exists and is public; training.hub_private_repo"
                            f" is true: make it private or choose another hub_model_id")
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(upload_dir),
                                   commit_message=commit_message)
    except HfHubHTTPError as err:
        raise CETDError(f"cannot push to hub repo {repo_id}: {str(err).splitlines()[0]}") from err
    logger.info("pushed %s to %s (private: %s)", upload_dir, repo_id, private)
    return str(getattr(commit, "commit_url", commit))
