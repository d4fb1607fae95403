"""How far two judge runs over the same predictions agree (`videopanda eval judge-agreement A B`).

A and B are judge output folders (`verdicts.jsonl`, and `results.json` when the run finished), e.g.
the same `merge.jsonl` judged by two snapshots of one model, or by GPT and an open-weights judge on a
local server. Per folder the last verdict line of each id counts (a rerun appends the newer verdict).
Items are paired by id; a pair whose `content` hashes differ (the two runs judged different
predictions or references) is refused, never compared. Items only one run judged are counted and listed.

Reported over the paired items:
- same verdict %: both said yes or both said no (QA judges; None for score-only judging);
- Cohen's kappa of the yes/no verdicts: (p_o - p_e) / (1 - p_e), p_e from each run's own yes rate;
  None when it is undefined (both runs gave one and the same verdict to every item); its 95% interval
  is a percentile bootstrap over the paired items (`intervals.bootstrap_statistic`; resamples where
  kappa is undefined are skipped), over `num_with_verdicts` items;
- score: same score %, mean absolute difference, Pearson correlation (None when a run's scores are constant);
- accuracy (with its Wilson interval) and mean score of each run over the paired items, and B - A;
- the items they disagree on (verdict or score), with both verdicts and scores.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

from videopanda.eval.intervals import bootstrap_statistic, percent_interval
from videopanda.eval.records import RecordsError, read_jsonl


def natural_key(key: str) -> list[Any]:
    """Sort key that puts item-2 before item-10."""
    return [int(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+)", key))]


class AgreementError(Exception):
    """Two judge runs that cannot be compared (the message names the folder or the item)."""


def latest_verdicts(judge_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """id -> the last verdict line of `judge_dir/verdicts.jsonl`."""
    path = Path(judge_dir) / "verdicts.jsonl"
    if not path.is_file():
        raise RecordsError(f"{path}: no such file (is {judge_dir} the output folder of `eval judge`?)")
    latest: dict[str, dict[str, Any]] = {}
    for number, record in enumerate(read_jsonl(path), start=1):
        if "id" not in record or "score" not in record:
            raise RecordsError(f"{path}: line {number} is not a verdict (no 'id' or 'score')")
        latest[str(record["id"])] = record
    return latest


def cohens_kappa(first: Sequence[str], second: Sequence[str]) -> float | None:
    """Cohen's kappa of two equally long label sequences; None when undefined (p_e == 1)."""
    if len(first) != len(second):
        raise ValueError("the two label sequences must be equally long")
    n = len(first)
    if n == 0:
        return None
    observed = sum(a == b for a, b in zip(first, second)) / n
    labels = set(first) | set(second)
    expected = sum((first.count(label) / n) * (second.count(label) / n) for label in labels)
    if math.isclose(expected, 1.0):
        return None
    return (observed - expected) / (1 - expected)


def pearson(first: Sequence[float], second: Sequence[float]) -> float | None:
    """Pearson correlation; None when fewer than two values or either side is constant."""
    n = len(first)
    if n < 2:
        return None
    mean_a, mean_b = sum(first) / n, sum(second) / n
    cov = sum((a - mean_a) * (b - mean_b) for a, b in zip(first, second))
    var_a = sum((a - mean_a) ** 2 for a in first)
    var_b = sum((b - mean_b) ** 2 for b in second)
    if var_a == 0 or var_b == 0:
        return None
    return cov / math.sqrt(var_a * var_b)


