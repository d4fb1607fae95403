"""A paired comparison of two evaluation runs over the same items (`videopanda eval compare A B`).

A and B are result folders of one kind: `eval judge` folders (yes/no verdicts and 0..5 scores per
question, `verdicts.jsonl`), `eval mc` folders (right or wrong per question, `outcomes.jsonl`) or
`eval benchmark` folders (the folder itself or its `judge/`; a 0..5 score per item and aspect). Each
must hold the `results.json` of a finished run. Two folders are refused (`CompareError`, one line
naming both) when they are of different kinds, over different datasets, judged by different judges (the
exact-match judge and a GPT model, or two GPT models), over different item ids, or
over the same ids with other questions or references (`items_fingerprint`, recorded by the commands);
a judge folder whose last verdict line per item is not what its `results.json` counted (judged again
over other predictions) is refused too.

The comparison is over the items both runs have an outcome for; an item without a prediction or a
verdict in either run is left out, counted and listed with the reason (in `results.json` it counts as
wrong; here it would credit or blame a model for a failure of the pipeline). Per part (the QA set, the
MC benchmark, each benchmark aspect), overall and per question type / category value:
- right/wrong outcomes: both accuracies with their Wilson intervals, B - A, the discordant counts
  (McNemar's b = right in A only, c = right in B only) and the exact McNemar p-value (`intervals`);
- scores: both means with their bootstrap intervals, B - A and its paired bootstrap interval;
- the ids of the items whose outcome (or score) differs.

`pool_runs` joins several runs (one per seed, each over its own questions) into one whose items keep their
run's label, so that `compare_read` pairs the runs of two variants seed by seed in one test.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from videopanda.eval.agreement import latest_verdicts, natural_key
from videopanda.eval.benchmark import ASPECTS
from videopanda.eval.datasets import BENCHMARK
from videopanda.eval.intervals import (INTERVAL_RULE, bootstrap_interval, exact_mcnemar, paired_bootstrap,
                                       percent_interval)
from videopanda.eval.judge import EXACT_LABEL
from videopanda.eval.records import read_jsonl
from videopanda.eval.report import read_results

MC_OUTCOMES = "outcomes.jsonl"


class CompareError(Exception):
    """Two result folders that cannot be compared item by item (the message names both)."""


def items_fingerprint(rows: Iterable[dict[str, Any]]) -> str:
    """A hash of the items a run is over: every (id, question, reference answer), in id order. Two runs
    over the same questions of the same dataset have the same one, whatever their predictions."""
    triples = sorted([str(row["id"]), str(row["question"]), str(row["answer"])] for row in rows)
    return hashlib.sha256(json.dumps(triples).encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------ reading a run


def _read_results(folder: Path) -> dict[str, Any]:
    path = folder / "results.json"
    if not path.is_file():
        raise CompareError(f"{folder}: no results.json (not the output folder of a finished `eval judge`, "
                           "`eval mc` or `eval benchmark`)")
    return read_results(path)


def _judged_part(folder: Path, results: dict[str, Any], score_only: bool) -> dict[str, Any]:
    """One judge folder -> {"outcomes": {id: {"correct", "score", "groups"}}, "left_out": {id: reason}}."""
    failed = results.get("failed_ids") or {}
    left_out = {str(i): "no prediction" for i in failed.get("inference", [])}
    left_out.update({str(i): "no verdict" for i in failed.get("judge", [])})
    verdicts = latest_verdicts(folder) if (folder / "verdicts.jsonl").is_file() else {}
    outcomes = {key: {"correct": None if score_only else row.get("verdict") == "yes", "score": float(row["score"]),
                      "groups": {"type": str(row["type"])} if row.get("type") is not None else {}}
                for key, row in verdicts.items() if key not in left_out}
    # the last line of an id is normally the verdict results.json counted; a folder judged again over other
    # predictions can hold later lines of other runs, which must not be compared
    counted = (len(outcomes), sum(o["correct"] is True for o in outcomes.values()),
               sum(o["score"] for o in outcomes.values()))
    recorded = (results.get("num_judged"), results.get("num_yes"),
                (results.get("score") or 0) * results.get("num_items", 0))
    if counted[:2] != recorded[:2] or abs(counted[2] - recorded[2]) > 1e-6 * max(1, recorded[2]):
        raise CompareError(f"{folder}: its verdicts.jsonl does not match its results.json (lines of other runs); "
                           "judge into a new --output-dir to compare")
    return {"outcomes": outcomes, "left_out": left_out}


def _mc_part(folder: Path) -> dict[str, Any]:
    path = folder / MC_OUTCOMES
    if not path.is_file():
        raise CompareError(f"{folder}: no {MC_OUTCOMES} (scored before `eval mc` wrote per-item outcomes; "
                           "rerun it with --stage score)")
    outcomes, left_out = {}, {}
    for row in read_jsonl(path, whole=True):
        if row.get("status") == "failed":
            left_out[str(row["id"])] = "no prediction"
        else:
            outcomes[str(row["id"])] = {"correct": bool(row["correct"]), "score": None,
                                        "groups": dict(row.get("categories") or {})}
    return {"outcomes": outcomes, "left_out": left_out}


def read_run(folder: str | os.PathLike) -> dict[str, Any]:
    """A result folder -> {"folder", "kind" (qa, mc, benchmark), "dataset", "judge" (the judge model, e.g.
    "gpt-3.5-turbo-0125" or "exact-match"; None for mc), "items_fingerprint" (None when not recorded),
    "parts": {name: {"outcomes", "left_out"}}}."""
    folder = Path(folder)
    if not (folder / "results.json").is_file() and (folder / "judge" / "results.json").is_file():
        folder = folder / "judge"           # an `eval benchmark` output folder
    results = _read_results(folder)
    if "benchmark" in results:
        kind, dataset, parts = "mc", f"mc-{results['benchmark']}", {"mc": _mc_part(folder)}
    elif results.get("dataset") == BENCHMARK:
        kind, dataset = "benchmark", BENCHMARK
        parts = {aspect: _judged_part(folder / aspect, _read_results(folder / aspect), score_only=True)
                 for aspect in ASPECTS}
    else:
        kind, dataset = "qa", results.get("dataset")
        parts = {"qa": _judged_part(folder, results, score_only=results.get("accuracy") is None)}
    judge = None if kind == "mc" else _judge_of(results)
    return {"folder": str(folder), "kind": kind, "dataset": dataset, "judge": judge,
            "items_fingerprint": results.get("items_fingerprint"), "parts": parts}


def _judge_of(results: dict[str, Any]) -> str:
    """Who judged a run, as text: the model its verdicts name (`judge_model`: one name, or a list when they came
    from several), else (a run without a verdict) the model it asked for, else the kind of judge."""
    models = results.get("judge_model")
    if isinstance(models, list):
        models = ", ".join(map(str, models))
    if results.get("judge") == EXACT_LABEL:
        return "exact-match"
    return str(models or results.get("judge_model_requested") or results.get("judge"))


# ------------------------------------------------------------------------------------ checks


def _examples(ids: Iterable[str], show: int = 3) -> str:
    ordered = sorted(ids, key=natural_key)
    return ", ".join(ordered[:show]) + (", ..." if len(ordered) > show else "")


def check_comparable(a: dict[str, Any], b: dict[str, Any]) -> None:
    """CompareError (one line naming both folders) unless `a` and `b` are runs of one kind over the same items."""
    where = f"{a['folder']} and {b['folder']}"
    if a["kind"] != b["kind"]:
        raise CompareError(f"{where} are not comparable: results of `eval {a['kind']}` and `eval {b['kind']}`"
                           .replace("eval qa", "eval judge"))
    if a["dataset"] != b["dataset"]:
        raise CompareError(f"{where} are not comparable: datasets {a['dataset']} and {b['dataset']}")
    if a["judge"] != b["judge"]:
        raise CompareError(f"{where} are not comparable: judged by {a['judge']} and by {b['judge']} (judges "
                           "differ in what they accept); judge both with one judge")
    for part in a["parts"]:
        ids_a = set(a["parts"][part]["outcomes"]) | set(a["parts"][part]["left_out"])
        ids_b = set(b["parts"][part]["outcomes"]) | set(b["parts"][part]["left_out"])
        if ids_a != ids_b:
            label = "" if part in ("qa", "mc") else f" ({part})"
            raise CompareError(
                f"{where} are not comparable: different item sets{label}: {len(ids_a - ids_b)} only in A "
                f"({_examples(ids_a - ids_b) or '-'}), {len(ids_b - ids_a)} only in B "
                f"({_examples(ids_b - ids_a) or '-'})")
    fp_a, fp_b = a["items_fingerprint"], b["items_fingerprint"]
    if fp_a and fp_b and fp_a != fp_b:
        raise CompareError(f"{where} are not comparable: the same item ids with other questions or references "
                           f"(items fingerprints {fp_a} and {fp_b})")


# ------------------------------------------------------------------------------------ comparing


def _side(values: Sequence[Any], kind: str) -> dict[str, Any]:
    if kind == "correct":
        right = sum(values)
        return {"accuracy": 100.0 * right / len(values) if values else None,
                "accuracy_ci95": percent_interval(right, len(values))}
    return {"score": sum(values) / len(values) if values else None, "score_ci95": bootstrap_interval(values)}


def compare_items(ids: Sequence[str], a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The paired numbers over `ids` (each with an outcome in both `a` and `b`, id -> {"correct", "score"})."""
    row: dict[str, Any] = {"n": len(ids)}
    if all(a[i]["correct"] is not None and b[i]["correct"] is not None for i in ids):
        only_a = sum(a[i]["correct"] and not b[i]["correct"] for i in ids)
        only_b = sum(b[i]["correct"] and not a[i]["correct"] for i in ids)
        side_a = _side([a[i]["correct"] for i in ids], "correct")
        side_b = _side([b[i]["correct"] for i in ids], "correct")
        row.update({"accuracy_a": side_a["accuracy"], "accuracy_a_ci95": side_a["accuracy_ci95"],
                    "accuracy_b": side_b["accuracy"], "accuracy_b_ci95": side_b["accuracy_ci95"],
                    "accuracy_diff": None if not ids else side_b["accuracy"] - side_a["accuracy"],
                    "right_only_a": only_a, "right_only_b": only_b, "mcnemar_p": exact_mcnemar(only_a, only_b)})
    if all(a[i]["score"] is not None and b[i]["score"] is not None for i in ids):
        scores_a, scores_b = [a[i]["score"] for i in ids], [b[i]["score"] for i in ids]
        side_a, side_b = _side(scores_a, "score"), _side(scores_b, "score")
        row.update({"score_a": side_a["score"], "score_a_ci95": side_a["score_ci95"],
                    "score_b": side_b["score"], "score_b_ci95": side_b["score_ci95"],
                    "score_diff": None if not ids else side_b["score"] - side_a["score"],
                    "score_diff_ci95": paired_bootstrap(scores_a, scores_b)})
    return row


