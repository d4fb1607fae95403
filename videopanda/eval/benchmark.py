"""The Video-ChatGPT benchmark: five judge aspects over generic, temporal and consistency questions.

Inference is the ordinary QA loop over `load_benchmark` items (see `datasets.py` for the files and
the ids `generic/{i}`, `temporal/{i}`, `consistency/{i}/q1|q2`); `videopanda eval benchmark --stage
infer` runs it (sharded like `eval qa`), `--stage judge` merges and judges, `--stage all` does both.

Judging (each aspect a score 0..5, no yes/no): correctness, detail orientation and contextual
understanding from the generic questions, temporal understanding from the temporal ones, and
consistency from the consistency pairs, where the judge sees both questions and both predictions.
Each aspect is judged into its own folder (`verdicts.jsonl`, `failed.jsonl`, `results.json`) with
the same resumable machinery as the QA judge; `results.json` at the top holds the five scores and
their average (the average is only given when all five exist). As for QA, every score is over all
items of its aspect (a question or pair without a verdict counts 0), `coverage` says per aspect how
many items were judged, and `complete` is false when any item of any aspect failed. Each aspect's score
has its 95% bootstrap interval over its items (`scores_ci95`); the average's (`average_ci95`) resamples
the generic questions once for the three aspects judged on them.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from videopanda.eval.intervals import bootstrap_mean_of_means
from videopanda.eval.judge import Judge, JudgeItem, fingerprint, run_judge
from videopanda.eval.prompts import ASPECT_LABELS, aspect_messages, consistency_messages
from videopanda.eval.records import read_jsonl
from videopanda.io import make_dirs, write_json_atomic
from videopanda.log import get_logger

logger = get_logger(__name__)

ASPECTS = ("correctness", "detail", "context", "temporal", "consistency")
_SOURCE = {"correctness": "generic", "detail": "generic", "context": "generic", "temporal": "temporal"}


def benchmark_judge_items(records: Sequence[dict[str, Any]]
                          ) -> dict[str, tuple[list[JudgeItem], list[dict[str, Any]]]]:
    """Merged benchmark prediction rows -> per aspect (items to judge, rows that failed inference)."""
    by_part: dict[str, list[dict[str, Any]]] = {"generic": [], "temporal": []}
    pairs: dict[str, dict[str, dict[str, Any]]] = {}
    for record in records:
        parts = str(record["id"]).split("/")
        if parts[0] in by_part and len(parts) == 2:
            by_part[parts[0]].append(record)
        elif parts[0] == "consistency" and len(parts) == 3 and parts[2] in ("q1", "q2"):
            pairs.setdefault(f"consistency/{parts[1]}", {})[parts[2]] = record
        else:
            raise ValueError(f"prediction id {record['id']!r} is not a Video-ChatGPT benchmark id")

    out: dict[str, tuple[list[JudgeItem], list[dict[str, Any]]]] = {}
    for aspect, part in _SOURCE.items():
        items, failed = [], []
        for record in by_part[part]:
            if record.get("pred") is None:
                failed.append(record)
                continue
            question, answer, pred = str(record["question"]), str(record["answer"]), str(record["pred"])
            items.append(JudgeItem(id=str(record["id"]), messages=aspect_messages(aspect, question, answer, pred),
                                   answer=answer, preds=(pred,), need_pred=False))
        out[aspect] = (items, failed)

    items, failed = [], []
    for pair_id, pair in pairs.items():
        q1, q2 = pair.get("q1"), pair.get("q2")
        if q1 is None or q2 is None or q1.get("pred") is None or q2.get("pred") is None:
            reasons = [f"{name}: {'missing' if r is None else r.get('error')}"
                       for name, r in (("q1", q1), ("q2", q2)) if r is None or r.get("pred") is None]
            failed.append({"id": pair_id, "error": "; ".join(reasons)})
            continue
        answer = str(q1["answer"])
        items.append(JudgeItem(
            id=pair_id, answer=answer, preds=(str(q1["pred"]), str(q2["pred"])), need_pred=False,
            messages=consistency_messages(str(q1["question"]), str(q2["question"]), answer,
                                          str(q1["pred"]), str(q2["pred"]))))
    out["consistency"] = (items, failed)
    return out


def judge_benchmark(records: Sequence[dict[str, Any]], judge: Judge, output_dir: str | os.PathLike,
                    workers: int = 8, metadata: dict[str, Any] | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Judge all five aspects into `output_dir/{aspect}/`; write and return `output_dir/results.json`."""
    output_dir = make_dirs(output_dir)
    (output_dir / "results.json").unlink(missing_ok=True)
    per_aspect: dict[str, dict[str, Any]] = {}
    to_judge = benchmark_judge_items(records)
    for aspect, (items, failed) in to_judge.items():
        logger.info("judging %s (%d items, %d failed inference)", ASPECT_LABELS[aspect], len(items), len(failed))
        per_aspect[aspect] = run_judge(items, judge, output_dir / aspect, failed_inference=failed, workers=workers,
                                       metadata={**(metadata or {}), "aspect": aspect}, progress=progress,
                                       accuracy=False, unit="pairs" if aspect == "consistency" else "questions")
    scores = {aspect: per_aspect[aspect]["score"] for aspect in ASPECTS}
    models = sorted({m for r in per_aspect.values() for m in ([r["judge_model"]] if isinstance(r["judge_model"], str)
                                                             else r["judge_model"])})
    results: dict[str, Any] = dict(metadata or {})
    results.update({
        "dataset": "videochatgpt",
        "scores": scores,
        "scores_ci95": {aspect: per_aspect[aspect]["score_ci95"] for aspect in ASPECTS},
        "average": sum(scores.values()) / len(scores) if all(v is not None for v in scores.values()) else None,
        "average_ci95": _average_interval(to_judge, judge, output_dir),
        "num_judged": {a: per_aspect[a]["num_judged"] for a in ASPECTS},
        "num_failed": {a: per_aspect[a]["num_failed"] for a in ASPECTS},
        "num_failed_inference": {a: per_aspect[a]["num_failed_inference"] for a in ASPECTS},
        "num_items": {a: per_aspect[a]["num_items"] for a in ASPECTS},
        "coverage": {a: per_aspect[a]["coverage"] for a in ASPECTS},
        "complete": all(per_aspect[a]["complete"] for a in ASPECTS),
        "metric_rule": per_aspect[ASPECTS[0]]["metric_rule"],
        "interval_rule": per_aspect[ASPECTS[0]]["interval_rule"],
        "judge": next(iter(per_aspect.values()))["judge"],
        "judge_model": models[0] if len(models) == 1 else models,
        "usage": {key: sum(r["usage"][key] for r in per_aspect.values())
                  for key in ("prompt_tokens", "completion_tokens")},
    })
    write_json_atomic(output_dir / "results.json", results)
    return results


