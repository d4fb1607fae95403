"""Learning curves of the quickstart: accuracy on a fixed subset of the held-out questions against the
finetuning step (`videopanda quickstart --curve-every-epochs E --curve-questions K`).

Nothing is added to the training loop. The finetune stage saves a checkpoint every E epochs through the
experiment's `save.steps` (and keeps all of them through `save.total_limit`; the trainer also saves one
at the last step); each complete checkpoint is a model folder, evaluated after training by the same
`eval qa` + `eval merge` + exact-match `eval judge` as the final model, over the first K held-out
questions (the synthetic set's types take turns, so each type gets K / 4 of them). An evaluation point
records its step (the checkpoint's), its epoch (the checkpoint's trainer state) and the accuracies with
their 95% Wilson intervals and counts, overall and per question type.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import mean
from typing import Sequence

from videopanda.io import read_json, save_figure_atomic, write_json_atomic
from videopanda.quickstart.accuracy import accuracy_cell

CURVE_DIR = "curve"
"""Subfolder of the output folder: the question subset, one evaluation folder per point (`step-<N>`)."""
CURVE_STAGE = "finetune"
QUESTION_FILES = ("test_q.json", "test_a.json")


@dataclass(frozen=True)
class CurveSettings:
    every_epochs: float
    questions: int

    def to_dict(self) -> dict:
        return asdict(self)


def steps_per_epoch(experiment) -> int:
    """Optimizer steps of one epoch of the finetune stage of `experiment` (a resolved `Experiment`): its
    training samples (the first half of each JSON with `first_half`) over the global batch, rounded up."""
    settings = experiment.stage(CURVE_STAGE)
    samples = 0
    for path in experiment.data_json_paths(CURVE_STAGE):
        count = len(read_json(path, expected=list))
        samples += math.ceil(count / 2) if settings.first_half else count
    return max(1, math.ceil(samples / settings.global_batch_size))


def finetune_overrides(curve: CurveSettings, experiment) -> list[str]:
    """The finetune stage's `key=value` overrides that save a checkpoint every `curve.every_epochs` epochs and
    keep every one of them."""
    every = max(1, round(curve.every_epochs * steps_per_epoch(experiment)))
    points = math.ceil(experiment.stage(CURVE_STAGE).epochs / curve.every_epochs) + 1
    return [f"save.steps={every}", f"save.total_limit={points}"]


def write_question_subset(data: Path, root: Path, count: int, dataset: str) -> Path:
    """The first `count` held-out questions of the data folder `data` as a QA set of its own under `root`
    (its question and answer files, its videos folder a link to the data folder's); returns `root`, the
    `--data-root` of the evaluation commands."""
    from videopanda.eval.datasets import dataset_dir

    source, target = dataset_dir(data, dataset), dataset_dir(root, dataset)
    questions = read_json(source / QUESTION_FILES[0], expected=list)[:count]
    kept = {entry["question_id"] for entry in questions}
    answers = [entry for entry in read_json(source / QUESTION_FILES[1], expected=list) if entry["question_id"] in kept]
    target.mkdir(parents=True, exist_ok=True)
    write_json_atomic(target / QUESTION_FILES[0], questions)
    write_json_atomic(target / QUESTION_FILES[1], answers)
    videos = target / "videos"
    if videos.is_symlink() or videos.exists():
        videos.unlink()
    os.symlink((source / "videos").resolve(), videos)
    return root


def curve_checkpoints(stage_dir: Path) -> list[tuple[int, Path]]:
    """The complete checkpoints of the finetune folder, by step."""
    from videopanda.train.checkpointing import checkpoint_folders, is_complete

    return [(step, path) for step, path in checkpoint_folders(stage_dir) if is_complete(path)]


def checkpoint_epoch(checkpoint: Path) -> float:
    """The epoch a checkpoint was saved at (its trainer state), rounded to 4 decimals."""
    from videopanda.train.checkpointing import trainer_state

    return round(float(trainer_state(checkpoint)["epoch"]), 4)


def curve_series(curves: Sequence[dict], column: str) -> tuple[list[int], list[list[float]]]:
    """The steps every curve (one per seed) has a point at, and per step the accuracies of `column`
    ("overall" or a question type) over the curves."""
    steps = sorted(set.intersection(*({p["step"] for p in curve["points"]} for curve in curves)))

    def value(point: dict) -> float:
        return point["accuracy"] if column == "overall" else point["per_type"][column]

    by_step = [{p["step"]: value(p) for p in curve["points"]} for curve in curves]
    return steps, [[values[step] for values in by_step] for step in steps]


def _columns(variants: dict[str, list[dict]]) -> list[str]:
    types = sorted({t for curves in variants.values() for c in curves for p in c["points"] for t in p["per_type"]})
    return ["overall", *types]


def curve_table(variants: dict[str, list[dict]]) -> str:
    """variants: name -> its curves (one per seed) -> a markdown table, one row per variant and step. A
    variant of one seed shows each accuracy with its 95% Wilson interval and count; one of several seeds
    the mean over the seeds and the [lowest, highest] seed."""
    columns = _columns(variants)
    lines = ["| model | step | epoch | " + " | ".join(columns) + " |", "|---|---:|---:|" + "---:|" * len(columns)]
    for name, curves in variants.items():
        epochs = {p["step"]: p["epoch"] for p in curves[0]["points"]}
        series = {column: dict(zip(*curve_series(curves, column))) for column in columns}
        for step in sorted(series["overall"]):
            if len(curves) == 1:
                (point,) = [p for p in curves[0]["points"] if p["step"] == step]
                cells = [_interval_cell(point, column) for column in columns]
            else:
                cells = [f"{mean(v):.1f} [{min(v):.1f}, {max(v):.1f}]" for v in (series[c][step] for c in columns)]
            lines.append(f"| {name} | {step} | {epochs[step]:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _interval_cell(point: dict, column: str) -> str:
    return accuracy_cell(point, None if column == "overall" else column)


def plot_curves(variants: dict[str, list[dict]], path: Path, title: str) -> Path:
    """One panel per column (overall, then each question type): accuracy against the finetuning step, a line
    per variant (the mean over its seeds) and a band: the [lowest, highest] seed for several seeds, the 95%
    Wilson interval for one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = _columns(variants)
    fig, axes = plt.subplots(1, len(columns), figsize=(4 * len(columns), 3.4), squeeze=False, sharey=True)
    for ax, column in zip(axes[0], columns):
        for name, curves in variants.items():
            steps, values = curve_series(curves, column)
            line = ax.plot(steps, [mean(v) for v in values], "o-", label=name, markersize=3)[0]
            low, high = _band(curves, column, steps, values)
            ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2)
        ax.set_title(column)
        ax.set_xlabel("finetune step")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy (%)")
    axes[0][0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def _band(curves: Sequence[dict], column: str, steps: list[int], values: list[list[float]]):
    if len(curves) > 1:
        return [min(v) for v in values], [max(v) for v in values]
    points = {p["step"]: p for p in curves[0]["points"]}
    intervals = [points[s]["accuracy_ci95"] if column == "overall" else points[s]["per_type_ci95"][column]
                 for s in steps]
    return [i[0] for i in intervals], [i[1] for i in intervals]