def _compare_part(part_a: dict[str, Any], part_b: dict[str, Any]) -> dict[str, Any]:
    a, b = part_a["outcomes"], part_b["outcomes"]
    left_out = sorted(({"id": key, "a": part_a["left_out"].get(key), "b": part_b["left_out"].get(key)}
                       for key in set(part_a["left_out"]) | set(part_b["left_out"])),
                      key=lambda row: natural_key(row["id"]))
    ids = sorted((key for key in a if key in b), key=natural_key)
    groups: dict[str, dict[str, list[str]]] = {}
    for key in ids:
        for name, value in a[key]["groups"].items():
            groups.setdefault(name, {}).setdefault(value, []).append(key)
    differing = [{"id": key, "a": _outcome(a[key]), "b": _outcome(b[key])} for key in ids
                 if (a[key]["correct"], a[key]["score"]) != (b[key]["correct"], b[key]["score"])]
    return {"overall": compare_items(ids, a, b),
            "per_group": {name: {value: compare_items(members, a, b) for value, members in sorted(values.items())}
                          for name, values in groups.items()},
            "num_left_out": len(left_out), "left_out": left_out, "differing": differing}


def _outcome(outcome: dict[str, Any]) -> dict[str, Any]:
    return {key: outcome[key] for key in ("correct", "score") if outcome[key] is not None}


