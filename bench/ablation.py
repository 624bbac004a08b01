#!/usr/bin/env python
"""Ablations of the default recipe, chosen on the VALIDATION split only.

Each variant is the default config (configs/phase1_minilm_cpu.yaml) with a few keys changed; it
is trained with `run_phase1.py --skip-holdout` (the holdout is never looked at here) and scored
on the validation apps (full-app ranking: MRR, Recall@5) and, with --feature-requests, on the
validation half of the feature requests (bench/feature_requests_split.yaml).

    python bench/ablation.py --out outputs/ablation                       # every variant
    python bench/ablation.py --out outputs/ablation --only default lora   # some of them
    python bench/ablation.py --only default neg3 --seeds 42 1 2 --feature-requests   # spread

With --feature-requests each row also carries the criterion rows are chosen on: the MRR of the
served hybrid (model fused with BM25 as ``retrieve`` serves it) on both validation sets and
their mean (docs/experiments.md). With --seeds each variant is trained once per training seed
and a second table gives each variant's spread; a margin inside the default's spread is not a
gain.

Prints a table (variant, seed, change, validation MRR / R@5, feature-request MRR / R@5, fused
scores, train seconds, the command) and writes it to OUT/ablation.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "configs" / "phase1_minilm_cpu.yaml"
if str(REPO) not in sys.path:  # check_variants imports cetd_phase1 from a clean checkout
    sys.path.insert(0, str(REPO))

#: name -> (what changes against the default config, {section.key: value}); each variant turns
#: one lever of the default back or further, so its row reads against the default's
VARIANTS: dict[str, tuple[str, dict]] = {
    "default": ("the default config as it stands", {}),
    "lora": ("LoRA r=16 (learning rate 2e-4) instead of full fine-tuning",
             {"training.use_lora": True, "training.learning_rate": 2e-4}),
    "lr1e-4": ("learning rate 1e-4 instead of 5e-5", {"training.learning_rate": 1e-4}),
    "tau0.03": ("temperature 0.03 instead of 0.05", {"training.temperature": 0.03}),
    "neg0": ("in-batch negatives only (no BM25 hard negative)",
             {"training.negatives_per_query": 0}),
    "neg3": ("3 BM25 hard negatives per requirement instead of 1",
             {"training.negatives_per_query": 3}),
    "mixed-app": ("in-batch negatives from any app (training.same_app_batches false)",
                  {"training.same_app_batches": False}),
    "steps300": ("300 steps instead of 200 (warmup 30, the same 10%)",
                 {"training.max_steps": 300, "training.warmup_steps": 30}),
    "code256": ("code cut at 256 tokens instead of 128", {"dataset.max_code_length": 256}),
    "unfrozen-emb": ("token embeddings trained too (training.freeze_embeddings false)",
                     {"training.freeze_embeddings": False}),
    "fp32": ("fp32 where the CPU has native bf16 (training.bf16 false): what bf16 autocast "
             "costs in quality", {"training.bf16": False}),
    "attn-dropout": ("the backbone's attention dropout (0.1) kept: no flash attention on a CPU",
                     {"model.attention_dropout": None}),
    "cls-pooling": ("pooled by the [CLS] token instead of the mean", {"model.pooling": "cls"}),
    "no-split": ("identifiers read as written (model.split_identifiers false)",
                 {"model.split_identifiers": False}),
    "chunks1": ("a long function ranked by its first text only (ranking.section_chunks 1)",
                {"ranking.section_chunks": 1}),
    "no-late": ("ranked by the pooled cosine alone (ranking.late_interaction 0), fused with BM25 "
                "at 0.7, its weight before late interaction",
                {"ranking.late_interaction": 0.0, "ranking.hybrid_weight": 0.7}),
    "no-class-penalty": ("no class penalty in the served hybrid (ranking.class_penalty 0)",
                         {"ranking.class_penalty": 0.0}),
    "stdlib-only": ("the stdlib docstrings alone, offline: no PyPI changelog requirements "
                    "(dataset.source stdlib, no changelog label source)",
                    {"dataset.source": "stdlib",
                     "dataset.label_sources": ["docstring", "gold", "heuristic"]}),
    "git2": ("the mined commit labels too (dataset.source stdlib+pypi-changelog+git, label "
             "source git), of the 2 releases of each repository with the most",
             {"dataset.source": "stdlib+pypi-changelog+git",
              "dataset.label_sources": ["docstring", "gold", "heuristic", "changelog", "git"],
              "dataset.commit_releases_per_repo": 2}),
    "git1": ("as git2 with 1 release a repository",
             {"dataset.source": "stdlib+pypi-changelog+git",
              "dataset.label_sources": ["docstring", "gold", "heuristic", "changelog", "git"],
              "dataset.commit_releases_per_repo": 1}),
    "git4": ("as git2 with 4 releases a repository",
             {"dataset.source": "stdlib+pypi-changelog+git",
              "dataset.label_sources": ["docstring", "gold", "heuristic", "changelog", "git"],
              "dataset.commit_releases_per_repo": 4}),
    "mpnet": ("all-mpnet-base-v2 (110M) instead of MiniLM: configs/phase1_mpnet_cpu.yaml",
              {"model.base_model": "all-mpnet-base-v2"}),
    "pypi-wide": ("the changelogs of the 37 packages of bench/pypi_packages_wide.yaml instead "
                  "of the 15 pinned ones (dataset.pypi_packages)",
                  {"dataset.pypi_packages": str(REPO / "bench" / "pypi_packages_wide.yaml")}),
}


def variant_config(base: dict, changes: dict, output_dir: Path) -> dict:
    cfg = copy.deepcopy(base)
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        cfg.setdefault(section, {})[key] = value
    cfg["model"]["output_dir"] = str(output_dir)
    return cfg


def feature_request_scores(checkpoint: Path, out: Path) -> dict:
    """Dense MRR / R@5 on the feature requests' validation half, and the criterion every row is
    chosen on: the MRR of the served hybrid (the checkpoint's hybrid weight and class penalty)
    on both validation sets, and their mean. One ``bench/feature_requests.py --hybrid`` run."""
    subprocess.run([sys.executable, str(REPO / "bench" / "feature_requests.py"), "--checkpoint",
                    str(checkpoint), "--half", "validation", "--hybrid", "--out", str(out)],
                   check=True, capture_output=True, text=True, cwd=REPO)
    summary = json.loads((out / "summary.json").read_text())
    fr = next(m for name, m in summary.items() if name.startswith("feature requests"))
    stdlib = next(m for name, m in summary.items() if name.startswith("stdlib"))

    def served(m: dict) -> float:
        return next(v["full_app"]["mrr"] for k, v in m["baselines"].items() if "hybrid" in k)

    row = {"fr_mrr": fr["full_app"]["mrr"], "fr_r5": fr["full_app"]["recall@5"],
           "fused_stdlib": served(stdlib), "fused_fr": served(fr)}
    row["fused_mean"] = (row["fused_stdlib"] + row["fused_fr"]) / 2
    return row


def run_variant(name: str, changes: dict, out: Path, feature_requests: bool,
                seed: int | None = None) -> dict:
    base = yaml.safe_load(DEFAULT.read_text())
    if seed is not None:
        changes = {**changes, "training.seed": seed}
    vdir = out / run_name(name, seed)
    vdir.mkdir(parents=True, exist_ok=True)
    cfg_file = vdir / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(variant_config(base, changes, vdir / "model")))
    cmd = [sys.executable, str(REPO / "run_phase1.py"), "--config", str(cfg_file),
           "--skip-holdout"]
    start = time.time()
    with open(vdir / "train.log", "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    metrics = json.loads((vdir / "model" / "metrics.json").read_text())
    row = {"variant": name, "seconds": round(time.time() - start),
           "train_seconds": round(metrics["train"].get("train_runtime", 0)),
           "val_mrr": metrics["validation"]["eval_mrr"],
           "val_r5": metrics["validation"]["eval_recall@5"],
           "seed": seed, "command": command(name, seed)}
    if feature_requests:
        row.update(feature_request_scores(vdir / "model" / "final", vdir / "fr"))
    (vdir / "row.json").write_text(json.dumps(row, indent=2))
    return row


def run_name(name: str, seed: int | None) -> str:
    """A run's folder: the variant's name, with ``-seedN`` when a seed was given."""
    return name if seed is None else f"{name}-seed{seed}"


def command(name: str, seed: int | None) -> str:
    return f"python bench/ablation.py --only {name}" + (f" --seeds {seed}" if seed is not None
                                                         else "")


def spread(values: list[float]) -> str:
    return f"{min(values):.4f}-{max(values):.4f} (mean {sum(values) / len(values):.4f})" \
        if values else "-"


def check_variants(out: Path) -> None:
    """Every variant is a valid config: a typo fails now, not minutes into a training run."""
    from cetd_phase1.config import config_from_dict

    base = yaml.safe_load(DEFAULT.read_text())
    for name, (_, changes) in VARIANTS.items():
        config_from_dict(variant_config(base, changes, out), f"variant {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="outputs/ablation")
    parser.add_argument("--only", nargs="*", choices=sorted(VARIANTS), default=None)
    parser.add_argument("--feature-requests", action="store_true",
                        help="also score the validation half of the feature requests")
    parser.add_argument("--reuse", action="store_true", help="keep rows already measured")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                        help="train each variant once per training seed (batch order and "
                             "in-batch draws; folders NAME-seedSEED) and print each variant's "
                             "spread: two runs of one recipe differ by about 0.01 here")
    args = parser.parse_args()
    out = Path(args.out)
    check_variants(out)
    rows = []
    for name in args.only or list(VARIANTS):
        for seed in args.seeds or [None]:
            done = out / run_name(name, seed) / "row.json"
            if args.reuse and done.is_file():
                rows.append(json.loads(done.read_text()))
                rows[-1].update(variant=name, seed=seed, command=command(name, seed))
                final = done.parent / "model" / "final"
                if args.feature_requests and "fused_mean" not in rows[-1] and final.is_dir():
                    rows[-1].update(feature_request_scores(final, done.parent / "fr"))
                    done.write_text(json.dumps(rows[-1], indent=2))
            else:
                rows.append(run_variant(name, VARIANTS[name][1], out, args.feature_requests,
                                        seed))
            r = rows[-1]
            print(f"{run_name(name, seed)}: val MRR {r['val_mrr']:.3f} R@5 {r['val_r5']:.3f}"
                  + (f"  FR MRR {r['fr_mrr']:.3f}" if "fr_mrr" in r else "")
                  + (f"  fused mean {r['fused_mean']:.4f}" if "fused_mean" in r else "")
                  + f"  train {r['train_seconds']} s", flush=True)
    lines = ["| variant | seed | change | val MRR | val R@5 | FR-val MRR | FR-val R@5 | "
             "fused stdlib / FR -> mean | train s | command |", "|---" * 10 + "|"]
    for r in rows:
        fr = (f"{r['fr_mrr']:.3f} | {r['fr_r5']:.3f}" if "fr_mrr" in r else "- | -")
        fused = (f"{r['fused_stdlib']:.3f} / {r['fused_fr']:.3f} -> {r['fused_mean']:.4f}"
                 if "fused_mean" in r else "-")
        seed = "config" if r.get("seed") is None else r["seed"]
        lines.append(f"| {r['variant']} | {seed} | {VARIANTS[r['variant']][0]} | "
                     f"{r['val_mrr']:.3f} | {r['val_r5']:.3f} | {fr} | {fused} | "
                     f"{r['train_seconds']} | `{r['command']}` |")
    if args.seeds and len(args.seeds) > 1:
        lines += ["", "| variant | runs | val MRR min-max | FR-val MRR min-max | "
                  "fused mean min-max |", "|---" * 5 + "|"]
        for name in dict.fromkeys(r["variant"] for r in rows):
            mine = [r for r in rows if r["variant"] == name]
            lines.append(f"| {name} | {len(mine)} | " + " | ".join(
                spread([r[k] for r in mine if k in r]) for k in ("val_mrr", "fr_mrr", "fused_mean"))
                + " |")
    table = "\n".join(lines)
    print(table)
    (out / "ablation.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
