"""Grouping, no-duplicates batches, the collator, full-app evaluation, training and resuming."""

from __future__ import annotations

import os

import datasets
import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _tiny_models import (WORDS, make_tiny_decoder, make_tiny_encoder, pair_rows,  # noqa: E402
                          section_rows)
from transformers import TrainerCallback, TrainingArguments  # noqa: E402

from cetd_phase1.modeling.config import CETDConfig  # noqa: E402
from cetd_phase1.modeling.model import CETDRetriever  # noqa: E402
from cetd_phase1.modeling.tokens import load_tokenizer
from cetd_phase1.training.sampler import NoDuplicatesBatchSampler, group_queries
from cetd_phase1.training.collator import RetrievalCollator
from cetd_phase1.training.trainer import RetrievalTrainer  # noqa: E402
from cetd_phase1.training.trainer import rank_full_app  # noqa: E402
from cetd_phase1.ranking.full_app import FullAppRanker  # noqa: E402
from cetd_phase1.ranking.config import RankingConfig  # noqa: E402


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return make_tiny_encoder(tmp_path_factory.mktemp("enc") / "bert")


@pytest.fixture(scope="module")
def rows():
    return datasets.Dataset.from_list(pair_rows())


@pytest.fixture(scope="module")
def sections():
    return datasets.Dataset.from_list(section_rows())


def test_group_queries(rows):
    groups = group_queries(rows)
    assert len(groups) == 2 * len(WORDS)
    first = groups[0]
    assert first["query_id"] == "a1-0" and first["requirement"] == "parse json quickly"
    assert len(first["positives"]) == 1 and len(first["negatives"]) == len(WORDS) - 1
    assert first["positives"][0].startswith("# m.py :: f_parse_json\ndef f_parse_json")


def test_group_queries_drops_requirements_without_positive(rows):
    no_pos = rows.filter(lambda r: not (r["query_id"] == "a1-0" and r["label"] == 1))
    assert "a1-0" not in group_queries(no_pos)["query_id"]


def _groups(spec: list[tuple[list[str], list[str]]],
            apps: list[str] | None = None) -> datasets.Dataset:
    return datasets.Dataset.from_list([
        {"query_id": str(i), "app_id": apps[i] if apps else "a", "requirement": f"r{i}",
         "positives": pos, "negatives": neg} for i, (pos, neg) in enumerate(spec)])


def test_no_duplicates_sampler_never_mixes_a_positive_with_another_query():
    # In one app: section Sk is the positive of query k and a negative of query k+1.
    n = 40
    groups = _groups([([f"S{k}"], [f"S{(k + 1) % n}", f"S{(k + 7) % n}"]) for k in range(n)])
    sampler = NoDuplicatesBatchSampler(groups, batch_size=8, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(n))  # each query exactly once
    assert len(batches) == len(sampler)
    for batch in batches:
        for i in batch:
            pos = set(groups[i]["positives"])
            for j in batch:
                if j != i:
                    others = set(groups[j]["positives"]) | set(groups[j]["negatives"])
                    assert not pos & others, f"queries {i} and {j} share a candidate"
    assert max(len(b) for b in batches) == 8
    sampler.set_epoch(1)
    assert list(sampler) != batches  # reshuffled per epoch
    sampler.set_epoch(0)
    assert list(sampler) == batches  # and reproducible


def _conflicting_groups(n: int = 40) -> datasets.Dataset:
    """Section Sk is query k's positive and a negative of queries k-1 and k-7: how many batches
    a greedy pass needs depends on its shuffle."""
    return _groups([([f"def s{k}(): return {k}"], [f"def s{(k + 1) % n}(): return {(k + 1) % n}",
                                                   f"def s{(k + 7) % n}(): return {(k + 7) % n}"])
                    for k in range(n)])


def _seed_with_a_shorter_second_pass(groups: datasets.Dataset) -> tuple[int, int, int]:
    for seed in range(100):
        sampler = NoDuplicatesBatchSampler(groups, batch_size=8, seed=seed)
        first, second = len(sampler._build(0)), len(sampler._build(1))
        if second < first:
            return seed, first, second
    raise AssertionError("no seed gives passes of different lengths")


def test_every_epoch_is_as_long_as_the_first_and_the_stream_of_passes_is_kept():
    groups = _conflicting_groups()
    seed, first, _ = _seed_with_a_shorter_second_pass(groups)
    sampler = NoDuplicatesBatchSampler(groups, batch_size=8, seed=seed)
    passes = [b for p in range(6) for b in sampler._build(p)]
    epochs = []
    for epoch in range(4):
        sampler.set_epoch(epoch)
        assert len(sampler) == first and len(list(sampler)) == first
        epochs += list(sampler)
    assert epochs[:first] == sampler._build(0)  # epoch 0 is the first pass, unchanged
    assert epochs == passes[:len(epochs)]  # later epochs run on through the next passes


