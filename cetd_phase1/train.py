"""Phase 1 training: a requirement -> code retriever (bi-encoder) on the HuggingFace Trainer.

    cetd-phase1 train                                      # embedded default (MiniLM, CPU)
    python run_phase1.py --config configs/phase1_qwen_coder_1.5b.yaml
    accelerate launch --config_file configs/accelerate/single_gpu_fp16.yaml \\
        run_phase1.py --config configs/phase1_qwen_coder_1.5b.yaml
    cetd-phase1 train --max-steps 5 --skip-evaluation      # a one-minute check of the setup

Steps: 1 arguments and config -> 2 logging -> 3 data -> 4 model -> 5 Trainer -> 6 train ->
7 evaluate on validation and holdout apps (full-app ranking) -> 8 save the final model,
``metrics.json`` and a summary -> 9 publish.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Callable


#: The shipped config a run without ``--config`` trains (configs/phase1_minilm_cpu.yaml).
DEFAULT_CONFIG = "minilm-cpu"

logger = logging.getLogger("run_phase1")


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The driver's command line (``prog`` names it in ``--help``)."""
    from cetd_phase1.config import shipped_configs

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=DEFAULT_CONFIG,
                   help="YAML with model/training/dataset/evaluation sections, or a shipped "
                        f"config's name ({', '.join(shipped_configs())}); a partial file can "
                        "start from one with 'base: NAME' (default: %(default)s)")
    # kebab-case as every cetd-phase1 command; the transformers examples' snake_case works too
    p.add_argument("--output-dir", "--output_dir", help="overrides model.output_dir")
    p.add_argument("--max-steps", "--max_steps", type=int,
                   help="overrides training.max_steps (wins over epochs)")
    p.add_argument("--num-epochs", "--num_epochs", type=float,
                   help="overrides training.num_epochs")
    p.add_argument("--batch-size", "--batch_size", type=int, help="overrides training.batch_size")
    p.add_argument("--learning-rate", "--learning_rate", type=float,
                   help="overrides training.learning_rate")
    p.add_argument("--skip-holdout", "--skip_holdout", action="store_true",
                   help="do not evaluate the holdout apps (model selection must not look at them)")
    p.add_argument("--skip-evaluation", "--skip_evaluation", action="store_true",
                   help="no validation during or after training and no holdout ranking: a quick "
                        "check that the setup trains and saves (with --max-steps)")
    p.add_argument("--resume-from-checkpoint", "--resume_from_checkpoint",
                   help="a checkpoint folder, or 'last' for the newest one in the output dir")
    return p.parse_args(argv)


def setup_logging(args) -> None:
    import datasets
    import transformers
    level = logging.INFO if args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", level=level, handlers=[logging.StreamHandler(sys.stdout)])
    # transformers at INFO dumps every config; its warnings and the Trainer's logs are enough
    transformers.utils.logging.set_verbosity_warning()
    datasets.utils.logging.set_verbosity(logging.WARNING)
    import bm25s  # noqa: F401  (its import sets its logger to DEBUG: one line per app indexed)
    logging.getLogger("bm25s").setLevel(logging.WARNING)


def resolve_checkpoint(value: str | None, output_dir: str) -> str | None:
    """The checkpoint to resume from: ``value`` itself, or for ``last`` the newest *complete*
    one. Newer folders left incomplete by a kill mid-save are named and deleted, so the
    Trainer later saves those steps afresh instead of into their debris."""
    import shutil

    from cetd_phase1.training.checkpoints import checkpoint_problem, last_complete_checkpoint
    from cetd_phase1.errors import CETDError
    if value is None:
        return None
    if value == "last":
        last, incomplete = last_complete_checkpoint(output_dir)
        for folder, reason in incomplete:
            logger.warning("checkpoint %s is incomplete (%s): skipped and deleted", folder, reason)
        if last is None:
            found = f" (incomplete: {', '.join(p.name for p, _ in incomplete)})" if incomplete else ""
            raise CETDError(f"--resume-from-checkpoint last: no complete checkpoint-* folder in "
                            f"{output_dir}{found}")
        for folder, _ in incomplete:
            shutil.rmtree(folder, ignore_errors=True)  # every process may try
        logger.warning("resuming from %s", last)
        return str(last)
    if not Path(value).is_dir():
        raise CETDError(f"--resume-from-checkpoint: {value} is not a folder")
    problem = checkpoint_problem(value)
    if problem:
        raise CETDError(f"--resume-from-checkpoint: {value} is incomplete: {problem}")
    return value


