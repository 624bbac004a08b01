"""The evaluate command end to end on a tiny model and two tiny apps, plus its grouping logic."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tiny_models import make_tiny_apps, make_tiny_encoder as make_tiny_bert  # noqa: E402

from cetd_phase1.__main__ import main  # noqa: E402
from cetd_phase1.data.apps import DirectoryRegistry  # noqa: E402
from cetd_phase1.evaluation.evaluate import Method, run_evaluation  # noqa: E402
from cetd_phase1.evaluation.results import PROTOCOLS, queries_from_rows  # noqa: E402
from cetd_phase1.modeling.model import CETDRetriever  # noqa: E402
from cetd_phase1.modeling.tokens import load_tokenizer  # noqa: E402
from cetd_phase1.ranking import full_app  # noqa: E402
from cetd_phase1.ranking.fusion import hybrid_fuse  # noqa: E402
from cetd_phase1.retrieve import Retriever  # noqa: E402

AVERAGES = {"accuracy", "map", "mrr", "recall@1", "recall@5", "recall@10", "ndcg@10",
            "num_queries"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    return make_tiny_bert(root / "bert"), make_tiny_apps(root / "apps"), root / "cache"


@pytest.fixture(scope="module")
def evaluated(setup, tmp_path_factory):
    ckpt, apps, cache = setup
    out = tmp_path_factory.mktemp("out")
    metrics = run_evaluation(ckpt, out, apps_dir=apps, cache_dir=cache, hybrid=True)
    return metrics, out


def test_writes_report_files_with_both_protocols(evaluated):
    metrics, out = evaluated
    assert {p.name for p in out.iterdir()} == {"metrics.json", "report.md", "recall_at_k.png"}
    assert (out / "recall_at_k.png").read_bytes()[:4] == b"\x89PNG"
    on_disk = json.loads((out / "metrics.json").read_text())
    for protocol in PROTOCOLS:
        assert AVERAGES <= set(on_disk[protocol])
        assert set(on_disk[protocol]["per_app"]) == {"calc", "texts"}
        assert 0 <= on_disk[protocol]["mrr"] <= 1
    # calc: 4 docstring queries; texts: 2 docstring + 1 gold (the heuristic one kept apart)
    assert on_disk["full_app"]["num_queries"] == 7
    assert on_disk["full_app"]["per_app"]["calc"]["num_queries"] == 4
    report = (out / "report.md").read_text()
    for heading in ("Full app (headline)", "Candidate set", "Per app", "worst queries"):
        assert heading in report
    for method in ("| model |", "| bm25 |", "| model+bm25 (hybrid) |"):
        assert method in report
    assert metrics["recall_at_k"]["full_app"]["bm25"][-1] == 1.0  # K=20 covers these apps


def test_heuristic_labels_never_in_the_headline(evaluated):
    metrics, _ = evaluated
    full = metrics["full_app"]
    assert "heuristic" not in full["label_sources"]
    assert set(full["label_sources"]) == {"docstring", "gold"}
    if "heuristic" in full["by_label_source"]:  # the heuristic found a section for it
        headline = sum(full["by_label_source"][s]["num_queries"] for s in full["label_sources"])
        assert headline == full["num_queries"]


def test_plain_backbone_is_its_own_baseline(evaluated):
    metrics, _ = evaluated
    assert set(metrics["baselines"]) == {"bm25", "model+bm25 (hybrid)"}
    assert any("plain backbone" in n for n in metrics["notes"])


def test_trained_checkpoint_is_compared_with_its_backbone(setup, evaluated, tmp_path,
                                                          monkeypatch):
    ckpt, apps, cache = setup
    trained = tmp_path / "trained"
    CETDRetriever.from_backbone(str(ckpt), projection_dim=8).save_pretrained(
        trained, tokenizer=load_tokenizer(ckpt))
    calls = []
    real = full_app.encode_for_ranking
    monkeypatch.setattr(full_app, "encode_for_ranking",
                        lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    metrics = run_evaluation(trained, tmp_path / "out", apps_dir=apps, cache_dir=cache)
    assert "backbone (untrained)" in metrics["baselines"]
    backbone = metrics["baselines"]["backbone (untrained)"]["full_app"]
    assert backbone["num_queries"] == metrics["full_app"]["num_queries"]
    # the backbone's section index was cached by the first evaluation: only queries encoded,
    # the trained model's sections once per app
    sections = sorted(n for n in calls if n in (5, 3))
    assert sections == [3, 5]
    calls.clear()
    run_evaluation(trained, tmp_path / "out2", apps_dir=apps, cache_dir=cache)
    assert 5 not in calls  # re-run: every section index comes from the cache


def test_hybrid_reuses_the_models_scores_and_fuses_them(setup, tmp_path, monkeypatch):
    ckpt, apps, cache = setup
    calls = []
    real = Retriever.dense_scores
    monkeypatch.setattr(Retriever, "dense_scores",
                        lambda self, reqs, index: calls.append(len(reqs)) or real(self, reqs,
                                                                                   index))
    metrics = run_evaluation(ckpt, tmp_path / "out", apps_dir=apps, cache_dir=cache,
                             hybrid=True)
    assert len(calls) == 2  # once per app, for the model and the hybrid together
    assert sum(calls) == metrics["full_app"]["num_queries"] + 1  # + the heuristic query
    model = Retriever.from_pretrained(ckpt)
    app = next(a for a in DirectoryRegistry(apps).apps(None) if a.name == "calc")
    index = model.index(app)
    dense = Method("model", model)
    fused = Method("hybrid", model, hybrid_from=dense)
    reqs = ["add two numbers together", "divide one number by another"]
    expected = [hybrid_fuse(d, index.bm25.scores(r), model.ranking.hybrid_weight)
                for d, r in zip(real(model, reqs, index), reqs)]
    np.testing.assert_allclose(fused.scores(reqs, app, index), np.stack(expected), rtol=1e-6)


def test_queries_group_rows_and_keep_candidates():
    rows = {"query_id": ["a", "a", "a", "b", "b"], "app_id": ["x"] * 5, "app_name": ["x"] * 5,
            "requirement": ["ra"] * 3 + ["rb"] * 2,
            "label_source": ["docstring"] * 3 + ["gold"] * 2,
            "file": ["f.py"] * 5, "qualname": ["p", "n1", "n2", "q", "p"],
            "line_start": [1, 5, 9, 12, 1], "label": [1, 0, 0, 1, 0]}
    qs = queries_from_rows(rows)
    assert [q.query_id for q in qs] == ["a", "b"]
    assert qs[0].positives == [("f.py", "p", 1)] and len(qs[0].candidates) == 3
    assert qs[1].label_source == "gold" and qs[1].positives == [("f.py", "q", 12)]


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(tmp_path / "missing"), "--apps",
                 str(tmp_path), "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "config.json" in err and "\n" not in err


def test_cli_section_chunks_overrides_the_checkpoint_and_bad_values_are_one_line(
        setup, tmp_path, capsys, monkeypatch):
    ckpt, apps, cache = setup
    seen = []
    real = full_app.section_texts

    def recording(sections, tokenizer, max_length, max_chunks):
        seen.append(max_chunks)
        return real(sections, tokenizer, max_length, max_chunks)

    monkeypatch.setattr(full_app, "section_texts", recording)
    args = ["evaluate", "--checkpoint", str(ckpt), "--apps", str(apps), "--cache-dir",
            str(cache)]
    assert main([*args, "--out", str(tmp_path / "o"), "--section-chunks", "3"]) == 0
    assert seen and set(seen) == {3}
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "o2"), "--section-chunks", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "section_chunks must be an integer >= 1" in err and "\n" not in err


def _hybrid_evaluate(setup) -> list[str]:
    ckpt, apps, cache = setup
    return ["evaluate", "--checkpoint", str(ckpt), "--apps", str(apps), "--cache-dir",
            str(cache), "--hybrid"]


def _bad_value_is_one_line(capsys, commands, option: str, value: str, message: str) -> None:
    for command in commands:
        assert main([*command, option, value]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err


def test_cli_late_interaction_overrides_the_checkpoint_and_bad_values_are_one_line(
        setup, tmp_path, capsys):
    ckpt, apps, cache = setup
    args = _hybrid_evaluate(setup)
    assert main([*args, "--out", str(tmp_path / "o"), "--late-interaction", "0.5"]) == 0
    report = (tmp_path / "o" / "report.md").read_text()
    assert "0.5 x cosine + 0.5 x MaxSim" in report and "0.7 x model + 0.3 x BM25" in report
    assert main([*args, "--out", str(tmp_path / "p")]) == 0  # the checkpoint's own: cosine
    assert "MaxSim" not in (tmp_path / "p" / "report.md").read_text()
    capsys.readouterr()
    retrieve = ["retrieve", "add two numbers", "--app", str(apps / "calc"), "--checkpoint",
                str(ckpt), "--cache-dir", str(cache)]
    _bad_value_is_one_line(capsys, (args + ["--out", str(tmp_path / "o2")], retrieve),
                           "--late-interaction", "1.5", "late_interaction must be in [0, 1]")


def test_cli_class_penalty_overrides_the_checkpoint_and_bad_values_are_one_line(
        setup, tmp_path, capsys):
    ckpt, apps, cache = setup
    args = _hybrid_evaluate(setup)
    assert main([*args, "--out", str(tmp_path / "o"), "--class-penalty", "0.5"]) == 0
    assert "less 0.5 for a class" in (tmp_path / "o" / "report.md").read_text()
    assert main([*args, "--out", str(tmp_path / "p")]) == 0  # the checkpoint's own: none
    assert "for a class" not in (tmp_path / "p" / "report.md").read_text()
    retrieve = ["retrieve", "add two numbers", "--app", str(apps / "calc"), "--checkpoint",
                str(ckpt), "--cache-dir", str(cache), "--json", "-k", "9"]
    capsys.readouterr()
    assert main(retrieve) == 0
    plain = {h["qualname"]: h["score"] for h in json.loads(capsys.readouterr().out)}
    assert main([*retrieve, "--class-penalty", "0.5"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == len(plain) and any(h["kind"] == "class" for h in hits)
    for hit in hits:
        drop = 0.5 if hit["kind"] == "class" else 0.0
        assert hit["score"] == pytest.approx(plain[hit["qualname"]] - drop, abs=1e-6)
    _bad_value_is_one_line(capsys, (args + ["--out", str(tmp_path / "o2")], retrieve),
                           "--class-penalty", "-1", "class_penalty must be a number >= 0")


def test_retrieve_ranks_with_the_main_jobs_model_where_it_ran_and_says_which(
        setup, tmp_path, monkeypatch, capsys):
    """Without --checkpoint: the model `python run_phase1.py` wrote in the working folder, else
    the packaged MiniLM, named on stderr as untrained."""
    import shutil
    from pathlib import Path

    import yaml

    from cetd_phase1.__main__ import TRAINED_DEFAULT, UNTRAINED_DEFAULT

    ckpt, apps, cache = setup
    config = Path(__file__).resolve().parents[1] / "configs" / "phase1_minilm_cpu.yaml"
    assert Path(yaml.safe_load(config.read_text())["model"]["output_dir"]) / "final" == \
        TRAINED_DEFAULT
    opened = []
    from_pretrained = Retriever.from_pretrained.__func__
    monkeypatch.setattr(Retriever, "from_pretrained", classmethod(
        lambda cls, path, **kw: opened.append(str(path)) or from_pretrained(cls, ckpt, **kw)))
    monkeypatch.chdir(tmp_path)
    args = ["retrieve", "add two numbers", "--app", str(apps / "calc"), "--cache-dir",
            str(cache), "--json", "--top-k", "2"]
    assert main(args) == 0
    out = capsys.readouterr()
    assert opened == [UNTRAINED_DEFAULT] and len(json.loads(out.out)) == 2
    assert f"checkpoint: {UNTRAINED_DEFAULT} (untrained" in out.err
    shutil.copytree(ckpt, TRAINED_DEFAULT)
    assert main(args) == 0
    out = capsys.readouterr()
    assert opened[1:] == [str(TRAINED_DEFAULT)] and len(json.loads(out.out)) == 2
    assert f"checkpoint: {TRAINED_DEFAULT}\n" in out.err and "untrained" not in out.err