def test_max_steps_past_a_shorter_second_epoch_trains_every_step(encoder_dir, tmp_path):
    """The Trainer sizes a run by the first epoch's length: with a shorter second pass it used
    to stop short of max_steps (60 asked, 54 trained)."""
    groups = _conflicting_groups()
    seed, first, second = _seed_with_a_shorter_second_pass(groups)
    tok = load_tokenizer(encoder_dir)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8,
                             max_steps=first + second + 1, save_strategy="no", report_to=[],
                             remove_unused_columns=False, seed=seed, data_seed=seed,
                             disable_tqdm=True, use_cpu=True, learning_rate=1e-4)
    trainer = RetrievalTrainer(model=CETDRetriever.from_backbone(encoder_dir), args=args,
                               train_dataset=groups, processing_class=tok,
                               data_collator=RetrievalCollator(
                                   tok, CETDConfig(max_req_length=16, max_code_length=16),
                                   negatives_per_query=1))
    trainer.train()
    assert trainer.state.global_step == first + second + 1


def test_same_app_batches_hold_one_app_each_in_shuffled_order():
    # 3 apps of 7 requirements each, interleaved; candidates all distinct (no conflicts)
    apps = [["x", "y", "z"][i % 3] for i in range(21)]
    groups = _groups([([f"P{i}"], [f"N{i}"]) for i in range(21)], apps)
    sampler = NoDuplicatesBatchSampler(groups, batch_size=4, seed=0, same_app=True)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(21))
    mixed = [b for b in batches if len({apps[i] for i in b}) > 1]
    # only an app's last, partial batch is topped up from the next app
    assert len(mixed) <= 2 and all(len({apps[i] for i in b}) == 2 for b in mixed)
    assert sum(len(b) == 4 for b in batches) == 5
    plain = list(NoDuplicatesBatchSampler(groups, batch_size=4, seed=0))
    assert sum(len({apps[i] for i in b}) > 1 for b in plain) > len(mixed)  # the default mixes
    orders = {tuple(apps[b[0]] for b in NoDuplicatesBatchSampler(
        groups, batch_size=4, seed=s, same_app=True)) for s in range(6)}
    assert len(orders) > 1  # apps are not visited in a fixed order


def test_collator_layout_and_dynamic_padding(encoder_dir, rows):
    tok = load_tokenizer(encoder_dir)
    groups = group_queries(rows)
    collator = RetrievalCollator(tok, CETDConfig(max_req_length=16, max_code_length=24),
                                 negatives_per_query=3)
    batch = collator([groups[0], groups[1], groups[2]])
    assert batch["labels"].tolist() == [0, 4, 8]
    assert batch["p_input_ids"].shape[0] == 12
    for key in ("q_input_ids", "p_input_ids"):
        length = batch[key].shape[1]
        assert length % 8 == 0 and length <= 24
    assert batch["q_input_ids"].shape[1] < 16  # padded to the batch, not to the limit
    positive = tok.decode(batch["p_input_ids"][4], skip_special_tokens=True)
    assert "f _ add _ numbers" in positive or "f_add_numbers" in positive


def test_collator_splits_identifiers_when_the_model_does(encoder_dir):
    tok = load_tokenizer(encoder_dir)
    groups = _groups([(["def parseJsonFile(path): pass"], ["def b(): return 1"])])
    for split, expected in ((True, "def parse json file ( path )"),
                            (False, "def parsejsonfile ( path )")):
        batch = RetrievalCollator(tok, CETDConfig(split_identifiers=split),
                                  negatives_per_query=1)(list(groups))
        assert tok.decode(batch["p_input_ids"][0], skip_special_tokens=True).startswith(expected)


@pytest.mark.parametrize("side", ["left", "right"])
def test_collator_appends_eos_for_decoders(tmp_path, side):
    tok = load_tokenizer(make_tiny_decoder(tmp_path / "qwen2"))
    tok.padding_side = side
    groups = _groups([(["def a(): pass"], ["def b(): return 1 + 2 + 3 + 4"])])
    batch = RetrievalCollator(tok, CETDConfig(append_eos=True), negatives_per_query=1)(list(groups))
    ids, mask = batch["p_input_ids"], batch["p_attention_mask"]
    for row in range(2):
        real = ids[row][mask[row].bool()]
        assert real[-1].item() == tok.eos_token_id


def test_rank_full_app_scores_every_section_of_the_app(encoder_dir, rows, sections):
    model = CETDRetriever.from_backbone(encoder_dir, max_req_length=16, max_code_length=32)
    tok = load_tokenizer(encoder_dir)
    ranked = rank_full_app(FullAppRanker(model, tok, RankingConfig()), rows, sections)
    assert len(ranked.query_ids) == 16
    assert all(len(s) == len(WORDS) for s in ranked.scores)  # the whole app, own app only
    assert all(int(l.sum()) == 1 for l in ranked.labels)
    i = ranked.query_ids.index("a2-3")
    assert ranked.app_ids[i] == "a2" and ranked.labels[i].tolist().index(1) == 3


