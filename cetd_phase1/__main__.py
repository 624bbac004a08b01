"""``python -m cetd_phase1 <command>``: thin argument parsing, one function per command.

Each command is a ``run_*`` function registered with :func:`command` as
``name -> (help, add_arguments, run)``; ``run(args)`` returns the exit code. Heavy imports stay
inside the functions so ``--help`` is instant. A :class:`~cetd_phase1.errors.CETDError` or an ``OSError``
becomes one line on stderr and its exit code (:func:`~cetd_phase1.errors.report`), never a
traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from cetd_phase1.config import ModelSection
from cetd_phase1.errors import CETDError, report
from cetd_phase1.data.labels import DEFAULT_LABEL_SOURCES

Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, add_arguments: Callable[[argparse.ArgumentParser], None]):
    """Register ``run`` as the command ``name``."""
    def register(run: Callable[[argparse.Namespace], int]):
        COMMANDS[name] = (help, add_arguments, run)
        return run
    return register


def main(argv: list[str] | None = None, prog: str = "python -m cetd_phase1") -> int:
    """Parse ``argv`` and run one command; returns the process exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # the driver parses its own options (run_phase1.py's)
        from cetd_phase1.train import main as train
        return train(argv[1:], prog=f"{prog} train")
    if argv[:1] == ["train-reranker"]:
        from cetd_phase1.train_reranker import main as train_reranker
        return train_reranker(argv[1:], prog=f"{prog} train-reranker")
    parser = argparse.ArgumentParser(prog=prog,
                                     description="CET-D Phase 1: requirement -> code retrieval")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # listed for --help only: the drivers never reach this parser (above)
    sub.add_parser("train", help="train, evaluate and save a retriever (run_phase1.py's "
                                 "options; `train --help` lists them)")
    sub.add_parser("train-reranker", help="train and save the cross-encoder re-ranker "
                                          "(`train-reranker --help` lists its options)")
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    args = parser.parse_args(argv)
    try:
        return args._run(args)
    except (CETDError, OSError) as err:
        return report(err)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# --- commands -------------------------------------------------------------------------------


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--apps", metavar="DIR", default=None,
                   help="folder whose subfolders are applications, a YAML manifest of apps, "
                        "'stdlib', or 'postgres' (the registry table); default: the PostgreSQL "
                        "registry when --database-url/DATABASE_URL is set, else the Python "
                        "standard library of this interpreter")
    p.add_argument("--database-url", default=None,
                   help="PostgreSQL registry connection (default $DATABASE_URL)")
    p.add_argument("--hard-negatives", type=int, default=3,
                   help="BM25-mined negatives per requirement, from the same app (default 3)")
    p.add_argument("--random-negatives", type=int, default=2,
                   help="random negatives per requirement, from the same app (default 2)")
    p.add_argument("--max-positives", type=int, default=5,
                   help="positives kept per requirement (default 5, as in the seed)")
    p.add_argument("--label-sources", default=",".join(DEFAULT_LABEL_SOURCES),
                   help="comma-separated label sources: docstring, gold, heuristic, git, changelog "
                        f"(default {','.join(DEFAULT_LABEL_SOURCES)})")
    p.add_argument("--cache-dir", default=None,
                   help="Arrow cache folder (default $CETD_CACHE/datasets or "
                        "~/.cache/cetd_phase1/datasets)")


def _build_from_args(args: argparse.Namespace):
    from cetd_phase1.data.dataset import BuildReport, build_dataset
    from cetd_phase1.data.registry import registry_from

    report = BuildReport()
    dd = build_dataset(registry=registry_from(args.apps, args.database_url),
                       hard_negatives=args.hard_negatives,
                       random_negatives=args.random_negatives, max_positives=args.max_positives,
                       label_sources=tuple(s.strip() for s in args.label_sources.split(",")
                                           if s.strip()),
                       cache_dir=args.cache_dir, report=report)
    return dd, report


@command("build-data", "Build (or load from cache) the labelled Arrow dataset and show the "
         "extraction report.", _add_data_args)
def run_build_data(args: argparse.Namespace) -> int:
    dd, report = _build_from_args(args)
    print("\n".join(report.summary_lines()))
    for split, ds in dd.items():
        print(f"{split}: {ds.num_rows} rows, {len(set(ds['query_id']))} requirements, "
              f"{len(set(ds['app_id']))} apps")
    return 1 if report.has_errors else 0


@command("validate-data", "Check the dataset: counts, label balance, duplicates, and leakage "
         "(an app in two splits, a requirement verbatim in its positive). Exits 1 on leakage "
         "or a label-file error.",
         _add_data_args)
