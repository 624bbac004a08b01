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
    """A tiny full fine-tuning config: 8 steps of 2 requirements (5 steps an epoch), a checkpoint
    every 2 steps."""
    for app, topics in TOPICS.items():
        write_app(tmp_path / "apps" / app, app, topics)
    manifest = tmp_path / "apps.yaml"
    manifest.write_text("".join(f"- name: {a}\n  source_path: apps/{a}\n  split: {s}\n"
                                for a, s in SPLITS.items()))
    training = {"num_epochs": 100, "max_steps": 8, "batch_size": 2, "learning_rate": 1e-3,
                "warmup_steps": 2, "gradient_accumulation_steps": 1, "use_lora": False,
                "negatives_per_query": 2, "logging_steps": 1, **overrides}
    config = tmp_path / "tiny.yaml"
    config.write_text(json.dumps({
        "model": {"base_model": str(backbone), "output_dir": str(tmp_path / "out")},
        "training": training,
        "dataset": {"source": str(manifest), "max_code_length": 48, "max_req_length": 24,
                    "hard_negatives": 2, "random_negatives": 1, "label_sources": ["docstring"],
                    "cache_dir": str(tmp_path / "cache")},
        "evaluation": {"eval_steps": 2, "save_steps": 2, "metric": "map", "eval_batch_size": 8,
                       "early_stopping_patience": 3},
    }))  # JSON is YAML
    return config


def run_plan(tmp_path: Path, config: Path, runs: list[tuple[str, str, list[str]]]):
    """Run ``(kill, output folder name, extra arguments)`` one after the other through the
    driver; returns each run's exit code and its output text."""
    plan = [{"kill": kill, "argv": ["--config", str(config), "--output-dir", str(tmp_path / name),
                                    *extra],
             "out": str(tmp_path / f"run{i}.txt"), "batch_log": str(tmp_path / f"{name}.jsonl")}
            for i, (kill, name, extra) in enumerate(runs)]
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run([sys.executable, str(DRIVER), str(tmp_path / "plan.json")],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    return [(code, Path(p["out"]).read_text()) for code, p in zip(codes, plan)]


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

    resume = ["--resume-from-checkpoint", "last"]
    straight, first, second, third, last = run_plan(tmp_path, config, [
        ("none", "straight", []),
        ("train:3", "killed", []),  # killed in step 4: checkpoint-2 is the last
        ("save:4", "killed", resume),  # killed while writing checkpoint-4's weights
        ("eval:8", "killed", resume),  # killed while evaluating step 8 (of epoch 2)
        ("none", "killed", resume)])
    out, log = tmp_path / "killed", tmp_path / "killed.jsonl"
    assert straight[0] == 0, straight[1][-3000:]
    for code, text in (first, second, third):
        assert code == -9, text[-3000:]
    assert f"resuming from {out / 'checkpoint-2'}" in second[1]
    assert "checkpoint-4 is incomplete" in third[1]
    assert f"resuming from {out / 'checkpoint-2'}" in third[1]
    assert last[0] == 0, last[1][-3000:]
    assert f"resuming from {out / 'checkpoint-6'}" in last[1]  # mid-epoch 2

    # Same batches (order and sampled negatives) at every step, same weights, same metrics.
    expected = last_batch_per_step(tmp_path / "straight.jsonl")
    assert sorted(expected) == list(range(1, 9))
    assert last_batch_per_step(log) == expected
    a, b = weights(tmp_path / "straight" / "final"), weights(out / "final")
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] - b[key]).abs().max().item() <= 1e-6, key
    ma = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    mb = json.loads((out / "metrics.json").read_text())
    assert ma["global_step"] == mb["global_step"] == 8
    assert ma["best_checkpoint"].replace("straight", "killed") == mb["best_checkpoint"]
    for split in ("validation", "holdout"):
        for key, value in ma[split].items():
            if "runtime" not in key and "per_second" not in key:
                assert mb[split][key] == pytest.approx(value, abs=1e-6), (split, key)


# --- incomplete checkpoints ---------------------------------------------------------------------

def _checkpoint(root: Path, step: int, *, state: str | None = "ok", weights: str = "ok") -> Path:
    """A checkpoint folder as the Trainer leaves it, damaged as asked."""
    import torch
    from safetensors.torch import save_file

    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if weights == "ok":
        save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    elif weights == "truncated":
        save_file({"w": torch.zeros(64)}, str(folder / "model.safetensors"))
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    if state == "ok":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    elif state == "truncated":
        (folder / "trainer_state.json").write_text('{"global_step": ')
    elif state == "wrong_step":
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step + 1}))
    return folder


