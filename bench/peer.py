#!/usr/bin/env python
"""The sentence-transformers peer, trained on our train split and evaluated with our protocol.

The peer is what a researcher would get from sentence-transformers in an afternoon:
``SentenceTransformerTrainer`` + ``MultipleNegativesRankingLoss`` (in-batch negatives, scale 20 =
temperature 0.05) on all-MiniLM-L6-v2 (the packaged copy, no hub access), fp32 on the CPU, batch
32, learning rate 5e-5, 10% linear warmup, max length 256, 1 epoch, batches without duplicate texts
(``BatchSamplers.NO_DUPLICATES``, the sampler its docs recommend for this loss). Its data: the
stdlib *train* split's docstring pairs from ``build_dataset()``, anchor = the requirement,
positive = ``format_section(file, qualname, code)`` of each positive row, the text our model reads.

The saved peer is then evaluated by ``run_evaluation`` (full app, same queries and candidate
pools as ours; the untrained backbone and BM25 come along as baselines), and so is our model when
``--ours CHECKPOINT`` is given or ``--train-ours`` trains it here (``python run_phase1.py``, the
default config). Run from the repository root::

    python bench/peer.py --train-ours --split validation holdout --out outputs/bench-peer
    python bench/peer.py --ours outputs/phase1-minilm/final --out outputs/bench-peer
    python bench/peer.py --max-steps 3 --split validation --out /tmp/peer-smoke   # smoke run

Prints, per split, one table: BM25, untrained backbone, peer, ours (full-app MRR, MAP, R@1, R@5,
R@10, candidate-set accuracy, training wall time) and the difference ours - peer; writes it to
``<out>/peer_vs_ours.{json,md}`` with the date, machine and command. The training wall time is
the Trainer's ``train_runtime`` for both (ours includes its periodic validation, as it is part of
its training); with ``--train-ours`` the whole ``run_phase1.py`` process time is listed as well.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import _bench  # noqa: F401  (puts the repository root on sys.path, sets HF_HUB_OFFLINE)
from _bench import REPO, machine, today

#: The peer's settings (issue 7).
BATCH_SIZE = 32
LEARNING_RATE = 5e-5
WARMUP_RATIO = 0.1
MAX_LENGTH = 256
SEED = 42
COLUMNS = (("mrr", "MRR"), ("map", "MAP"), ("recall@1", "R@1"), ("recall@5", "R@5"),
           ("recall@10", "R@10"))


def peer_pairs(source: str = "stdlib"):
    """``datasets.Dataset`` (anchor, positive): the train split's docstring-labelled positives,
    the section text exactly as our encoder reads it."""
    import datasets

    from cetd_phase1.data.dataset import build_dataset
    from cetd_phase1.text import format_section

    train = build_dataset(source)["train"]
    cols = train.select_columns(["requirement", "file", "qualname", "code", "label",
                                 "label_source"]).to_dict()
    anchors, positives = [], []
    for req, file, qual, code, label, src in zip(cols["requirement"], cols["file"],
                                                 cols["qualname"], cols["code"], cols["label"],
                                                 cols["label_source"]):
        if label == 1 and src == "docstring":
            anchors.append(req)
            positives.append(format_section(file, qual, code))
    return datasets.Dataset.from_dict({"anchor": anchors, "positive": positives})


def peer_trainer(pairs, output_dir: str | Path, *, epochs: float = 1.0, max_steps: int = -1,
                 batch_size: int = BATCH_SIZE, max_length: int = MAX_LENGTH,
                 model_path: str | None = None, logging_steps: int = 10):
    """The peer's ``SentenceTransformerTrainer`` (fp32, CPU, nothing saved or reported while
    training); ``trainer.model`` is the SentenceTransformer being trained."""
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from cetd_phase1.modeling.backbone import resolve_backbone

    model = SentenceTransformer(model_path or resolve_backbone(None), device="cpu",
                                local_files_only=True)
    model.max_seq_length = max_length
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir), num_train_epochs=epochs, max_steps=max_steps,
        per_device_train_batch_size=batch_size, learning_rate=LEARNING_RATE,
        warmup_steps=WARMUP_RATIO, lr_scheduler_type="linear", seed=SEED, use_cpu=True,
        fp16=False, bf16=False, batch_sampler=BatchSamplers.NO_DUPLICATES,
        save_strategy="no", eval_strategy="no", report_to="none", logging_steps=logging_steps)
    return SentenceTransformerTrainer(model=model, args=args, train_dataset=pairs,
                                      loss=MultipleNegativesRankingLoss(model))


def train_peer(out: Path, *, epochs: float, max_steps: int) -> tuple[Path, dict]:
    """Train the peer and save it to ``out/peer-model``; returns (folder, train metrics)."""
    pairs = peer_pairs()
    print(f"peer: {len(pairs)} (requirement, section) train pairs, batch {BATCH_SIZE}, "
          f"lr {LEARNING_RATE}, warmup {WARMUP_RATIO:.0%}, max length {MAX_LENGTH}")
    trainer = peer_trainer(pairs, out / "peer-trainer", epochs=epochs, max_steps=max_steps)
    result = trainer.train()
    model_dir = out / "peer-model"
    trainer.model.save(str(model_dir))
    metrics = dict(result.metrics, global_step=result.global_step)
    (out / "peer_train.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return model_dir, metrics


def train_ours(out: Path, *, config: str | None, max_steps: int) -> tuple[Path, dict]:
    """``python run_phase1.py`` (default config unless ``config``) into ``out/ours``; returns
    (final model folder, train metrics with ``process_s`` added)."""
    cmd = [sys.executable, str(REPO / "run_phase1.py"), "--output-dir", str(out / "ours")]
    if config:
        cmd += ["--config", config]
    if max_steps > 0:
        cmd += ["--max-steps", str(max_steps)]
    print("ours:", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    process_s = time.perf_counter() - start
    checkpoint = out / "ours" / "final"
    return checkpoint, dict(ours_train_metrics(checkpoint), process_s=process_s)


def ours_train_metrics(checkpoint: Path) -> dict:
    """The ``train`` metrics ``run_phase1.py`` wrote beside (or above) ``checkpoint``."""
    for folder in (checkpoint, checkpoint.parent):
        path = folder / "metrics.json"
        if path.is_file():
            return json.loads(path.read_text()).get("train", {})
    return {}


def rows_for(peer_eval: dict, ours_eval: dict | None, train: dict[str, dict]) -> dict[str, dict]:
    """Table rows (method -> metrics) of one split."""
    def row(full: dict, cand: dict, train_s: float | None = None, **extra) -> dict:
        r = {k: full[k] for k, _ in COLUMNS}
        r.update(candidate_accuracy=cand["accuracy"], num_queries=full["num_queries"],
                 train_s=train_s, **extra)
        return r

    base = peer_eval["baselines"]
    rows = {"BM25": row(base["bm25"]["full_app"], base["bm25"]["candidate_set"])}
    if "backbone (untrained)" in base:
        b = base["backbone (untrained)"]
        rows["untrained backbone"] = row(b["full_app"], b["candidate_set"])
    rows["peer (ST MNRL)"] = row(peer_eval["full_app"], peer_eval["candidate_set"],
                                 train["peer"].get("train_runtime"))
    if "model+bm25 (hybrid)" in base:
        b = base["model+bm25 (hybrid)"]
        rows["peer + BM25 (hybrid)"] = row(b["full_app"], b["candidate_set"])
    if ours_eval is not None:
        rows["ours"] = row(ours_eval["full_app"], ours_eval["candidate_set"],
                           train["ours"].get("train_runtime"),
                           process_s=train["ours"].get("process_s"))
        if "model+bm25 (hybrid)" in ours_eval["baselines"]:
            b = ours_eval["baselines"]["model+bm25 (hybrid)"]
            rows["ours + BM25 (hybrid)"] = row(b["full_app"], b["candidate_set"])
        ours, peer = rows["ours"], rows["peer (ST MNRL)"]
        rows["ours - peer"] = {k: _diff(ours[k], peer[k])
                               for k in [c for c, _ in COLUMNS] + ["candidate_accuracy",
                                                                    "train_s"]}
    return rows


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _cell(value: float | None, width: int, signed: bool, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>{width}}"
    return f"{value:>+{width}.{digits}f}" if signed else f"{value:>{width}.{digits}f}"


def render(split: str, rows: dict[str, dict]) -> tuple[str, str]:
    """(console text, markdown) of one split's table."""
    heads = [h for _, h in COLUMNS] + ["cand acc", "train s"]
    n = next(iter(rows.values()))["num_queries"]
    title = f"stdlib {split}: full-app ranking, {n} requirements (candidate-set accuracy apart)"
    text = [title, f"{'method':<22}" + "".join(f"{h:>9}" for h in heads)]
    md = [f"### {title}", "", "| method | " + " | ".join(heads) + " |",
          "|---" * (len(heads) + 1) + "|"]
    for name, r in rows.items():
        signed = name == "ours - peer"
        cells = [_cell(r[k], 9, signed) for k, _ in COLUMNS]
        cells += [_cell(r["candidate_accuracy"], 9, signed), _cell(r["train_s"], 9, signed, 0)]
        text.append(f"{name:<22}" + "".join(cells))
        md.append(f"| {name} | " + " | ".join(c.strip() for c in cells) + " |")
    return "\n".join(text), "\n".join(md)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/bench-peer", help="folder for models and tables")
    parser.add_argument("--split", nargs="+", default=["holdout"],
                        choices=("validation", "holdout"), help="split(s) to evaluate on")
    parser.add_argument("--epochs", type=float, default=1.0, help="peer epochs (default 1)")
    parser.add_argument("--max-steps", type=int, default=-1,
                        help="stop both trainings after N steps (smoke runs)")
    parser.add_argument("--peer-model", help="an already trained peer folder (skips training)")
    ours = parser.add_mutually_exclusive_group()
    ours.add_argument("--ours", metavar="CHECKPOINT", help="our trained model folder")
    ours.add_argument("--train-ours", action="store_true",
                      help="train ours here first: python run_phase1.py --output-dir OUT/ours")
    parser.add_argument("--ours-config", help="config for --train-ours (default: the default)")
    parser.add_argument("--peer-section-chunks", type=int, default=None, metavar="N",
                        help="read the peer's long functions as up to N texts, ranked by the best "
                             "(what ranking.section_chunks does for ours; default 1)")
    parser.add_argument("--hybrid", action="store_true",
                        help="also report the hybrid (BM25 + dense) ranking of both, as separate rows")
    args = parser.parse_args(argv)

    from cetd_phase1.errors import CETDError
    from cetd_phase1.evaluation.evaluate import run_evaluation
    from cetd_phase1.modeling.backbone import resolve_backbone

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python", "bench/peer.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        train: dict[str, dict] = {}
        if args.peer_model:
            peer_dir = Path(args.peer_model)
            saved = peer_dir.parent / "peer_train.json"
            train["peer"] = json.loads(saved.read_text()) if saved.is_file() else {}
        else:
            peer_dir, train["peer"] = train_peer(out, epochs=args.epochs,
                                                 max_steps=args.max_steps)
        ours_dir = None
        if args.train_ours:
            ours_dir, train["ours"] = train_ours(out, config=args.ours_config,
                                                 max_steps=args.max_steps)
        elif args.ours:
            ours_dir = Path(args.ours)
            train["ours"] = ours_train_metrics(ours_dir)

        report = {"date": today(), "machine": machine(), "command": command,
                  "peer": {"model": str(peer_dir), "train": train["peer"]},
                  "ours": {"model": str(ours_dir), "train": train.get("ours")}, "splits": {}}
        texts, mds = [], []
        for split in args.split:
            peer_eval = run_evaluation(peer_dir, out / f"eval-peer-{split}", split=split,
                                       backbone=resolve_backbone(None), hybrid=args.hybrid,
                                       command=command, section_chunks=args.peer_section_chunks)
            ours_eval = None if ours_dir is None else run_evaluation(
                ours_dir, out / f"eval-ours-{split}", split=split, hybrid=args.hybrid,
                command=command)
            rows = rows_for(peer_eval, ours_eval, train)
            report["splits"][split] = rows
            text, md = render(split, rows)
            texts.append(text)
            mds.append(md)
    except CETDError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code

    (out / "peer_vs_ours.json").write_text(json.dumps(report, indent=2) + "\n")
    header = [f"# Peer vs ours ({report['date']})", "", f"- machine: {report['machine']}",
              f"- command: `{command}`", ""]
    (out / "peer_vs_ours.md").write_text("\n".join(header + ["\n\n".join(mds)]) + "\n")
    print(f"\n{report['date']}, {report['machine']}\n" + "\n\n".join(texts))
    if "ours" in train and train["ours"].get("process_s") is not None:
        print(f"ours: whole run_phase1.py process {train['ours']['process_s']:.0f} s "
              f"(data, training, final evaluation)")
    print(f"\ntables: {out / 'peer_vs_ours.md'}, {out / 'peer_vs_ours.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
