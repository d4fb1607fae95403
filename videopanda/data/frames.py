"""Any-resolution frames (as the original's; docs/DESIGN.md, "Choices where the paper is silent": Data):
resize, pad, mask and normalise for the student and the teacher.

Geometry is decided on the teacher grid (teacher_image_size / patch_size patches a side, 16 at 224/14)
and the student frame is exactly `image_size / teacher_image_size` (2) times it:

- the longer side becomes teacher_image_size; the shorter becomes
  ceil(teacher_image_size * short / long / patch_size) * patch_size (integer arithmetic, no float
  rounding surprises);
- padding before = ((grid - valid_patches) // 2) * patch_size on each axis, the rest after;
- the student size and offsets are those numbers times the scale (448 = 2 * 224).

Both tensors are rendered from the same decoded frames (the student is not an upsampled teacher).
Resizing is Pillow's, as in the original: each decoded frame becomes one PIL RGB image, resized with
`Image.resize((w, h))` (BICUBIC, Pillow's default for RGB, with its built-in antialiasing) to the
student size and, separately, to the teacher size. The uint8 pixels are Pillow's exactly; other
resamplers (torch's antialiased bicubic included) differ by a grey level on most downscales and by
up to ~20 on thin upscaled frames. Pasting, normalising and the mask are done batched in torch.
Choices of this project:

- The horizontal flip (training only, `flip=True`) mirrors the decoded frames before resizing, so
  student and teacher get the same flip and the padding offsets stay those of the geometry above.
- The canvas is PAD_COLOR and is normalised together with the picture; padding frames of a short
  video are appended at the end and are all zero in all 4 channels (mask 0).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from videopanda.constants import (
    FRAMES_PER_CHUNK,
    NUM_FRAMES,
    PAD_COLOR,
    PATCH_SIZE,
    PIXEL_MEAN,
    PIXEL_STD,
    STUDENT_IMAGE_SIZE,
    TEACHER_IMAGE_SIZE,
)


RESIZE_VERSION = 1
"""Version of the pixels `resize_frames` gives for given frames and sizes: part of the key of every store of
resized frames (`videopanda.data.frame_cache.FrameCache.resizer`), so changing them must increase it."""

Resize = Callable[[np.ndarray, Sequence[tuple[int, int]]], list[np.ndarray]]
"""(uint8 frames (n, H, W, 3), sizes [(h, w), ...]) -> one uint8 (n, h, w, 3) array per size: `resize_frames`
or something that returns exactly what it returns (a cache of its results)."""


@dataclass
class FrameConfig:
    """Frame layout shared by the dataset, inference and the data check."""

    num_frames: int = NUM_FRAMES
    frames_per_chunk: int = FRAMES_PER_CHUNK
    image_size: int = STUDENT_IMAGE_SIZE
    teacher_image_size: int = TEACHER_IMAGE_SIZE
    patch_size: int = PATCH_SIZE

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.frames_per_chunk < 1 or self.num_frames % self.frames_per_chunk:
            raise ValueError(
                f"num_frames ({self.num_frames}) must be a positive multiple of frames_per_chunk ({self.frames_per_chunk})"
            )
        if self.teacher_image_size % self.patch_size:
            raise ValueError(f"teacher_image_size {self.teacher_image_size} is not a multiple of patch_size {self.patch_size}")
        if self.image_size % self.teacher_image_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of teacher_image_size {self.teacher_image_size}")

    @property
    def num_chunks(self) -> int:
        return self.num_frames // self.frames_per_chunk

    @property
    def scale(self) -> int:
        """Student size / teacher size (2 for 448 / 224)."""
        return self.image_size // self.teacher_image_size


@dataclass(frozen=True)
class Placement:
    """Where the resized picture sits on a square canvas of side `canvas`: size and top-left corner."""

    height: int
    width: int
    top: int
    left: int
    canvas: int


def frame_placement(height: int, width: int, config: FrameConfig) -> tuple[Placement, Placement]:
    """(student, teacher) placements for a source frame of height x width (see the module docstring)."""
    if height < 1 or width < 1:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    size, patch = config.teacher_image_size, config.patch_size
    grid = size // patch
    long_side, short_side = max(height, width), min(height, width)
    short_patches = -(-(size * short_side) // (long_side * patch))  # ceil without floats
    patches = (short_patches, grid) if height < width else (grid, short_patches)
    before = tuple(((grid - p) // 2) * patch for p in patches)
    teacher = Placement(patches[0] * patch, patches[1] * patch, before[0], before[1], size)
    k = config.scale
    student = Placement(teacher.height * k, teacher.width * k, teacher.top * k, teacher.left * k, config.image_size)
    return student, teacher


def preprocess_video(frames_uint8: torch.Tensor | np.ndarray, config: FrameConfig | None = None,
                     flip: bool = False, teacher: bool = True,
                     resize: Resize | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 frames (n, H, W, 3) RGB, 1 <= n <= num_frames -> (student, teacher) float32 tensors.

    student: (C, T, 4, image_size, image_size), teacher: (C, T, 4, teacher_image_size, teacher_image_size),
    C = num_frames // frames_per_chunk, T = frames_per_chunk. Channels 0-2 normalised RGB, channel 3 the
    validity mask. Frames n..num_frames-1 are all-zero padding frames. With `teacher=False` (inference:
    only training's distillation reads the teacher frames) the teacher is None and its resize is skipped.
    `resize` (default `resize_frames`) resizes the frames, already flipped when `flip`, to the placements' sizes.
    """
    config = config or FrameConfig()
    if isinstance(frames_uint8, torch.Tensor):
        frames = frames_uint8.numpy(force=True)
    else:
        frames = np.asarray(frames_uint8)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (n, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    n = frames.shape[0]
    if not 1 <= n <= config.num_frames:
        raise ValueError(f"expected 1 to {config.num_frames} frames, got {n}")
    if flip:
        frames = frames[:, :, ::-1]
    places = frame_placement(frames.shape[1], frames.shape[2], config)[:2 if teacher else 1]
    resized = (resize or resize_frames)(frames, [(place.height, place.width) for place in places])
    rendered = [_render(torch.from_numpy(r), place, config) for r, place in zip(resized, places)]
    return rendered[0], rendered[1] if teacher else None


def resize_frames(frames: np.ndarray, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """uint8 (n, H, W, 3) RGB -> one uint8 (n, h, w, 3) array per (h, w) in `sizes`.

    Each frame is wrapped as a PIL RGB image once and resized to every size with Pillow's
    `Image.resize((w, h))`, BICUBIC: the original's pixels, bit for bit.
    """
    outputs = [np.empty((len(frames), h, w, 3), dtype=np.uint8) for h, w in sizes]
    for i, frame in enumerate(frames):
        image = Image.fromarray(frame)
        for out, (h, w) in zip(outputs, sizes):
            out[i] = np.asarray(image.resize((w, h), Image.Resampling.BICUBIC))
    return outputs


def _render(resized: torch.Tensor, place: Placement, config: FrameConfig) -> torch.Tensor:
    """resized uint8 (n, height, width, 3) -> float (C, T, 4, S, S): pasted on the PAD_COLOR canvas
    described by `place`, normalised, mask channel appended, padding frames after."""
    n = resized.shape[0]
    rows = slice(place.top, place.top + place.height)
    cols = slice(place.left, place.left + place.width)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    scale, shift = 1.0 / (255.0 * std), -torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1) / std
    out = torch.empty(config.num_frames, 4, place.canvas, place.canvas)
    # The canvas colour goes through the same arithmetic as the picture, so a pasted pixel of that
    # colour is bit-identical to the canvas around it.
    out[:n, :3] = torch.tensor(PAD_COLOR, dtype=torch.float32).view(1, 3, 1, 1).mul(scale).add(shift)
    out[:n, :3, rows, cols].copy_(resized.permute(0, 3, 1, 2)).mul_(scale).add_(shift)
    out[:n, 3] = 0.0
    out[:n, 3, rows, cols] = 1.0
    out[n:] = 0.0
    return out.view(config.num_chunks, config.frames_per_chunk, 4, place.canvas, place.canvas)
