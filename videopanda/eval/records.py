"""Append-only JSON-lines files that survive being killed at any instant.

Every evaluation output (predictions, verdicts) is one JSON object per line, appended, flushed and
fsynced as soon as it exists. A process killed mid-write leaves at most one incomplete final line;
`JsonlAppender` cuts that line off when it reopens the file, so the next append starts on a clean
line. A damaged line anywhere else is a loud error naming the file and line number.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from videopanda.log import get_logger

logger = get_logger(__name__)


class RecordsError(Exception):
    """A JSON-lines file that cannot be trusted (message names the file and the line)."""


def _scan(path: Path) -> tuple[list[dict[str, Any]], int]:
    """-> (records, byte offset just after the last complete, valid line)."""
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    offset = 0
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        is_last = number == len(lines)
        if is_last and raw == b"":
            break
        try:
            record = json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            if is_last:  # no newline after it: an interrupted write
                break
            raise RecordsError(f"{path}: line {number} is not valid JSON ({error})") from None
        if is_last:  # valid JSON but the newline never made it: still rewrite it cleanly
            break
        if record is not None:
            if not isinstance(record, dict):
                raise RecordsError(f"{path}: line {number} is not a JSON object")
            records.append(record)
        offset += len(raw) + 1
    return records, offset


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete records of a JSON-lines file (an interrupted last line is ignored)."""
    path = Path(path)
    if not path.exists():
        raise RecordsError(f"{path}: no such file")
    return _scan(path)[0]


class JsonlAppender:
    """Thread-safe appender; `records` holds what the file already contained when opened."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records: list[dict[str, Any]] = []
        if self.path.exists():
            self.records, good = _scan(self.path)
            size = self.path.stat().st_size
            if good < size:
                logger.warning("%s: dropping an incomplete last line (%d bytes) left by an interrupted run",
                               self.path, size - good)
                with open(self.path, "r+b") as handle:
                    handle.truncate(good)
        self._lock = threading.Lock()
        self._handle = open(self.path, "a", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self._handle.write(line)
            self._handle.flush()
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        with self._lock:
            self._handle.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
