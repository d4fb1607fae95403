"""Decoded frames on disk: decode each clip once, then reuse its frames across epochs, stages and runs.

`FrameCache(folder).read(path, num_frames, start, end)` returns exactly what
`videopanda.data.video.read_video` returns for the same arguments: uint8 (n, H, W, 3), 1 <= n <=
num_frames, the same values bit for bit. The first read of a (video, sampling) decodes the clip and
stores the frames uncompressed as `folder/<key[:2]>/<key>.npy`; every later read, in any process,
loads that file instead.

The key is a SHA-256 over the video's resolved path, size, mtime_ns and inode (a file rewritten or
replaced in place, e.g. by regenerating a data folder, gets a new key), the sampling arguments
(num_frames, start, end), `video.SAMPLING_VERSION` and the installed decord and PyAV versions (what
decides which frames and pixels decoding gives). Entries are never updated in place: an entry whose
video changed is simply no longer looked up; deleting the folder reclaims its space at any time.

Writes go through `videopanda.io.atomic_path` (a temporary name per process, renamed over the entry),
so training ranks and DataLoader workers that fill the same entry at once each replace it with a
whole file, and a reader never sees a partial one. An entry that cannot be read back (truncated,
not an .npy, wrong dtype or shape) is logged once as a warning naming it, then the clip is decoded
and the entry rewritten. A video that cannot be decoded raises `VideoReadError` on every read and
leaves no entry, so the dataset's bad-sample handling sees it as it would without a cache. A folder
that cannot be written (a full disk, permissions) is one warning; reads then decode every time.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from videopanda.data.video import SAMPLING_VERSION, read_video
from videopanda.io import OutputError, atomic_path, make_dirs
from videopanda.log import get_logger

if TYPE_CHECKING:
    import torch

logger = get_logger(__name__)

SUFFIX = ".npy"


@functools.lru_cache(maxsize=1)
def decoder_versions() -> str:
    """The installed versions of the decoding backends, e.g. "decord 0.6.0, av 18.1.0"."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("decord", "av"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} absent")
    return ", ".join(found)


def video_identity(path: str | os.PathLike) -> dict[str, str | int] | None:
    """Which file, in which state, `path` is: {"path" (resolved), "size", "mtime_ns", "inode"}; a file rewritten
    or replaced in place gets another identity. None when `path` is not a non-empty regular file."""
    resolved = Path(path).resolve()
    try:
        info = resolved.stat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
        return None
    return {"path": str(resolved), "size": info.st_size, "mtime_ns": info.st_mtime_ns, "inode": info.st_ino}


class FrameCache:
    """Frames of `read_video`, decoded once and kept as .npy files under `folder` (see the module docstring).

    Creating one creates `folder` (an `OutputError` naming it when that is impossible). `hits`,
    `misses` and `rewrites` count this process's reads served from an entry, decoded, and decoded
    because an entry was unreadable.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = make_dirs(Path(folder).expanduser().absolute())
        self.hits = 0
        self.misses = 0
        self.rewrites = 0
        self._warned: set[str] = set()
        self._write_failed = False

    def __repr__(self) -> str:
        return f"FrameCache({str(self.folder)!r})"

    def entry(self, path: str | os.PathLike, num_frames: int = 8, start: float | None = None,
              end: float | None = None) -> Path | None:
        """The .npy file that holds (or would hold) these frames; None when `path` is not a non-empty regular
        file (such a video is never cached: `read_video` raises for it)."""
        video = video_identity(path)
        if video is None:
            return None
        identity = {
            **video, "num_frames": int(num_frames), "start": None if start is None else float(start),
            "end": None if end is None else float(end), "sampling_version": SAMPLING_VERSION,
            "decoders": decoder_versions(),
        }
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return self.folder / key[:2] / f"{key}{SUFFIX}"

    def read(self, path: str | os.PathLike, num_frames: int = 8, start: float | None = None,
             end: float | None = None) -> torch.Tensor:
        """`read_video(path, num_frames, start, end)`: uint8 (n, H, W, 3), from the cache when it holds the
        frames, else decoded and stored. Raises what `read_video` raises (`VideoReadError` naming the file)."""
        import torch

        if num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        entry = self.entry(path, num_frames, start, end)
        if entry is None:
            return read_video(path, num_frames, start, end)
        cached = self._load(entry, num_frames)
        if cached is not None:
            self.hits += 1
            return torch.from_numpy(cached)
        frames = read_video(path, num_frames, start, end)
        self.misses += 1
        if self.entry(path, num_frames, start, end) == entry:  # the video did not change while it was decoded
            self._store(entry, frames.numpy())
        return frames

    def _load(self, entry: Path, num_frames: int) -> np.ndarray | None:
        try:
            array = np.load(entry, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as exc:
            self._unreadable(entry, " ".join(str(exc).split()) or type(exc).__name__)
            return None
        if (array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] != 3
                or not 1 <= array.shape[0] <= num_frames or min(array.shape[1:3]) < 1):
            self._unreadable(entry, f"holds {array.dtype} {array.shape}, not uint8 (1..{num_frames}, H, W, 3)")
            return None
        return np.ascontiguousarray(array)

    def _unreadable(self, entry: Path, reason: str) -> None:
        self.rewrites += 1
        if str(entry) not in self._warned:
            self._warned.add(str(entry))
            logger.warning("frame cache: %s is unreadable (%s); decoding the video again and rewriting it", entry,
                           reason)

    def _store(self, entry: Path, frames: np.ndarray) -> None:
        try:
            with atomic_path(entry) as tmp:
                np.save(tmp, frames, allow_pickle=False)
        except OutputError as exc:
            if not self._write_failed:
                self._write_failed = True
                logger.warning("frame cache: cannot write %s; videos not yet cached are decoded on every read", exc)


__all__ = ["FrameCache", "decoder_versions", "video_identity"]
