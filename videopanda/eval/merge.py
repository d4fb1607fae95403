"""Merge the per-chunk prediction files and check that every question is answered exactly once.

A merge is complete when each question of the dataset has exactly one current answered line across
all chunk files (`*.jsonl`) of the prediction folder, and no line belongs to a question the dataset
does not have. A line is current for a question when its question, answer, video name and video key
(`qa.item_signature`: the video file's path and content identity) equal the dataset's now; a question
whose lines are all outdated (the dataset's text or video changed since) is stale, and outdated lines
beside a current one are ignored. Error rows (the video could not be read) make the merge incomplete
too: they are questions without an answer, unless a current answered line for the same question exists
(a later `--retry-errors` run that succeeded). A question answered by several current lines is a
duplicate (incomplete too); when their answers differ, which one the model gave is unknown and the question
counts as without an answer. Each line keeps the dataset's question type now, not the one its prediction
line recorded. A merged file lying in the folder (its sidecar holds a
SHA-256) is not a chunk and is left out. A line without a `video_key` field (written before prediction
lines recorded their video) is refused: re-run the inference into a new folder.

All chunk files must come from one run setting: their sidecars (`provenance.py`) must hold the same
fingerprint, made for the dataset being merged, in the current format, else the merge is refused
whatever the flags. Chunk files without any sidecar (written by other tools) merge with a warning, and
the merged file then records no fingerprint.

The merged file has one line per question of the dataset, in the dataset's order. With
`--allow-incomplete`, a question without a usable answer (missing, error row, stale line, conflicting
answers) is still written, as an error row (`"pred": null`, `"error"` saying why), so that the judge counts it
in the total and as wrong. The merged file's sidecar holds the fingerprint, the dataset, the counts and the
SHA-256 of the merged file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from videopanda.eval.datasets import QAItem
from videopanda.eval.provenance import (ProvenanceError, check_current_format, chunk_files, describe_difference,
                                        read_sidecar, sidecar_path, write_merged_sidecar)
from videopanda.eval.qa import item_signature, prediction_record, row_signature
from videopanda.eval.records import RecordsError, read_jsonl
from videopanda.io import write_text_atomic
from videopanda.log import get_logger

logger = get_logger(__name__)


@dataclass
class MergeReport:
    expected: int
    records: list[dict[str, Any]] = field(default_factory=list)   # one per question, dataset order
    missing: list[str] = field(default_factory=list)
    duplicated: dict[str, int] = field(default_factory=dict)       # id -> number of answered lines
    unexpected: list[str] = field(default_factory=list)            # ids the dataset does not have
    mismatched: list[str] = field(default_factory=list)            # only outdated lines (question, answer or video)
    failed: list[str] = field(default_factory=list)                # error rows
    conflicting: list[str] = field(default_factory=list)           # answered more than once, differently
    fingerprint: dict[str, Any] | None = None                      # shared by every chunk; None: unknown
    model_path: str | None = None                                  # as the first chunk's sidecar says
    sources: list[str] = field(default_factory=list)               # chunk file names

    @property
    def answered(self) -> int:
        return sum(1 for r in self.records if r.get("pred") is not None)

    @property
    def complete(self) -> bool:
        return not (self.missing or self.duplicated or self.unexpected or self.mismatched or self.failed)

    def summary(self) -> str:
        def show(ids: Sequence[str]) -> str:
            return ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")

        lines = [f"{self.expected} questions: {self.answered} answered, {self.expected - self.answered} without "
                 f"an answer ({len(self.missing)} missing, {len(self.failed)} error rows, {len(self.mismatched)} stale"
                 + (f", {len(self.conflicting)} with conflicting answers" if self.conflicting else "") + ")"]
        for label, ids in (("missing", self.missing), ("duplicated", list(self.duplicated)),
                           ("not in the dataset", self.unexpected),
                           ("question, answer or video differs from the dataset (stale?)", self.mismatched),
                           ("failed (error rows)", self.failed),
                           ("answered differently by several lines (counted without an answer)", self.conflicting)):
            if ids:
                lines.append(f"  {label}: {len(ids)}: {show(ids)}")
        lines.append("complete" if self.complete else "INCOMPLETE")
        return "\n".join(lines)


def _chunk_sidecar(files: Sequence[Path]) -> dict[str, Any] | None:
    """The first chunk's sidecar after checking that every chunk has the same fingerprint; None when no
    chunk has one."""
    sidecars = {path: read_sidecar(path) for path in files}
    for path, sidecar in sidecars.items():
        check_current_format(path, sidecar)
    known = {path: s for path, s in sidecars.items() if s is not None and s["fingerprint"] is not None}
    if not known:
        logger.warning("%s: no chunk has a fingerprint (%s); the merged file records none",
                       files[0].parent, sidecar_path(files[0]).name)
        return None
    unknown = [path for path in files if path not in known]
    if unknown:
        raise ProvenanceError(f"{unknown[0]}: has no fingerprint ({sidecar_path(unknown[0]).name}) while "
                              f"{next(iter(known)).name} has one; cannot tell that they come from the same run")
    (first, reference), *others = known.items()
    for path, sidecar in others:
        if sidecar["fingerprint"] != reference["fingerprint"]:
            difference = describe_difference(reference["fingerprint"], sidecar["fingerprint"], reference, sidecar)
            raise ProvenanceError(f"{path}: made with other settings than {first.name} ({difference}); "
                                  "predictions of different runs are never merged")
    return reference


def _error_row(item: QAItem, error: str) -> dict[str, Any]:
    return {**prediction_record(item, ""), "pred": None, "error": error}


def merge_predictions(pred_dir: str | os.PathLike, items: Sequence[QAItem],
                      dataset: str | None = None) -> MergeReport:
    """Read every chunk file (`*.jsonl`, merged files left out) in `pred_dir` and check it against the
    dataset's items.

    Raises ProvenanceError when the chunks were made with different fingerprints, or for another
    dataset than `dataset` (when given)."""
    pred_dir = Path(pred_dir)
    files = chunk_files(pred_dir)
    if not files:
        raise RecordsError(f"{pred_dir}: no *.jsonl prediction files")
    sidecar = _chunk_sidecar(files) or {}
    made_for = (sidecar.get("fingerprint") or {}).get("dataset")
    if dataset is not None and made_for is not None and made_for != dataset:
        raise ProvenanceError(f"{pred_dir}: holds predictions for {made_for!r} (per {sidecar_path(files[0]).name}), "
                              f"not for --dataset {dataset!r}")
    report = MergeReport(expected=len(items), sources=[path.name for path in files],
                         fingerprint=sidecar.get("fingerprint"), model_path=sidecar.get("model_path"))
    lines_by_id: dict[str, list[dict[str, Any]]] = {}
    for path in files:
        for record in read_jsonl(path):
            if "id" not in record or "pred" not in record:
                raise RecordsError(f"{path}: a line without 'id' or 'pred': {str(record)[:200]}")
            if "video_key" not in record:
                raise RecordsError(f"{path}: a line without 'video_key' (written before prediction lines recorded "
                                   f"their video); re-run `videopanda eval qa` into a new --output-dir")
            lines_by_id.setdefault(str(record["id"]), []).append(record)

    known = {item.key for item in items}
    report.unexpected = [key for key in lines_by_id if key not in known]
    for item in items:
        lines = lines_by_id.get(item.key)
        if not lines:
            report.missing.append(item.key)
            report.records.append(_error_row(item, f"missing: no line for this question in {pred_dir}"))
            continue
        signature = item_signature(item)
        current = [r for r in lines if row_signature(r) == signature]
        if not current:
            report.mismatched.append(item.key)
            report.records.append(_error_row(item, "stale: the prediction was made for another question, answer or "
                                                   "video than the dataset's"))
            continue
        answered = [r for r in current if r.get("pred") is not None]
        if len(answered) > 1:
            report.duplicated[item.key] = len(answered)
            if len({json.dumps(r["pred"]) for r in answered}) > 1:
                report.conflicting.append(item.key)
                report.records.append(_error_row(item, f"conflicting: {len(answered)} lines answer it, not all "
                                                       "alike; which is the model's answer is unknown"))
                continue
        record = {key: value for key, value in (answered[0] if answered else current[0]).items() if key != "type"}
        if item.type is not None:  # the dataset's label, also when it was relabelled after the inference
            record["type"] = item.type
        if record.get("pred") is None:
            report.failed.append(item.key)
        report.records.append(record)
    return report


def write_merged(report: MergeReport, output: str | os.PathLike, dataset: str) -> None:
    """Write the merged file and its sidecar (fingerprint, dataset, counts, SHA-256 of the file). The sidecar
    goes first: stopped in between, the folder holds a sidecar whose SHA-256 the file does not have (the judge
    refuses it; a new merge replaces both), never a merged file without its sidecar."""
    text = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in report.records)
    write_merged_sidecar(output, text, report.fingerprint, {
        "dataset": dataset, "model_path": report.model_path, "complete": report.complete, "num_questions": report.expected,
        "num_answered": report.answered, "missing": report.missing, "failed": report.failed,
        "stale": report.mismatched, "duplicated": sorted(report.duplicated), "conflicting": report.conflicting,
        "unexpected": report.unexpected, "sources": report.sources})
    write_text_atomic(output, text)
