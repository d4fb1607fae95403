"""File safety in one place: atomic writes that leave no temporary file behind, and one-line errors.

A write goes to a temporary file beside the target (a unique name per process; `atomic_path` hands that
name to a writer that takes one, `atomic_open` opens it and flushes and fsyncs it), then is renamed over
the target, so a reader sees the old file or the whole new one. When anything fails (a full disk, a
permission, an interrupt) the temporary file is removed and an `OutputError` names the file and the
reason in one line; a full disk is said as "no space left on device" whatever layer noticed it.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any


class OutputError(OSError):
    """An output that could not be written; the message names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str, errno_: int | None = None):
        self.path = str(path)
        self.reason = reason
        super().__init__(errno_, f"{self.path}: {reason}")

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def is_disk_full(exc: BaseException) -> bool:
    """True for ENOSPC / EDQUOT anywhere in the exception's chain of causes."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def describe_os_error(exc: BaseException, path: str | os.PathLike) -> OutputError:
    """An `OutputError` for `path` from any exception raised while writing it.

    Libraries that write through C++ streams (torch.save, DeepSpeed) lose errno ("basic_ios::clear:
    iostream error"); when the folder's file system is full, that is reported as a full disk too.
    """
    if isinstance(exc, OutputError):
        return exc
    if is_disk_full(exc) or _file_system_full(path):
        return OutputError(path, "no space left on device", errno.ENOSPC)
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return OutputError(path, reason, getattr(exc, "errno", None))


def _file_system_full(path: str | os.PathLike, margin_bytes: int = 1 << 20) -> bool:
    folder = Path(path)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < margin_bytes
    except OSError:
        return False


@contextmanager
def _replacing(path: Path, tmp: Path) -> Iterator[None]:
    """Make `path`'s folder, run the block (which writes `tmp`), rename `tmp` over `path`; on any error
    remove `tmp` and raise an OSError, or any error on a full disk (C++ writers lose errno), as an
    `OutputError` naming `path`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, OutputError) and (
                isinstance(exc, OSError) or _file_system_full(path)):
            raise describe_os_error(exc, path) from exc
        raise


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that takes a file name (an encoder, `savefig`,
    `shutil.copyfile`): renamed over `path` when the block ends without error.

    On any error the temporary file is removed and an OSError (or any error on a full disk) is raised as
    an `OutputError` naming `path`. The temporary name keeps the target's suffix, so a writer that picks
    its format from the extension still works.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    with _replacing(path, tmp):
        yield tmp


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file (`atomic_path`) that replaces `path` when the block ends without error,
    flushed and fsynced first.

    On any error the temporary file is removed and the error is raised as an `OutputError`.
    `mode` is "w" (text, UTF-8) or "wb".
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
    _sync_folder(Path(path).parent)


def _sync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace `path` with `text` at once."""
    with atomic_open(path) as handle:
        handle.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Replace `path` with `obj` as indented JSON (UTF-8, trailing newline) at once."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> Path:
    """Replace `path` with one JSON object per line at once."""
    with atomic_open(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return Path(path)


_JSON_KINDS = {dict: "object", list: "array", str: "string", bool: "true or false", int: "number", float: "number",
               type(None): "null"}


def save_figure_atomic(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Write a matplotlib figure to `path` (format from its suffix) atomically, then close the figure."""
    import matplotlib.pyplot as plt

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=Path(path).suffix.lstrip(".") or None)
        return Path(path)
    finally:
        plt.close(fig)


def read_json(path: str | os.PathLike, expected: type = dict) -> Any:
    """The JSON value in `path`, which must be an instance of `expected` (an object by default); a ValueError
    "PATH: reason" in one line when the file cannot be read, is not JSON or holds another kind of value."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))  # a byte-order mark is skipped
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise ValueError(f"{path}: cannot be read as JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(value, expected):
        raise ValueError(f"{path}: holds a JSON {_JSON_KINDS.get(type(value), type(value).__name__)}, "
                         f"not a JSON {_JSON_KINDS.get(expected, expected.__name__)}")
    return value


def make_dirs(path: str | os.PathLike) -> Path:
    """Create the folder `path` and its parents; an `OutputError` naming it when that fails."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise describe_os_error(exc, path) from exc
    return path
