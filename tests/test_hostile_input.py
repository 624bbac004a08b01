"""Hostile input through the command line: every bad file, app, label file, config and
checkpoint gives a one-line message naming the file and the reason, the documented exit code,
no traceback, and every other app is still processed. The corpus is generated at runtime (a
multi-megabyte file, a binary ``.py``, a symlink loop and an unreadable file cannot sensibly
be committed). The table of cases is in docs/robustness.md ("Hostile input and failures")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tiny_models import make_tiny_encoder  # noqa: E402

from cetd_phase1.__main__ import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GOOD = '''def add_item(cart, item):
    """Add one item to the shopping cart of the user."""
    cart.append(item)


def total_price(prices):
    """Compute the total price of every item in the cart."""
    return sum(prices)
'''


def _write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


@pytest.fixture()
def corpus(tmp_path) -> Path:
    apps = tmp_path / "apps"
    _write(apps / "good" / "cart.py", GOOD)
    broken = apps / "broken"
    _write(broken / "ok.py", GOOD.replace("cart", "basket"))
    _write(broken / "syntax.py", "def broken(:\n    pass\n")
    _write(broken / "latin1.py", b'def f():\n    """Caf\xe9 cr\xe8me order."""\n')
    _write(broken / "bom.py", "\ufeff" + GOOD.replace("add_item", "bom_item"))
    _write(broken / "crlf.py", GOOD.replace("add_item", "crlf_item").replace("\n", "\r\n"))
    _write(broken / "huge.py", "VALUES = [\n" + "    1234567890,\n" * 200_000 + "]\n")  # ~3 MB
    _write(broken / "binary.py", bytes(range(256)) * 64)
    _write(broken / "locked.py", GOOD.replace("add_item", "locked_item"))
    (broken / "loop").mkdir()
    os.symlink(broken / "loop", broken / "loop" / "again")
    (apps / "empty").mkdir()
    _write(apps / "empty" / "README.txt", "nothing here")
    _write(apps / "nodocs" / "m.py", "def f(x):\n    return x\n\n\nclass C:\n    pass\n")
    _write(apps / "missing_ann" / "cart.py", GOOD)
    _write(apps / "missing_ann" / "gold_requirements.md", "- Add an item to the cart\n")
    _write(apps / "missing_ann" / "gold_annotations.yaml",
           "Add an item to the cart:\n  - cart.py::add_item\n  - cart.py::no_such_function\n"
           "'  ':\n  - cart.py::add_item\n")  # a blank requirement: an error, not a query
    _write(apps / "empty_gold" / "cart.py", GOOD)
    _write(apps / "empty_gold" / "gold_requirements.md", "")
    _write(apps / "bad_yaml" / "cart.py", GOOD)
    _write(apps / "bad_yaml" / "gold_annotations.yaml", "Add an item: [cart.py::add_item\n  - x: :\n")
    return apps


@pytest.fixture()
def unreadable(monkeypatch):
    """``locked.py`` refuses to be read. ``chmod 000`` does not stop root (CI runs as root), so
    the read itself is made to fail as it does for an unprivileged user."""
    read_bytes = Path.read_bytes

    def refuse(self):
        if self.name == "locked.py":
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", refuse)


def _run_phase1():
    """``run_phase1.py`` as a module, so its ``main`` runs in this process (capsys sees it)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_phase1", ROOT / "run_phase1.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def _one_line_errors(err: str) -> list[str]:
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error")]