def _judge_label(judge_dir: Path, verdicts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    results_path = judge_dir / "results.json"
    results: dict[str, Any] = {}
    if results_path.is_file():
        try:
            results = json.loads(results_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise RecordsError(f"{results_path}: unreadable ({' '.join(str(error).split())})") from None
    models = sorted({str(v["judge_model"]) for v in verdicts.values() if v.get("judge_model") is not None})
    return {"dir": str(judge_dir), "judge_model": models[0] if len(models) == 1 else models,
            "judge_model_requested": results.get("judge_model_requested"),
            "prediction_fingerprint_id": results.get("prediction_fingerprint_id")}


def compare_judges(dir_a: str | os.PathLike, dir_b: str | os.PathLike) -> dict[str, Any]:
    """The agreement report of two judge folders (see the module docstring). Raises AgreementError
    when they judged different predictions, or share no item."""
    dir_a, dir_b = Path(dir_a), Path(dir_b)
    a, b = latest_verdicts(dir_a), latest_verdicts(dir_b)
    info_a, info_b = _judge_label(dir_a, a), _judge_label(dir_b, b)
    fp_a, fp_b = info_a["prediction_fingerprint_id"], info_b["prediction_fingerprint_id"]
    if fp_a and fp_b and fp_a != fp_b:
        raise AgreementError(f"{dir_a} and {dir_b} judged predictions of different runs "
                             f"(prediction fingerprints {fp_a} and {fp_b})")
    shared = sorted((key for key in a if key in b), key=natural_key)
    for key in shared:
        content_a, content_b = a[key].get("content"), b[key].get("content")
        if content_a and content_b and content_a != content_b:
            raise AgreementError(f"item {key}: {dir_a} and {dir_b} judged different predictions or references "
                                 "for it; compare runs over the same merge.jsonl")
    if not shared:
        raise AgreementError(f"{dir_a} and {dir_b} have no judged item in common")

    pairs = [(key, a[key], b[key]) for key in shared]
    with_verdicts = [(key, x, y) for key, x, y in pairs if x.get("verdict") in ("yes", "no")
                     and y.get("verdict") in ("yes", "no")]
    labels_a = [x["verdict"] for _, x, _ in with_verdicts]
    labels_b = [y["verdict"] for _, _, y in with_verdicts]
    scores_a = [float(x["score"]) for _, x, _ in pairs]
    scores_b = [float(y["score"]) for _, _, y in pairs]
    n = len(pairs)

    def accuracy(labels: list[str]) -> float | None:
        return 100.0 * labels.count("yes") / len(labels) if labels else None

    def resampled_kappa(indices: Any) -> float | None:
        return cohens_kappa([labels_a[i] for i in indices], [labels_b[i] for i in indices])

    acc_a, acc_b = accuracy(labels_a), accuracy(labels_b)
    disagreements = [
        {"id": key, "verdict_a": x.get("verdict"), "verdict_b": y.get("verdict"), "score_a": x["score"],
         "score_b": y["score"], **({"type": x["type"]} if x.get("type") is not None else {})}
        for key, x, y in pairs if x.get("verdict") != y.get("verdict") or x["score"] != y["score"]]
    return {
        "a": info_a, "b": info_b,
        "num_paired": n,
        "num_with_verdicts": len(with_verdicts),
        "only_in_a": sorted(set(a) - set(b), key=natural_key),
        "only_in_b": sorted(set(b) - set(a), key=natural_key),
        "same_verdict_pct": (100.0 * sum(p == q for p, q in zip(labels_a, labels_b)) / len(labels_a)
                             if labels_a else None),
        "cohens_kappa": cohens_kappa(labels_a, labels_b),
        "cohens_kappa_ci95": bootstrap_statistic(len(labels_a), resampled_kappa),
        "same_score_pct": 100.0 * sum(p == q for p, q in zip(scores_a, scores_b)) / n,
        "mean_abs_score_diff": sum(abs(p - q) for p, q in zip(scores_a, scores_b)) / n,
        "score_pearson": pearson(scores_a, scores_b),
        "accuracy_a": acc_a, "accuracy_b": acc_b,
        "accuracy_a_ci95": percent_interval(labels_a.count("yes"), len(labels_a)),
        "accuracy_b_ci95": percent_interval(labels_b.count("yes"), len(labels_b)),
        "accuracy_diff": None if acc_a is None or acc_b is None else acc_b - acc_a,
        "score_a": sum(scores_a) / n, "score_b": sum(scores_b) / n,
        "score_diff": (sum(scores_b) - sum(scores_a)) / n,
        "disagreements": disagreements,
    }


def format_agreement(report: dict[str, Any], show: int = 20) -> str:
    """A few lines for the terminal: the numbers, then up to `show` disagreements."""
    def number(value: float | None, digits: int = 2, interval: list[float] | None = None) -> str:
        text = "n/a" if value is None else f"{value:.{digits}f}"
        return text if value is None or interval is None else f"{text} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"

    lines = [f"A: {report['a']['dir']} (judge {report['a']['judge_model']})",
             f"B: {report['b']['dir']} (judge {report['b']['judge_model']})",
             f"{report['num_paired']} items judged by both ({len(report['only_in_a'])} only in A, "
             f"{len(report['only_in_b'])} only in B)",
             f"same verdict {number(report['same_verdict_pct'])}%  Cohen's kappa "
             f"{number(report['cohens_kappa'], 3, report.get('cohens_kappa_ci95'))} (n={report['num_with_verdicts']})  "
             f"accuracy A {number(report['accuracy_a'], 2, report.get('accuracy_a_ci95'))} "
             f"B {number(report['accuracy_b'], 2, report.get('accuracy_b_ci95'))} (B - A {number(report['accuracy_diff'])})",
             f"same score {number(report['same_score_pct'])}%  mean |score A - score B| "
             f"{number(report['mean_abs_score_diff'], 3)}  Pearson r {number(report['score_pearson'], 3)}  "
             f"score A {number(report['score_a'], 3)} B {number(report['score_b'], 3)}",
             f"{len(report['disagreements'])} items differ"]
    for row in report["disagreements"][:show]:
        lines.append(f"  {row['id']}: A {row['verdict_a']}/{row['score_a']}  B {row['verdict_b']}/{row['score_b']}")
    if len(report["disagreements"]) > show:
        lines.append(f"  ... ({len(report['disagreements']) - show} more in the --output file)")
    return "\n".join(lines)
