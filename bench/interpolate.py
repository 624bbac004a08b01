#!/usr/bin/env python
"""Weight-space ensemble of a fine-tuned full-fine-tuning checkpoint and its untrained backbone
(WiSE-FT, Wortsman et al. 2022): ``alpha * fine-tuned + (1 - alpha) * pretrained`` for every
backbone weight. A lever for keeping the backbone's generality on feature-level requirements;
score the result with ``bench/fusion.py`` (validation data only).

    python bench/interpolate.py --checkpoint outputs/phase1-minilm/final --alpha 0.7 --out /tmp/wise07
    python bench/fusion.py --checkpoint /tmp/wise07
"""

from __future__ import annotations

import argparse
import sys

import torch

import _bench  # noqa: F401  (repository root on sys.path, offline hub)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a full fine-tuning checkpoint")
    parser.add_argument("--alpha", type=float, required=True, help="share of the fine-tuned weights")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    from cetd_phase1.model import CETDRetriever, load_tokenizer

    tuned = CETDRetriever.from_pretrained(args.checkpoint)
    if tuned.is_lora:
        sys.exit("error: a LoRA checkpoint interpolates by scaling its adapter; this script "
                 "is for full fine-tuning")
    base = CETDRetriever.from_backbone(tuned.config.backbone, pooling=tuned.config.pooling)
    pretrained = base.state_dict()
    with torch.no_grad():
        for name, weight in tuned.state_dict().items():
            if name in pretrained and weight.is_floating_point():
                weight.mul_(args.alpha).add_(pretrained[name], alpha=1.0 - args.alpha)
    tuned.save_pretrained(args.out)
    load_tokenizer(args.checkpoint).save_pretrained(args.out)
    print(f"wrote {args.out} ({args.alpha} x {args.checkpoint} + {1 - args.alpha:.2f} x "
          f"{tuned.config.backbone})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
