"""The label sources: docstring, gold annotations, heuristic, git."""

from __future__ import annotations

import tempfile
from pathlib import Path

from cetd_phase1.data.labels import (HeuristicLabeler, docstring_examples, label_app,
                                     parse_requirements)
from cetd_phase1.data.sections import extract_sections

EXAMPLE_APP = Path(__file__).resolve().parents[1] / "data" / "example_apps" / "json_parser"


def _app(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_docstring_first_paragraph_min_words_and_grouping(tmp_path):
    _app(tmp_path, {"m.py": '''
def a():
    """Load the   configuration
    file from disk.

    More details here."""

def b():
    """Too short."""

def c():
    """Load the configuration file from disk."""
'''})
    sections, _ = extract_sections(tmp_path)
    examples = docstring_examples(sections)
    assert [(e.requirement, e.positives, e.label_source) for e in examples] == [
        ("Load the configuration file from disk.", ["m.py::a", "m.py::c"], "docstring")]


def test_parse_requirements_bullets_and_numbers():
    md = "# Title\n\n1. First one\n2) Second  one\n- third\n* fourth\nplain text\n- third\n"
    assert parse_requirements(md) == ["First one", "Second one", "third", "fourth"]


def test_gold_annotations_give_exact_positives_and_name_missing_entries(tmp_path):
    _app(tmp_path, {
        "m.py": "def load():\n    pass\n\ndef save():\n    pass\n",
        "gold_requirements.md": "- Load things from disk\n- Save things to disk\n",
        "gold_annotations.yaml": "Load things from disk: [m.py::load]\n"
                                 "Save things to disk: [m.py::save, m.py::nowhere]\n",
    })
    sections, _ = extract_sections(tmp_path)
    labels = label_app(tmp_path, sections, sources=("gold",))
    assert [(e.requirement, e.positives, e.label_source) for e in labels.examples] == [
        ("Load things from disk", ["m.py::load"], "gold"),
        ("Save things to disk", ["m.py::save"], "gold")]
    assert len(labels.problems) == 1
    problem = labels.problems[0]
    assert problem.file.endswith("gold_annotations.yaml") and "m.py::nowhere" in problem.reason


def test_malformed_annotations_are_a_problem_not_a_crash(tmp_path):
    _app(tmp_path, {"m.py": "def f():\n    pass\n", "gold_annotations.yaml": "a: [unclosed\n"})
    labels = label_app(tmp_path, extract_sections(tmp_path)[0], sources=("gold",))
    assert labels.examples == [] and "malformed YAML" in labels.problems[0].reason


def test_feature_request_annotation_format(tmp_path):
    _app(tmp_path, {"m.py": "def f():\n    pass\n",
                    "gold_annotations.yaml": "requirements:\n  - text: Do the  thing\n"
                                             "    relevant: [m.py::f]\n"})
    labels = label_app(tmp_path, extract_sections(tmp_path)[0], sources=("gold",))
    assert [(e.requirement, e.positives) for e in labels.examples] == [("Do the thing", ["m.py::f"])]


class _CountingLabeler(HeuristicLabeler):
    calls = 0

    def label(self, requirements, sections):
        type(self).calls += 1
        return super().label(requirements, sections)


def test_heuristic_labels_unannotated_requirements_with_one_model_load():
    sections, _ = extract_sections(EXAMPLE_APP)
    labeler = _CountingLabeler()
    labels = label_app(EXAMPLE_APP, sections, heuristic=labeler)
    heuristic = [e for e in labels.examples if e.label_source == "heuristic"]
    assert [e.requirement for e in heuristic] == ["Choose the winner of a contest by highest score"]
    assert heuristic[0].positives[0] == "json_parser/contest.py::pick_winner"
    assert len(heuristic[0].positives) <= 5
    assert _CountingLabeler.calls == 1  # one batch per app, not one model call per requirement
    model = labeler.model
    label_app(EXAMPLE_APP, sections, heuristic=labeler)
    assert labeler.model is model  # loaded once per run
    sources = {e.label_source for e in labels.examples}
    assert sources == {"gold", "heuristic", "docstring"}


def test_git_label_source_mines_commit_descriptions(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@e", *args], cwd=tmp_path,
                       check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "m.py").write_text("def load():\n    return 1\n\n\ndef save():\n    return 2\n")
    git("add", "-A")
    git("commit", "-qm", "Initial import of the storage module")
    (tmp_path / "m.py").write_text("def load():\n    return 10\n\n\ndef save():\n    return 2\n")
    git("commit", "-qam", "Load values scaled by ten from the store (#12)")
    sections, _ = extract_sections(tmp_path)
    labels = label_app(tmp_path, sections, sources=("git",))
    assert [(e.requirement, e.positives, e.label_source) for e in labels.examples] == [
        ("Load values scaled by ten from the store", ["m.py::load"], "git")]
    plain = Path(tempfile.mkdtemp())  # outside any git work tree
    outside = label_app(plain, [], sources=("git",))
    assert outside.examples == [] and all(not p.is_error for p in outside.problems)
