"""Video decoding and frame sampling (the original's rule, below): one reader for training, evaluation and inference.

Decoding tries decord first and falls back to PyAV for anything decord refuses (decord cannot open
GIFs; it also fails on some damaged or unusual files that FFmpeg through PyAV still reads). A file
neither can read raises `VideoReadError`, whose message names the file and the reason.

Sampling (`sample_indices`), on the frames of the clip, or of the [start, end) window when given
(n frames, counted from the window's first frame), as the original Video-Panda data path does:

1. A 1-frame-per-second grid: every `stride`-th frame from the first, stride = max(1, round(avg_fps))
   (Python's `round`, so 2.5 fps rounds to 2; clips at or under 0.5 fps get stride 1, every frame).
2. More grid points than `num_frames`: `num_frames` of them picked with integer linspace over the grid
   positions (`grid[i] for i in np.linspace(0, len(grid) - 1, num_frames, dtype=int)`), first and
   last included. Exactly `num_frames` grid points: the grid itself.
3. Fewer grid points than `num_frames`: k = min(num_frames, n) frames at an even integer stride
   s = max(1, (n - 1) // (k - 1)) from the first: 0, s, 2s, ..., (k - 1)s. This is a stride, not a
   linspace: it stops short of the last frame when (n - 1) is not a multiple of (k - 1) (45 frames at
   30 fps give 0, 6, ..., 42, not ..., 44).
4. A window of fewer frames than `num_frames` (a 1-frame or 3-frame clip) therefore returns all of
   them; `frames.preprocess_video` pads the video with all-zero frames up to `num_frames`.

`decode_video` takes any such rule (a function of the clip's frame count and frame rate) and returns the
frames with their indices, the clip's frame count and rate: the video processor samples by a frame rate
through it (`video_processor.VideoPandaVideoProcessor`, `evenly_spread`).

A missing, zero or unparsable frame rate counts as "unknown": stride 1, and a start/end window cannot
be placed (that is a `VideoReadError`). Frame i is taken to start at i / avg_fps seconds, for both
backends, so start/end select frames floor(start * fps) .. ceil(end * fps) - 1.

decord reports a file it cannot open on file descriptor 2 from C++ (a timestamped "ERROR opening: PATH,
REASON" line) before raising; that line is captured while the reader opens and becomes the reason in
our own error, so a bad file costs one line on stderr, not two. `probe_video` reads what the container
header says (frame size, duration, codec) without decoding, and `decoded_seconds` measures a clip whose
container gives no duration by decoding it, stopping at a bound.
"""
from __future__ import annotations

import math
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from videopanda.log import get_logger

if TYPE_CHECKING:
    import torch

logger = get_logger(__name__)


class VideoReadError(Exception):
    """A video that cannot be used. `kind` is "missing", "empty" or "unreadable" (for counting)."""

    def __init__(self, path: str | Path, reason: str, kind: str = "unreadable"):
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{self.path}: {reason}")


@dataclass
class _Opened:
    """What a backend reports before decoding: frame count and average frame rate (0 = unknown)."""

    num_frames: int
    fps: float


@dataclass(frozen=True)
class VideoHeader:
    """What a video file's header says, before any frame is decoded (`probe_video`).

    seconds is None when the container gives no duration (a raw .h264 stream); fps is 0.0 when no
    frame rate is known; codec is FFmpeg's decoder name ("h264", "mpeg4", ...), container its
    demuxer name ("mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "h264", ...), pix_fmt e.g. "yuv420p"."""

    width: int
    height: int
    seconds: float | None
    fps: float
    codec: str
    container: str
    pix_fmt: str | None

    @property
    def pixels(self) -> int:
        return self.width * self.height


UNKNOWN_RATE_FPS = 25.0
"""Frame rate assumed by `decoded_seconds` when the stream gives none (FFmpeg's own guess for raw streams)."""


