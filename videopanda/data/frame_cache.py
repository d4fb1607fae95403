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

Resized frames: `FrameCache.resizer(path, num_frames, flip)` is a `videopanda.data.frames.Resize` for
`preprocess_video(..., flip=flip, resize=...)` that returns `resize_frames`' arrays (Pillow's pixels, bit for
bit) and keeps them as `<key>.resized` (.npy format, all sizes in one flat uint8 array), so that a clip's frames are
resized once for every stage and epoch rather than on every read. Its key adds to the decoded entry's the
sizes, the flip, the frame shape, `frames.RESIZE_VERSION` and the installed Pillow version: an entry written
by another resizer is never looked up. Entries are checked, stored and rewritten as the decoded ones.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import PIL

from videopanda.data.video import SAMPLING_VERSION, read_video
from videopanda.io import OutputError, atomic_path, make_dirs
from videopanda.log import get_logger

if TYPE_CHECKING:
    import torch

    from videopanda.data.frames import Resize

logger = get_logger(__name__)

SUFFIX = ".npy"
RESIZED_SUFFIX = ".resized"
"""Resized entries: the .npy format under another name, so that they are never taken for decoded frames."""


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
    `misses` and `rewrites` count this process's reads served from an entry, decoded, and decoded (or
    resized) because an entry was unreadable; `resized_hits` the resizes served from an entry.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = make_dirs(Path(folder).expanduser().absolute())
        self.hits = 0
        self.misses = 0
        self.rewrites = 0
        self.resized_hits = 0
        self._warned: set[str] = set()
        self._write_failed = False

    def __repr__(self) -> str:
        return f"FrameCache({str(self.folder)!r})"

    def entry(self, path: str | os.PathLike, num_frames: int = 8, start: float | None = None,
              end: float | None = None, resized: dict | None = None) -> Path | None:
        """The .npy file that holds (or would hold) these frames, or with `resized` (what the resize depends
        on, `resizer`) their resized copies; None when `path` is not a non-empty regular file (such a video is
        never cached: `read_video` raises for it)."""
        video = video_identity(path)
        if video is None:
            return None
        identity = {
            **video, "num_frames": int(num_frames), "start": None if start is None else float(start),
            "end": None if end is None else float(end), "sampling_version": SAMPLING_VERSION,
            "decoders": decoder_versions(),
        }
        if resized is not None:
            identity["resized"] = resized
        key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
        return self.folder / key[:2] / f"{key}{SUFFIX if resized is None else RESIZED_SUFFIX}"

    def resizer(self, path: str | os.PathLike, num_frames: int = 8, flip: bool = False, start: float | None = None,
                end: float | None = None) -> Resize:
        """A `frames.Resize` for the frames `read(path, num_frames, start, end)` gives, flipped when `flip` (as
        `preprocess_video(..., flip=flip)` hands them over): `resize_frames`' arrays, from the cache when it
        holds them, else resized and stored (module docstring)."""
        from videopanda.data.frames import RESIZE_VERSION, resize_frames  # torch: not for `--help`'s importers

        def resize(frames: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
            sizes = [(int(h), int(w)) for h, w in sizes]
            depends_on = {"sizes": sizes, "flip": bool(flip), "frames": list(frames.shape),
                          "resize_version": RESIZE_VERSION, "pillow": PIL.__version__}
            entry = self.entry(path, num_frames, start, end, resized=depends_on)
            lengths = [len(frames) * h * w * 3 for h, w in sizes]
            flat = None if entry is None else self._load_flat(entry, sum(lengths))
            if flat is None:
                outputs = resize_frames(frames, sizes)
                if entry is not None:
                    self._store(entry, np.concatenate([out.ravel() for out in outputs]))
                return outputs
            self.resized_hits += 1
            parts = np.split(flat, np.cumsum(lengths)[:-1])
            return [part.reshape(len(frames), h, w, 3) for part, (h, w) in zip(parts, sizes)]

        return resize

    def _load_flat(self, entry: Path, length: int) -> np.ndarray | None:
        """A resized entry's flat uint8 array of `length` values, or None (missing; unreadable: warned, counted)."""
        array = self._read_entry(entry)
        if array is None:
            return None
        if array.dtype != np.uint8 or array.shape != (length,):
            self._unreadable(entry, f"holds {array.dtype} {array.shape}, not uint8 ({length},)")
            return None
        return array

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

    def _read_entry(self, entry: Path) -> np.ndarray | None:
        """The array stored in `entry`; None when there is none or it cannot be read (warned and counted)."""
        try:
            return np.load(entry, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as exc:
            self._unreadable(entry, " ".join(str(exc).split()) or type(exc).__name__)
            return None

    def _load(self, entry: Path, num_frames: int) -> np.ndarray | None:
        array = self._read_entry(entry)
        if array is None:
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
            with atomic_path(entry) as tmp, open(tmp, "wb") as handle:  # a handle: np.save names no file itself
                np.save(handle, frames, allow_pickle=False)
        except OutputError as exc:
            if not self._write_failed:
                self._write_failed = True
                logger.warning("frame cache: cannot write %s; videos not yet cached are decoded on every read", exc)


__all__ = ["FrameCache", "decoder_versions", "video_identity"]
