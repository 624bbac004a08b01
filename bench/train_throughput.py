#!/usr/bin/env python
"""Training throughput and peak memory: our ``RetrievalTrainer`` against the peer's
``SentenceTransformerTrainer`` on the same model (all-MiniLM-L6-v2), data (stdlib train split),
batch size (32) and length limits (256), for a fixed number of steps.

Each run is its own process, alternating (ours, peer, ours, peer, ... ``--rounds`` times), so
neither inherits the other's memory or warm caches. Ours is ``run_phase1.py`` itself (its
``main``) on the default config with the batch size, step count and length limits overridden
(``--negatives`` also overrides ``training.negatives_per_query``; ``--config-lengths`` keeps
the config's own length limits for ours); the peer is the trainer of
``bench/peer.py``. The same timing callback goes into both trainers: the clock starts at
``on_train_begin`` and stops when the last step ends; the run is then cut short, because the
end-of-training evaluation and checkpoint are not training throughput. Peak RSS is the child's
own high-water mark (VmHWM) at that moment: model, data and training.

A sample is one requirement with its positive section, in both: the peer encodes 2 texts per
sample, ours 2 + ``negatives_per_query`` (its BM25/random hard negatives), so ours does more
encoding per sample. Run from the repository root::

    python bench/train_throughput.py                     # 20 steps, 1 round, ~10 min on 2 cores
    python bench/train_throughput.py --steps 2 --batch-size 4 --out /tmp/tt   # smoke run

Prints per run and as medians over the rounds: samples/s over all steps, samples/s after the
first step (steady), seconds, peak RSS, and the ratios ours / peer; writes
``<out>/train_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import _bench  # noqa: F401  (puts the repository root on sys.path, sets HF_HUB_OFFLINE)
from _bench import REPO, machine, peak_rss_mb, today


class _Stop(Exception):
    """Raised by the timer once the last step ended, to skip evaluation and saving."""


def timer_callback(record: dict):
    """A ``TrainerCallback`` that writes start/first-step/end times and the step count into
    ``record`` and stops the run at ``max_steps``."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            record["start"] = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if state.global_step == 1:
                record["first_step_end"] = now
            if state.global_step >= state.max_steps:
                record.update(end=now, steps=state.global_step, peak_rss_mb=peak_rss_mb())
                raise _Stop

    return Timer()


def run_ours(args, workdir: Path, record: dict) -> None:
    """The training driver (``run_phase1.py``'s ``main``) on the (default) config with the
    benchmark's overrides."""
    import yaml

    from cetd_phase1.config import config_path
    from cetd_phase1.train import DEFAULT_CONFIG, main
    from cetd_phase1.training.trainer import RetrievalTrainer

    data = yaml.safe_load(config_path(args.config or DEFAULT_CONFIG).read_text())
    if not args.config_lengths:
        data.setdefault("dataset", {}).update(max_req_length=args.max_length,
                                              max_code_length=args.max_length)
    dataset = data.get("dataset", {})
    record["lengths"] = [dataset.get("max_req_length"), dataset.get("max_code_length")]
    if args.negatives is not None:
        data.setdefault("training", {})["negatives_per_query"] = args.negatives
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(data))
    record["negatives_per_query"] = data.get("training", {}).get("negatives_per_query")

    train = RetrievalTrainer.train

    def timed_train(self, *a, **k):  # the only way in: the driver builds the trainer itself
        self.add_callback(timer_callback(record))
        return train(self, *a, **k)

    RetrievalTrainer.train = timed_train
    main(["--config", str(config), "--output-dir", str(workdir / "ours"),
                     "--max-steps", str(args.steps), "--batch-size", str(args.batch_size)])


def run_peer(args, workdir: Path, record: dict) -> None:
    """The peer of ``bench/peer.py`` for ``--steps`` steps."""
    from peer import peer_pairs, peer_trainer

    trainer = peer_trainer(peer_pairs(), workdir / "peer", max_steps=args.steps,
                           batch_size=args.batch_size, max_length=args.max_length)
    trainer.add_callback(timer_callback(record))
    trainer.train()


def child(args) -> int:
    """One timed run; writes its record as JSON to ``--result``."""
    import tempfile

    record: dict = {"side": args.child}
    with tempfile.TemporaryDirectory(prefix=f"cetd-tt-{args.child}-") as tmp:
        try:
            (run_ours if args.child == "ours" else run_peer)(args, Path(tmp), record)
        except _Stop:
            pass
    if "end" not in record:
        print(f"{args.child}: training ended before step {args.steps}", file=sys.stderr)
        return 1
    steps, batch = record["steps"], args.batch_size
    seconds = record["end"] - record["start"]
    steady = record["end"] - record["first_step_end"]
    result = {"side": args.child, "steps": steps, "batch_size": batch, "seconds": seconds,
              "samples_per_s": steps * batch / seconds,
              "steady_samples_per_s": (steps - 1) * batch / steady if steps > 1 else None,
              "peak_rss_mb": record["peak_rss_mb"],
              "negatives_per_query": record.get("negatives_per_query", 0),
              "lengths": record.get("lengths", [args.max_length, args.max_length])}
    Path(args.result).write_text(json.dumps(result) + "\n")
    return 0


