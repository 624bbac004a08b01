"""Distillation: the loss's teacher term, the cached teacher vectors (one teacher or the mean
of several) and a training run that reads them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import make_tiny_encoder  # noqa: E402
from test_run_phase1 import _load_script, setup  # noqa: E402,F401  (the tiny-apps fixture)

from cetd_phase1.errors import CETDError
from cetd_phase1.losses import InfoNCELoss


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_the_teacher_term_is_the_kl_of_the_two_distributions():
    q, p, labels = _unit(3, 8, seed=0), _unit(6, 8, seed=1), torch.tensor([0, 2, 4])
    t_q, t_p = _unit(3, 16, seed=2), _unit(6, 16, seed=3)
    loss = InfoNCELoss(temperature=0.1)
    plain = loss(q, p, labels)
    distilled = loss(q, p, labels, (t_q, t_p))
    student = F.softmax(q @ p.T / 0.1, dim=-1)
    teacher = F.softmax(t_q @ t_p.T / 0.1, dim=-1)
    kl = (teacher * (teacher.log() - student.log())).sum(dim=-1).mean()
    assert torch.allclose(distilled - plain, kl, atol=1e-5) and kl > 0.01
    # a teacher that agrees with the student adds nothing
    assert torch.allclose(loss(q, p, labels, (q, p)), plain, atol=1e-6)


def test_the_teacher_term_pulls_the_student_towards_the_teacher():
    """One gradient step on the teacher term alone moves the student's scores closer to the
    teacher's distribution (the term is a distance between them, not a constant)."""
    labels = torch.tensor([0, 1])
    q = _unit(2, 8, seed=4).requires_grad_()
    p, t_q, t_p = _unit(4, 8, seed=5), _unit(2, 8, seed=6), _unit(4, 8, seed=7)
    loss = InfoNCELoss(temperature=0.1)
    term = loss(q, p, labels, (t_q, t_p)) - loss(q, p, labels)
    term.backward()
    with torch.no_grad():
        moved = q - 0.05 * q.grad
        after = loss(moved, p, labels, (t_q, t_p)) - loss(moved, p, labels)
    assert after < term.detach()


def _groups() -> datasets.Dataset:
    return datasets.Dataset.from_list([
        {"query_id": "a-0", "app_id": "a", "requirement": "parse json text",
         "positives": ["m.py f_parse: def f_parse(): return json.loads(s)"],
         "negatives": ["m.py f_add: def f_add(a, b): return a + b"]},
        {"query_id": "a-1", "app_id": "a", "requirement": "add two numbers",
         "positives": ["m.py f_add: def f_add(a, b): return a + b"],
         "negatives": ["m.py f_sort: def f_sort(x): return sorted(x)"]}])


def _checkpoint(tmp_path: Path, name: str, seed: int) -> Path:
    from cetd_phase1.modeling.model import CETDRetriever
    from cetd_phase1.modeling.tokens import load_tokenizer
    backbone = make_tiny_encoder(tmp_path / f"{name}-backbone", seed=seed)
    model = CETDRetriever.from_backbone(backbone, pooling="mean", max_req_length=32,
                                        max_code_length=64)
    model.save_pretrained(tmp_path / name, tokenizer=load_tokenizer(backbone))
    return tmp_path / name


def test_teacher_vectors_are_the_mean_cosine_of_the_teachers_and_cached(tmp_path, monkeypatch):
    from cetd_phase1.modeling.loading import load_retriever
    from cetd_phase1.ranking.encode import encode_texts
    from cetd_phase1.training import teacher as teacher_module

    one, two = _checkpoint(tmp_path, "one", 1), _checkpoint(tmp_path, "two", 2)
    groups = _groups()
    vectors = teacher_module.teacher_vectors([one, two], groups, cache_dir=tmp_path / "cache",
                                             show_progress=False)
    req, code = "parse json text", "m.py f_add: def f_add(a, b): return a + b"
    q, p = vectors.lookup([req], [code])
    cosines = []
    for folder in (one, two):
        model, tok = load_retriever(folder)
        a = encode_texts(model, tok, [req], max_length=32)[0]
        b = encode_texts(model, tok, [code], max_length=64)[0]
        cosines.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
    assert float(q[0] @ p[0]) == pytest.approx(np.mean(cosines), abs=2e-2)  # bf16 + fp16
    assert q.shape == (1, 64)  # both teachers' 32 dimensions side by side

    # the second run reads the cache: nothing is encoded again
    monkeypatch.setattr(teacher_module, "_encode_with",
                        lambda *a, **k: pytest.fail("encoded again despite the cache"))
    again = teacher_module.teacher_vectors([one, two], groups, cache_dir=tmp_path / "cache",
                                           show_progress=False)
    assert np.array_equal(again.matrix, vectors.matrix)
    # a text outside the groups is a CETDError naming it, not a KeyError
    with pytest.raises(CETDError, match="no teacher vector"):
        again.lookup(["an unseen requirement"], [])


def test_a_teacher_that_is_not_a_checkpoint_is_one_clear_error(tmp_path):
    from cetd_phase1.training.teacher import teacher_vectors
    with pytest.raises(CETDError, match="not a trained checkpoint folder"):
        teacher_vectors([tmp_path / "missing"], _groups(), cache_dir=tmp_path)


@pytest.mark.slow
def test_a_distilled_run_trains_from_a_cached_teacher(setup, tmp_path):
    """The driver with ``training.teachers``: the teacher's vectors are built and cached, the
    loss differs from an undistilled run of the same steps, and the model trains and saves."""
    tmp_path, config = setup
    teacher = _checkpoint(tmp_path, "teacher", 7)
    base = config.read_text().replace("max_steps: 6", "max_steps: 2")
    config.write_text(base)
    script = _load_script()
    assert script.main(["--config", str(config), "--skip-evaluation"]) == 0
    plain = json.loads((tmp_path / "out" / "metrics.json").read_text())["train"]["train_loss"]
    distilled_cfg = tmp_path / "distilled.yaml"
    distilled_cfg.write_text(base.replace("training:\n", f"training:\n  teachers: [\"{teacher}\"]\n")
                             .replace(str(tmp_path / "out"), str(tmp_path / "out-kd")))
    assert script.main(["--config", str(distilled_cfg), "--skip-evaluation"]) == 0
    report = json.loads((tmp_path / "out-kd" / "metrics.json").read_text())
    assert report["config"]["training"]["teachers"] == [str(teacher)]
    assert report["train"]["train_loss"] > plain  # the KL term is added (and positive)
    assert len(list((tmp_path / "cache" / "teachers").glob("*.npy"))) == 1