def training_data(cfg):
    """The config's registry, its labelled pairs per split (built once, cached as Arrow) and
    the training requirements grouped with their positives and negatives; a CETDError when
    no training requirement has a positive. Both drivers (bi-encoder, re-ranker) read it."""
    from cetd_phase1.data.dataset import build_dataset
    from cetd_phase1.data.registry import registry_from
    from cetd_phase1.errors import CETDError
    from cetd_phase1.training.sampler import group_queries

    d = cfg.dataset
    registry = registry_from(cfg.data_source, pypi_packages=d.pypi_packages,
                             commit_releases_per_repo=d.commit_releases_per_repo)
    pairs = build_dataset(registry=registry, hard_negatives=d.hard_negatives,
                          random_negatives=d.random_negatives, max_positives=d.max_positives,
                          label_sources=tuple(d.label_sources), cache_dir=d.cache_dir,
                          seed=d.seed)
    groups = group_queries(pairs["train"])
    if len(groups) == 0:
        raise CETDError(f"{cfg.path}: the training split of {cfg.data_source!r} has no "
                        f"requirement with a positive section")
    return registry, pairs, groups


def format_metrics(name: str, metrics: dict[str, float], prefix: str) -> str:
    from cetd_phase1.evaluation.metrics import METRIC_NAMES
    cells = [f"{k} {metrics[f'{prefix}_{k}']:.3f}" for k in METRIC_NAMES
             if f"{prefix}_{k}" in metrics]
    queries = metrics.get(f"{prefix}_num_queries")
    count = f"  ({int(queries)} requirements)" if queries is not None else ""
    return f"  {name:<10} " + "  ".join(cells) + count


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Train, evaluate and save as the command line says; returns the exit code."""
    return drive(run, parse_args(argv, prog))


def drive(run_driver: Callable[[argparse.Namespace], int], cli: argparse.Namespace) -> int:
    """``run_driver(cli)``'s exit code, with bad input or a file-system failure as one
    ``error:`` line and Ctrl-C as one line on what was saved (exit 130), never a traceback."""
    from cetd_phase1.errors import CETDError, report
    try:
        return run_driver(cli)
    except (CETDError, OSError) as err:
        return report(err)
    except KeyboardInterrupt:  # checkpoints on disk are complete ones
        print(interrupted_message(cli), file=sys.stderr)
        return 130


def interrupted_message(cli: argparse.Namespace) -> str:
    """The line a Ctrl-C prints: how to resume from the newest complete checkpoint of the run's
    output folder, or that none was saved yet (then ``last`` would have nothing to resume)."""
    from cetd_phase1.config import apply_overrides, load_config
    from cetd_phase1.errors import CETDError
    from cetd_phase1.training.checkpoints import last_complete_checkpoint

    try:
        output_dir = apply_overrides(load_config(cli.config),
                                     output_dir=cli.output_dir).model.output_dir
    except (CETDError, OSError):
        output_dir = cli.output_dir
    last = last_complete_checkpoint(output_dir)[0] if output_dir else None
    if last is None:
        return (f"interrupted before the first checkpoint: nothing was saved"
                f"{f' in {output_dir}' if output_dir else ''} (built datasets stay cached); "
                f"run the same command again to start over")
    return (f"interrupted: resume with --resume-from-checkpoint last (the newest complete "
            f"checkpoint is {last})")


def run(cli: argparse.Namespace) -> int:
    from transformers import EarlyStoppingCallback, set_seed

    from cetd_phase1.atomic import atomic_directory, atomic_write_text
    from cetd_phase1.training.checkpoints import NonFiniteGuard
    from cetd_phase1.config import (apply_overrides, load_config, training_arguments,
                                    without_evaluation)
    from cetd_phase1.data.dataset import build_sections
    from cetd_phase1.errors import check_output_dir
    from cetd_phase1.modeling.backbone import check_text_lengths, resolve_backbone
    from cetd_phase1.modeling.model import CETDRetriever
    from cetd_phase1.modeling.tokens import load_tokenizer
    from cetd_phase1.training.collator import RetrievalCollator
    from cetd_phase1.training.trainer import RetrievalTrainer

    # 1. Config: YAML, then command-line overrides, then TrainingArguments.
    cfg = apply_overrides(load_config(cli.config), output_dir=cli.output_dir,
                          max_steps=cli.max_steps, num_epochs=cli.num_epochs,
                          batch_size=cli.batch_size, learning_rate=cli.learning_rate,
                          resume_from_checkpoint=cli.resume_from_checkpoint)
    output_dir = Path(check_output_dir(cfg.model.output_dir))
    check_text_lengths(cfg.model.base_model, None, cfg.model_settings())  # before any data

    # 2. TrainingArguments, and logging (INFO on the main process only).
    args = training_arguments(cfg, has_validation=not cli.skip_evaluation)
    setup_logging(args)
    logger.info("config %s%s -> %s", cfg.path, f" (base {cfg.base})" if cfg.base else "",
                output_dir)
    t = cfg.training
    ranks = args.world_size if t.gather_across_devices else 1
    logger.info("InfoNCE: up to %d negatives per requirement (%d process(es) x %d requirements "
                "x (1 + %d negatives) - 1)", ranks * t.batch_size * (1 + t.negatives_per_query)
                - 1, ranks, t.batch_size, t.negatives_per_query)
    set_seed(cfg.training.seed)

    # 3. Data: labelled pairs per split, and every section of every app (the ranking pools).
    with args.main_process_first(desc="building the dataset"):
        registry, pairs, train_groups = training_data(cfg)
        sections = build_sections(registry=registry, cache_dir=cfg.dataset.cache_dir)
    has_validation = len(pairs["validation"]) > 0 and not cli.skip_evaluation
    if cli.skip_evaluation:
        logger.warning("--skip-evaluation: no validation, early stopping or best checkpoint, "
                       "and no final ranking")
    elif not has_validation:
        logger.warning("no validation apps: no evaluation, early stopping or best checkpoint")
        without_evaluation(args)
    logger.info("train: %d requirements (%d pairs); validation: %d pairs; holdout: %d pairs",
                len(train_groups), len(pairs["train"]), len(pairs["validation"]),
                len(pairs["holdout"]))

    # 4. Model and tokenizer.
    model = CETDRetriever.from_backbone(cfg.model.base_model,
                                        attention_dropout=cfg.model.attention_dropout,
                                        **cfg.model_settings())
    if cfg.training.freeze_embeddings:
        model.freeze_embeddings()
    tokenizer = load_tokenizer(resolve_backbone(cfg.model.base_model))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("model: %s, pooling %s, LoRA %s, %.2fM of %.2fM parameters trainable",
                cfg.model.base_model, model.config.pooling, cfg.training.use_lora,
                trainable / 1e6, total / 1e6)

    # 5. Trainer.
    collator = RetrievalCollator(tokenizer, model.config,
                                 negatives_per_query=cfg.training.negatives_per_query)
    callbacks = [NonFiniteGuard()]
    if has_validation and cfg.evaluation.early_stopping_patience > 0:
        callbacks.append(EarlyStoppingCallback(cfg.evaluation.early_stopping_patience))
    trainer = RetrievalTrainer(
        model=model, args=args, train_dataset=train_groups,
        eval_dataset=pairs["validation"] if has_validation else None,
        eval_sections=sections["validation"], ranking=cfg.ranking, data_collator=collator,
        processing_class=tokenizer, callbacks=callbacks,
        same_app_batches=cfg.training.same_app_batches)

    # 6. Train.
    checkpoint = resolve_checkpoint(cfg.training.resume_from_checkpoint, str(output_dir))
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", train_result.metrics)
    trainer.save_state()

    # 7. Evaluate the final (best, when validating) model on whole apps.
    trainer.remove_callback(EarlyStoppingCallback)  # training is over; holdout has no eval_ keys
    results: dict[str, dict[str, float]] = {"train": train_result.metrics}
    for split, prefix in (("validation", "eval"), ("holdout", "holdout")):
        if cli.skip_evaluation or (split == "holdout" and cli.skip_holdout):
            continue
        if len(pairs[split]) == 0:
            logger.warning("no %s apps: not evaluated", split)
            continue
        results[split] = trainer.evaluate(pairs[split], sections=sections[split],
                                          metric_key_prefix=prefix)

    # 8. Save the final model, metrics.json and a summary.
    final_dir = output_dir / "final"
    if trainer.is_world_process_zero():  # beside, then renamed: a kill keeps the previous one
        with atomic_directory(final_dir) as staging:
            trainer.save_model(str(staging))
    if trainer.is_world_process_zero():
        from cetd_phase1.hub import redact

        report = {"config": redact(cfg.to_dict()), "config_file": cfg.path,
                  "config_base": cfg.base,
                  "best_checkpoint": trainer.state.best_model_checkpoint,
                  "final_model": str(final_dir), "global_step": trainer.state.global_step,
                  **results}
        atomic_write_text(output_dir / "metrics.json", json.dumps(report, indent=2, default=str))
        print(f"\nCET-D phase 1: {trainer.state.global_step} steps, "
              f"final loss {train_result.training_loss:.4f}")
        for split, prefix in (("validation", "eval"), ("holdout", "holdout")):
            if split in results:
                print(format_metrics(split, results[split], prefix))
        print(f"  model    {final_dir}\n  metrics  {output_dir / 'metrics.json'}\n"
              f"  logs     tensorboard --logdir {output_dir / 'runs'}")

    # 9. Publish (main process): adapter or weights, head, config, tokenizer and a model card.
    if t.push_to_hub and trainer.is_world_process_zero():
        from cetd_phase1.hub import prepare_upload, push
        upload = output_dir / "hub_upload"
        files = prepare_upload(final_dir, upload, repo_id=t.hub_model_id,
                               training_config=cfg.to_dict(), metrics=results)
        logger.info("publishing %s to %s", ", ".join(files), t.hub_model_id)
        url = push(upload, t.hub_model_id, private=t.hub_private_repo)
        print(f"  hub      {t.hub_model_id} ({'private' if t.hub_private_repo else 'public'}) "
              f"{url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