SAMPLING_VERSION = 1
"""Version of what `read_video` returns for a given file and arguments. Bump it with any change to
`sample_indices`, the backends, their order or the frame conversion that changes which frames or which
pixels come out: `videopanda.data.frame_cache.FrameCache` keys include it, so its entries from before
the change are then no longer served."""


def sample_indices(total: int, fps: float, num_frames: int, start: float | None = None,
                   end: float | None = None) -> list[int]:
    """Frame indices to decode from a clip of `total` frames at `fps` (see the module docstring).

    Returns sorted, distinct indices, between 1 and `num_frames` of them. Raises ValueError when the
    window holds no frame or a window is asked for with an unknown frame rate.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if total < 1:
        raise ValueError("the clip has no frames")
    known_fps = math.isfinite(fps) and fps > 0
    first, stop = 0, total
    if start is not None or end is not None:
        if not known_fps:
            raise ValueError("cannot cut a start/end window: the frame rate is unknown")
        if start is not None:
            first = max(0, math.floor(start * fps))
        if end is not None:
            stop = min(total, math.ceil(end * fps))
        if stop <= first:
            raise ValueError(f"no frames between start={start}s and end={end}s (clip: {total} frames at {fps:g} fps)")
    stride = max(1, round(fps)) if known_fps else 1
    grid = list(range(first, stop, stride))
    if len(grid) >= num_frames:
        picks = np.linspace(0, len(grid) - 1, num_frames, dtype=int)
        return [grid[i] for i in picks]
    count = min(num_frames, stop - first)
    step = max(1, (stop - first - 1) // (count - 1)) if count > 1 else 1
    return [first + i * step for i in range(count)]


def evenly_spread(total: int, count: int) -> list[int]:
    """`count` frame indices spread evenly over a clip of `total` frames from its first frame:
    floor(i * total / count) for i < count, or every frame when the clip has no more than `count`."""
    if count < 1:
        raise ValueError(f"the frame count must be positive, got {count}")
    if total <= count:
        return list(range(total))
    return [i * total // count for i in range(count)]


def read_video(path: str | Path, num_frames: int = 8, start: float | None = None,
               end: float | None = None) -> torch.Tensor:
    """Decode and sample a video -> uint8 (n, H, W, 3) RGB, 1 <= n <= num_frames, in time order.

    start / end are optional bounds in seconds. Raises `VideoReadError` (naming the file) for a
    missing, empty or undecodable file, or a window with no frames in it.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    return decode_video(path, lambda total, fps: sample_indices(total, fps, num_frames, start, end)).frames


@dataclass(frozen=True)
class DecodedVideo:
    """Frames decoded from a file and where they come from.

    frames: uint8 (n, H, W, 3) RGB in time order; indices: the n frame numbers decoded (0 = the first);
    total: the frames the clip has; fps: its average frame rate (0.0 when unknown); backend: "decord" or
    "pyav"."""

    frames: torch.Tensor
    indices: list[int]
    total: int
    fps: float
    backend: str


def check_video_file(path: str | Path) -> Path:
    """The path, when it names a non-empty regular file; else `VideoReadError` ("missing" or "empty")."""
    path = Path(path)
    if not path.exists():
        raise VideoReadError(path, "file not found", kind="missing")
    if not path.is_file():
        raise VideoReadError(path, "not a regular file", kind="missing")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)", kind="empty")
    return path


