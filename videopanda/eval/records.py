"""Append-only JSON-lines files that survive being killed at any instant.

Every evaluation output (predictions, verdicts) is one JSON object per line, appended, flushed and
fsynced as soon as it exists. A process killed mid-write leaves at most one incomplete final line: a
last line that does not parse (a cut-off JSON object never does) is that interrupted write, and
`JsonlAppender` cuts it off when it reopens the file, so the next append starts on a clean line. A
last line that parses is a record whether or not a newline follows it (files written by other tools
often end without one); the appender gives it its newline before appending. A damaged line anywhere
else is a loud error naming the file and line number, and so is a damaged last line in a file that was
written whole (a merge: `read_jsonl(path, whole=True)`), where it cannot be an interrupted append. A UTF-8
byte-order mark at the start of the file (some editors and tools write one) is skipped. An append that
fails (a full disk) cuts the file back to its last complete line and raises `OutputError` naming the
file, so the file stays readable and a later run resumes from it.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

from videopanda.io import OutputError, describe_os_error
from videopanda.log import get_logger

logger = get_logger(__name__)


class RecordsError(Exception):
    """A JSON-lines file that cannot be trusted (message names the file and the line)."""


def _scan(path: Path, whole: bool = False) -> tuple[list[dict[str, Any]], int]:
    """-> (records, byte offset just after the last valid line; its newline, when it has none, included).
    `whole`: an unparsable last line is an error too, not an interrupted append."""
    data = path.read_bytes()
    records: list[dict[str, Any]] = []
    offset = 0
    lines = data.split(b"\n")
    for number, raw in enumerate(lines, start=1):
        is_last = number == len(lines)
        if is_last and raw == b"":
            break
        try:
            text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            record = json.loads(text) if text.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            if is_last and not whole:  # no newline after it: an interrupted write
                break
            where = f"line {number} (the last)" if is_last else f"line {number}"
            raise RecordsError(f"{path}: {where} is not valid JSON ({error})") from None
        if record is not None:
            if not isinstance(record, dict):
                raise RecordsError(f"{path}: line {number} is not a JSON object")
            records.append(record)
        offset += len(raw) + 1
    return records, offset


def read_jsonl(path: str | os.PathLike, whole: bool = False) -> list[dict[str, Any]]:
    """All records of a JSON-lines file. An unparsable last line is an interrupted append, left out with a
    warning; with `whole` (a file written at once, such as a merge, possibly by another tool) it is a
    RecordsError naming the file and the line, as a damaged line anywhere else always is."""
    path = Path(path)
    if not path.exists():
        raise RecordsError(f"{path}: no such file")
    records, good = _scan(path, whole)
    if good < path.stat().st_size:
        logger.warning("%s: leaving out its last line, which does not parse (a write interrupted or still going on)", path)
    return records


class JsonlAppender:
    """Thread-safe appender; `records` holds what the file already contained when opened.

    Raises `OutputError` (one line naming the file) when the file cannot be opened or a line cannot be
    written; a line that was only partly written is cut off again before the error is raised.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        self._fd = -1
        self._lock = threading.Lock()
        good = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():
                self.records, good = _scan(self.path)
                size = self.path.stat().st_size
                if good < size:
                    logger.warning("%s: dropping an incomplete last line (%d bytes) left by an interrupted run",
                                   self.path, size - good)
                    os.truncate(self.path, good)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
            if self._size < good:  # a valid last line without its newline
                self._write(b"\n")
        except OutputError:
            self.close()
            raise
        except OSError as error:
            self.close()
            raise describe_os_error(error, self.path) from error

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self._write(data)

    def _write(self, data: bytes) -> None:
        """Append `data` and fsync; on failure cut the file back to its size before, then raise OutputError."""
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
        except OSError as error:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass  # the reader drops an incomplete last line anyway
            raise describe_os_error(error, self.path) from error
        self._size += len(data)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
