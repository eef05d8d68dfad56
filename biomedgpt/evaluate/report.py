"""Markdown tables and a bar chart over evaluation runs, beside the baselines and the published anchors.

`biomedgpt report RUN...` reads each run folder's metrics.json, groups runs by benchmark, and prints one table
per benchmark (models and baselines as rows), adding the published reference numbers where the benchmark is
one the papers report. Published rows are marked as such: they were not run here.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from biomedgpt.errors import UserError

QA_COLUMNS = (("bleu2", "BLEU-2"), ("bleu4", "BLEU-4"), ("rouge1", "ROUGE-1"), ("rouge2", "ROUGE-2"),
              ("rougeL", "ROUGE-L"), ("meteor", "METEOR"), ("exact_match", "exact match"))
MCQ_COLUMNS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("unparsed", "unparsed"))

# Published numbers (not run here). Keys: a lower-case substring of the benchmark name.
ANCHORS: dict[str, list[tuple[str, dict[str, float]]]] = {
    "chebi": [
        ("MolT5-small (published; ChEBI-20 train)", {"bleu2": 0.519, "bleu4": 0.436, "rouge1": 0.620, "rouge2": 0.469,
                                                     "rougeL": 0.563, "meteor": 0.551}),
        ("MolT5-large (published)", {"bleu2": 0.594, "bleu4": 0.508, "rouge1": 0.654, "rouge2": 0.510,
                                     "rougeL": 0.594, "meteor": 0.614}),
        ("BioT5 (published)", {"bleu2": 0.635, "bleu4": 0.556, "meteor": 0.656}),
    ],
    "pubmedqa": [
        ("BioMedGPT-LM-7B fine-tuned (published)", {"accuracy": 0.761}),
        ("Llama-2-7B-Chat fine-tuned (published)", {"accuracy": 0.755}),
    ],
    "medmcqa": [
        ("BioMedGPT-LM-7B fine-tuned (published)", {"accuracy": 0.514}),
        ("Llama-2-7B-Chat fine-tuned (published)", {"accuracy": 0.483}),
    ],
}


def anchors_for(benchmark: str) -> list[tuple[str, dict[str, float]]]:
    key = benchmark.lower().replace("-", "").replace("_", "")
    return [row for name, rows in ANCHORS.items() if name in key for row in rows]


def _columns(task: str):
    return QA_COLUMNS if task == "qa" else MCQ_COLUMNS


def _cell(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _table(task: str, rows: Sequence[tuple[str, str, dict]]) -> str:
    columns = _columns(task)
    lines = ["| system | protocol | " + " | ".join(title for _, title in columns) + " |",
             "|---|---|" + "---:|" * len(columns)]
    for system, protocol, metrics in rows:
        cells = " | ".join(_cell(metrics.get(key)) for key, _ in columns)
        lines.append(f"| {system} | {protocol} | {cells} |")
    return "\n".join(lines) + "\n"


def run_markdown(result: dict) -> str:
    """One run's metrics as a small Markdown table (metrics.md in the run folder)."""
    metrics = result["metrics"]
    head = f"### {result['benchmark']} ({result['task']}, n={metrics['n']}, errors={metrics['errors']})\n\n"
    return head + _table(result["task"], [(result["system"], result.get("protocol") or "–", metrics)])


def load_runs(paths: Sequence[str | Path]) -> list[dict]:
    runs = []
    for path in paths:
        path = Path(path)
        file = path / "metrics.json" if path.is_dir() else path
        if not file.is_file():
            raise UserError(f"{path}: no metrics.json (is it a finished `biomedgpt eval` run folder?)")
        try:
            runs.append(json.loads(file.read_text()))
        except json.JSONDecodeError as err:
            raise UserError(f"{file}: invalid JSON ({err.msg})") from None
    return runs


def merge(runs: Sequence[dict]) -> str:
    """All runs as Markdown: one table per benchmark (runs in the given order, then published anchors)."""
    by_benchmark: dict[str, list[dict]] = {}
    for run in runs:
        by_benchmark.setdefault(run["benchmark"], []).append(run)
    sections = []
    for benchmark, group in by_benchmark.items():
        task = group[0]["task"]
        sizes = sorted({run["metrics"]["n"] for run in group})
        rows = [(run["system"], run.get("protocol") or "–", run["metrics"]) for run in group]
        rows += [(name, "published", values) for name, values in anchors_for(benchmark)]
        sections.append(f"### {benchmark} ({task}, n={'/'.join(map(str, sizes))})\n\n" + _table(task, rows))
    return "\n".join(sections)


def primary_metric(task: str, benchmark_runs: Sequence[dict]) -> str:
    """The metric drawn in the chart: accuracy (multiple choice), exact match when the references are short
    class labels (e.g. subcellular location), else BLEU-4."""
    if task == "mcq":
        return "accuracy"
    return benchmark_runs[0].get("primary_metric") or "bleu4"


def plot(runs: Sequence[dict], path: str | Path) -> Path:
    """A bar chart per benchmark of its primary metric, runs and published anchors side by side (PNG)."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    by_benchmark: dict[str, list[dict]] = {}
    for run in runs:
        by_benchmark.setdefault(run["benchmark"], []).append(run)
    columns = min(3, len(by_benchmark))
    rows = -(-len(by_benchmark) // columns)
    fig = Figure(figsize=(4.8 * columns, 4.4 * rows))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax in axes[len(by_benchmark):]:
        ax.set_visible(False)
    for ax, (benchmark, group) in zip(axes, by_benchmark.items()):
        metric = primary_metric(group[0]["task"], group)
        bars = [(run["system"], run["metrics"].get(metric)) for run in group]
        bars += [(name, values[metric]) for name, values in anchors_for(benchmark) if metric in values]
        colors = ["#4c72b0" if i < len(group) else "#bbbbbb" for i in range(len(bars))]
        drawn = ax.bar(range(len(bars)), [value or 0.0 for _, value in bars], color=colors)
        ax.bar_label(drawn, labels=["–" if v is None else f"{v:.3f}" for _, v in bars], fontsize=7)
        ax.set_xticks(range(len(bars)), [name for name, _ in bars], rotation=35, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{benchmark}: {metric}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from biomedgpt.io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path
