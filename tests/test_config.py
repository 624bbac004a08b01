"""YAML config: the seed's keys, clear errors, TrainingArguments mapping, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cetd_phase1.config import (apply_overrides, config_from_dict, load_config,
                                training_arguments, without_evaluation)
from cetd_phase1.errors import CETDError

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

SEED_YAML = """
model:
  base_model: "Qwen/Qwen2.5-Coder-1.5B-Instruct"
  output_dir: "/mnt/nvme/models/cet-d-phase1"
training:
  num_epochs: 10
  batch_size: 8
  learning_rate: 2e-5
  warmup_steps: 500
  gradient_accumulation_steps: 4
  max_grad_norm: 1.0
  use_lora: true
  lora_r: 16
  lora_alpha: 32
  lora_dropout: 0.05
  target_modules: ["q_proj", "v_proj", "k_proj", "o_proj"]
dataset:
  val_split: 0.1
  max_code_length: 2048
  max_req_length: 512
evaluation:
  eval_steps: 100
  save_steps: 500
  metric: "retrieval_accuracy"
  early_stopping_patience: 3
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "train_config.yaml"
    path.write_text(text)
    return path


def test_the_seeds_config_loads_with_its_meaning(tmp_path):
    cfg = load_config(_write(tmp_path, SEED_YAML))
    assert cfg.training.learning_rate == pytest.approx(2e-5)  # "2e-5" is a string to YAML 1.1
    assert cfg.training.target_modules == ["q_proj", "v_proj", "k_proj", "o_proj"]
    assert cfg.metric_key == "accuracy"
    settings = cfg.model_settings()
    assert settings["use_lora"] and settings["lora_r"] == 16 and settings["max_code_length"] == 2048


