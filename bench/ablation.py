#!/usr/bin/env python
"""Ablations of the default recipe, chosen on the VALIDATION split only.

Each variant is the default config (configs/phase1_minilm_cpu.yaml) on 150 steps of 16 with a few keys
changed (``BASE_CHANGES``, then the variant's own); it is
trained with `run_phase1.py --skip_holdout` (the holdout is never looked at here) and scored on the
validation apps (full-app ranking: MRR, Recall@5) and, with --feature-requests, on the validation
half of the feature requests (bench/feature_requests_split.yaml).

    python bench/ablation.py --out outputs/ablation                       # every variant
    python bench/ablation.py --out outputs/ablation --only default lora   # some of them
    python bench/ablation.py --only batch32-200 --seeds 42 1 2 --feature-requests   # spread

With --feature-requests each row also carries the criterion rows are chosen on: the served
hybrid's MRR on both validation sets (``bench/fusion.py`` as ``retrieve`` serves it) and their
mean. With --seeds each variant is trained once per training seed and a second table gives
each variant's spread; a margin inside the default's spread is not a gain.

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

#: the label sources of every row before the summaries (92488c8), and of the default again
CHANGELOG_SOURCES = ["docstring", "gold", "heuristic", "changelog"]
#: Every variant runs on the schedule and text the table was measured on, 150 steps of 16
#: requirements with identifiers read as written, each section ranked by its first text and the
#: pooled cosine alone (the default config now trains 200 steps of 32, splits camelCase
#: identifiers, reads long functions as up to 8 texts, keeps the token embeddings frozen
#: and ranks with late interaction, chosen from these rows); a variant's own changes come on top.
BASE_CHANGES = {"training.max_steps": 150, "training.batch_size": 16,
                "model.split_identifiers": False, "model.section_chunks": 1,
                "training.freeze_embeddings": False,
                "dataset.label_sources": CHANGELOG_SOURCES,
                "model.late_interaction": 0.0, "model.hybrid_weight": 0.7,
                "model.class_penalty": 0.0}
#: the changelog rows' data: stdlib + 15 PyPI packages with their changelogs (an option)
PYPI_CHANGELOGS = {"dataset.source": "stdlib+pypi", "dataset.label_sources": CHANGELOG_SOURCES}

#: the default's recipe from 376a3e9 (200 steps of 32, identifiers as words), and since 5c45c61
#: (+ long functions ranked by their best of 4 texts): the base of the rows measured on them
SPLIT_200 = {"training.batch_size": 32, "training.max_steps": 200,
             "model.split_identifiers": True}
CHUNKS4_200 = {**SPLIT_200, "model.section_chunks": 4}
FROZEN_200 = {**CHUNKS4_200, "training.freeze_embeddings": True}
#: the default since 92488c8: + module and class summaries as requirements
SUMMARIES_200 = {**FROZEN_200, "dataset.label_sources": [*CHANGELOG_SOURCES, "module_docstring",
                                                         "class_docstring"]}
#: the default from 72d0822: the summaries' training, ranked by 0.25 x cosine + 0.75 x MaxSim
#: and fused with BM25 at 0.8 (bench/late_interaction.py); since the summaries were dropped
#: again, the frozen recipe ranked that way (LATE_FROZEN_200, the default until the thirteenth
#: session)
LATE_200 = {**SUMMARIES_200, "model.late_interaction": 0.75, "model.hybrid_weight": 0.8}
LATE_FROZEN_200 = {**FROZEN_200, "model.late_interaction": 0.75, "model.hybrid_weight": 0.8}
#: the default since the thirteenth session: the same training, a long function read as up to
#: 8 texts (MaxSim over all their tokens) instead of 4
CHUNKS8_LATE_200 = {**LATE_FROZEN_200, "model.section_chunks": 8}
#: the default since the fourteenth session: the same, every class 0.3 lower in the served
#: hybrid (bench/class_penalty.py)
CLASSES_LOWER_200 = {**CHUNKS8_LATE_200, "model.class_penalty": 0.3}
WIDE_PACKAGES = "bench/pypi_packages_wide.yaml"

#: name -> (what changes, {section.key: value})
VARIANTS: dict[str, tuple[str, dict]] = {
    "default": ("the default recipe on 150 steps", {}),
    "lora": ("LoRA r=16 instead of full fine-tuning", {"training.use_lora": True,
                                                       "training.learning_rate": 2e-4}),
    "lr2e-5": ("learning rate 2e-5", {"training.learning_rate": 2e-5}),
    "lr1e-4": ("learning rate 1e-4", {"training.learning_rate": 1e-4}),
    "tau0.1": ("temperature 0.1", {"training.temperature": 0.1}),
    "neg0": ("in-batch negatives only (no BM25 hard negative)",
             {"training.negatives_per_query": 0}),
    "neg3": ("3 hard negatives per requirement", {"training.negatives_per_query": 3}),
    "code256": ("code cut at 256 tokens instead of 128", {"dataset.max_code_length": 256}),
    "bce": ("the seed's BCE objective instead of InfoNCE", {"training.loss": "bce"}),
    "steps300": ("300 steps instead of 150", {"training.max_steps": 300}),
    "steps400": ("400 steps instead of 150 (the 600-step run peaked at 350)",
                 {"training.max_steps": 400}),
    "batch32": ("batch 32", {"training.batch_size": 32}),
    "same-app": ("in-batch negatives from the requirement's own app (same_app_batches)",
                 {"training.same_app_batches": True}),
    "same-app-neg0": ("same-app batches, no BM25 hard negative (in-batch negatives only)",
                      {"training.same_app_batches": True, "training.negatives_per_query": 0}),
    "code256-250": ("code cut at 256 tokens, 250 steps (about the default's training time)",
                    {"dataset.max_code_length": 256, "training.max_steps": 250}),
    "same-app-400": ("same-app batches on 400 steps (the default schedule)",
                     {"training.same_app_batches": True, "training.max_steps": 400}),
    "same-app-neg0-800": ("same-app batches, no hard negative, 800 steps (about the time of "
                          "400 steps with one)",
                          {"training.same_app_batches": True, "training.negatives_per_query": 0,
                           "training.max_steps": 800}),
    "changelog-400": ("+ 15 PyPI packages (train split) with the changelog label source "
                      "(dataset.source: stdlib+pypi), 400 steps",
                      {"training.max_steps": 400, **PYPI_CHANGELOGS}),
    "pypi-docstrings-400": ("+ the same PyPI packages, docstrings only (changelog-400's control), "
                            "400 steps",
                            {"training.max_steps": 400, "dataset.source": "stdlib+pypi"}),
    "changelog-only-400": ("+ the same PyPI packages, their changelog requirements only "
                           "(dataset.source: stdlib+pypi-changelog), 400 steps; the default",
                           {"training.max_steps": 400, **PYPI_CHANGELOGS,
                            "dataset.source": "stdlib+pypi-changelog"}),
    "default-400": ("the default config as it stands on 400 steps of 16 (the schedule before "
                    "batch32-200): measures a code change against the row of the commit "
                    "before it",
                    {"training.max_steps": 400}),
    "batch32-200": ("batch 32 on 200 steps (the default since): as many requirements per "
                    "run as 400 of 16, twice the in-batch negatives per step",
                    {"training.batch_size": 32, "training.max_steps": 200}),
    "batch32-200-fp32": ("batch32-200 in fp32 where the CPU has native bf16 (training.bf16 "
                         "false): what bf16 autocast costs in quality",
                         {"training.batch_size": 32, "training.max_steps": 200,
                          "training.bf16": False}),
    "batch32-neg3-200": ("batch32-200 with 3 BM25 hard negatives per requirement instead of 1",
                         {"training.batch_size": 32, "training.max_steps": 200,
                          "training.negatives_per_query": 3}),
    "batch32-code256-200": ("batch32-200 with code cut at 256 tokens instead of 128",
                            {"training.batch_size": 32, "training.max_steps": 200,
                             "dataset.max_code_length": 256}),
    "batch32-bce-200": ("batch32-200 with the seed's objective: BCE on each requirement's own "
                        "candidates (training.loss bce) instead of InfoNCE over the batch",
                        {"training.batch_size": 32, "training.max_steps": 200,
                         "training.loss": "bce"}),
    "batch32-tau0.03-200": ("batch32-200 with temperature 0.03 instead of 0.05 (0.1 lost "
                            "0.03 at 150 steps of 16)",
                            {"training.batch_size": 32, "training.max_steps": 200,
                             "training.temperature": 0.03}),
    "batch64-100": ("batch 64 on 100 steps (warmup 10): as many requirements per run as "
                    "the default, 127 candidates per requirement instead of 63",
                    {"training.batch_size": 64, "training.max_steps": 100,
                     "training.warmup_steps": 10}),
    "batch32-split-200": ("batch32-200 reading camelCase identifiers as words "
                          "(model.split_identifiers: basicConfig -> basic Config)", SPLIT_200),
    "batch32-split-neg3-200": ("batch32-split-200 (the default) with 3 BM25 hard negatives per "
                               "requirement instead of 1",
                               {**SPLIT_200, "training.negatives_per_query": 3}),
    "batch32-split-notes-200": ("batch32-split-200 (the default) + the PyPI packages' version "
                                "notes (versionadded/versionchanged/deprecated text -> its "
                                "section) as requirements",
                                {**SPLIT_200,
                                 "dataset.label_sources": [*CHANGELOG_SOURCES, "version_notes"]}),
    "batch32-split-wide-200": ("batch32-split-200 (the default) with the changelog entries of "
                               "37 PyPI packages instead of 15 (bench/pypi_packages_wide.yaml)",
                               {**SPLIT_200, "dataset.pypi_packages": WIDE_PACKAGES}),
    "batch32-split-chunks4-200": ("batch32-split-200 read at ranking time as up to 4 texts per "
                                  "long function, each scored, the best kept "
                                  "(model.section_chunks 4)", CHUNKS4_200),
    "batch32-split-chunks4-wide-200": ("batch32-split-chunks4-200 (the previous default) with "
                                       "the changelog entries of 37 PyPI packages instead of 15",
                                       {**CHUNKS4_200, "dataset.pypi_packages": WIDE_PACKAGES}),
    "batch32-split-chunks4-300": ("batch32-split-chunks4-200 (the previous default) on 300 "
                                  "steps (warmup 30, the same 10%): about the peer's training "
                                  "time",
                                  {**CHUNKS4_200, "training.max_steps": 300,
                                   "training.warmup_steps": 30}),
    "batch32-split-chunks4-frozen-emb-200": ("batch32-split-chunks4-200 (the previous "
                                             "default) with the backbone's token embeddings "
                                             "frozen "
                                             "(training.freeze_embeddings): the default from "
                                             "cb27c96 until 92488c8",
                                             FROZEN_200),
    "batch32-split-chunks4-frozen-emb-300": ("batch32-split-chunks4-frozen-emb-200 "
                                             "on 300 steps (warmup 30): the time frozen "
                                             "embeddings save, spent on more steps",
                                             {**FROZEN_200, "training.max_steps": 300,
                                              "training.warmup_steps": 30}),
    "batch32-split-chunks4-frozen-lr1e-4-200": ("batch32-split-chunks4-frozen-emb-200 at learning "
                                                "rate 1e-4 instead of 5e-5: do frozen token "
                                                "vectors let the layers above move faster "
                                                "without losing feature requests?",
                                                {**FROZEN_200, "training.learning_rate": 1e-4}),
    "batch32-split-chunks4-frozen-lr2e-4-200": ("batch32-split-chunks4-frozen-emb-200 at learning "
                                                "rate 2e-4: how far the faster rate of the "
                                                "lr1e-4 row goes once ranked with late "
                                                "interaction",
                                                {**FROZEN_200, "training.learning_rate": 2e-4}),
    "batch32-split-chunks4-frozen-cls-200": ("batch32-split-chunks4-frozen-emb-200 "
                                             "pooled by the [CLS] token instead of the mean "
                                             "(model.pooling cls)",
                                             {**FROZEN_200, "model.pooling": "cls"}),
    "batch32-split-chunks4-frozen-moddoc-200": (
        "batch32-split-chunks4-frozen-emb-200 + module docstrings as requirements "
        "of the module's 2-8 public top-level sections (label source module_docstring)",
        {**FROZEN_200, "dataset.label_sources": [*CHANGELOG_SOURCES, "module_docstring"]}),
    "batch32-split-chunks4-frozen-summaries-200": (
        "batch32-split-chunks4-frozen-moddoc-200 + class docstrings as requirements of the "
        "class and its 2-8 public methods (label source class_docstring): the default",
        SUMMARIES_200),
    "batch32-split-chunks4-frozen-classdoc-200": (
        "batch32-split-chunks4-frozen-emb-200 + class docstrings as requirements of the class "
        "and its 2-8 public methods, without the module summaries: which half of the "
        "summaries moves feature requests?",
        {**FROZEN_200, "dataset.label_sources": [*CHANGELOG_SOURCES, "class_docstring"]}),
    "batch32-split-chunks4-frozen-summaries-300": (
        "batch32-split-chunks4-frozen-summaries-200 (the default) on 300 steps (warmup 30): "
        "more steps lifted the docstrings and lowered feature requests; do the summaries "
        "keep the second?",
        {**SUMMARIES_200, "training.max_steps": 300, "training.warmup_steps": 30}),
    "batch32-split-chunks4-frozen-summaries-pypi-200": (
        "batch32-split-chunks4-frozen-summaries-200 (the default) with the 15 PyPI packages' "
        "module and class summaries as requirements too (dataset.source "
        "stdlib+pypi-summaries; their function docstrings stay out)",
        {**SUMMARIES_200, "dataset.source": "stdlib+pypi-summaries"}),
    "batch32-split-chunks4-frozen-summaries-late-200": (
        "batch32-split-chunks4-frozen-summaries-200, ranked by 0.25 x pooled cosine + 0.75 x "
        "token-level MaxSim (model.late_interaction 0.75) and fused with BM25 at 0.8 "
        "(model.hybrid_weight): the default from 72d0822",
        LATE_200),
    "batch32-split-chunks4-frozen-late-200": (
        "batch32-split-chunks4-frozen-emb-200 (no module or class summaries) ranked the same "
        "way: the default from f20d5d1 to the thirteenth session",
        LATE_FROZEN_200),
    "batch32-split-chunks8-frozen-late-200": (
        "batch32-split-chunks4-frozen-late-200 with a long function read as up to 8 texts "
        "instead of 4 (model.section_chunks 8; training is the same, only ranking reads more "
        "of it): the default of the thirteenth session",
        CHUNKS8_LATE_200),
    "batch32-split-chunks8-frozen-late-cls0.3-200": (
        "batch32-split-chunks8-frozen-late-200 with every class 0.3 lower in the served hybrid "
        "(model.class_penalty; training is the same): the default",
        CLASSES_LOWER_200),
    "batch32-split-chunks8-frozen-late-cls0.3-pypidoc-200": (
        "the default with the 15 PyPI packages' function docstrings as requirements too "
        "(dataset.source stdlib+pypi): more code and docstrings than the stdlib alone",
        {**CLASSES_LOWER_200, "dataset.source": "stdlib+pypi"}),
    "batch32-split-chunks8-frozen-late-cls0.3-widedoc-300": (
        "the default with the 37 PyPI packages of bench/pypi_packages_wide.yaml, their "
        "docstrings and changelogs, on 300 steps (warmup 30; about the peer's training time)",
        {**CLASSES_LOWER_200, "dataset.source": "stdlib+pypi",
         "dataset.pypi_packages": WIDE_PACKAGES, "training.max_steps": 300,
         "training.warmup_steps": 30}),
    "batch32-split-chunks8-frozen-late-cls0.3-neg3-200": (
        "the default with 3 BM25 hard negatives per requirement instead of 1 (each "
        "requirement against 127 candidates; about twice the training time)",
        {**CLASSES_LOWER_200, "training.negatives_per_query": 3}),
    "batch32-split-chunks8-frozen-late-cls0.3-neg3-lr1e-4-200": (
        "the default with 3 BM25 hard negatives and learning rate 1e-4: the two levers that "
        "lift docstrings most within the peer's training time, together (the docstring "
        "ceiling of this budget)",
        {**CLASSES_LOWER_200, "training.negatives_per_query": 3,
         "training.learning_rate": 1e-4}),
    "attn-dropout": ("the backbone's attention dropout (0.1) kept, as before the speed work",
                     {"model.attention_dropout": None}),
}


def variant_config(base: dict, changes: dict, output_dir: Path) -> dict:
    cfg = copy.deepcopy(base)
    for dotted, value in changes.items():
        section, key = dotted.split(".")
        cfg.setdefault(section, {})[key] = value
    cfg["model"]["output_dir"] = str(output_dir)
    return cfg


def fused_scores(checkpoint: Path, json_out: Path) -> dict:
    """The criterion every row is chosen on: ``bench/fusion.py``'s MRR of the served hybrid
    (z-scored dense and BM25 at the checkpoint's hybrid weight, less its class penalty) on both
    validation sets, and their mean."""
    subprocess.run([sys.executable, str(REPO / "bench" / "fusion.py"), "--checkpoint",
                    str(checkpoint), "--json", str(json_out)],
                   check=True, capture_output=True, text=True, cwd=REPO)
    table = json.loads(json_out.read_text())
    key = "served"
    stdlib = table["stdlib validation"][key][0]
    fr = table["feature requests validation"][key][0]
    return {"fused_stdlib": stdlib, "fused_fr": fr, "fused_mean": (stdlib + fr) / 2}


def run_variant(name: str, changes: dict, out: Path, feature_requests: bool,
                seed: int | None = None) -> dict:
    base = yaml.safe_load(DEFAULT.read_text())
    if seed is not None:
        changes = {**changes, "training.seed": seed}
    vdir = out / run_name(name, seed)
    vdir.mkdir(parents=True, exist_ok=True)
    cfg_file = vdir / "config.yaml"
    cfg_file.write_text(yaml.safe_dump(variant_config(base, {**BASE_CHANGES, **changes},
                                                      vdir / "model")))
    cmd = [sys.executable, str(REPO / "run_phase1.py"), "--config", str(cfg_file),
           "--skip_holdout"]
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
        fr = subprocess.run([sys.executable, str(REPO / "bench" / "feature_requests.py"),
                             "--checkpoint", str(vdir / "model" / "final"), "--half",
                             "validation", "--skip-stdlib", "--out", str(vdir / "fr")],
                            check=True, capture_output=True, text=True, cwd=REPO)
        summary = json.loads((vdir / "fr" / "summary.json").read_text())
        full = next(iter(summary.values()))["full_app"]
        row["fr_mrr"], row["fr_r5"] = full["mrr"], full["recall@5"]
        del fr
        row.update(fused_scores(vdir / "model" / "final", vdir / "fusion.json"))
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
        config_from_dict(variant_config(base, {**BASE_CHANGES, **changes}, out),
                         f"variant {name}")


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
                    rows[-1].update(fused_scores(final, done.parent / "fusion.json"))
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