def run_validate_data(args: argparse.Namespace) -> int:
    import json

    from cetd_phase1.data.dataset import validate_dataset

    dd, report = _build_from_args(args)
    result = validate_dataset(dd)
    print(json.dumps(result.stats, indent=2))  # stdout holds the JSON alone, for a pipe
    # the label-file errors that make the exit code 1 without leakage
    for line in report.problem_lines():
        print(line, file=sys.stderr)
    for w in result.warnings:
        print(f"warning: {w}", file=sys.stderr)
    for v in result.violations:
        print(f"LEAKAGE: {v}", file=sys.stderr)
    if result.violations:
        print(f"error: {len(result.violations)} leakage violation(s)", file=sys.stderr)
        return 1
    print("ok: no leakage", file=sys.stderr)
    return 1 if report.has_errors else 0


def _database_url_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--database-url", metavar="URL",
                   help="postgresql://USER:PASSWORD@HOST:PORT/DBNAME (default: $DATABASE_URL)")


def _database_url(args: argparse.Namespace) -> str:
    import os

    url = args.database_url or os.environ.get("DATABASE_URL")
    if not url:
        raise CETDError("no database given: pass --database-url or set DATABASE_URL")
    return url


def _db_init_arguments(p: argparse.ArgumentParser) -> None:
    _database_url_argument(p)
    p.add_argument("--schema", metavar="FILE", help="schema to apply (default: data/schema.sql)")


@command("db-init", "create the applications table in PostgreSQL (harmless to repeat)",
         _db_init_arguments)
def run_db_init(args: argparse.Namespace) -> int:
    from cetd_phase1.data.postgres import SCHEMA_PATH, apply_schema, redact_url

    url = _database_url(args)
    apply_schema(url, Path(args.schema) if args.schema else SCHEMA_PATH)
    print(f"schema applied to {redact_url(url)}")
    return 0


def _register_arguments(p: argparse.ArgumentParser) -> None:
    from cetd_phase1.data.apps import SPLITS

    _database_url_argument(p)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--app", metavar="DIR", help="one application's source folder")
    what.add_argument("--manifest", metavar="FILE",
                      help="YAML list of {name, source_path, split} (paths relative to it), "
                           "or a folder whose subfolders are apps")
    p.add_argument("--name", help="name of the --app (default: its folder name)")
    p.add_argument("--split", choices=SPLITS,
                   help="split of the --app (default: from a hash of its name)")


@command("register", "add applications to the PostgreSQL registry (all or none; "
                     "repeating is harmless)", _register_arguments)
def run_register(args: argparse.Namespace) -> int:
    from cetd_phase1.data.postgres import redact_url, register_apps
    from cetd_phase1.data.apps import App, RegistryError, hash_split

    url = _database_url(args)
    if args.app:
        source = Path(args.app)
        name = args.name or source.resolve().name
        apps = [App(app_id=f"pg/{name}", name=name, split=args.split or hash_split(name),
                    source_path=source)]
    elif args.name or args.split:
        raise CETDError("--name and --split describe one --app; a manifest names its own apps")
    else:
        apps = Path(args.manifest)
    try:
        done = register_apps(url, apps)
    except RegistryError as err:  # a bad manifest
        raise CETDError(str(err)) from None
    for name in done.added:
        print(f"registered {name}")
    print(f"{len(done.added)} added, {len(done.unchanged)} already registered, "
          f"in {redact_url(url)}")
    return 0


def _list_apps_arguments(p: argparse.ArgumentParser) -> None:
    from cetd_phase1.data.apps import SPLITS

    _database_url_argument(p)
    p.add_argument("--split", choices=SPLITS, help="only this split")
    p.add_argument("--source-root", action="append", default=[], metavar="DIR",
                   help="report apps whose source lies outside DIR (repeatable)")


@command("list-apps", "list the registered applications with their split and section count",
         _list_apps_arguments)
def run_list_apps(args: argparse.Namespace) -> int:
    from cetd_phase1.data.postgres import list_apps

    listed = list_apps(_database_url(args), args.split, args.source_root)
    width = max(len(a.name) for a in listed) if listed else 4
    print(f"{'name':<{width}}  {'split':<10}  {'sections':>8}  source")
    for a in listed:
        count = "-" if a.sections is None else str(a.sections)
        where = f"{a.source_path}  [skipped: {a.problem}]" if a.problem else str(a.source_path)
        print(f"{a.name:<{width}}  {a.split:<10}  {count:>8}  {where}")
    problems = sum(a.problem is not None for a in listed)
    print(f"{len(listed)} apps" + (f", {problems} cannot be built" if problems else ""))
    return 0