def warm_caches(config: str | None) -> None:
    """Build (or load) the datasets both sides read, so no timed child builds them."""
    from cetd_phase1.config import load_config
    from cetd_phase1.data.dataset import build_dataset, build_sections
    from cetd_phase1.train import DEFAULT_CONFIG

    cfg = load_config(config or DEFAULT_CONFIG)
    d = cfg.dataset
    build_dataset(cfg.data_source, hard_negatives=d.hard_negatives,
                  random_negatives=d.random_negatives, max_positives=d.max_positives,
                  label_sources=tuple(d.label_sources), cache_dir=d.cache_dir, seed=d.seed)
    build_sections(cfg.data_source, cache_dir=d.cache_dir)
    build_dataset()  # the peer's pairs


def _fmt(value: float | None, spec: str) -> str:
    """``format(value, spec)``; a dash of the same width for ``None``."""
    width = spec.split(".")[0]
    return format("-", f">{width}") if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=1, help="(ours, peer) pairs of runs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256,
                        help="requirement and code token limit of both sides")
    parser.add_argument("--config-lengths", action="store_true",
                        help="ours keeps its config's length limits (the peer uses --max-length)")
    parser.add_argument("--negatives", type=int,
                        help="ours: negatives per requirement (default: the config's)")
    parser.add_argument("--config", help="our config (default: the driver's default)")
    parser.add_argument("--out", default="outputs/bench-train",
                        help="folder for the JSON result and the children's logs")
    parser.add_argument("--child", choices=("ours", "peer"), help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    if args.steps < 2:
        parser.error("--steps must be at least 2 (the first step is timed apart)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    warm_caches(args.config)
    passthrough = ["--steps", str(args.steps), "--batch-size", str(args.batch_size),
                   "--max-length", str(args.max_length)]
    if args.negatives is not None:
        passthrough += ["--negatives", str(args.negatives)]
    if args.config:
        passthrough += ["--config", args.config]
    if args.config_lengths:
        passthrough.append("--config-lengths")
    runs: dict[str, list[dict]] = {"ours": [], "peer": []}
    for r in range(1, args.rounds + 1):
        for side in ("ours", "peer"):
            result, log = out / f"{side}-{r}.json", out / f"{side}-{r}.log"
            cmd = [sys.executable, __file__, "--child", side, "--result", str(result),
                   *passthrough]
            print(f"round {r}/{args.rounds}: {side} ({args.steps} steps) ...", flush=True)
            with open(log, "w") as f:
                done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
            if done.returncode != 0:
                print(f"{side} failed (exit {done.returncode}); see {log}", file=sys.stderr)
                return 1
            runs[side].append(json.loads(result.read_text()))
            x = runs[side][-1]
            print(f"  {x['samples_per_s']:.2f} samples/s (steady "
                  f"{_fmt(x['steady_samples_per_s'], '.2f')}), {x['seconds']:.0f} s, "
                  f"peak RSS {x['peak_rss_mb']:.0f} MiB", flush=True)

    def median(side: str, key: str) -> float | None:
        values = [x[key] for x in runs[side] if x[key] is not None]
        return statistics.median(values) if values else None

    keys = ("samples_per_s", "steady_samples_per_s", "seconds", "peak_rss_mb")
    summary = {side: {k: median(side, k) for k in keys} for side in runs}
    ratio = {k: (summary["ours"][k] / summary["peer"][k]
                 if summary["ours"][k] and summary["peer"][k] else None) for k in keys}
    report = {"date": today(), "machine": machine(),
              "command": " ".join(["python", "bench/train_throughput.py",
                                   *(argv if argv is not None else sys.argv[1:])]),
              "steps": args.steps, "batch_size": args.batch_size,
              "max_length": args.max_length, "rounds": args.rounds,
              "ours_negatives_per_query": runs["ours"][0]["negatives_per_query"],
              "ours_lengths": runs["ours"][0]["lengths"],
              "median": summary, "ratio_ours_over_peer": ratio, "runs": runs}
    (out / "train_throughput.json").write_text(json.dumps(report, indent=2) + "\n")

    neg = report["ours_negatives_per_query"]
    req_len, code_len = report["ours_lengths"]
    print(f"\n{report['date']}, {report['machine']}")
    print(f"{args.steps} steps of {args.batch_size} requirements, median of {args.rounds} "
          f"round(s); token limits (requirement/code): ours {req_len}/{code_len}, peer "
          f"{args.max_length}/{args.max_length}; texts per sample: ours 2 + {neg} negatives, "
          f"peer 2")
    print(f"{'':6}{'samples/s':>11}{'steady':>9}{'seconds':>9}{'peak RSS MiB':>14}")
    for side in ("ours", "peer"):
        s = summary[side]
        print(f"{side:6}{_fmt(s['samples_per_s'], '11.2f')}"
              f"{_fmt(s['steady_samples_per_s'], '9.2f')}{_fmt(s['seconds'], '9.0f')}"
              f"{_fmt(s['peak_rss_mb'], '14.0f')}")
    print(f"ours / peer: samples/s {_fmt(ratio['samples_per_s'], '.2f')}x "
          f"(steady {_fmt(ratio['steady_samples_per_s'], '.2f')}x), "
          f"peak RSS {_fmt(ratio['peak_rss_mb'], '.2f')}x")
    print(f"results: {out / 'train_throughput.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