def _item_scores(items: Sequence[JudgeItem], failed: Sequence[dict[str, Any]], judge: Judge,
                 judge_dir: Path) -> dict[str, float]:
    """id -> score of every item of one aspect: its current verdict's (the line whose fingerprint is the
    item's now), 0 for an item without one, as the aspect's score counts them."""
    prints = {item.id: fingerprint(judge, item) for item in items}
    path = judge_dir / "verdicts.jsonl"
    lines = read_jsonl(path) if path.is_file() else []
    current = {str(line["id"]): float(line["score"]) for line in lines
               if prints.get(str(line.get("id"))) == line.get("fingerprint")}
    return {**{str(row["id"]): 0.0 for row in failed}, **{item.id: current.get(item.id, 0.0) for item in items}}


def _average_interval(to_judge: dict[str, tuple[list[JudgeItem], list[dict[str, Any]]]], judge: Judge,
                      output_dir: Path) -> list[float] | None:
    """The bootstrap interval of the five aspects' average: the generic questions resampled once for the three
    aspects judged on them, the temporal questions and the consistency pairs on their own."""
    scores = {aspect: _item_scores(*to_judge[aspect], judge, output_dir / aspect) for aspect in ASPECTS}
    strata = []
    for members in (("correctness", "detail", "context"), ("temporal",), ("consistency",)):
        ids = sorted(scores[members[0]])
        strata.append([[scores[aspect][key] for key in ids] for aspect in members])
    return bootstrap_mean_of_means(strata)


def format_benchmark(results: dict[str, Any]) -> str:
    """The five scores and their average as a small text table."""
    width = max(len(label) for label in ASPECT_LABELS.values())
    intervals = results.get("scores_ci95") or {}
    lines = [f"{ASPECT_LABELS[a]:<{width}}  {_fmt(results['scores'][a])}{_fmt_interval(intervals.get(a))}"
             for a in ASPECTS]
    lines.append(f"{'Average':<{width}}  {_fmt(results['average'])}{_fmt_interval(results.get('average_ci95'))}")
    lines += [f"{ASPECT_LABELS[a]}: {results['coverage'][a]}" for a in ASPECTS if a in results.get("coverage", {})]
    lines.append(f"judge: {results['judge']}, model {results['judge_model']}")
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _fmt_interval(interval: list[float] | None) -> str:
    return "" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]"
