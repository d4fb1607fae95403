"""Results tables in the shape of the paper's Table 1, plus the benchmark's five aspects.

Each `--results DIR` is one model's evaluation folder; every `results.json` below it is read (the
per-aspect files of the benchmark are folded into the benchmark's own `results.json`). Linked folders
are followed, each real folder once, except a link to a folder holding DIR (a loop back to DIR or a
way out to other models' folders; logged) and each real results file is counted once, under a path
without links where it has one. A results file
holding NaN or an infinity anywhere is refused in one line naming the file and the field. A results file
belongs to the dataset named in its `dataset` field, else to the QA dataset named by one of its
folders. Every dataset found gets a column: the paper's four first, then the others (the synthetic
set, ...) by name; a results file whose dataset cannot be told is listed under the table, never
dropped silently, and so is a judge folder without `results.json` (a run that stopped: `verdicts.jsonl`
but no results, or benchmark aspects without the benchmark's own results). A number whose results are
incomplete (items without a verdict, counted as wrong) is marked `*` and its coverage is listed. Every
number is shown with the 95% interval its results file records (Wilson for accuracies, bootstrap over
items for scores; see `intervals`) and the number of items it is over: `61.2 [56.3, 65.9] / 3.41 [3.32,
3.50] (n=400)`; results of older runs, which record no interval, show the bare number. The
judge and judge model of every number are part of the tables: GPT-judged numbers move with the judge
snapshot, and exact-match numbers are not comparable with them at all; so is the frame sampling of the
answers (from the predictions' fingerprint: 8 frames, another count, or a frame rate). `--plot` writes `qa.png` (QA
accuracy per dataset and model) and `benchmark.png` (the five aspects) for what there is, and fails
when there is nothing to plot.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from videopanda.eval.benchmark import ASPECTS
from videopanda.eval.datasets import BENCHMARK, QA_DATASETS
from videopanda.eval.prompts import ASPECT_LABELS
from videopanda.io import make_dirs, save_figure_atomic, write_json_atomic, write_text_atomic
from videopanda.log import get_logger

logger = get_logger(__name__)

QA_COLUMNS = {"msvd": "MSVD-QA", "msrvtt": "MSRVTT-QA", "tgif": "TGIF-QA", "activitynet": "ActivityNet-QA"}
OTHER_LABELS = {"synth": "Synthetic QA"}


class ReportError(Exception):
    pass


def _dataset_of(path: Path, results: dict[str, Any], root: Path) -> str | None:
    if results.get("dataset"):
        return str(results["dataset"]).lower()
    for part in reversed(path.relative_to(root).parts[:-1]):
        if part.lower() in QA_DATASETS:
            return part.lower()
    return None


def _non_finite(value: Any, where: str = "") -> tuple[str, float] | None:
    """(place, value) of the first NaN or infinity in a JSON value ("scores.temporal", "accuracy"), else None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "the value", value
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found = _non_finite(child, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def read_results(path: Path) -> dict[str, Any]:
    """A results.json as a dict; ReportError naming the file when it is unreadable, not an object, or holds
    NaN or an infinity anywhere (json reads NaN, Infinity and 1e999; no table may show them)."""
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ReportError(f"{path}: unreadable results ({' '.join(str(error).split())})") from None
    if not isinstance(results, dict):
        raise ReportError(f"{path}: not a results object")
    found = _non_finite(results)
    if found is not None:
        raise ReportError(f"{path}: {found[0]} is {found[1]}, not a finite number")
    return results


def _walk(root: Path) -> Iterator[tuple[Path, list[str]]]:
    """(folder, file names) for every folder under `root`, linked folders followed, each real folder once:
    reached by a path without links where there is one (links are followed after the folders' own tree).
    A link to a folder holding `root` is not followed (logged): it could only lead back to `root` or to
    folders beside it, which are not this model's results."""
    top = Path(os.path.realpath(root))
    seen: set[str] = set()
    starts = [root]
    while starts:
        start = starts.pop(0)
        real = os.path.realpath(start)
        if real in seen:
            continue
        if start != root and top.is_relative_to(real):
            logger.warning("%s: not followed, the link leads to %s, which holds the results folder %s",
                           start, real, root)
            continue
        seen.add(real)
        for folder, subfolders, files in os.walk(start):
            kept = []
            for name in sorted(subfolders):
                path = os.path.join(folder, name)
                if os.path.islink(path):
                    starts.append(Path(path))
                elif os.path.realpath(path) not in seen:
                    seen.add(os.path.realpath(path))
                    kept.append(name)
            subfolders[:] = kept
            yield Path(folder), sorted(files)


def _results_files(root: Path) -> list[Path]:
    """Every results.json under `root` (`_walk`), each real file once (a linked file counts where its
    target is not found itself), in path order."""
    found = [folder / "results.json" for folder, files in _walk(root) if "results.json" in files]
    first: dict[str, Path] = {}
    for path in sorted(found, key=lambda p: (p.is_symlink(), str(p))):
        first.setdefault(os.path.realpath(path), path)
    return sorted(first.values())


def _check_numbers(path: Path, results: dict[str, Any], benchmark: bool) -> None:
    """ReportError unless the numbers the tables show are numbers (or null)."""
    scores = results.get("scores") if benchmark else {key: results.get(key) for key in ("accuracy", "score")}
    values = [*scores.values(), results.get("average")] if isinstance(scores, dict) else [""]
    if not all(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        raise ReportError(f"{path}: not the results of `videopanda eval` (no numbers under "
                          f"{'scores' if benchmark else 'accuracy and score'})")


def _unfinished(root: Path) -> list[str]:
    """Judge folders under `root` whose run stopped before writing results.json."""
    stopped: set[str] = set()
    for path, files in _walk(root):
        if "verdicts.jsonl" in files or "results.json" in files:
            # a benchmark aspect's run is finished only when the benchmark folder above it has its results
            # (an aspect's own results.json says which it is; a QA judge folder may share an aspect's name)
            aspect = path.name in ASPECTS and ("results.json" not in files or "aspect" in read_results(
                path / "results.json"))
            judge_dir = path.parent if aspect else path
            if not (judge_dir / "results.json").exists():
                stopped.add(str(judge_dir))
    return sorted(stopped)


def collect(results_dirs: Sequence[str | os.PathLike], names: Sequence[str] | None = None) -> dict[str, Any]:
    """-> {"models": {name: {"qa": {dataset: results}, "benchmark": results | None, "unknown": [path],
    "unfinished": [judge folder without results.json]}}}."""
    if names and len(names) != len(results_dirs):
        raise ReportError(f"{len(names)} names for {len(results_dirs)} result folders")
    models: dict[str, Any] = {}
    for index, folder in enumerate(results_dirs):
        root = Path(folder)
        if not root.is_dir():
            raise ReportError(f"{root}: not a folder")
        name = names[index] if names else root.resolve().name
        entry: dict[str, Any] = {"qa": {}, "benchmark": None, "folder": str(root), "unknown": [],
                                 "unfinished": _unfinished(root)}
        for folder in entry["unfinished"]:
            logger.warning("%s: the judge stopped before writing results.json; listed under the table, not in it",
                           folder)
        for path in _results_files(root):
            results = read_results(path)
            if "aspect" in results:
                continue
            dataset = _dataset_of(path, results, root)
            if dataset is not None:
                _check_numbers(path, results, benchmark=dataset == BENCHMARK)
            if dataset == BENCHMARK:
                if entry["benchmark"] is not None:
                    raise ReportError(f"{root}: more than one benchmark results.json")
                entry["benchmark"] = {**results, "file": str(path)}
            elif dataset is not None:
                if dataset in entry["qa"]:
                    raise ReportError(f"{root}: two results for {dataset}: {entry['qa'][dataset]['file']} and {path}")
                entry["qa"][dataset] = {**results, "file": str(path)}
            else:
                logger.warning("%s: cannot tell which dataset it belongs to (no 'dataset' field, no dataset "
                               "folder in its path); listed under the table, not in it", path)
                entry["unknown"].append(str(path))
        if name in models:
            raise ReportError(f"two result folders named {name!r}; pass --names")
        models[name] = entry
    return {"models": models}


def _num(value: Any, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _with_interval(value: Any, interval: Any, digits: int) -> str:
    """`61.2 [56.3, 65.9]`; the bare number when no interval was recorded (results of older runs)."""
    if value is None or not isinstance(interval, list) or len(interval) != 2 or not all(
            isinstance(bound, (int, float)) and not isinstance(bound, bool) for bound in interval):
        return _num(value, digits)
    return f"{value:.{digits}f} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _items(count: Any) -> str:
    return f" (n={count})" if isinstance(count, int) and not isinstance(count, bool) else ""


def _qa_cell(results: dict[str, Any] | None) -> str:
    """`accuracy [interval] / score [interval] (n=items)`, `*` when incomplete; `-` without results."""
    if results is None:
        return "-"
    mark = "*" if _incomplete(results) else ""
    accuracy = _with_interval(results.get("accuracy"), results.get("accuracy_ci95"), 1)
    score = _with_interval(results.get("score"), results.get("score_ci95"), 2 if "score_ci95" in results else 1)
    return f"{accuracy} / {score}{_items(results.get('num_items'))}{mark}"


def _benchmark_cells(results: dict[str, Any]) -> list[str]:
    """Per aspect `score [interval] (n=items)`, then the average; `*` on each that counts failed items."""
    intervals, counts = results.get("scores_ci95") or {}, results.get("num_items") or {}
    failed = {a: sum(int((results.get(key) or {}).get(a) or 0) for key in ("num_failed", "num_failed_inference"))
              for a in ASPECTS}
    cells = [_with_interval(results["scores"].get(a), intervals.get(a), 2) + _items(counts.get(a))
             + ("*" if failed[a] else "") for a in ASPECTS]
    average = _with_interval(results.get("average"), results.get("average_ci95"), 2)
    return cells + [average + ("*" if _incomplete(results) else "")]


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


def frames_label(results: dict[str, Any]) -> str | None:
    """How the answers scored in `results` sampled their videos, from the predictions' fingerprint: "8 frames",
    "16 frames", "1 fps (4-32 frames)"; None when the results record no fingerprint (a run of another tool)."""
    frames = (results.get("prediction_fingerprint") or {}).get("frames")
    if not isinstance(frames, dict):
        return None
    sampling = frames.get("sampling")
    if isinstance(sampling, dict):
        return f"{sampling.get('fps'):g} fps ({sampling.get('min_frames')}-{sampling.get('max_frames')} frames)"
    return f"{frames.get('num_frames')} frames"


def _frames(entry: dict[str, Any]) -> str:
    """Every frame sampling behind a model's numbers, in order of first appearance; "-" when none is recorded."""
    seen: list[str] = []
    for results in [*entry["qa"].values(), *([entry["benchmark"]] if entry["benchmark"] else [])]:
        label = frames_label(results)
        if label and label not in seen:
            seen.append(label)
    return ", ".join(seen) or "-"


def qa_label(dataset: str) -> str:
    return QA_COLUMNS.get(dataset) or OTHER_LABELS.get(dataset) or dataset


def qa_datasets(report: dict[str, Any]) -> list[str]:
    """The paper's four QA sets, then every other dataset some model has results for, by name."""
    found = {d for entry in report["models"].values() for d in entry["qa"]}
    return [*QA_COLUMNS, *sorted(found - set(QA_COLUMNS))]


def _incomplete(results: dict[str, Any]) -> bool:
    return results.get("complete") is False


def _coverage(results: dict[str, Any]) -> str:
    coverage = results.get("coverage")
    if isinstance(coverage, dict):
        return "; ".join(f"{ASPECT_LABELS.get(a, a)}: {text}" for a, text in coverage.items())
    return coverage or "coverage not recorded"


def to_markdown(report: dict[str, Any]) -> str:
    models = report["models"]
    columns = qa_datasets(report)
    lines = ["## Zero-shot video QA (accuracy / score, 95% intervals, number of questions)", "",
             "| Model | " + " | ".join(qa_label(d) for d in columns) + " | Judge | Frames |",
             "|---|" + "---|" * len(columns) + "---|---|"]
    for name, entry in models.items():
        cells = [_qa_cell(entry["qa"].get(dataset)) for dataset in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_judges(entry)} | {_frames(entry)} |")
    notes = [f"{name} {qa_label(d)}: {_coverage(r)}" for name, e in models.items() for d, r in e["qa"].items()
             if _incomplete(r)]
    if any(e["benchmark"] for e in models.values()):
        lines += ["", "## Video-ChatGPT benchmark (scores 0-5, 95% intervals, number of items)", "",
                  "| Model | " + " | ".join(ASPECT_LABELS[a] for a in ASPECTS) + " | Average | Judge | Frames |",
                  "|---|" + "---|" * (len(ASPECTS) + 3)]
        for name, entry in models.items():
            b = entry["benchmark"]
            if b is None:
                continue
            cells = _benchmark_cells(b)
            only = {"qa": {}, "benchmark": b}
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {_judges(only)} | {_frames(only)} |")
            if _incomplete(b):
                notes.append(f"{name} benchmark: {_coverage(b)}")
    if notes:
        lines += ["", "\\* incomplete: items without a verdict count as wrong (score 0). " + "; ".join(notes)]
    unknown = [path for e in models.values() for path in e.get("unknown", [])]
    if unknown:
        lines += ["", "Not in the tables (dataset unknown; rerun `eval judge --dataset NAME`): " + ", ".join(unknown)]
    unfinished = [path for e in models.values() for path in e.get("unfinished", [])]
    if unfinished:
        lines += ["", "Not in the tables (the judge stopped before writing results.json; rerun it): "
                  + ", ".join(unfinished)]
    return "\n".join(lines) + "\n"


def _grouped_bars(rows: list[tuple[str, list[float]]], labels: list[str], ylim: float, ylabel: str, title: str,
                  width_inches: float, path: str | os.PathLike) -> Path:
    """One group of bars per label, one bar per (name, values) row in a group; written to `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(width_inches, 4))
    for i, (name, values) in enumerate(rows):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=name)
    ax.set_xticks([x + width * (len(rows) - 1) / 2 for x in range(len(labels))])
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylim(0, ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure_atomic(fig, path, dpi=120)


def plot_qa(report: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """Grouped bar chart of QA accuracy per dataset and model; None when no model has QA results."""
    datasets = [d for d in qa_datasets(report) if any(d in e["qa"] for e in report["models"].values())]
    rows = [(name, [(e["qa"].get(d) or {}).get("accuracy") or 0.0 for d in datasets])
            for name, e in report["models"].items() if e["qa"]]
    if not rows:
        return None
    return _grouped_bars(rows, [qa_label(d) for d in datasets], 100, "accuracy (%)", "Zero-shot video QA",
                         max(6, 1.6 * len(datasets)), path)


def plot_benchmark(report: dict[str, Any], path: str | os.PathLike) -> Path | None:
    """Grouped bar chart of the five aspects per model; None when no model has benchmark results."""
    rows = [(name, [e["benchmark"]["scores"].get(a) or 0.0 for a in ASPECTS])
            for name, e in report["models"].items() if e["benchmark"]]
    if not rows:
        return None
    return _grouped_bars(rows, [ASPECT_LABELS[a].replace(" ", "\n", 1) for a in ASPECTS], 5, "score (0-5)",
                         "Video-ChatGPT benchmark", 8, path)


def write_report(results_dirs: Sequence[str | os.PathLike], output_dir: str | os.PathLike,
                 names: Sequence[str] | None = None, plot: bool = False) -> dict[str, Any]:
    """Write report.md and report.json (and with `plot`, qa.png / benchmark.png) into `output_dir`.

    Raises ReportError when `plot` is asked for and there is nothing to plot."""
    output_dir = make_dirs(output_dir)
    report = collect(results_dirs, names)
    if plot and not any(e["qa"] or e["benchmark"] for e in report["models"].values()):
        raise ReportError(f"--plot: no QA or benchmark results under {', '.join(map(str, results_dirs))}; nothing to plot")
    write_text_atomic(output_dir / "report.md", to_markdown(report))
    write_json_atomic(output_dir / "report.json", report)
    if plot:
        for written in (plot_qa(report, output_dir / "qa.png"), plot_benchmark(report, output_dir / "benchmark.png")):
            if written is not None:
                logger.info("wrote %s", written)
    return report