@pytest.mark.parametrize("damage, reason", [
    (dict(state=None), "no trainer_state.json"),
    (dict(state="truncated"), "truncated"),
    (dict(state="wrong_step"), "not 4"),
    (dict(weights="missing"), "no weights file"),
    (dict(weights="truncated"), "model.safetensors is corrupt"),
])
def test_an_interrupted_save_is_never_taken_for_a_complete_checkpoint(tmp_path, damage, reason):
    from cetd_phase1.training.checkpoints import checkpoint_problem, last_complete_checkpoint

    good = _checkpoint(tmp_path, 2)
    bad = _checkpoint(tmp_path, 4, **damage)
    _checkpoint(tmp_path, 10, state=None, weights="missing")  # numeric, not lexical, order
    assert checkpoint_problem(good) is None
    assert reason in checkpoint_problem(bad)
    last, skipped = last_complete_checkpoint(tmp_path)
    assert last == good
    assert [p.name for p, _ in skipped] == ["checkpoint-10", "checkpoint-4"]


def test_resume_last_names_and_clears_incomplete_checkpoints(tmp_path, caplog):
    import importlib.util

    from cetd_phase1.errors import CETDError

    spec = importlib.util.spec_from_file_location("run_phase1", ROOT / "run_phase1.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    _checkpoint(tmp_path, 2)
    _checkpoint(tmp_path, 4, state=None)
    with caplog.at_level("WARNING", logger="run_phase1"):
        assert script.resolve_checkpoint("last", str(tmp_path)) == str(tmp_path / "checkpoint-2")
    assert "checkpoint-4 is incomplete (no trainer_state.json" in caplog.text
    assert f"resuming from {tmp_path / 'checkpoint-2'}" in caplog.text
    assert not (tmp_path / "checkpoint-4").exists()  # the next save of step 4 starts clean
    _checkpoint(tmp_path, 6, weights="truncated")
    with pytest.raises(CETDError, match="checkpoint-6 is incomplete: model.safetensors is corrupt"):
        script.resolve_checkpoint(str(tmp_path / "checkpoint-6"), str(tmp_path))
    only_incomplete = tmp_path / "only-incomplete"
    _checkpoint(only_incomplete, 6, weights="truncated")
    with pytest.raises(CETDError, match=r"no complete checkpoint-\* folder in .*only-incomplete "
                                        r"\(incomplete: checkpoint-6\)"):
        script.resolve_checkpoint("last", str(only_incomplete))


# --- non-finite loss -----------------------------------------------------------------------------

def _tiny_trainer(tmp_path: Path, **kwargs):
    import datasets
    from _tiny_models import pair_rows, section_rows
    from transformers import TrainingArguments

    from cetd_phase1.training.checkpoints import NonFiniteGuard
    from cetd_phase1.modeling.config import CETDConfig
    from cetd_phase1.modeling.model import CETDRetriever
    from cetd_phase1.modeling.tokens import load_tokenizer
    from cetd_phase1.training.collator import RetrievalCollator
    from cetd_phase1.training.trainer import RetrievalTrainer
    from cetd_phase1.training.sampler import group_queries

    backbone = make_tiny_encoder(tmp_path / "bert")
    rows = datasets.Dataset.from_list(pair_rows())
    settings = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4,
                    learning_rate=1e-3, report_to=[], remove_unused_columns=False,
                    logging_steps=1, seed=0, disable_tqdm=True, use_cpu=True, max_steps=6,
                    save_steps=2, eval_strategy="steps", eval_steps=2,
                    load_best_model_at_end=True, metric_for_best_model="map", **kwargs)
    model = CETDRetriever.from_backbone(backbone)
    tok = load_tokenizer(backbone)
    trainer = RetrievalTrainer(
        model=model, args=TrainingArguments(**settings), train_dataset=group_queries(rows),
        eval_dataset=rows, eval_sections=datasets.Dataset.from_list(section_rows()),
        data_collator=RetrievalCollator(tok, CETDConfig(max_req_length=16, max_code_length=32),
                                        negatives_per_query=2),
        processing_class=tok, callbacks=[NonFiniteGuard()])
    return trainer, model


