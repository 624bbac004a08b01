"""Training the cross-encoder re-ranker that re-orders the top of the served ranking.

    cetd-phase1 train-reranker                  # = --config reranker-minilm-cpu
    cetd-phase1 train-reranker --config my.yaml --output-dir outputs/rr --max-steps 20

The config is a train config (the same sections and keys); the re-ranker reads
``model.base_model``, ``model.output_dir``, ``model.split_identifiers``, the ``training``
loop keys (steps, batch, learning rate, warmup, seed, precision) and ``negatives_per_query``,
and the ``dataset`` section (the same labelled pairs and mined negatives as the bi-encoder;
``max_req_length`` and ``max_code_length`` cut each side of a pair). Serve the result with
``retrieve --reranker DIR`` or ``Retriever.from_pretrained(..., reranker=DIR)``.

Steps: 1 config -> 2 data (grouped training requirements) -> 3 model -> 4 Trainer -> 5 train
-> 6 save ``final/`` (model, tokenizer, pair format) and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("train_reranker")


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    from cetd_phase1.config import shipped_configs

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="reranker-minilm-cpu",
                   help="YAML with model/training/dataset sections, or a shipped config's name "
                        f"({', '.join(shipped_configs())}) (default: %(default)s)")
    p.add_argument("--output-dir", "--output_dir", help="overrides model.output_dir")
    p.add_argument("--max-steps", "--max_steps", type=int, help="overrides training.max_steps")
    p.add_argument("--resume-from-checkpoint", "--resume_from_checkpoint",
                   help="a checkpoint folder, or 'last' for the newest one in the output dir")
    return p.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Train and save a re-ranker as the command line says; returns the exit code."""
    from cetd_phase1.train import drive

    return drive(run, parse_args(argv, prog))


def run(cli: argparse.Namespace) -> int:
    from transformers import set_seed

    from cetd_phase1.atomic import atomic_directory, atomic_write_text
    from cetd_phase1.config import apply_overrides, load_config, training_arguments
    from cetd_phase1.errors import check_output_dir
    from cetd_phase1.modeling.reranker import PairFormat, reranker_from_backbone
    from cetd_phase1.train import resolve_checkpoint, setup_logging, training_data
    from cetd_phase1.training.rerank import RerankCollator, RerankTrainer

    # 1. Config.
    cfg = apply_overrides(load_config(cli.config), output_dir=cli.output_dir,
                          max_steps=cli.max_steps,
                          resume_from_checkpoint=cli.resume_from_checkpoint)
    output_dir = Path(check_output_dir(cfg.model.output_dir))
    args = training_arguments(cfg, has_validation=False)
    setup_logging(args)
    logger.info("config %s%s -> %s", cfg.path, f" (base {cfg.base})" if cfg.base else "",
                output_dir)
    set_seed(cfg.training.seed)

    # 2. Data: the bi-encoder's labelled pairs, one group per training requirement.
    with args.main_process_first(desc="building the dataset"):
        groups = training_data(cfg)[2]
    n = cfg.training.negatives_per_query
    logger.info("train: %d requirements, each a group of its positive and up to %d negatives",
                len(groups), n)

    # 3. Model: the backbone with a fresh one-logit head.
    d = cfg.dataset
    pair_format = PairFormat(d.max_req_length, d.max_code_length, cfg.model.split_identifiers)
    model, tokenizer = reranker_from_backbone(cfg.model.base_model, pair_format)

    # 4-5. Trainer and training.
    trainer = RerankTrainer(model=model, args=args, train_dataset=groups,
                            data_collator=RerankCollator(tokenizer, pair_format, n),
                            processing_class=tokenizer)
    checkpoint = resolve_checkpoint(cfg.training.resume_from_checkpoint, str(output_dir))
    result = trainer.train(resume_from_checkpoint=checkpoint)
    trainer.log_metrics("train", result.metrics)

    # 6. Save.
    final_dir = output_dir / "final"
    if trainer.is_world_process_zero():
        with atomic_directory(final_dir) as staging:
            trainer.save_model(str(staging))
        atomic_write_text(output_dir / "metrics.json", json.dumps(
            {"config": cfg.to_dict(), "config_file": cfg.path, "final_model": str(final_dir),
             "global_step": trainer.state.global_step, "train": result.metrics},
            indent=2, default=str))
        print(f"\nCET-D re-ranker: {trainer.state.global_step} steps, final loss "
              f"{result.training_loss:.4f}\n  model    {final_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