def _ranking_arguments(p: argparse.ArgumentParser) -> None:
    """Flags that replace the checkpoint's ranking settings (its ranking_config.json)."""
    p.add_argument("--section-chunks", type=int, default=None, metavar="N",
                   help="read a long function as up to N texts, ranked by its best (default: "
                        "the checkpoint's ranking.section_chunks)")
    p.add_argument("--late-interaction", type=float, default=None, metavar="A",
                   help="rank by (1 - A) x cosine + A x MaxSim over token vectors (default: the "
                        "checkpoint's ranking.late_interaction; 0 = the cosine alone, which "
                        "keeps a far smaller index)")
    p.add_argument("--class-penalty", type=float, default=None, metavar="D",
                   help="take D off every class's hybrid score (default: the checkpoint's "
                        "ranking.class_penalty; 0 = none)")


def _ranking_overrides(args: argparse.Namespace) -> dict:
    """The ranking flags (``None``: not given); their ranges are checked where they replace
    the checkpoint's settings, before its model loads."""
    return dict(section_chunks=args.section_chunks, late_interaction=args.late_interaction,
                class_penalty=args.class_penalty)


def _reranker_arguments(p: argparse.ArgumentParser) -> None:
    from cetd_phase1.ranking.rerank import RERANK_DEPTH

    p.add_argument("--reranker", metavar="DIR", default=None,
                   help="a re-ranker (`cetd-phase1 train-reranker`) re-ordering the top of the "
                        "ranking; slower (docs/retrieval.md)")
    p.add_argument("--rerank-depth", type=int, default=RERANK_DEPTH, metavar="N",
                   help=f"how many of the best sections the re-ranker reads (default "
                        f"{RERANK_DEPTH})")


def _evaluate_arguments(p: argparse.ArgumentParser) -> None:
    from cetd_phase1.data.apps import SPLITS

    p.add_argument("--checkpoint", required=True, metavar="DIR",
                   help="trained checkpoint, or a plain backbone folder (the untrained baseline)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--split", choices=SPLITS,
                       help="evaluate this split of the registry (stdlib, or PostgreSQL when "
                            "--database-url/DATABASE_URL is set)")
    where.add_argument("--apps", metavar="DIR",
                       help="evaluate every app of this folder (or YAML manifest), labelled as "
                            "in build-data")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="writes metrics.json, report.md and recall_at_k.png here")
    p.add_argument("--hybrid", action="store_true",
                   help="also report the hybrid ranking (model and BM25 scores, z-scored and "
                        "mixed at the checkpoint's hybrid_weight: what `retrieve` serves)")
    p.add_argument("--backbone", metavar="DIR",
                   help="untrained baseline (default: the checkpoint's own backbone)")
    p.add_argument("--database-url", default=None,
                   help="PostgreSQL registry connection (default $DATABASE_URL)")
    p.add_argument("--cache-dir", default=None,
                   help="cache root for datasets and section indexes (default $CETD_CACHE or "
                        "~/.cache/cetd_phase1)")
    p.add_argument("--batch-size", type=int, default=64, help="encoding batch size (default 64)")
    _ranking_arguments(p)
    _reranker_arguments(p)
    p.add_argument("--label-sources", default=",".join(DEFAULT_LABEL_SOURCES),
                   help="comma-separated label sources of the queries (default "
                        f"{','.join(DEFAULT_LABEL_SOURCES)}; 'gold' alone for annotated "
                        "requirements only)")


@command("evaluate", "Rank each app's sections for its requirements; compare the model with "
         "BM25 and the untrained backbone; write metrics.json, report.md, recall_at_k.png.",
         _evaluate_arguments)
def run_evaluate(args: argparse.Namespace) -> int:
    from cetd_phase1.evaluation.results import PROTOCOLS
    from cetd_phase1.evaluation.evaluate import run_evaluation
    from cetd_phase1.data.registry import registry_from

    registry = None if args.apps else registry_from(None, args.database_url)
    metrics = run_evaluation(args.checkpoint, args.out, split=args.split, apps_dir=args.apps,
                             registry=registry, hybrid=args.hybrid, backbone=args.backbone,
                             cache_dir=args.cache_dir, batch_size=args.batch_size,
                             reranker=args.reranker, rerank_depth=args.rerank_depth,
                             **_ranking_overrides(args),
                             label_sources=[s.strip() for s in args.label_sources.split(",")
                                            if s.strip()],
                             command="python -m cetd_phase1 " + " ".join(sys.argv[1:]))
    served = [name for name in metrics["baselines"] if "hybrid" in name or "re-ranker" in name]
    for protocol in PROTOCOLS:
        for name, m in [("model", metrics[protocol])] + [
                (n, metrics["baselines"][n][protocol]) for n in served]:
            print(f"{protocol} [{name}]: {m['num_queries']} queries; Retrieval Accuracy: "
                  f"{m['accuracy']:.1%}  MAP: {m['map']:.3f}  MRR: {m['mrr']:.3f}  "
                  f"Recall@5: {m['recall@5']:.1%}  nDCG@10: {m['ndcg@10']:.3f}")
    print(f"report: {args.out}/report.md")
    return 0