def test_a_non_finite_loss_stops_training_naming_the_step_and_last_good_checkpoint(tmp_path):
    import torch

    from cetd_phase1.training.checkpoints import NonFiniteLossError

    trainer, model = _tiny_trainer(tmp_path)
    calls = []

    def diverging(module, inputs, loss):
        calls.append(1)
        return loss * float("nan") if len(calls) == 3 else None  # the loss of step 3

    model.loss_fn.register_forward_hook(diverging)
    with pytest.raises(NonFiniteLossError) as err:
        trainer.train()
    message = str(err.value)
    assert "non-finite loss (nan) at step 3" in message
    assert f"last good checkpoint: {tmp_path / 'out' / 'checkpoint-2'}" in message
    assert "\n" not in message and err.value.exit_code == 3
    assert trainer.state.global_step == 2  # the NaN step was never applied
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sorted(p.name for p in (tmp_path / "out").glob("checkpoint-*")) == ["checkpoint-2"]


def test_a_non_finite_model_is_never_saved(tmp_path):
    import torch
    from transformers import TrainerCallback

    from cetd_phase1.training.checkpoints import NonFiniteLossError

    trainer, model = _tiny_trainer(tmp_path)

    class Corrupt(TrainerCallback):  # weights go bad without a bad loss (e.g. an optimizer bug)
        def on_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step == 3:  # the 4th optimizer step
                with torch.no_grad():
                    next(model.parameters()).fill_(float("inf"))

    trainer.add_callback(Corrupt())
    with pytest.raises(NonFiniteLossError, match="non-finite weights after step 4, not saved; "
                                                 "last good checkpoint: .*checkpoint-2"):
        trainer.train()
    assert not (tmp_path / "out" / "checkpoint-4").exists()
    assert trainer.state.best_model_checkpoint in (None, str(tmp_path / "out" / "checkpoint-2"))


# --- atomic output files --------------------------------------------------------------------------

def test_a_kill_while_writing_leaves_the_previous_file_and_folder(tmp_path):
    import signal

    from cetd_phase1.atomic import atomic_directory, atomic_write, atomic_write_text

    target, folder = tmp_path / "metrics.json", tmp_path / "final"
    atomic_write_text(target, "old")
    folder.mkdir()
    (folder / "model.safetensors").write_text("old weights")
    for write in ("file", "folder"):
        pid = os.fork()
        if pid == 0:  # the child is killed half-way through writing
            def half(f):
                f.write(b"{\"half\": ")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            if write == "file":
                atomic_write(target, half)
            else:
                with atomic_directory(folder) as staging:
                    (staging / "model.safetensors").write_text("new, half")
                    os.kill(os.getpid(), signal.SIGKILL)
            os._exit(0)
        assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -9
    assert target.read_text() == "old"
    assert (folder / "model.safetensors").read_text() == "old weights"
    with pytest.raises(TypeError):  # an exception also keeps the old file, and no temp file
        atomic_write_text(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    with atomic_directory(folder) as staging:
        (staging / "model.safetensors").write_text("new")
        os.chmod(staging / "model.safetensors", 0o600)  # as safetensors writes its files
    assert (folder / "model.safetensors").read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert (folder / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp")) == \
        ["final", "metrics.json"]


def test_commands_write_outputs_through_the_atomic_helpers():
    """No output is written in place: every writer of the package goes through atomic.py (the
    Trainer's own checkpoints are guarded by checkpoint_problem instead)."""
    import re

    # hub.py fills a scratch upload folder, emptied and refilled on every push: not an output
    exempt = {"atomic.py", "hub.py"}
    offenders = []
    for path in [*(ROOT / "cetd_phase1").glob("*.py"), ROOT / "run_phase1.py"]:
        if path.name in exempt:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "atomic_write" not in line and re.search(r"\.write_(text|bytes)\(|open\([^)]*['\"][wa]b?['\"]|np\.save\(\w+[,)]|"
                         r"\.savefig\(['\"\w]", line):
                offenders.append(f"{path.name}:{n}: {line.strip()}")
    assert offenders == []


@pytest.mark.parametrize("write", ["file", "folder"])
def test_an_output_that_cannot_be_created_is_named_as_asked_not_by_its_staging_name(
        tmp_path, monkeypatch, write):
    """A read-only ``--out``: the error names the output, not the hidden ``.NAME.xyz.tmp``
    beside it. (Root ignores ``chmod``, and CI runs as root, so the refusal is simulated.)"""
    import tempfile

    from cetd_phase1.atomic import atomic_directory, atomic_write_text

    def refuse(*, dir, prefix, suffix):
        raise PermissionError(13, "Permission denied", f"{dir}/{prefix}x1y2z3{suffix}")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    target = tmp_path / "out" / ("metrics.json" if write == "file" else "final")
    with pytest.raises(OSError) as err:
        if write == "file":
            atomic_write_text(target, "{}")
        else:
            with atomic_directory(target):
                pass
    assert (err.value.filename, err.value.strerror) == (str(target), "Permission denied")