@pytest.mark.parametrize("name", ["phase1_minilm_cpu.yaml", "phase1_mpnet_cpu.yaml",
                                  "phase1_qwen_coder_1.5b.yaml", "reranker_minilm_cpu.yaml"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / name)
    assert cfg.evaluation.save_steps % cfg.evaluation.eval_steps == 0


def test_shipped_configs_by_name_and_a_partial_config_on_a_named_base(tmp_path):
    from cetd_phase1.config import shipped_configs

    assert set(shipped_configs()) >= {"minilm-cpu", "mpnet-cpu", "qwen-coder-1.5b",
                                      "reranker-minilm-cpu"}
    by_name = load_config("minilm-cpu")
    assert by_name.to_dict() == load_config(CONFIGS / "phase1_minilm_cpu.yaml").to_dict()
    partial = _write(tmp_path, "base: minilm-cpu\ntraining:\n  max_steps: 7\n")
    cfg = load_config(partial)
    assert cfg.base == "minilm-cpu" and cfg.training.max_steps == 7
    expected = by_name.to_dict()
    expected["training"]["max_steps"] = 7
    assert cfg.to_dict() == expected  # LoRA off, one epoch...: the base's, not the seed's
    with pytest.raises(CETDError, match=r"base 'minilm' is not a shipped config \(minilm-cpu"):
        load_config(_write(tmp_path, "base: minilm\n"))
    with pytest.raises(CETDError, match=r"no-such: no such config file, nor a shipped config"):
        load_config("no-such")
    with pytest.raises(CETDError, match="unknown key 'max_stepz'"):
        load_config(_write(tmp_path, "base: minilm-cpu\ntraining:\n  max_stepz: 7\n"))


def test_the_mpnet_config_is_the_default_recipe_on_another_backbone():
    """Its measured row is ``bench/ablation.py --only mpnet``: the shipped file may differ from
    the default only where that variant does (and in its output folder)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ablation", ROOT / "bench" / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    default = yaml.safe_load((CONFIGS / "phase1_minilm_cpu.yaml").read_text())
    mpnet = yaml.safe_load((CONFIGS / "phase1_mpnet_cpu.yaml").read_text())
    expected = ablation.variant_config(default, ablation.VARIANTS["mpnet"][1], Path("x"))
    expected["model"]["output_dir"] = mpnet["model"]["output_dir"]
    assert mpnet == expected


def test_qwen_config_keeps_the_seeds_values():
    cfg = load_config(CONFIGS / "phase1_qwen_coder_1.5b.yaml")
    raw = yaml.safe_load(SEED_YAML)
    seed = config_from_dict(raw)
    for section in ("training", "evaluation"):
        for key in raw[section]:
            if key in ("batch_size", "gradient_accumulation_steps"):
                continue  # 4 x 8 for the seed's 8 x 4 (below)
            expected = getattr(getattr(seed, section), key)
            assert getattr(getattr(cfg, section), key) == expected, f"{section}.{key}"
    # the seed's 32 requirements a step, in batches a 24 GB P40 holds
    t = cfg.training
    assert (t.batch_size, t.gradient_accumulation_steps) == (4, 8)
    assert not Path(cfg.model.output_dir).is_absolute()
    assert cfg.model.base_model == seed.model.base_model
    assert (cfg.dataset.max_code_length, cfg.dataset.max_req_length) == (2048, 512)


def test_unknown_key_names_key_and_file(tmp_path):
    path = _write(tmp_path, SEED_YAML.replace("lora_r: 16", "lora_rank: 16"))
    with pytest.raises(CETDError) as err:
        load_config(path)
    message = str(err.value)
    assert "lora_rank" in message and str(path) in message and "training" in message
    assert "lora_r" in message  # the suggestion


def test_unknown_section_fails(tmp_path):
    with pytest.raises(CETDError, match="unknown key 'optimizer'"):
        load_config(_write(tmp_path, SEED_YAML + "optimizer:\n  name: adamw\n"))


@pytest.mark.parametrize("old,new,match", [
    ("batch_size: 8", "batch_size: eight", "training.batch_size: expected an integer"),
    ("use_lora: true", "use_lora: 1", "training.use_lora: expected true or false"),
    ("learning_rate: 2e-5", "learning_rate: fast", "training.learning_rate: expected a number"),
    ('target_modules: ["q_proj", "v_proj", "k_proj", "o_proj"]', "target_modules: q_proj",
     "expected a list of strings"),
    ('metric: "retrieval_accuracy"', 'metric: "f1"', "evaluation.metric must be one of"),
    ("save_steps: 500", "save_steps: 250", "multiple of"),
    ("val_split: 0.1", "val_split: 0.3", "val_split"),
    ("use_lora: true", "use_lora: true\n  fp16: true\n  bf16: true", "pick one"),
    ("max_grad_norm: 1.0", "max_grad_norm: 1.0\n  bf16: maybe", "training.bf16: expected true"),
    ('base_model: "Qwen/Qwen2.5-Coder-1.5B-Instruct"',
     'base_model: "x"\n  attention_dropout: 1.5', "model.attention_dropout must be in"),
    ('base_model: "Qwen/Qwen2.5-Coder-1.5B-Instruct"',
     'base_model: "x"\n  encode_chunk_size: 0', "model.encode_chunk_size must be >= 1"),
    ('base_model: "Qwen/Qwen2.5-Coder-1.5B-Instruct"',
     'base_model: "x"\n  late_interaction: 1.5', "model: unknown key 'late_interaction'"),
    ("early_stopping_patience: 3", "early_stopping_patience: 3\nranking:\n  late_interaction: 1.5",
     "ranking.late_interaction must be in \\[0, 1\\], got 1.5"),
    ("early_stopping_patience: 3", "early_stopping_patience: 3\nranking:\n  hybrid_weight: -0.1",
     "ranking.hybrid_weight must be in"),
    ("early_stopping_patience: 3", "early_stopping_patience: 3\nranking:\n  section_chunks: 0",
     "ranking.section_chunks must be an integer >= 1"),
    ("early_stopping_patience: 3", "early_stopping_patience: 3\nranking:\n  sections: 2",
     "ranking: unknown key 'sections'"),
    ("early_stopping_patience: 3", "early_stopping_patience: 3\nranking:\n  class_penalty: -0.3",
     "ranking.class_penalty must be a number >= 0"),

    ("val_split: 0.1", "val_split: 0.1\n  pypi_packages: more.yaml",
     "dataset.pypi_packages is read by dataset.source: stdlib\\+pypi-changelog or "
     "stdlib\\+pypi-changelog\\+git only"),
    ("val_split: 0.1", "val_split: 0.1\n  commit_releases_per_repo: 2",
     "dataset.commit_releases_per_repo is read by dataset.source: stdlib\\+pypi-changelog\\+git"),
    ("val_split: 0.1", "val_split: 0.1\n  source: stdlib+pypi-changelog+git\n"
     "  commit_releases_per_repo: 0", "dataset.commit_releases_per_repo must be at least 1"),
    ("val_split: 0.1", "val_split: 0.1\n  source: stdlib+pypi\n  pypi_packages: more.yaml",
     "dataset.pypi_packages .* not 'stdlib\\+pypi'"),
    ("val_split: 0.1", "val_split: 0.1\n  label_sources: [docstring, docstrings]",
     "dataset.label_sources: unknown 'docstrings'"),
])
def test_bad_values_fail_clearly(tmp_path, old, new, match):
    assert old in SEED_YAML
    with pytest.raises(CETDError, match=match):
        load_config(_write(tmp_path, SEED_YAML.replace(old, new)))


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(CETDError, match="nope.yaml: no such config file, nor a shipped config"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(CETDError, match="cannot read config"):
        load_config(tmp_path / "folder.yaml")
    with pytest.raises(CETDError, match="invalid YAML"):
        load_config(_write(tmp_path, "model: [unclosed\n"))


def test_a_key_given_twice_is_an_error_naming_it(tmp_path):
    # PyYAML keeps the last copy silently: an edit above a forgotten copy would do nothing
    path = _write(tmp_path, SEED_YAML.replace("batch_size: 8", "batch_size: 8\n  batch_size: 16"))
    with pytest.raises(CETDError,
                       match=r"invalid YAML at line \d+ \(key 'batch_size' given twice\)"):
        load_config(path)


def test_training_arguments_mapping(tmp_path):
    cfg = apply_overrides(load_config(_write(tmp_path, SEED_YAML)),
                          output_dir=str(tmp_path / "out"), max_steps=7, batch_size=2,
                          learning_rate=1e-4)
    args = training_arguments(cfg)
    assert args.output_dir == str(tmp_path / "out")
    assert (args.max_steps, args.per_device_train_batch_size) == (7, 2)
    assert args.learning_rate == pytest.approx(1e-4)
    assert (args.num_train_epochs, args.warmup_steps, args.gradient_accumulation_steps) == (10, 500, 4)
    assert args.max_grad_norm == 1.0
    assert (args.eval_steps, args.save_steps) == (100, 500)
    assert args.load_best_model_at_end and args.metric_for_best_model == "accuracy"
    assert "tensorboard" in args.report_to
    assert not args.fp16  # no CUDA here
    from cetd_phase1.modeling.precision import cpu_has_native_bf16
    assert args.bf16 == cpu_has_native_bf16()  # auto: bf16 only where the CPU has it natively
    forced = config_from_dict({**yaml.safe_load(SEED_YAML),
                               "training": {**yaml.safe_load(SEED_YAML)["training"],
                                            "bf16": True}})
    assert training_arguments(forced).bf16
    assert not args.remove_unused_columns
    no_val = training_arguments(cfg, has_validation=False)
    assert no_val.eval_strategy == "no" and not no_val.load_best_model_at_end
    # the driver's arguments, built once, turned into those when the data has no validation
    turned = without_evaluation(training_arguments(cfg))
    for name in ("eval_strategy", "do_eval", "load_best_model_at_end", "metric_for_best_model"):
        assert getattr(turned, name) == getattr(no_val, name), name


def test_overrides_are_validated(tmp_path):
    cfg = load_config(_write(tmp_path, SEED_YAML))
    with pytest.raises(CETDError, match="batch_size must be > 0"):
        apply_overrides(cfg, batch_size=0)
    # -1 means "train num_epochs"; any other step count below 1 used to train a full run
    for steps in (-3, 0):
        with pytest.raises(CETDError, match="training.max_steps must be > 0, or -1"):
            apply_overrides(cfg, max_steps=steps)
    assert apply_overrides(cfg, max_steps=-1).training.max_steps == -1
    assert apply_overrides(cfg, num_epochs=None).training.num_epochs == 10


def test_a_config_naming_no_lora_modules_fits_an_encoder_backbone(tmp_path):
    """LoRA asked for with no target_modules: peft picks the architecture's query/value
    projections, so a minimal config on a BERT-like backbone builds, not fails."""
    from _tiny_models import make_tiny_encoder

    from cetd_phase1.modeling.model import CETDRetriever

    cfg = config_from_dict({"model": {"base_model": str(make_tiny_encoder(tmp_path / "bert"))},
                            "training": {"use_lora": True},
                            "dataset": {"max_code_length": 512}})  # the seed's 2048 is Qwen's
    assert cfg.training.use_lora and cfg.training.target_modules is None
    model = CETDRetriever.from_backbone(cfg.model.base_model, **cfg.model_settings())
    trainable = {n.split(".lora_")[0].split(".")[-1] for n, p in model.named_parameters()
                 if p.requires_grad and ".lora_" in n}
    assert trainable == {"query", "value"}, trainable


def test_text_lengths_beyond_the_backbones_positions_are_a_clear_error(tmp_path, capsys):
    """The seed's 2048-token code length fits Qwen, not a 512-position encoder: say so before
    training instead of failing inside the first forward pass."""
    from _tiny_models import make_tiny_encoder

    from cetd_phase1.modeling.model import CETDRetriever

    tiny = str(make_tiny_encoder(tmp_path / "bert"))
    limit = CETDRetriever.from_backbone(tiny).backbone.config.max_position_embeddings
    for key in ("max_code_length", "max_req_length"):
        cfg = config_from_dict({"model": {"base_model": tiny}, "dataset": {key: limit + 1}})
        with pytest.raises(CETDError, match=f"dataset.{key} {limit + 1} is more than the "
                                            f"{limit} positions"):
            CETDRetriever.from_backbone(cfg.model.base_model, **cfg.model_settings())
    cfg = config_from_dict({"model": {"base_model": tiny}, "dataset": {"max_code_length": limit}})
    CETDRetriever.from_backbone(cfg.model.base_model, **cfg.model_settings())  # the limit fits

    # the driver says so before it reads any data (here: apps that do not exist)
    from cetd_phase1.train import main

    config = tmp_path / "long.yaml"
    config.write_text(yaml.safe_dump({"model": {"base_model": tiny, "output_dir": str(tmp_path)},
                                      "dataset": {"max_code_length": limit + 1,
                                                  "source": str(tmp_path / "absent")}}))
    assert main(["--config", str(config)]) == 2
    assert "positions of backbone" in capsys.readouterr().err


def test_accelerate_files_mixed_precision_wins_over_the_automatic_choice(tmp_path, monkeypatch):
    """`accelerate launch --config_file ...` with mixed_precision "no" trains in fp32 (it was
    overridden by the automatic bf16/fp16 choice); without accelerate the choice is automatic."""
    from cetd_phase1.config import training_arguments
    from cetd_phase1.modeling.precision import cpu_has_native_bf16

    cfg = apply_overrides(load_config(CONFIGS / "phase1_minilm_cpu.yaml"),
                          output_dir=str(tmp_path / "out"))
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    auto = training_arguments(cfg)
    assert (auto.bf16, auto.fp16) == (cpu_has_native_bf16(), False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    off = training_arguments(cfg)
    assert (off.bf16, off.fp16) == (False, False)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert training_arguments(cfg).bf16
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    with pytest.raises(CETDError, match="mixed_precision 'fp8'"):
        training_arguments(cfg)


def test_the_model_takes_its_defaults_from_the_yaml_sections():
    """One source for every default: a model built without a config file is the model a
    config file of defaults builds, and the loss has no temperature of its own."""
    import inspect

    from cetd_phase1.config import Phase1Config
    from cetd_phase1.losses import InfoNCELoss
    from cetd_phase1.modeling.config import CETDConfig

    defaults, model = Phase1Config(), CETDConfig()
    for key, value in defaults.model_settings().items():
        assert getattr(model, key) == value, key
    assert model.backbone == defaults.model.base_model
    assert inspect.signature(InfoNCELoss).parameters["temperature"].default is \
        inspect.Parameter.empty