def coverage_line(part: dict[str, Any]) -> str:
    """E.g. "over 398 items; 2 left out (A: 1 no prediction; B: 1 no verdict)"."""
    text = f"over {part['overall']['n']} items"
    if not part["left_out"]:
        return text + "; none left out"
    reasons = []
    for side in ("a", "b"):
        counts: dict[str, int] = {}
        for row in part["left_out"]:
            if row[side] is not None:
                counts[row[side]] = counts.get(row[side], 0) + 1
        if counts:
            reasons.append(f"{side.upper()}: " + ", ".join(f"{n} {why}" for why, n in sorted(counts.items())))
    return f"{text}; {part['num_left_out']} left out ({'; '.join(reasons)})"


def pool_runs(runs: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """Several runs of one kind and dataset (label -> `read_run`), e.g. one per seed, as one run over all
    their items: every id is prefixed with its run's label ("seed0/synth_q_000001"), so the items of
    different runs stay distinct where their ids coincide. Its items fingerprint hashes the runs' own
    (None when one records none); CompareError when the runs are of different kinds or datasets."""
    first = next(iter(runs.values()))
    for run in runs.values():
        if (run["kind"], run["dataset"]) != (first["kind"], first["dataset"]):
            raise CompareError(f"{first['folder']} and {run['folder']} cannot be pooled: results of "
                               f"{first['kind']} over {first['dataset']} and {run['kind']} over {run['dataset']}")
        if run["judge"] != first["judge"]:
            raise CompareError(f"{first['folder']} and {run['folder']} cannot be pooled: judged by "
                               f"{first['judge']} and by {run['judge']}")
    parts = {name: {field: {f"{label}/{key}": value for label, run in runs.items()
                            for key, value in run["parts"][name][field].items()}
                    for field in ("outcomes", "left_out")}
             for name in first["parts"]}
    fingerprints = [[label, run["items_fingerprint"]] for label, run in runs.items()]
    pooled_fingerprint = (None if any(fp is None for _, fp in fingerprints)
                          else hashlib.sha256(json.dumps(fingerprints).encode("utf-8")).hexdigest()[:16])
    return {"folder": " + ".join(run["folder"] for run in runs.values()), "kind": first["kind"],
            "dataset": first["dataset"], "judge": first["judge"], "items_fingerprint": pooled_fingerprint,
            "parts": parts}


def compare_runs(folder_a: str | os.PathLike, folder_b: str | os.PathLike) -> dict[str, Any]:
    """The paired comparison of two result folders (see the module docstring); CompareError when they
    are not runs over the same items."""
    return compare_read(read_run(folder_a), read_run(folder_b))


def compare_read(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """`compare_runs` of two runs already read (`read_run`, or `pool_runs` of several)."""
    check_comparable(a, b)
    parts = {name: _compare_part(a["parts"][name], b["parts"][name]) for name in a["parts"]}
    for part in parts.values():
        part["coverage"] = coverage_line(part)
    return {"a": a["folder"], "b": b["folder"], "kind": a["kind"], "dataset": a["dataset"],
            "interval_rule": INTERVAL_RULE, "parts": parts}


# ------------------------------------------------------------------------------------ printing


def _pct(value: float | None, interval: list[float] | None, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    text = f"{value:.{digits}f}"
    return text if interval is None else f"{text} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def format_row(label: str, row: dict[str, Any]) -> str:
    """One line: n, both numbers with intervals, B - A, and the test."""
    parts = []
    if "accuracy_a" in row:
        parts.append(f"accuracy A {_pct(row['accuracy_a'], row['accuracy_a_ci95'])} "
                     f"B {_pct(row['accuracy_b'], row['accuracy_b_ci95'])} B-A {_pct(row['accuracy_diff'], None)}; "
                     f"right only in A {row['right_only_a']}, only in B {row['right_only_b']}; "
                     f"exact McNemar p={row['mcnemar_p']:.4g}")
    if "score_a" in row:
        parts.append(f"score A {_pct(row['score_a'], row['score_a_ci95'], 2)} "
                     f"B {_pct(row['score_b'], row['score_b_ci95'], 2)} "
                     f"B-A {_pct(row['score_diff'], row['score_diff_ci95'], 2)}")
    return f"{label} (n={row['n']}): " + "; ".join(parts)


def format_comparison(report: dict[str, Any], show: int = 20) -> str:
    """The terminal view: per part the coverage, the overall and per-group lines, up to `show` differing ids."""
    lines = [f"A: {report['a']}", f"B: {report['b']}", f"{report['dataset']} ({report['interval_rule']})"]
    for name, part in report["parts"].items():
        prefix = "" if name in ("qa", "mc") else f"{name}: "
        lines.append(f"{prefix}{part['coverage']}")
        lines.append(format_row(f"{prefix}overall", part["overall"]))
        for group, values in part["per_group"].items():
            lines += [format_row(f"  {group} {value}", row) for value, row in values.items()]
        ids = [row["id"] for row in part["differing"]]
        more = f", ... ({len(ids) - show} more in the --output file)" if len(ids) > show else ""
        lines.append(f"{prefix}{len(ids)} items differ" + (f": {', '.join(ids[:show])}{more}" if ids else ""))
    return "\n".join(lines)
