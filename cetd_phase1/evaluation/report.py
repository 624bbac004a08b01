"""``report.md`` and ``recall_at_k.png`` of an evaluation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cetd_phase1.atomic import atomic_write
from cetd_phase1.evaluation.metrics import positive_ranks
from cetd_phase1.evaluation.metrics import METRIC_NAMES
from cetd_phase1.evaluation.results import CURVE_KS, HEADLINE_SOURCES, QueryResult
from cetd_phase1.retrieve import AppIndex

WORST_QUERIES = 20
#: The seed's Week-6 exit criteria (candidate-set protocol).
SEED_TARGETS = {"accuracy": 0.70, "map": 0.75, "recall@5": 0.90}

def _fmt(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.3f}"


def _table(rows: list[tuple[str, dict]], first: str) -> list[str]:
    keys = list(METRIC_NAMES)
    lines = [f"| {first} | " + " | ".join(keys) + " | queries | candidates/query |",
             "|---" * (len(keys) + 3) + "|"]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(m[k]) for k in keys)
                     + f" | {m['num_queries']} | {m['mean_candidates']:.1f} |")
    return lines


def _worst(results: list[QueryResult], indexes: dict[str, AppIndex], n: int) -> list[str]:
    """The ``n`` headline queries whose first positive ranks lowest, with what beat it."""
    scored = [r for r in results if r.metrics is not None and r.metrics["mrr"] < 1
              and r.query.label_source in HEADLINE_SOURCES]
    scored.sort(key=lambda r: (r.metrics["mrr"], r.metrics["map"]))
    lines = []
    for r in scored[:n]:
        index = indexes[r.query.app_id]
        ranks = positive_ranks(r.scores, r.labels)
        order = np.lexsort((r.labels > 0, -r.scores))
        above = [index.sections[r.section_ids[j]] for j in order[:min(3, ranks[0] - 1)]]
        expected = [index.sections[r.section_ids[j]] for j in np.flatnonzero(r.labels > 0)]
        req = r.query.requirement.replace("|", "\\|")
        lines.append(f"- **{r.query.app_name}** ({r.query.label_source}): \"{req[:160]}\"  \n"
                     f"  expected `{', '.join(s.key for s in expected[:3])}` at rank "
                     f"{', '.join(map(str, ranks[:3]))}; retrieved instead: "
                     + ", ".join(f"`{s.key}`" for s in above))
    return lines


def render_report(metrics: dict, results: dict[str, dict[str, list[QueryResult]]],
                  indexes: dict[str, AppIndex], command: str = "") -> str:
    """``report.md``: methods side by side per protocol, per-app table, worst queries."""
    lines = ["# Retrieval evaluation", "",
             f"- checkpoint: `{metrics['checkpoint']}`",
             f"- queries: {metrics['queries_from']}, {metrics['full_app']['num_queries']} headline "
             f"queries over {len(metrics['apps'])} apps "
             f"(label sources {', '.join(metrics['full_app']['label_sources']) or 'none'}; "
             "heuristic labels reported apart, never in the headline)"]
    if command:
        lines.append(f"- command: `{command}`")
    lines += [f"- note: {n}" for n in metrics["notes"]]
    if metrics["candidates_not_found"]:
        lines.append(f"- candidates missing from the current sources (dropped): "
                     f"{metrics['candidates_not_found']}")
    for protocol, title in (("full_app", "Full app (headline): every section is a candidate"),
                            ("candidate_set", "Candidate set: positives + sampled negatives "
                                              "(the seed's protocol)")):
        rows = [("model", metrics[protocol])] + [
            (name, b[protocol]) for name, b in metrics["baselines"].items()]
        lines += ["", f"## {title}", ""] + _table(rows, "method")
        if protocol == "candidate_set":
            lines += ["", "The hard negatives of this protocol were mined with BM25, so BM25 is "
                          "handicapped here; compare it on the full-app protocol."]
    cs = metrics["candidate_set"]
    lines += ["", "Seed targets (candidate set): " + ", ".join(
        f"{k} {_fmt(cs[k])} vs > {v:.2f} {'met' if cs[k] > v else 'not met'}"
        for k, v in SEED_TARGETS.items())]
    by_source = metrics["full_app"]["by_label_source"]
    if by_source:
        lines += ["", "## Model by label source (full app)", ""] + _table(
            sorted(by_source.items()), "label source")
    names = list(metrics["baselines"])
    lines += ["", "## Per app (full app, headline queries; MRR)", "",
              "| app | sections | queries | model MRR | model R@5 | "
              + " | ".join(f"{n} MRR" for n in names) + " |",
              "|---" * (5 + len(names)) + "|"]
    for app, m in metrics["full_app"]["per_app"].items():
        others = [metrics["baselines"][n]["full_app"]["per_app"].get(app, {}).get("mrr")
                  for n in names]
        lines.append(f"| {app} | {metrics['apps'].get(app, '?')} | {m['num_queries']} | "
                     f"{_fmt(m['mrr'])} | {_fmt(m['recall@5'])} | "
                     + " | ".join(_fmt(o) for o in others) + " |")
    lines += ["", f"## {WORST_QUERIES} worst queries (model, full app)", ""]
    lines += _worst(results["model"]["full_app"], indexes, WORST_QUERIES) or [
        "None: every headline query ranks a positive first."]
    lines += ["", "![Recall@K](recall_at_k.png)", ""]
    return "\n".join(lines)


def plot_recall(curves: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Recall@K for K = 1..20, one line per method, one panel per protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4.5), squeeze=False)
    for ax, (protocol, by_method) in zip(axes[0], curves.items()):
        for name, values in by_method.items():
            ax.plot(CURVE_KS, values, marker="o", markersize=3, label=name)
        ax.set(title=protocol, xlabel="K", ylabel="Recall@K", ylim=(0, 1.02),
               xticks=[1, 5, 10, 15, 20])
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