#: What ``cetd-phase1 train`` writes (``configs/phase1_minilm_cpu.yaml``'s output_dir),
#: relative to where it ran: ``retrieve`` ranks with it when it is there.
TRAINED_DEFAULT = Path("outputs/phase1-minilm/final")
UNTRAINED_DEFAULT = ModelSection.base_model


def _retrieve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("requirement", help="requirement text")
    p.add_argument("--app", required=True, metavar="PATH_OR_ID",
                   help="application folder/file, or an app id or name of the registry "
                        "(e.g. json or stdlib/json)")
    p.add_argument("-k", "--top-k", dest="k", type=int, default=5,
                   help="number of sections to show (default 5)")
    p.add_argument("--checkpoint", default=None, metavar="DIR",
                   help=f"trained checkpoint or backbone (default: {TRAINED_DEFAULT}, what "
                        "`cetd-phase1 train` writes here, else the packaged MiniLM, "
                        "untrained)")
    p.add_argument("--dense-only", action="store_true",
                   help="rank by the model's scores alone (default: hybrid with BM25)")
    _ranking_arguments(p)
    _reranker_arguments(p)
    p.add_argument("--json", action="store_true", help="print the hits as JSON")
    p.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="section index cache (default $CETD_CACHE/index)")


@command("retrieve", "Show the app's sections that best implement a requirement.",
         _retrieve_arguments)
def run_retrieve(args: argparse.Namespace) -> int:
    import json

    from cetd_phase1.errors import check_requirement
    from cetd_phase1.retrieve import Retriever

    check_requirement(args.requirement)  # before the model loads
    checkpoint = args.checkpoint
    if checkpoint is None:  # say which model ranks: the untrained one must not pass for trained
        trained = (TRAINED_DEFAULT / "config.json").is_file()
        checkpoint = str(TRAINED_DEFAULT) if trained else UNTRAINED_DEFAULT
        print(f"checkpoint: {checkpoint}" + ("" if trained else
              " (untrained: train with `cetd-phase1 train` here, or pass --checkpoint)"),
              file=sys.stderr)
    retriever = Retriever.from_pretrained(checkpoint, cache_dir=args.cache_dir,
                                          hybrid=not args.dense_only, show_progress=True,
                                          reranker=args.reranker,
                                          rerank_depth=args.rerank_depth,
                                          **_ranking_overrides(args))
    hits = retriever.retrieve(args.requirement, app=args.app, k=args.k)
    length = len(retriever.tokenizer(args.requirement, add_special_tokens=False)["input_ids"])
    if length > retriever.ranker.max_query_length:  # the rest is never read: say so
        print(f"warning: the requirement is {length} tokens long; the model reads its first "
              f"{retriever.ranker.max_query_length}", file=sys.stderr)
    report = retriever.index(args.app).report  # in memory since retrieve built it
    for path, reason in report.skipped:  # their sections are missing from the ranking
        print(f"skipped {report.app}/{path}: {reason}", file=sys.stderr)
    if not hits:  # silence would read as "nothing matched"; say why there was nothing to rank
        print(f"warning: {report.summary()}: nothing to rank (no parsable non-test .py file)",
              file=sys.stderr)
    if args.json:
        print(json.dumps(hits, indent=2))
        return 0
    for hit in hits:
        code = hit["code"] if len(hit["code"]) <= 200 else hit["code"][:200] + "..."
        rerank = "" if hit.get("rerank_score") is None else \
            f" (re-ranker {hit['rerank_score']:.3f})"
        print(f"Score: {hit['score']:.3f}{rerank}\nFile: {hit['file']}:{hit['line_start']}-"
              f"{hit['line_end']}, {hit['kind'].capitalize()}: {hit['qualname']}\nCode: {code}\n")
    return 0


def _export_st_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, metavar="DIR", help="model to export")
    p.add_argument("--out", required=True, metavar="DIR", help="sentence-transformers folder")


@command("export-st", "Export a checkpoint as a sentence-transformers model folder (LoRA "
         "merged).", _export_st_arguments)
def run_export_st(args: argparse.Namespace) -> int:
    from cetd_phase1.export import export_sentence_transformers

    out = export_sentence_transformers(args.checkpoint, args.out)
    print(f"exported to {out}: load with SentenceTransformer({str(out)!r})")
    return 0


# --- end of commands ------------------------------------------------------------------------


def console() -> None:
    """The ``cetd-phase1`` console script."""
    sys.exit(main(prog="cetd-phase1"))


if __name__ == "__main__":
    sys.exit(main())
