"""The cross-encoder re-ranker: its loss, the pair format, the final order it makes, training it
with the driver on a tiny model, and its place in the served ranking and in evaluate."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tiny_models import make_tiny_apps, make_tiny_encoder, minilm_tokenizer  # noqa: E402
from test_run_phase1 import setup  # noqa: E402,F401  (its tiny apps and config)
from cetd_phase1.errors import CETDError  # noqa: E402
from cetd_phase1.losses import GroupSoftmaxLoss  # noqa: E402
from cetd_phase1.modeling.reranker import PairFormat, Reranker, reranker_from_backbone  # noqa: E402
from cetd_phase1.ranking.rerank import reranked, top_sections  # noqa: E402

QUERY = "Multiply two numbers together"


def test_the_loss_is_each_groups_cross_entropy_with_its_positive_first():
    logits = torch.tensor([2.0, 0.0, 0.0, 1.0, 1.0])
    loss = GroupSoftmaxLoss()(logits, torch.tensor([3, 2]))
    first = -(2.0 - math.log(math.exp(2.0) + 2.0))
    second = -(1.0 - math.log(2.0 * math.e))
    assert float(loss) == pytest.approx((first + second) / 2, rel=1e-6)
    # a positive far ahead of its group costs almost nothing; far behind, its margin
    assert float(GroupSoftmaxLoss()(torch.tensor([30.0, 0.0]), torch.tensor([2]))) < 1e-6
    assert float(GroupSoftmaxLoss()(torch.tensor([0.0, 30.0]), torch.tensor([2]))) == \
        pytest.approx(30.0, rel=1e-4)


def test_each_side_of_a_pair_is_cut_to_its_own_limit():
    tokenizer = minilm_tokenizer()
    fmt = PairFormat(max_req_length=4, max_code_length=6, split_identifiers=True)
    batch = fmt.encode(tokenizer, ["one two three four five six", "short"],
                       ["def parseJson(a, b, c, d, e, f, g, h): pass", "x"])
    ids = batch["input_ids"][0][batch["attention_mask"][0].bool()].tolist()
    sep = tokenizer.sep_token_id
    assert ids[0] == tokenizer.cls_token_id and ids.count(sep) == 2
    assert ids.index(sep) - 1 == 4 and len(ids) - ids.index(sep) - 2 == 6
    assert "json" in tokenizer.decode(ids)  # parseJson read as "parse Json"
    assert int(batch["attention_mask"][1].sum()) == 5  # short pairs are not padded to the limit


def test_the_top_is_reordered_by_the_reranker_and_stays_above_the_rest():
    served = np.array([0.1, 0.9, 0.5, 0.8, 0.2, 0.8])
    top = top_sections(served, 3)
    assert top.tolist() == [1, 3, 5]  # ties in app order
    order, scores = reranked(served, top, np.array([-1.0, 2.0, 0.5]))
    assert order.tolist() == [3, 5, 1, 2, 4, 0]
    assert np.argsort(-scores, kind="stable").tolist() == order.tolist()
    assert scores[[0, 2, 4]].tolist() == [0.1, 0.5, 0.2]  # the rest keep their served scores
    order, _ = reranked(served, top_sections(served, 10), np.zeros(6))
    assert order.tolist() == [1, 3, 5, 2, 4, 0]  # level logits keep the served order


@pytest.fixture(scope="module")
def tiny_reranker(tmp_path_factory):
    root = tmp_path_factory.mktemp("rr")
    model, tokenizer = reranker_from_backbone(make_tiny_encoder(root / "bert"),
                                              PairFormat(16, 32, False))
    torch.manual_seed(0)
    model.classifier.weight.data.normal_(0, 1.0)
    model.save_pretrained(root / "reranker")
    tokenizer.save_pretrained(root / "reranker")
    return root


def test_a_saved_reranker_reloads_with_its_pair_format(tiny_reranker, tmp_path):
    reranker = Reranker.from_pretrained(tiny_reranker / "reranker")
    assert reranker.format == PairFormat(16, 32, False)
    scores = reranker.scores(QUERY, ["def multiply(a, b):\n    return a * b", "x = 1"])
    assert scores.shape == (2,) and np.isfinite(scores).all()
    with pytest.raises(CETDError, match="not a cetd-phase1 re-ranker"):
        Reranker.from_pretrained(tiny_reranker / "bert")
    with pytest.raises(CETDError, match="no config.json"):
        Reranker.from_pretrained(tmp_path)


def test_the_served_ranking_puts_the_rerankers_order_first(tiny_reranker, tmp_path, fp32_cpu):
    from cetd_phase1.retrieve import Retriever

    apps = make_tiny_apps(tmp_path / "apps")
    plain = Retriever.from_pretrained(tiny_reranker / "bert", cache_dir=tmp_path / "cache")
    served = plain.retrieve(QUERY, app=apps / "calc", k=5)
    r = Retriever.from_pretrained(tiny_reranker / "bert", cache_dir=tmp_path / "cache",
                                  reranker=tiny_reranker / "reranker", rerank_depth=3)
    hits = r.retrieve(QUERY, app=apps / "calc", k=5)
    names = [h["qualname"] for h in hits]
    assert sorted(names[:3]) == sorted(h["qualname"] for h in served[:3])
    assert names[3:] == [h["qualname"] for h in served[3:]]
    logits = [h["rerank_score"] for h in hits[:3]]
    assert logits == sorted(logits, reverse=True) and hits[3]["rerank_score"] is None
    text = {s.qualname: t for s, t in zip(r.index(apps / "calc").sections,
                                          r.index(apps / "calc").texts)}
    expected = r.reranker.scores(QUERY, [text[n] for n in names[:3]])
    np.testing.assert_allclose(logits, expected, rtol=1e-5)
    with pytest.raises(CETDError, match="rerank_depth"):
        Retriever.from_pretrained(tiny_reranker / "bert", reranker=r.reranker, rerank_depth=0)


@pytest.mark.slow
def test_train_reranker_trains_saves_and_evaluate_reports_it(setup, capsys):
    """The driver on the bi-encoder driver's tiny config (the keys a re-ranker does not read,
    such as LoRA, are left alone), then ``evaluate --reranker`` on the same apps."""
    from safetensors.torch import load_file

    from cetd_phase1.__main__ import main
    from cetd_phase1.modeling.reranker import load_reranker

    tmp_path, config = setup
    backbone = tmp_path / "bert"
    assert main(["train-reranker", "--config", str(config), "--output-dir",
                 str(tmp_path / "rr"), "--max-steps", "3"]) == 0
    final = tmp_path / "rr" / "final"
    model, _, fmt = load_reranker(final)
    assert fmt == PairFormat(32, 64, False)
    query = "encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(model.state_dict()[f"bert.{query}"],
                           load_file(backbone / "model.safetensors")[query])
    assert json.loads((tmp_path / "rr" / "metrics.json").read_text())["global_step"] == 3
    capsys.readouterr()

    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(backbone), "--apps", str(tmp_path / "apps"),
                 "--out", str(out), "--hybrid", "--reranker", str(final), "--rerank-depth", "2",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    printed = capsys.readouterr().out  # the served and re-ranked lines, not the model's alone
    assert "full_app [model+bm25 (hybrid)]:" in printed
    assert "full_app [model+bm25 (hybrid) + re-ranker]:" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    reranked_row = metrics["baselines"]["model+bm25 (hybrid) + re-ranker"]["full_app"]
    assert reranked_row["num_queries"] == metrics["full_app"]["num_queries"] > 0


def test_train_reranker_bad_config_is_one_line(tmp_path, capsys):
    from cetd_phase1.__main__ import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  negatives_per_qery: 4\n")
    assert main(["train-reranker", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "negatives_per_qery" in err and "\n" not in err