def _trainer(model, tok, rows, sections, out, **kwargs) -> RetrievalTrainer:
    settings = dict(output_dir=str(out), per_device_train_batch_size=4, learning_rate=3e-3,
                    report_to=[], remove_unused_columns=False, logging_steps=5, seed=0,
                    disable_tqdm=True, use_cpu=True)
    settings.update(kwargs)
    collator = RetrievalCollator(tok, CETDConfig(max_req_length=16, max_code_length=32),
                                 negatives_per_query=3)
    return RetrievalTrainer(model=model, args=TrainingArguments(**settings),
                            train_dataset=group_queries(rows), eval_dataset=rows,
                            eval_sections=sections, data_collator=collator,
                            processing_class=tok)


def _fixed_batch_loss(model, trainer) -> float:
    random_state = torch.random.get_rng_state()
    batch = trainer.data_collator(list(trainer.train_dataset.select(range(8))))
    model.eval()
    with torch.no_grad():
        loss = float(model(**batch).loss)
    torch.random.set_rng_state(random_state)
    return loss


def test_a_few_steps_lower_the_loss_and_raise_the_metrics(encoder_dir, rows, sections, tmp_path):
    torch.manual_seed(0)
    model = CETDRetriever.from_backbone(encoder_dir, use_lora=True,
                                        lora_target_modules=["query", "key", "value", "dense"])
    tok = load_tokenizer(encoder_dir)
    trainer = _trainer(model, tok, rows, sections, tmp_path / "out", max_steps=40,
                       save_strategy="no")
    import random
    random.seed(0)
    before = _fixed_batch_loss(model, trainer)
    metrics_before = trainer.evaluate()
    trainer.train()
    random.seed(0)
    after = _fixed_batch_loss(model, trainer)
    metrics_after = trainer.evaluate()
    assert after < before * 0.7
    assert {"eval_map", "eval_accuracy", "eval_mrr", "eval_recall@1", "eval_recall@5",
            "eval_recall@10"} <= set(metrics_after)
    assert metrics_after["eval_map"] > metrics_before["eval_map"]
    assert any("eval_map" in h for h in trainer.state.log_history)


def test_cpu_fast_settings_train_bf16_chunked_without_attention_dropout(encoder_dir, rows,
                                                                        sections, tmp_path):
    """The CPU speed settings together (bf16 autocast - emulated here -, length-sorted chunks,
    no attention dropout) still learn, and the master weights stay fp32."""
    torch.manual_seed(0)
    model = CETDRetriever.from_backbone(encoder_dir, attention_dropout=0.0, encode_chunk_size=2)
    tok = load_tokenizer(encoder_dir)
    trainer = _trainer(model, tok, rows, sections, tmp_path / "out", max_steps=40,
                       save_strategy="no", bf16=True, learning_rate=1e-3)
    import random
    random.seed(0)
    before = _fixed_batch_loss(model, trainer)
    trainer.train()
    random.seed(0)
    assert _fixed_batch_loss(model, trainer) < before * 0.7
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_resume_from_checkpoint_continues_the_step_count(encoder_dir, rows, sections, tmp_path):
    tok = load_tokenizer(encoder_dir)
    lora = dict(use_lora=True, projection_dim=8, lora_target_modules=["query", "value"])
    first = _trainer(CETDRetriever.from_backbone(encoder_dir, **lora), tok, rows, sections,
                     tmp_path / "out", max_steps=6, save_steps=3, eval_strategy="steps",
                     eval_steps=3, load_best_model_at_end=True, metric_for_best_model="map")
    first.train()
    checkpoint = tmp_path / "out" / "checkpoint-6"
    assert (checkpoint / "adapter_model.safetensors").is_file()
    assert (checkpoint / "head.safetensors").is_file()
    assert first.state.best_model_checkpoint is not None

    fresh = CETDRetriever.from_backbone(encoder_dir, **lora)
    saved = dict(CETDRetriever.from_pretrained(checkpoint).named_parameters())
    loaded = []
    original = fresh.load_weights

    def spy(directory):
        original(directory)
        current = dict(fresh.named_parameters())
        loaded.append(all(torch.equal(current[n], saved[n]) for n in current
                          if "lora_" in n or n.startswith("head")))

    fresh.load_weights = spy
    second = _trainer(fresh, tok, rows, sections, tmp_path / "out", max_steps=9, save_steps=3)
    steps = []

    class Steps(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    second.add_callback(Steps())
    second.train(resume_from_checkpoint=str(checkpoint))
    assert loaded == [True]  # the checkpoint's adapter and head, exactly
    assert steps == [7, 8, 9]  # continues after the checkpoint, nothing re-run
    assert not np.isnan(second.state.log_history[-1]["train_loss"])
