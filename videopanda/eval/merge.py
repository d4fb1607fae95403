"""Merge the per-chunk prediction files and check that every question is answered exactly once.

A merge is complete when each question of the dataset has exactly one line across all `*.jsonl`
files of the prediction folder, and no line belongs to a question the dataset does not have or
carries a question/answer text that differs from the dataset's (a stale file). Error rows (the
video could not be read) count as present but are listed as failed: the judge reports them as
failed inference and leaves them out of the metrics. The merged file follows the dataset's order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from videopanda.eval.datasets import QAItem
from videopanda.eval.records import RecordsError, read_jsonl
from videopanda.io import write_jsonl_atomic
from videopanda.log import get_logger

logger = get_logger(__name__)


@dataclass
class MergeReport:
    expected: int
    records: list[dict[str, Any]] = field(default_factory=list)   # one per question, dataset order
    missing: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)       # id -> number of lines
    unexpected: list[str] = field(default_factory=list)            # ids the dataset does not have
    mismatched: list[str] = field(default_factory=list)            # question/answer text differs from the dataset
    failed: list[str] = field(default_factory=list)                # error rows

    @property
    def complete(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected or self.mismatched)

    def summary(self) -> str:
        def show(ids: Sequence[str]) -> str:
            return ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")

        lines = [f"{len(self.records)} of {self.expected} questions present, "
                 f"{len(self.records) - len(self.failed)} answered, {len(self.failed)} failed (error rows)"]
        for label, ids in (("missing", self.missing), ("duplicated", list(self.duplicated)),
                           ("not in the dataset", self.unexpected),
                           ("question/answer differs from the dataset (stale?)", self.mismatched),
                           ("failed (error rows)", self.failed)):
            if ids:
                lines.append(f"  {label}: {len(ids)}: {show(ids)}")
        lines.append("complete" if self.complete else "INCOMPLETE")
        return "\n".join(lines)


def merge_predictions(pred_dir: str | os.PathLike, items: Sequence[QAItem]) -> MergeReport:
    """Read every `*.jsonl` in `pred_dir` and check it against the dataset's items."""
    pred_dir = Path(pred_dir)
    files = sorted(pred_dir.glob("*.jsonl"))
    if not files:
        raise RecordsError(f"{pred_dir}: no *.jsonl prediction files")
    lines_by_id: dict[str, list[dict[str, Any]]] = {}
    for path in files:
        for record in read_jsonl(path):
            if "id" not in record or "pred" not in record:
                raise RecordsError(f"{path}: a line without 'id' or 'pred': {str(record)[:200]}")
            lines_by_id.setdefault(str(record["id"]), []).append(record)

    report = MergeReport(expected=len(items))
    known = {item.key for item in items}
    report.unexpected = [key for key in lines_by_id if key not in known]
    for item in items:
        lines = lines_by_id.get(item.key)
        if not lines:
            report.missing.append(item.key)
            continue
        if len(lines) > 1:
            report.duplicated[item.key] = len(lines)
        answered = [r for r in lines if r.get("pred") is not None]
        record = answered[0] if answered else lines[0]
        if record.get("question") != item.question or str(record.get("answer")) != item.answer:
            report.mismatched.append(item.key)
        if record.get("pred") is None:
            report.failed.append(item.key)
        report.records.append(record)
    return report


def write_merged(report: MergeReport, output: str | os.PathLike) -> None:
    write_jsonl_atomic(output, report.records)