def test_build_data_explains_every_bad_file_and_app_and_keeps_the_rest(corpus, unreadable,
                                                                       tmp_path, capsys):
    code = main(["build-data", "--apps", str(corpus), "--label-sources", "docstring,gold",
                 "--cache-dir", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == 1  # label-file errors (missing section, malformed YAML); skips alone give 0
    lines = out.splitlines()

    def line(*parts: str) -> str:
        found = [l for l in lines if all(p in l for p in parts)]
        assert len(found) == 1, (parts, out)
        return found[0]

    line("skipped broken/syntax.py: syntax_error:", "(line 1)")
    line("skipped broken/latin1.py: undecodable:", "utf-8")
    line("skipped broken/huge.py: too_large:", "bytes > cap")
    line("skipped broken/binary.py: binary: file holds NUL bytes")
    line("skipped broken/loop/again: symlink_loop")
    line("skipped broken/locked.py: unreadable: Permission denied")
    line("warning: empty:", str(corpus / "empty"), "no code sections")
    line("warning: nodocs:", str(corpus / "nodocs"), "no labelled requirement")
    line("error: missing_ann:", str(corpus / "missing_ann" / "gold_annotations.yaml"),
         "'cart.py::no_such_function'", "names no section")
    line("error: missing_ann:", str(corpus / "missing_ann" / "gold_annotations.yaml"),
         "requirement text is empty (annotated 'cart.py::add_item')")
    line("warning: empty_gold:", str(corpus / "empty_gold" / "gold_requirements.md"),
         "no requirements")
    line("error: bad_yaml:", str(corpus / "bad_yaml" / "gold_annotations.yaml"), "malformed YAML")

    # validate-data exits 1 for the same label-file errors, so it must show them too
    assert main(["validate-data", "--apps", str(corpus), "--label-sources", "docstring,gold",
                 "--cache-dir", str(tmp_path / "cache")]) == 1
    lines = capsys.readouterr().err.splitlines()
    line("error: missing_ann:", "requirement text is empty")
    line("error: bad_yaml:", "malformed YAML")

    # every other app, and every good file of the broken app, still made it into the data
    from cetd_phase1.data.dataset import build_dataset, build_sections
    rows = build_dataset(corpus, label_sources=("docstring", "gold"),
                         cache_dir=tmp_path / "cache")
    apps = {a for split in rows.values() for a in split["app_name"]}
    assert apps == {"good", "broken", "missing_ann", "empty_gold", "bad_yaml"}
    sections = build_sections(corpus, cache_dir=tmp_path / "cache2")
    broken = {(r["file"], r["qualname"], r["line_start"]) for split in sections.values()
              for r in split if r["app_name"] == "broken"}
    assert ("bom.py", "bom_item", 1) in broken and ("crlf.py", "crlf_item", 1) in broken
    assert ("ok.py", "add_item", 1) in broken
    assert all("\r" not in r["code"] for split in sections.values() for r in split)


@pytest.mark.parametrize("text, reason", [
    ("training: [unclosed\n", "invalid YAML"),
    ("training:\n  batch_size: eight\n", "training.batch_size: expected an integer, got 'eight'"),
    ("training:\n  use_lora: 3\n", "training.use_lora: expected true or false"),
    ("training:\n  target_modules: query\n", "training.target_modules: expected a list"),
    ("model: [1, 2]\n", "model: expected a mapping"),
    ("evaluation:\n  eval_steps: 0\n", "evaluation.eval_steps must be > 0"),
])
def test_bad_configs_are_one_line_exit_2(tmp_path, capsys, text, reason):
    script = _run_phase1()
    config = _write(tmp_path / "bad.yaml", text)
    assert script.main(["--config", str(config)]) == 2
    errors = _one_line_errors(capsys.readouterr().err)
    assert len(errors) == 1 and str(config) in errors[0] and reason in errors[0], errors


def test_malformed_manifest_is_one_line_exit_2(tmp_path, capsys):
    manifest = _write(tmp_path / "apps.yaml", "- name: a\n  source_path: [\n")
    assert main(["build-data", "--apps", str(manifest), "--cache-dir", str(tmp_path)]) == 2
    errors = _one_line_errors(capsys.readouterr().err)
    assert len(errors) == 1 and str(manifest) in errors[0] and "cannot read manifest" in errors[0]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A saved tiny retriever, plus copies with a missing and a truncated weights file."""
    import shutil

    from cetd_phase1.modeling.model import CETDRetriever
    from cetd_phase1.modeling.tokens import load_tokenizer

    root = tmp_path_factory.mktemp("ckpt")
    backbone = make_tiny_encoder(root / "bert")
    CETDRetriever.from_backbone(backbone).save_pretrained(
        root / "good", tokenizer=load_tokenizer(backbone))
    shutil.copytree(root / "good", root / "missing")
    (root / "missing" / "model.safetensors").unlink()
    shutil.copytree(root / "good", root / "corrupt")
    weights = root / "corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return root


@pytest.mark.parametrize("damage, reason", [("missing", "no model.safetensors"),
                                            ("corrupt", "unreadable or corrupt weights file")])
def test_damaged_checkpoint_is_one_line_naming_the_file(checkpoints, corpus, tmp_path, capsys,
                                                        damage, reason):
    from cetd_phase1.errors import CETDError
    from cetd_phase1.modeling.model import CETDRetriever

    folder = checkpoints / damage
    expected = str(folder / "model.safetensors") if damage == "corrupt" else str(folder)
    with pytest.raises(CETDError, match=reason) as err:
        CETDRetriever.from_pretrained(folder)
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert main(["retrieve", "add an item", "--app", str(corpus / "good"), "--checkpoint",
                 str(folder), "--cache-dir", str(tmp_path / "index")]) == 2
    assert main(["evaluate", "--checkpoint", str(folder), "--apps", str(corpus),
                 "--out", str(tmp_path / "eval"), "--label-sources", "docstring",
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    errors = _one_line_errors(capsys.readouterr().err)
    assert len(errors) == 2 and all(expected in e and reason in e for e in errors), errors
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_an_output_path_that_is_a_file_is_one_line_and_the_file_is_kept(checkpoints, corpus,
                                                                        tmp_path, capsys):
    script = _run_phase1()
    taken = _write(tmp_path / "results", "someone's file\n")
    assert main(["evaluate", "--checkpoint", str(checkpoints / "good"), "--apps", str(corpus),
                 "--out", str(taken), "--label-sources", "docstring",
                 "--cache-dir", str(tmp_path / "cache")]) == 2
    assert script.main(["--output-dir", str(taken), "--max-steps", "1"]) == 2
    errors = _one_line_errors(capsys.readouterr().err)
    assert len(errors) == 2 and all(f"{taken}: exists and is not a folder" in e
                                    for e in errors), errors
    assert taken.read_text() == "someone's file\n"


def test_a_cache_path_that_is_a_file_is_one_line_naming_it(checkpoints, corpus, tmp_path,
                                                          capsys):
    """File-system failures (here a cache folder that is a file) are the environment's: one
    line with the path and the system's reason, exit 2."""
    taken = _write(tmp_path / "cache", "not a folder\n")
    assert main(["retrieve", "add an item", "--app", str(corpus / "good"), "--checkpoint",
                 str(checkpoints / "good"), "--cache-dir", str(taken)]) == 2
    assert main(["build-data", "--apps", str(corpus / "good"), "--cache-dir", str(taken)]) == 2
    errors = _one_line_errors(capsys.readouterr().err)
    assert len(errors) == 2 and all(e.startswith(f"error: {taken}") for e in errors), errors
    assert "Not a directory" in errors[0] and "File exists" in errors[1], errors


def test_no_traceback_reaches_the_terminal(checkpoints, tmp_path):
    """The real process: stderr holds the one line, the exit code is 2."""
    done = subprocess.run([sys.executable, "-m", "cetd_phase1", "retrieve", "add an item",
                           "--app", str(tmp_path), "--checkpoint", str(checkpoints / "corrupt")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2
    errors = [l for l in done.stderr.splitlines() if l.strip()]
    assert "Traceback" not in done.stderr
    assert len(errors) == 1 and errors[0].startswith("error: ") and \
        str(checkpoints / "corrupt" / "model.safetensors") in errors[0], done.stderr


# --- security -------------------------------------------------------------------------------------

EVIL = '''import pathlib
pathlib.Path({canary!r}).write_text("module body executed")


def add_item(cart, item):
    """Add one item to the shopping cart of the user."""
    cart.append(item)


def total_price(prices):
    """Compute the total price of every item in the cart."""
    return sum(prices)


def remove_item(cart, item):
    """Remove one item from the shopping cart of the user."""
    cart.remove(item)
'''


@pytest.mark.slow
def test_analysed_code_is_never_imported_or_executed(tmp_path, capsys):
    """Apps whose module bodies would write a file if run: build, train, evaluate, retrieve."""
    canary = tmp_path / "EXECUTED"
    splits = {"evil_train": "train", "evil_val": "validation", "evil_hold": "holdout"}
    for app in splits:
        for name in ("__init__.py", "cart.py", "setup.py", "__main__.py"):
            _write(tmp_path / "apps" / app / name, EVIL.format(canary=str(canary)))
    manifest = _write(tmp_path / "apps.yaml", "".join(
        f"- name: {a}\n  source_path: apps/{a}\n  split: {s}\n" for a, s in splits.items()))
    backbone = make_tiny_encoder(tmp_path / "bert")
    config = _write(tmp_path / "tiny.yaml", json.dumps({
        "model": {"base_model": str(backbone), "output_dir": str(tmp_path / "out")},
        "training": {"max_steps": 2, "batch_size": 2, "warmup_steps": 0, "use_lora": False,
                     "gradient_accumulation_steps": 1, "negatives_per_query": 1,
                     "logging_steps": 1},
        "dataset": {"source": str(manifest), "max_code_length": 32, "max_req_length": 16,
                    "label_sources": ["docstring"], "cache_dir": str(tmp_path / "cache")},
        "evaluation": {"eval_steps": 2, "save_steps": 2, "metric": "map"}}))
    cache = ["--cache-dir", str(tmp_path / "cache")]
    assert main(["build-data", "--apps", str(manifest), "--label-sources", "docstring",
                 *cache]) == 0
    script = _run_phase1()
    assert script.main(["--config", str(config)]) == 0
    final = str(tmp_path / "out" / "final")
    assert main(["evaluate", "--checkpoint", final, "--apps", str(tmp_path / "apps"),
                 "--label-sources", "docstring", "--out", str(tmp_path / "eval"), *cache]) == 0
    assert main(["retrieve", "add an item to the cart", "--app",
                 str(tmp_path / "apps" / "evil_train"), "--checkpoint", final, *cache]) == 0
    assert "add_item" in capsys.readouterr().out
    assert not canary.exists()
    assert not list((tmp_path / "apps").rglob("__pycache__"))  # not even compiled


def test_weights_load_only_through_safe_formats():
    """No pickle: weights through safetensors, any torch.load with weights_only=True, and
    trust_remote_code (which runs a checkpoint's own Python) never set."""
    import re

    sources = [*(ROOT / "cetd_phase1").rglob("*.py"), ROOT / "run_phase1.py"]
    offenders = []
    for path in sources:
        text = path.read_text()
        for call in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", text):
            if "weights_only=True" not in call.group(0):
                offenders.append(f"{path.name}: {call.group(0)}")
        for pattern in (r"trust_remote_code\s*=\s*True", r"\bpickle\.loads?\(",
                        r"allow_pickle\s*=\s*True", r"(?<![.\w])exec\(", r"(?<![.\w])eval\(",
                        r"importlib\.import_module\(", r"run_path\("):
            offenders += [f"{path.name}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []
