"""Results tables in the shape of the paper's Table 1 (SPEC section 8), plus the benchmark's five aspects.

Each `--results DIR` is one model's evaluation folder; every `results.json` below it is read (the
per-aspect files of the benchmark are folded into the benchmark's own `results.json`). A results file
belongs to the dataset named in its `dataset` field, else to the QA dataset named by one of its
folders. The judge and judge model of every number are part of the tables: GPT-judged numbers move
with the judge snapshot, and exact-match numbers are not comparable with them at all.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from videopanda.eval.benchmark import ASPECTS
from videopanda.eval.datasets import BENCHMARK, QA_DATASETS
from videopanda.eval.prompts import ASPECT_LABELS
from videopanda.io import write_json_atomic
from videopanda.log import get_logger

logger = get_logger(__name__)

QA_COLUMNS = {"msvd": "MSVD-QA", "msrvtt": "MSRVTT-QA", "tgif": "TGIF-QA", "activitynet": "ActivityNet-QA"}


class ReportError(Exception):
    pass


def _dataset_of(path: Path, results: dict[str, Any], root: Path) -> str | None:
    if results.get("dataset"):
        return str(results["dataset"]).lower()
    for part in reversed(path.relative_to(root).parts[:-1]):
        if part.lower() in QA_DATASETS:
            return part.lower()
    return None


def collect(results_dirs: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> dict[str, Any]:
    """-> {"models": {name: {"qa": {dataset: results}, "benchmark": results | None}}}."""
    if names and len(names) != len(results_dirs):
        raise ReportError(f"{len(names)} names for {len(results_dirs)} result folders")
    models: dict[str, Any] = {}
    for index, folder in enumerate(results_dirs):
        root = Path(folder)
        if not root.is_dir():
            raise ReportError(f"{root}: not a folder")
        name = names[index] if names else root.resolve().name
        entry: dict[str, Any] = {"qa": {}, "benchmark": None, "folder": str(root)}
        found = [Path(d) / "results.json" for d, _, files in os.walk(root, followlinks=True) if "results.json" in files]
        for path in sorted(found):
            results = json.loads(path.read_text(encoding="utf-8"))
            if "aspect" in results:
                continue
            dataset = _dataset_of(path, results, root)
            if dataset == BENCHMARK:
                if entry["benchmark"] is not None:
                    raise ReportError(f"{root}: more than one benchmark results.json")
                entry["benchmark"] = {**results, "file": str(path)}
            elif dataset in QA_DATASETS:
                if dataset in entry["qa"]:
                    raise ReportError(f"{root}: two results for {dataset}: {entry['qa'][dataset]['file']} and {path}")
                entry["qa"][dataset] = {**results, "file": str(path)}
            else:
                logger.warning("%s: cannot tell which dataset it belongs to (no 'dataset' field); skipped", path)
        if name in models:
            raise ReportError(f"two result folders named {name!r}; pass --names")
        models[name] = entry
    return {"models": models}


def _num(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _judges(entry: dict[str, Any]) -> str:
    seen: list[str] = []
    for results in [*entry["qa"].values(), *([entry["benchmark"]] if entry["benchmark"] else [])]:
        model = results.get("judge_model")
        label = results.get("judge", "?")
        for m in (model if isinstance(model, list) else [model]):
            text = f"{m}" if label == "gpt" else f"{label}"
            if text not in seen:
                seen.append(text)
    return ", ".join(seen) or "-"


def to_markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    lines = ["## Zero-shot video QA (accuracy / score)", "",
             "| Model | " + " | ".join(QA_COLUMNS.values()) + " | Judge |",
             "|---|" + "---|" * len(QA_COLUMNS) + "---|"]
    for name, entry in models.items():
        cells = []
        for dataset in QA_COLUMNS:
            r = entry["qa"].get(dataset)
            cells.append("-" if r is None else f"{_num(r.get('accuracy'), 1)} / {_num(r.get('score'), 1)}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_judges(entry)} |")
    failed = [(name, d, r) for name, e in models.items() for d, r in e["qa"].items()
              if r.get("num_failed") or r.get("num_failed_inference")]
    if failed:
        lines += ["", "Left out of the metrics: " + "; ".join(
            f"{name} {QA_COLUMNS[d]}: {r.get('num_failed', 0)} judge failures, "
            f"{r.get('num_failed_inference', 0)} inference errors of {r.get('num_items')}" for name, d, r in failed)]
    if any(e["benchmark"] for e in models.values()):
        lines += ["", "## Video-ChatGPT benchmark (scores 0-5)", "",
                  "| Model | " + " | ".join(ASPECT_LABELS[a] for a in ASPECTS) + " | Average | Judge |",
                  "|---|" + "---|" * (len(ASPECTS) + 2)]
        for name, entry in models.items():
            b = entry["benchmark"]
            if b is None:
                continue
            cells = [_num(b["scores"].get(a), 2) for a in ASPECTS] + [_num(b.get("average"), 2)]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_judges({'qa': {}, 'benchmark': b})} |")
    return "\n".join(lines) + "\n"


def plot_benchmark(report: dict[str, Any], path: str | os.PathLike) -> bool:
    """Grouped bar chart of the five aspects per model; False when no model has benchmark results."""
    rows = [(name, e["benchmark"]) for name, e in report["models"].items() if e["benchmark"]]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, (name, b) in enumerate(rows):
        values = [b["scores"].get(a) or 0.0 for a in ASPECTS]
        ax.bar([x + i * width for x in range(len(ASPECTS))], values, width, label=name)
    ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(ASPECTS))])
    ax.set_xticklabels([ASPECT_LABELS[a].replace(" ", "\n", 1) for a in ASPECTS], fontsize=8)
    ax.set_ylim(0, 5)
    ax.set_ylabel("score (0-5)")
    ax.set_title("Video-ChatGPT benchmark")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(results_dirs: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                 names: Sequence[str] | None = None, plot: bool = False) -> dict[str, Any]:
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report = collect(results_dirs, names)
    markdown = to_markdown(report)
    (output_dir / "report.md").write_text(markdown, encoding="utf-8")
    write_json_atomic(output_dir / "report.json", report)
    if plot and not plot_benchmark(report, output_dir / "benchmark.png"):
        logger.warning("--plot: no benchmark results to plot")
    return report
