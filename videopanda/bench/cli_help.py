"""`videopanda bench cli`: how long `videopanda --help` and every subcommand's `--help` take.

Each command line of `videopanda.cli.help_command_lines()` runs with `--help` in a fresh interpreter, as the
console script runs it (`python -m videopanda_command ...`), `warmup` untimed times and then `repeats` timed
times; the rounds go over all command lines in a rotating order, so load from other processes on a shared
machine falls on every command alike. A row for the bare interpreter (`python -c pass`) shows the floor.
Wall-clock seconds of the whole process (start-up, imports, parsing, printing), `time.perf_counter`.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass

INTERPRETER_ROW = "(python start-up: python -c pass)"


@dataclass(frozen=True)
class CLIBenchConfig:
    repeats: int = 5
    warmup: int = 1
    command: str = ""
    """The command line that asked for this report (recorded in it)."""

    def __post_init__(self):
        if self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"--repeats must be at least 1 and --warmup at least 0, got {self.repeats}, {self.warmup}")


def _argv(line: list[str] | None) -> list[str]:
    """The process to time: the command line with --help, or the bare interpreter for None."""
    if line is None:
        return [sys.executable, "-c", "pass"]
    return [sys.executable, "-m", "videopanda_command", *line, "--help"]


def _time_once(argv: list[str]) -> float:
    """Seconds one run of `argv` takes; BenchError when it does not exit 0."""
    from videopanda.bench.timing import BenchError

    started = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no message"])[-1]
        raise BenchError(f"{shlex.join(argv)} exited {result.returncode}: {last}")
    return seconds


def run_cli_bench(config: CLIBenchConfig) -> dict:
    """-> report: environment, and per command line `rows` of median / min / max / all seconds."""
    from tqdm import tqdm

    from videopanda.bench.timing import cpu_name, median
    from videopanda.cli import help_command_lines

    lines: list[list[str] | None] = [None, *help_command_lines()]
    timings: list[list[float]] = [[] for _ in lines]
    load_before = os.getloadavg()
    rounds = config.warmup + config.repeats
    with tqdm(total=rounds * len(lines), desc="--help runs", unit="run") as progress:
        for round_index in range(rounds):
            shift = round_index % len(lines)
            for index in [*range(shift, len(lines)), *range(shift)]:
                seconds = _time_once(_argv(lines[index]))
                if round_index >= config.warmup:
                    timings[index].append(seconds)
                progress.update()
    rows = []
    for line, seconds in zip(lines, timings):
        name = INTERPRETER_ROW if line is None else shlex.join(["videopanda", *line, "--help"])
        rows.append({"command": name, "median_s": median(seconds), "min_s": min(seconds), "max_s": max(seconds),
                     "all_s": seconds})
    return {"bench": "cli", "repeats": config.repeats, "warmup": config.warmup, "python": sys.version.split()[0],
            "cpu": cpu_name(), "cpu_count": os.cpu_count(), "load_average_before": load_before,
            "load_average_after": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": config.command, "rows": rows}


def format_report(report: dict) -> str:
    from videopanda.bench.timing import format_table

    slowest = max((row for row in report["rows"] if row["command"] != INTERPRETER_ROW), key=lambda r: r["median_s"])
    load = "/".join(f"{value:.1f}" for value in report["load_average_before"])
    header = (f"--help wall time, median of {report['repeats']} runs ({report['warmup']} untimed first), "
              f"{report['cpu_count']} CPUs {report['cpu']}, load average before {load}")
    table = format_table(report["rows"], [("command", "command", "s"), ("median_s", "median s", ".3f"),
                                          ("min_s", "min s", ".3f"), ("max_s", "max s", ".3f")])
    return f"{header}\n{table}\nslowest: {slowest['command']} ({slowest['median_s']:.3f} s median)"
