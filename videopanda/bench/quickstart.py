"""`videopanda bench quickstart OUT [OUT ...]`: where the time of finished quickstart runs went, per stage.

For each output folder of `videopanda quickstart` (its `summary.json`, written when the run finished):

- per training stage: the optimizer steps this call ran, the stage's wall time (the launcher, start to exit,
  as summary.json has it), the training loop's time (the Trainer's `train_runtime`, first step to last), the
  loop's seconds per step, and the rest of the stage's wall time: start-up (preflight, torchrun, imports,
  model, DeepSpeed) and the final save;
- the evaluation's wall time, and the rest of the run: the synthetic data and base models when they were
  made in this call, the output folder's bookkeeping, the loss curves.

The loop's time is `timing.train_runtime_s` of the stage's `training_complete.json` or, for folders written
before that field existed, the Trainer's `'train_runtime': '...'` line in `OUT/logs/<stage>.log`. A run that was
resumed (`"resumed": true` in summary.json) is reported with that flag: its times cover the last call only.
With several folders, each column after the first also gives the first folder's time over its own
(a speed-up above 1 means faster than the first).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from videopanda.bench.timing import BenchError

STAGES = ("prealign", "pretrain", "finetune")
RUNTIME_LINE = re.compile(r"'train_runtime': '?([0-9.]+)'?")


@dataclass(frozen=True)
class QuickstartBenchConfig:
    folders: tuple[Path, ...]
    command: str = ""
    """The command line that asked for this report (recorded in it)."""


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BenchError(f"{path}: not found (a finished quickstart run writes it)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BenchError(f"{path}: not JSON ({exc})") from None


def loop_runtime(folder: Path, stage: str) -> float | None:
    """Seconds of the stage's training loop (module docstring), None when neither source has it."""
    marker = folder / stage / "training_complete.json"
    timing = _read_json(marker).get("timing") if marker.is_file() else None
    if isinstance(timing, dict) and "train_runtime_s" in timing:
        return float(timing["train_runtime_s"])
    log = folder / "logs" / f"{stage}.log"
    found = RUNTIME_LINE.findall(log.read_text(errors="replace")) if log.is_file() else []
    return float(found[-1]) if found else None


def stage_row(folder: Path, stage: dict) -> dict:
    """One stage of summary.json -> {"name", "steps", "wall_s", "loop_s", "s_per_step", "startup_and_save_s"}."""
    loop = loop_runtime(folder, stage["name"])
    steps, wall = int(stage["steps"]), float(stage["elapsed_s"])
    return {"name": stage["name"], "steps": steps, "wall_s": wall, "loop_s": loop,
            "s_per_step": None if loop is None or not steps else loop / steps,
            "startup_and_save_s": None if loop is None else wall - loop}


def folder_report(folder: Path) -> dict:
    """{"folder", "resumed", "stages": [stage_row...], "eval_s", "rest_s", "total_s", "accuracy"} of one run."""
    summary = _read_json(folder / "summary.json")
    try:
        stages = [stage_row(folder, stage) for stage in summary["stages"]]
        eval_s, total = float(summary["eval"]["elapsed_s"]), float(summary["elapsed_s"])
        accuracy = summary["eval"]["accuracy"]
    except (KeyError, TypeError, ValueError) as exc:
        raise BenchError(f"{folder / 'summary.json'}: not a quickstart summary ({exc!r})") from None
    rest = total - eval_s - sum(stage["wall_s"] for stage in stages)
    return {"folder": str(folder), "resumed": bool(summary.get("resumed")), "seed": summary.get("seed"),
            "stages": stages, "eval_s": eval_s, "rest_s": rest, "total_s": total, "accuracy": accuracy}


def run_quickstart_bench(config: QuickstartBenchConfig) -> dict:
    if not config.folders:
        raise BenchError("name at least one quickstart output folder")
    return {"bench": "quickstart", "command": config.command,
            "runs": [folder_report(Path(folder)) for folder in config.folders]}


def _seconds(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _rows(run: dict) -> list[tuple[str, float | None, str]]:
    """(row name, seconds compared across runs, cell text) for one run."""
    rows = []
    for stage in run["stages"]:
        name = stage["name"]
        rows += [(f"{name}: wall", stage["wall_s"], f"{stage['wall_s']:.1f} s"),
                 (f"{name}: steps", None, str(stage["steps"])),
                 (f"{name}: loop", stage["loop_s"], f"{_seconds(stage['loop_s'])} s"),
                 (f"{name}: s per step", stage["s_per_step"], _seconds(stage["s_per_step"], 3)),
                 (f"{name}: start-up and save", stage["startup_and_save_s"],
                  f"{_seconds(stage['startup_and_save_s'])} s")]
    return rows + [("evaluation", run["eval_s"], f"{run['eval_s']:.1f} s"),
                   ("data, models and the rest", run["rest_s"], f"{run['rest_s']:.1f} s"),
                   ("total", run["total_s"], f"{run['total_s']:.1f} s"),
                   ("accuracy (%)", None, f"{run['accuracy']:.2f}")]


def format_report(report: dict) -> str:
    runs = report["runs"]
    tables = [_rows(run) for run in runs]
    header = "| | " + " | ".join(f"{run['folder']}{' (resumed)' if run['resumed'] else ''}" for run in runs) + " |"
    lines = [header, "|---|" + "---:|" * len(runs)]
    for i, (name, base, first_cell) in enumerate(tables[0]):
        cells = [first_cell]
        for table in tables[1:]:
            row_name, value, cell = table[i] if i < len(table) else (name, None, "")
            if row_name != name:
                cell = f"{row_name}: {cell}"
            elif base and value:
                cell += f" ({base / value:.2f}x)"
            cells.append(cell)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["QuickstartBenchConfig", "folder_report", "format_report", "loop_runtime", "run_quickstart_bench"]
