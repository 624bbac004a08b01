"""``run_phase1.py`` end to end on a tiny encoder and three tiny apps (train/validation/holdout)."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tiny_models import make_tiny_encoder, write_apps  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

APPS = {
    "shop": {"cart.py": '''
def add_item(cart, item, quantity):
    """Add a quantity of an item to the shopping cart."""
    cart[item] = cart.get(item, 0) + quantity


def remove_item(cart, item):
    """Remove an item completely from the shopping cart."""
    cart.pop(item, None)


def total_price(cart, prices):
    """Compute the total price of every item in the cart."""
    return sum(prices[i] * q for i, q in cart.items())


def apply_discount(total, percent):
    """Reduce the total by a discount percentage."""
    return total * (1 - percent / 100)
'''},
    "notes": {"store.py": '''
class Notebook:
    """A collection of text notes kept in memory."""

    def add_note(self, text):
        """Store a new note with the given text."""
        self.notes.append(text)

    def search(self, word):
        """Find every note that mentions a word."""
        return [n for n in self.notes if word in n]

    def delete_all(self):
        """Erase every note of the notebook."""
        self.notes.clear()
'''},
    "units": {"convert.py": '''
def celsius_to_fahrenheit(c):
    """Convert a temperature from Celsius to Fahrenheit."""
    return c * 9 / 5 + 32


def km_to_miles(km):
    """Convert a distance in kilometres to miles."""
    return km * 0.621371


def kg_to_pounds(kg):
    """Convert a weight in kilograms to pounds."""
    return kg * 2.20462
'''},
}
SPLITS = {"shop": "train", "notes": "validation", "units": "holdout"}


def _load_script():
    spec = importlib.util.spec_from_file_location("run_phase1", ROOT / "run_phase1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def setup(tmp_path):
    manifest = write_apps(tmp_path, APPS, SPLITS)
    backbone = make_tiny_encoder(tmp_path / "bert")
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""
model:
  base_model: "{backbone}"
  output_dir: "{tmp_path / 'out'}"
training:
  num_epochs: 1
  max_steps: 6
  batch_size: 2
  learning_rate: 1e-3
  warmup_steps: 0
  gradient_accumulation_steps: 1
  use_lora: true
  target_modules: ["query", "value"]
  negatives_per_query: 2
  logging_steps: 2
dataset:
  source: "{manifest}"
  max_code_length: 64
  max_req_length: 32
  hard_negatives: 2
  random_negatives: 1
  label_sources: [docstring]
  cache_dir: "{tmp_path / 'cache'}"
evaluation:
  eval_steps: 3
  save_steps: 3
  metric: map
  eval_batch_size: 8
ranking:
  section_chunks: 2
  late_interaction: 0.5
  class_penalty: 0.2
""")
    return tmp_path, config


@pytest.mark.slow
def test_run_phase1_trains_evaluates_saves_and_resumes(setup, capsys, caplog):
    tmp_path, config = setup
    script = _load_script()
    caplog.set_level(logging.INFO, logger="cetd_phase1.training.trainer")
    assert script.main(["--config", str(config)]) == 0
    out = tmp_path / "out"
    report = json.loads((out / "metrics.json").read_text())
    assert report["global_step"] == 6
    for split, prefix in (("validation", "eval"), ("holdout", "holdout")):
        assert 0.0 <= report[split][f"{prefix}_map"] <= 1.0
        assert report[split][f"{prefix}_num_queries"] > 0
    assert report["config"]["training"]["use_lora"] is True
    assert (out / "checkpoint-6" / "adapter_model.safetensors").is_file()
    assert any((out / "runs").rglob("events.out.tfevents.*"))  # TensorBoard log
    printed = capsys.readouterr().out
    assert "holdout" in printed and "map" in printed
    caplog.clear()

    # The final folder reloads and ranks as the run reported.
    from cetd_phase1.ranking.encode import encode_texts
    from cetd_phase1.modeling.loading import load_retriever
    model, tok = load_retriever(out / "final")
    emb = encode_texts(model, tok, ["Convert a distance in kilometres to miles."], max_length=32)
    assert emb.shape == (1, 32) and np.isfinite(emb).all()
    # ...with the ranking settings it was validated with, beside every checkpoint too
    from cetd_phase1 import RankingConfig, Retriever
    ranking = RankingConfig(section_chunks=2, late_interaction=0.5, class_penalty=0.2)
    assert RankingConfig.load(out / "checkpoint-6") == ranking
    assert Retriever.from_pretrained(out / "final", cache_dir=tmp_path / "index").ranking == ranking

    # Resume: two more steps from the last checkpoint.
    assert script.main(["--config", str(config), "--max-steps", "8",
                        "--resume-from-checkpoint", "last"]) == 0
    assert json.loads((out / "metrics.json").read_text())["global_step"] == 8


def test_run_phase1_bad_config_is_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  batch_sise: 4\n")
    assert _load_script().main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "batch_sise" in err and str(bad) in err
    assert "\n" not in err


