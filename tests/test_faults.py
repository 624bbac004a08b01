"""Faults: kill -9 at three points of a training run then resume; incomplete checkpoints;
a non-finite loss; atomic output files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tiny_models import make_tiny_encoder  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).resolve().parent / "_fault_driver.py"

TOPICS = {
    "shop": ["add an item to the shopping cart", "remove an item from the cart",
             "compute the total price of the cart", "apply a discount to the total",
             "empty the whole shopping cart"],
    "notes": ["store a new note with its text", "find every note mentioning a word",
              "erase every note of the notebook", "count the notes kept so far",
              "export the notes as plain text"],
    "units": ["convert celsius degrees to fahrenheit", "convert kilometres to miles",
              "convert kilograms to pounds"],
    "clock": ["format a duration in hours and minutes", "parse a time of day from text",
              "add minutes to a time of day"],
}
SPLITS = {"shop": "train", "notes": "train", "units": "validation", "clock": "holdout"}


def write_app(root: Path, name: str, topics: list[str]) -> None:
    """One module whose functions each carry a docstring requirement."""
    root.mkdir(parents=True, exist_ok=True)
    body = "".join(f'def {name}_{i}(x):\n    """The function will {t}."""\n    return x + {i}\n\n\n'
                   for i, t in enumerate(topics))
    (root / "main.py").write_text(body)


def write_config(tmp_path: Path, backbone: Path, **overrides) -> Path:
    """A tiny full fine-tuning config: 12 steps of 2 requirements, checkpoint every 3 steps."""
    for app, topics in TOPICS.items():
        write_app(tmp_path / "apps" / app, app, topics)
    manifest = tmp_path / "apps.yaml"
    manifest.write_text("".join(f"- name: {a}\n  source_path: apps/{a}\n  split: {s}\n"
                                for a, s in SPLITS.items()))
    training = {"num_epochs": 100, "max_steps": 12, "batch_size": 2, "learning_rate": 1e-3,
                "warmup_steps": 2, "gradient_accumulation_steps": 1, "use_lora": False,
                "negatives_per_query": 2, "logging_steps": 1, **overrides}
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({
        "model": {"base_model": str(backbone), "output_dir": str(tmp_path / "out")},
        "training": training,
        "dataset": {"source": str(manifest), "max_code_length": 48, "max_req_length": 24,
                    "hard_negatives": 2, "random_negatives": 1, "label_sources": ["docstring"],
                    "cache_dir": str(tmp_path / "cache")},
        "evaluation": {"eval_steps": 3, "save_steps": 3, "metric": "map", "eval_batch_size": 8,
                       "early_stopping_patience": 3},
    }))  # JSON is YAML
    return config


def run(kill: str, config: Path, out: Path, batch_log: Path, *extra: str):
    env = {**os.environ, "CETD_BATCH_LOG": str(batch_log), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, str(DRIVER), kill, "--", "--config", str(config),
                           "--output_dir", str(out), *extra],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=180)


def last_batch_per_step(log: Path) -> dict[int, str]:
    """Step -> batch hash; a step run again after a resume overwrites the killed attempt."""
    out = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        out[entry["step"]] = entry["batch"]
    return out


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


@pytest.mark.slow
def test_kill_at_three_points_then_resume_equals_an_uninterrupted_run(tmp_path):
    backbone = make_tiny_encoder(tmp_path / "bert")
    config = write_config(tmp_path, backbone)

    straight = run("none", config, tmp_path / "straight", tmp_path / "straight.jsonl")
    assert straight.returncode == 0, straight.stderr[-3000:]

    out, log = tmp_path / "killed", tmp_path / "killed.jsonl"
    first = run("train:4", config, out, log)  # killed in step 5: checkpoint-3 is the last
    assert first.returncode == -9, first.stderr[-3000:]
    second = run("save:6", config, out, log, "--resume_from_checkpoint", "last")
    assert second.returncode == -9, second.stderr[-3000:]
    assert "resuming from" in second.stdout + second.stderr
    assert (out / "checkpoint-6" / "model.safetensors").is_file()  # half written
    third = run("eval:9", config, out, log, "--resume_from_checkpoint", "last")
    assert third.returncode == -9, third.stderr[-3000:]
    said = third.stdout + third.stderr
    assert "checkpoint-6 is incomplete" in said and f"resuming from {out / 'checkpoint-3'}" in said
    last = run("none", config, out, log, "--resume_from_checkpoint", "last")
    assert last.returncode == 0, last.stderr[-3000:]
    assert f"resuming from {out / 'checkpoint-6'}" in last.stdout + last.stderr

    # Same batches (order and sampled negatives) at every step, same weights, same metrics.
    expected = last_batch_per_step(tmp_path / "straight.jsonl")
    assert sorted(expected) == list(range(1, 13))
    assert last_batch_per_step(log) == expected
    a, b = weights(tmp_path / "straight" / "final"), weights(out / "final")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key
    ma = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    mb = json.loads((out / "metrics.json").read_text())
    assert ma["global_step"] == mb["global_step"] == 12
    assert ma["best_checkpoint"].replace("straight", "killed") == mb["best_checkpoint"]
    for split in ("validation", "holdout"):
        for key, value in ma[split].items():
            if "runtime" not in key and "per_second" not in key:
                assert mb[split][key] == pytest.approx(value, abs=1e-6), (split, key)
