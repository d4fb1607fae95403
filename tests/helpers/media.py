"""Real media files for tests, encoded with PyAV: good clips, odd clips and broken files.

Typical use::

    from helpers.media import make_frames, write_video, frame_index
    frames = make_frames(30, height=48, width=64)           # uint8 (30, 48, 64, 3)
    write_video(tmp_path / "a.mp4", frames, fps=10)          # H.264 mp4
    write_video(tmp_path / "a.gif", frames[:3], fps=0.25)    # GIF, 4 s a frame
    write_video(tmp_path / "a.h264", frames, fps=10)         # raw H.264: no container, no duration
    write_truncated_mp4(tmp_path / "cut.mp4")                # a clip cut short on disk
    write_corpus(tmp_path)                                   # every file named in CORPUS

`make_frames` writes each frame's index as a row of black/white blocks across the top
(`INDEX_BITS` bits, most significant first), which survives lossy encoding, so a test can recover
which source frames a reader picked with `frame_index(decoded_frame)`. The rest of the frame is a
colour gradient, so crops and resizes have something to look at.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

INDEX_BITS = 8
"""Bits of the frame index drawn in the top band (indices 0..255)."""


def make_frames(num_frames: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """uint8 (num_frames, height, width, 3): a gradient image with frame i's index in the top band.

    The band is `INDEX_BITS` blocks of width // INDEX_BITS pixels and height max(8, height // 6).
    height and width must be even (yuv420p) and width >= 8 * INDEX_BITS for the index to be readable.
    """
    if height % 2 or width % 2:
        raise ValueError(f"height and width must be even for yuv420p, got {height}x{width}")
    if num_frames > 2**INDEX_BITS:
        raise ValueError(f"at most {2 ** INDEX_BITS} frames can carry an index")
    rng = np.random.default_rng(seed)
    base_colour = rng.integers(40, 200, size=3)
    ys = np.linspace(0, 1, height)[:, None, None]
    xs = np.linspace(0, 1, width)[None, :, None]
    gradient = (base_colour * (0.5 + 0.5 * xs) * (0.6 + 0.4 * ys)).clip(0, 255)
    frames = np.broadcast_to(gradient, (num_frames, height, width, 3)).astype(np.uint8).copy()
    band_h, block_w = max(8, height // 6), width // INDEX_BITS
    for i in range(num_frames):
        for bit in range(INDEX_BITS):
            on = (i >> (INDEX_BITS - 1 - bit)) & 1
            frames[i, :band_h, bit * block_w : (bit + 1) * block_w] = 255 if on else 0
    return frames


def frame_index(frame: np.ndarray) -> int:
    """Read back the index `make_frames` drew into a (decoded) uint8 frame (H, W, 3)."""
    height, width = frame.shape[:2]
    band_h, block_w = max(8, height // 6), width // INDEX_BITS
    value = 0
    for bit in range(INDEX_BITS):
        block = frame[2 : band_h - 2, bit * block_w + 2 : (bit + 1) * block_w - 2]
        value = (value << 1) | int(block.mean() > 127)
    return value


def write_video(path: str | Path, frames: np.ndarray, fps: float = 10.0, codec: str | None = None,
                faststart: bool = False) -> Path:
    """Encode uint8 frames (n, H, W, 3) RGB to `path` and return it.

    The container follows the suffix (.mp4, .mkv, .avi, .gif, ...; .h264 writes a bare H.264 stream,
    whose frame rate is only in the stream's own timing information and whose duration nothing
    records). codec defaults to "gif" for .gif files and "libx264" otherwise ("mpeg4", the synthetic
    clips' MPEG-4 Part 2, also works). fps may be fractional and below 1
    (e.g. 0.25 for a slow GIF). faststart moves the mp4 index (moov) to the front of the file.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (n, H, W, 3), got {frames.dtype} {frames.shape}")
    is_gif = path.suffix.lower() == ".gif"
    codec = codec or ("gif" if is_gif else "libx264")
    rate = Fraction(fps).limit_denominator(1000)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), mode="w", options=options) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "10", "preset": "ultrafast"}
        elif codec == "mpeg4":
            stream.options = {"qscale": "2"}
        for array in frames:
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_truncated_mp4(path: str | Path, num_frames: int = 20, keep: float = 0.5, faststart: bool = False) -> Path:
    """An mp4 cut to the first `keep` fraction of its bytes, as a failed download leaves it.

    Without faststart the index sits at the end and is lost (nothing is readable); with faststart the
    index survives and promises frames whose data is gone.
    """
    path = Path(path)
    write_video(path, make_frames(num_frames), fps=10, faststart=faststart)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def write_random_bytes(path: str | Path, size: int = 4096, seed: int = 0) -> Path:
    """A file of `size` random bytes (any name, e.g. broken.mp4)."""
    path = Path(path)
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8).tobytes())
    return path


def write_text_file(path: str | Path, text: str = "this is not a video\n" * 20) -> Path:
    """A plain text file, typically named like a video (notes.mp4)."""
    path = Path(path)
    path.write_text(text)
    return path


def write_empty_file(path: str | Path) -> Path:
    """A zero-byte file."""
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_one_frame_clip(path: str | Path, height: int = 48, width: int = 64, fps: float = 25.0) -> Path:
    """A valid clip holding a single frame."""
    return write_video(path, make_frames(1, height, width), fps=fps)


CORPUS: dict[str, str | None] = {
    "wide.mp4": None,  # 12 frames 64x48 at 10 fps
    "portrait.mp4": None,  # 12 frames 48x64 at 10 fps
    "one_frame.mp4": None,
    "three_frames.mp4": None,  # at 10 fps
    "slow.gif": None,  # 5 frames at 0.25 fps
    "long.mp4": None,  # 100 frames at 5 fps (20 s)
    "clip.avi": None,  # MPEG-4 part 2 in AVI, 10 frames at 8 fps
    "truncated.mp4": "unreadable",  # index at the end, lost
    "truncated_faststart.mp4": "unreadable",  # index kept, data missing
    "random.mp4": "unreadable",
    "text.mp4": "unreadable",
    "empty.mp4": "empty",
    "missing.mp4": "missing",  # never written
}
"""A small test corpus: file name -> None for a usable clip, else the `VideoReadError.kind` expected."""


def write_corpus(folder: str | Path) -> Path:
    """Write every file of CORPUS into folder (all 64x48-ish, seeds fixed) and return the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_video(folder / "wide.mp4", make_frames(12, 48, 64, seed=1), fps=10)
    write_video(folder / "portrait.mp4", make_frames(12, 64, 48, seed=2), fps=10)
    write_one_frame_clip(folder / "one_frame.mp4")
    write_video(folder / "three_frames.mp4", make_frames(3, seed=3), fps=10)
    write_video(folder / "slow.gif", make_frames(5, seed=4), fps=0.25)
    write_video(folder / "long.mp4", make_frames(100, seed=5), fps=5)
    write_video(folder / "clip.avi", make_frames(10, seed=6), fps=8, codec="mpeg4")
    write_truncated_mp4(folder / "truncated.mp4")
    write_truncated_mp4(folder / "truncated_faststart.mp4", faststart=True)
    write_random_bytes(folder / "random.mp4")
    write_text_file(folder / "text.mp4")
    write_empty_file(folder / "empty.mp4")
    return folder