def test_freeze_embeddings_keeps_the_token_vectors(setup):
    """``training.freeze_embeddings``: full fine-tuning that leaves the word embeddings as the
    backbone had them while the layers move."""
    from safetensors.torch import load_file

    tmp_path, config = setup
    text = config.read_text().replace("use_lora: true", "use_lora: false\n  freeze_embeddings: true")
    config.write_text(text.replace("max_steps: 6", "max_steps: 2"))
    assert _load_script().main(["--config", str(config), "--skip-holdout"]) == 0
    before = load_file(tmp_path / "bert" / "model.safetensors")
    after = {k.removeprefix("backbone."): v
             for k, v in load_file(tmp_path / "out" / "final" / "model.safetensors").items()}
    word = "embeddings.word_embeddings.weight"
    assert (after[word] == before[word]).all()
    query = "encoder.layer.0.attention.self.query.weight"
    assert not (after[query] == before[query]).all()


@pytest.mark.slow
def test_an_mpnet_backbone_trains_validates_and_serves(setup):
    """all-mpnet-base-v2's architecture through the driver: full fine-tuning, full-app
    validation, the best checkpoint as ``final``, and a Retriever on it."""
    from safetensors.torch import load_file

    from _tiny_models import make_tiny_mpnet
    from cetd_phase1 import Retriever

    tmp_path, config = setup
    mpnet = make_tiny_mpnet(tmp_path / "mpnet")
    text = config.read_text().replace(str(tmp_path / "bert"), str(mpnet))
    config.write_text(text.replace("use_lora: true", "use_lora: false")
                      .replace("max_steps: 6", "max_steps: 3"))
    assert _load_script().main(["--config", str(config), "--skip-holdout"]) == 0
    report = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert 0.0 <= report["validation"]["eval_map"] <= 1.0
    before = load_file(mpnet / "model.safetensors")
    after = load_file(tmp_path / "out" / "final" / "model.safetensors")
    query = "encoder.layer.0.attention.attn.q.weight"
    assert not (after[f"backbone.{query}"] == before[query]).all()
    retriever = Retriever.from_pretrained(tmp_path / "out" / "final", cache_dir=tmp_path / "idx")
    assert retriever.retrieve("Convert a distance in kilometres to miles.",
                              app=tmp_path / "apps" / "units", k=1)


@pytest.mark.slow
def test_skip_evaluation_trains_and_saves_without_ranking_any_split(setup, capsys):
    """The one-minute setup check: no validation during or after training, no holdout pass,
    and still a final model and metrics.json."""
    tmp_path, config = setup
    assert _load_script().main(["--config", str(config), "--max-steps", "2",
                                "--skip-evaluation"]) == 0
    out = tmp_path / "out"
    report = json.loads((out / "metrics.json").read_text())
    assert report["global_step"] == 2
    assert "validation" not in report and "holdout" not in report
    assert (out / "final" / "config.json").is_file()
    assert "holdout" not in capsys.readouterr().out


def test_console_script_runs_the_driver(tmp_path, capsys):
    """``cetd-phase1 train`` (and ``python -m cetd_phase1 train``) is run_phase1.py's driver,
    with its own options and one-line errors."""
    from cetd_phase1.__main__ import main

    with pytest.raises(SystemExit) as done:
        main(["train", "--help"], prog="cetd-phase1")
    assert done.value.code == 0
    usage = capsys.readouterr().out
    assert "usage: cetd-phase1 train" in usage and "--skip-evaluation" in usage
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  max_steps: -3\n")
    assert main(["train", "--config", str(bad)], prog="cetd-phase1") == 2
    err = capsys.readouterr().err
    assert "training.max_steps must be > 0, or -1" in err and "\n" not in err.strip()


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys, tmp_path):
    """An interrupted run (Ctrl-C anywhere in training) says how to resume instead of printing
    the Trainer's traceback, and before any checkpoint that there is nothing to resume."""
    from cetd_phase1 import train

    def interrupted(_cli):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "run", interrupted)
    assert train.main(["--output-dir", str(tmp_path)]) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("interrupted before the first checkpoint: nothing was saved in "
                          f"{tmp_path}")
    assert "\n" not in err and "Traceback" not in err and "resume_from_checkpoint" not in err

    checkpoint = tmp_path / "checkpoint-50"
    checkpoint.mkdir()
    (checkpoint / "trainer_state.json").write_text('{"global_step": 50}')
    (checkpoint / "model.safetensors").write_bytes(b"")
    monkeypatch.setattr("cetd_phase1.training.checkpoints.checkpoint_problem", lambda p: None)
    assert train.main(["--output-dir", str(tmp_path)]) == 130
    err = capsys.readouterr().err.strip()
    assert err == ("interrupted: resume with --resume-from-checkpoint last (the newest complete "
                   f"checkpoint is {checkpoint})")


def test_flags_are_kebab_case_and_the_transformers_spelling_works_too():
    from cetd_phase1.train import parse_args
    kebab = parse_args(["--max-steps", "3", "--output-dir", "out", "--skip-holdout",
                        "--resume-from-checkpoint", "last"])
    snake = parse_args(["--max_steps", "3", "--output_dir", "out", "--skip_holdout",
                        "--resume_from_checkpoint", "last"])
    assert vars(kebab) == vars(snake)
    assert (kebab.max_steps, kebab.output_dir, kebab.skip_holdout) == (3, "out", True)