def decode_video(path: str | Path, choose_indices: Callable[[int, float], list[int]]) -> DecodedVideo:
    """Decode the frames `choose_indices(total_frames, avg_fps)` names (sorted, distinct; a ValueError it
    raises means no frame can be sampled and becomes a `VideoReadError` naming the file). decord first,
    PyAV for what decord refuses (module docstring). Raises `VideoReadError` for a missing, empty or
    undecodable file."""
    path = check_video_file(path)
    failures = []
    for name, backend in (("decord", _read_decord), ("pyav", _read_pyav)):
        try:
            frames, indices, opened = backend(path, choose_indices)
        except _WindowError as exc:
            raise VideoReadError(path, str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "try the next backend"
            failures.append(f"{'PyAV' if name == 'pyav' else name}: {decoder_reason(exc, path)}")
            continue
        if failures:
            logger.debug("%s: read with PyAV after %s", path, failures[0])
        return DecodedVideo(_to_tensor(path, frames), indices, opened.num_frames, opened.fps, name)
    raise VideoReadError(path, "cannot decode (" + "; ".join(failures) + ")")


def probe_video(path: str | Path) -> VideoHeader:
    """The first video stream's header (PyAV; nothing is decoded past what FFmpeg's probe reads).
    Raises `VideoReadError` naming the file when it cannot be opened or holds no video stream."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream")
            stream = container.streams.video[0]
            seconds = None
            if container.duration:
                seconds = container.duration / 1_000_000
            elif stream.duration and stream.time_base:
                seconds = float(stream.duration * stream.time_base)
            context = stream.codec_context
            return VideoHeader(width=int(context.width or 0), height=int(context.height or 0), seconds=seconds,
                               fps=_stream_rate(stream, seconds is not None), codec=context.name, container=container.format.name,
                               pix_fmt=context.pix_fmt)
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoReadError(path, decoder_reason(exc, path)) from None


def decoded_seconds(path: str | Path, limit: float | None = None) -> float:
    """Length of a clip in seconds found by decoding it (for containers that give no duration): the end of
    the last frame decoded, frame i lasting from its timestamp (or i / fps when frames carry none) for
    1 / fps. With `limit`, decoding stops at the first frame ending after `limit` seconds, so the result is
    then just over `limit` and the rest of the file is never decoded. Raises `VideoReadError` naming the
    file when it cannot be decoded."""
    import av

    path = Path(path)
    end = 0.0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoReadError(path, "no video stream")
            stream = container.streams.video[0]
            timed = bool(container.duration or stream.duration)
            frame_seconds = 1.0 / (_stream_rate(stream, timed) or UNKNOWN_RATE_FPS)
            for index, frame in enumerate(container.decode(stream)):
                start = frame.time if frame.time is not None else index * frame_seconds
                end = max(end, start + frame_seconds)
                if limit is not None and end > limit:
                    break
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise VideoReadError(path, decoder_reason(exc, path)) from None
    return end


def _stream_rate(stream, timed: bool) -> float:
    """A PyAV stream's frame rate, 0.0 when unknown: the container's average rate, except for a container
    without timing (`timed` False: a raw stream, where FFmpeg fills in 25 fps), where the rate written in
    the bitstream itself (a raw H.264 stream's timing information) comes first."""
    rates = (stream.average_rate, stream.codec_context.framerate)
    rate = next((r for r in (rates if timed else rates[::-1]) if r), None)
    return float(rate) if rate else 0.0


_stderr_lock = threading.Lock()


@contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Point file descriptor 2 (where C++ libraries write) at a temporary file while the block runs;
    the list holds the lines written there once the block is done. Serialised across threads, as fd 2
    is the process's."""
    lines: list[str] = []
    with _stderr_lock, tempfile.TemporaryFile() as sink:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lines
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += sink.read().decode(errors="replace").splitlines()


class _WindowError(Exception):
    """The file is fine but the requested window or frame rate does not allow sampling."""


def _indices(opened: _Opened, choose_indices) -> list[int]:
    if opened.num_frames < 1:
        raise RuntimeError("no frames")
    try:
        return choose_indices(opened.num_frames, opened.fps)
    except ValueError as exc:
        raise _WindowError(str(exc)) from None


def _read_decord(path: Path, choose_indices) -> tuple[list[np.ndarray], list[int], _Opened]:
    import decord

    decord.logging.set_level(decord.logging.QUIET)
    noise: list[str] = []
    try:
        with _captured_stderr() as noise:
            reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
    except Exception as exc:  # noqa: BLE001 - decord raises its own DECORDError (or a RuntimeError)
        said = [line for line in noise if "ERROR opening" in line]
        raise RuntimeError(said[-1].split(f"{path},", 1)[-1].strip() if said else decoder_reason(exc, path)) from None
    finally:
        if noise:  # with decord's line, anything another thread wrote to fd 2 meanwhile
            logger.debug("%s: stderr while decord opened it: %s", path, " | ".join(noise))
    opened = _Opened(len(reader), float(reader.get_avg_fps() or 0.0))
    indices = _indices(opened, choose_indices)
    batch = reader.get_batch(indices).asnumpy()
    return list(batch), indices, opened


def _read_pyav(path: Path, choose_indices) -> tuple[list[np.ndarray], list[int], _Opened]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise RuntimeError("no video stream")
        stream = container.streams.video[0]
        declared = stream.frames or sum(1 for p in container.demux(stream) if p.size)
        fps = _pyav_fps(stream, declared)
    opened = _Opened(declared, fps)
    indices = _indices(opened, choose_indices)
    frames, decoded = _decode_pyav(path, set(indices))
    if len(frames) < len(indices):
        # The container promised more frames than the decoder delivers: sample again on what exists.
        if decoded < 1:
            raise RuntimeError("no decodable frames")
        opened = _Opened(decoded, fps)
        indices = _indices(opened, choose_indices)
        frames, _ = _decode_pyav(path, set(indices))
    return [frames[i] for i in sorted(frames)], sorted(frames), opened


def _decode_pyav(path: Path, wanted: set[int]) -> tuple[dict[int, np.ndarray], int]:
    """Decode the whole stream once, keeping the frames at `wanted` indices; also returns the count."""
    import av

    # PyAV 17+ converts to RGB with a pool of swscale slice threads that it keeps between calls; a process forked
    # after a conversion (a DataLoader worker) inherits the pool without its threads, and PyAV 18.1.1 hangs in
    # the child's first conversion. One thread keeps every process's conversion its own (the same pixels).
    one_thread = {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}
    kept: dict[int, np.ndarray] = {}
    count = 0
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            if count in wanted:
                kept[count] = frame.to_ndarray(format="rgb24", **one_thread)
            count += 1
            if len(kept) == len(wanted) and count > max(wanted):
                break
    return kept, count


def _pyav_fps(stream, num_frames: int) -> float:
    """Average frame rate of a PyAV stream; from the duration when the container gives no rate."""
    rate = stream.average_rate
    if rate:
        return float(rate)
    if stream.duration and stream.time_base and num_frames:
        seconds = float(stream.duration * stream.time_base)
        if seconds > 0:
            return num_frames / seconds
    return 0.0


def _to_tensor(path: Path, frames: list[np.ndarray]) -> torch.Tensor:
    import torch

    if not frames:
        raise VideoReadError(path, "no decodable frames")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoReadError(path, f"frame size changes within the clip: {sorted(shapes)}")
    (shape,) = shapes
    if len(shape) != 3 or shape[2] != 3 or shape[0] < 1 or shape[1] < 1:
        raise VideoReadError(path, f"unexpected decoded frame shape {shape}")
    return torch.from_numpy(np.ascontiguousarray(np.stack(frames))).to(torch.uint8)


_NOISE = re.compile(r"^\[[\d:]+\]\s*\S+:\d+:\s*|\[Errno -?\d+\]\s*")


def decoder_reason(exc: Exception, path: Path) -> str:
    """First line of a decoder error, without decord's timestamp/source prefix, an errno tag, or the file's
    path (the error it goes into names the file already)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = _NOISE.sub("", text)
    for quoted in (f": '{path}'", f": {path}", f"'{path}'", str(path)):
        text = text.replace(quoted, "")
    return text.strip(" ,:")[:300] or type(exc).__name__
