"""`VideoPandaVideoProcessor`: video files or frames -> the STAB's pixel tensors and each frame's LSD grid.

    video_processor = AutoVideoProcessor.from_pretrained(folder)     # this class, for a saved folder
    out = video_processor(["a.mp4", "b.mp4"], return_metadata=True)  # the original's 8 frames each
    out = video_processor("long.mp4", num_frames=32)                 # 32 frames: 8 chunks of 4
    out = video_processor("long.mp4", fps=1.0, max_frames=64)        # one frame a second, whole chunks

A transformers `BaseVideoProcessor`: it decodes and samples frames itself (`do_sample_frames`), saves its
fields in the processor's files and is registered with `AutoVideoProcessor` for `VideoPandaConfig`. Its
own pixel path is that of `frames.preprocess_video` (Pillow resize, letterbox, mask channel), not
transformers' torchvision one, so it needs no torchvision. Shapes: V videos, C chunks, T frames per chunk.

Frame sampling, from a file (`decode_video`):
- By count (the default, `num_frames`, 8 as the paper's Sec. 4): the original's rule
  (`video.sample_indices`: a one-frame-per-second grid, then integer linspace). A clip with fewer frames
  gets all of them and zero padding frames up to `num_frames`.
- By rate (`fps`): floor(duration * fps) frames, rounded to the nearest whole number of chunks (halves
  up), bounded by `min_frames` and `max_frames` (multiples of the chunk length; 4 and 32 unless set),
  spread evenly over the clip from its first frame (`video.evenly_spread`). A rate that gives no frame
  at all (a clip shorter than 1 / fps) or a clip of unknown frame rate is a `VideoReadError` naming the file.
Frames given as arrays (uint8 (n, H, W, 3)) are used as they are: padded to `num_frames` by count, or to
max(min_frames, n rounded up to whole chunks) by rate.

Every frame count is a multiple of the chunk length (`STABConfig.frames_per_chunk`); any such count reaches
the STAB as that many chunks. The videos of one call must come out with the same frame count (they are
stacked into one tensor): by rate, clips of different lengths go in separate calls.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from transformers import BatchFeature
from transformers.models.auto.video_processing_auto import AutoVideoProcessor
from transformers.video_processing_utils import BaseVideoProcessor
from transformers.video_utils import VideoMetadata

from videopanda.constants import NUM_FRAMES, STUDENT_IMAGE_SIZE, TEACHER_IMAGE_SIZE
from videopanda.data.frames import FrameConfig, frame_placement, preprocess_video
from videopanda.data.video import VideoReadError, decode_video, evenly_spread, sample_indices
from videopanda.model.stab import STABConfig
from videopanda.model.videopanda import VideoPandaConfig

PROCESSOR_FILES = ("processor_config.json", "video_preprocessor_config.json", "preprocessor_config.json")
DEFAULT_MAX_FRAMES = 32
"""Upper bound on the frame count when sampling by rate and `max_frames` is not set."""


class VideoPandaVideosKwargs(TypedDict, total=False):
    num_frames: int
    fps: float | None
    min_frames: int | None
    max_frames: int | None
    do_sample_frames: bool
    return_metadata: bool
    image_size: int
    teacher_image_size: int
    stab_config: dict
    return_tensors: str


FLAT_STAB_FIELDS = ("frames_per_chunk", "patch_size", "window", "padding_window", "use_row_tokens")
"""The STAB fields that processor configs of earlier versions saved next to the others, not in `stab_config`."""
SAMPLING_FIELDS = ("num_frames", "fps", "min_frames", "max_frames")


class VideoPandaVideoProcessor(BaseVideoProcessor):
    """Videos (paths or uint8 frames) -> student (and teacher) tensors and each frame's LSD grid.

    Fields: the sampling (`num_frames`, or `fps` with `min_frames` / `max_frames`), the two image sizes and
    the model's `STABConfig` (`stab_config`, saved as a dict). The frame layout (`frames_per_chunk`,
    `patch_size`) and every frame's token count come from the STAB config, through its own functions. A
    processor config saved by an earlier version holds the `FLAT_STAB_FIELDS` at the top level instead;
    they are read into the STAB config (its other fields at their defaults, which no token count depends on)."""

    valid_kwargs = VideoPandaVideosKwargs
    model_input_names = ["pixel_values_videos"]

    def __init__(self, num_frames: int = NUM_FRAMES, image_size: int = STUDENT_IMAGE_SIZE,
                 teacher_image_size: int = TEACHER_IMAGE_SIZE, stab_config: STABConfig | Mapping | None = None,
                 fps: float | None = None, min_frames: int | None = None, max_frames: int | None = None,
                 do_sample_frames: bool = True, **kwargs):
        kwargs.pop("video_processor_type", None)
        flat = {name: kwargs.pop(name) for name in FLAT_STAB_FIELDS if name in kwargs}
        super().__init__(**kwargs)
        if flat and stab_config is not None:
            raise ValueError(f"video processor: {sorted(flat)} belong in stab_config, not next to it")
        if not isinstance(stab_config, STABConfig):
            stab_config = STABConfig(**(dict(stab_config) if stab_config is not None else flat))
        self.image_size, self.teacher_image_size, self.stab_config = image_size, teacher_image_size, stab_config
        self.num_frames, self.fps, self.min_frames, self.max_frames = num_frames, fps, min_frames, max_frames
        self.do_sample_frames = do_sample_frames
        self.sampling(num_frames, fps, min_frames, max_frames)  # validates

    @classmethod
    def from_model_config(cls, config, **sampling) -> VideoPandaVideoProcessor:
        """From a `VideoPandaConfig` (ours or a released one); `sampling`: num_frames, fps, min_frames, max_frames."""
        fields = {"num_frames": config.num_frames, **{k: v for k, v in sampling.items() if v is not None}}
        return cls(image_size=config.image_size, teacher_image_size=config.teacher_image_size,
                   stab_config=config.stab_config, **fields)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs) -> VideoPandaVideoProcessor:
        """A folder with processor files (transformers' own loading), or a model folder without them (the
        released layout): built from its config.json."""
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir() and not any((folder / name).is_file() for name in PROCESSOR_FILES):
            sampling = {name: kwargs.pop(name) for name in SAMPLING_FIELDS if name in kwargs}
            return cls.from_model_config(VideoPandaConfig.from_pretrained(folder), **sampling)
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    def to_dict(self) -> dict:
        """transformers' serialisation (processor_config.json's "video_processor"), the STAB config as a dict."""
        return {**super().to_dict(), "stab_config": asdict(self.stab_config)}

    @property
    def frames_per_chunk(self) -> int:
        return self.stab_config.frames_per_chunk

    @property
    def patch_size(self) -> int:
        return self.stab_config.patch_size

    @property
    def frame_config(self) -> FrameConfig:
        """The frame layout at the processor's own `num_frames`."""
        return self.frame_config_for(self.num_frames)

    def frame_config_for(self, num_frames: int) -> FrameConfig:
        return FrameConfig(num_frames, self.frames_per_chunk, self.image_size, self.teacher_image_size,
                           self.patch_size)

    def sampling(self, num_frames=None, fps=None, min_frames=None, max_frames=None) -> dict:
        """The sampling of a call: its arguments over the processor's fields, checked. -> {"num_frames": N} (by
        count) or {"fps": f, "min_frames": a, "max_frames": b} (by rate)."""
        chunk = self.frames_per_chunk
        fps = self.fps if fps is None else fps
        if fps is None:
            count = self.num_frames if num_frames is None else num_frames
            self.frame_config_for(count)  # a positive multiple of the chunk length, and the geometry
            return {"num_frames": count}
        if not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number of frames per second, got {fps!r}")
        low = min_frames or self.min_frames or chunk
        high = max_frames or self.max_frames or max(DEFAULT_MAX_FRAMES, low)
        for name, value in (("min_frames", low), ("max_frames", high)):
            if value < 1 or value % chunk:
                raise ValueError(f"{name} ({value}) must be a positive multiple of the chunk length ({chunk})")
        if low > high:
            raise ValueError(f"min_frames ({low}) is above max_frames ({high})")
        return {"fps": float(fps), "min_frames": low, "max_frames": high}

    def count_at_rate(self, seconds: float, fps: float, min_frames: int, max_frames: int) -> int:
        """Frames for a clip of `seconds` sampled at `fps`: floor(seconds * fps) rounded to whole chunks (halves
        up), within [min_frames, max_frames]. ValueError when the rate gives no frame at all."""
        wanted = math.floor(seconds * fps + 1e-9)
        if wanted < 1:
            raise ValueError(f"fps={fps:g} samples no frame from a {seconds:.3g} s clip (it needs {1 / fps:.3g} s)")
        chunk = self.frames_per_chunk
        return min(max_frames, max(min_frames, chunk * math.floor(wanted / chunk + 0.5)))

    def frame_grids(self, height: int, width: int, num_real: int, num_frames: int | None = None) -> list[tuple[int, int]]:
        """LSD grids of the num_frames (default: the processor's) frames of a video whose decoded frames are
        height x width and of which num_real are real (the rest padding frames)."""
        num_frames = self.num_frames if num_frames is None else num_frames
        place = frame_placement(height, width, self.frame_config_for(num_frames))[0]
        p, side = self.patch_size, self.image_size // self.patch_size
        rows = -(-(place.top + place.height) // p) - place.top // p
        cols = -(-(place.left + place.width) // p) - place.left // p
        stab = self.stab_config
        real, pad = stab.frame_grid((rows, cols), (side, side)), stab.frame_grid(None, (side, side))
        return [real] * num_real + [pad] * (num_frames - num_real)

    def token_counts(self, grids: Sequence[tuple[int, int]]) -> list[int]:
        """Per frame, the number of STAB tokens (and placeholder ids) of each grid."""
        return [self.stab_config.num_tokens(g) for g in grids]

    def load(self, video, sampling: dict | None = None, do_sample_frames: bool = True) -> tuple[np.ndarray, int, VideoMetadata]:
        """A path or uint8 frames (n, H, W, 3) -> (uint8 frames (n, H, W, 3), the frame count they are padded
        to, their metadata). A path is decoded with the call's sampling (module docstring); frames are used
        as they are (also a path's, with `do_sample_frames=False`: every frame of the clip)."""
        sampling = sampling or self.sampling()
        if isinstance(video, (str, os.PathLike)):
            decoded = decode_video(video, self._chooser(sampling, do_sample_frames))
            frames = decoded.frames.numpy()
            metadata = VideoMetadata(total_num_frames=decoded.total, fps=decoded.fps or None, width=frames.shape[2],
                                     height=frames.shape[1], duration=decoded.total / decoded.fps if decoded.fps else None,
                                     video_backend=decoded.backend, frames_indices=decoded.indices)
        else:
            frames = video.numpy(force=True) if isinstance(video, torch.Tensor) else np.asarray(video)
            if frames.ndim != 4:
                raise ValueError(f"frames must be uint8 (n, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
            metadata = VideoMetadata(total_num_frames=len(frames), width=frames.shape[2], height=frames.shape[1],
                                     frames_indices=list(range(len(frames))))
        return frames, self._padded_count(len(frames), sampling), metadata

    def _chooser(self, sampling: dict, do_sample_frames: bool):
        """The frame-index rule of a call, a function of the clip's frame count and frame rate."""
        if not do_sample_frames:
            return lambda total, fps: list(range(total))
        if "num_frames" in sampling:
            return lambda total, fps: sample_indices(total, fps, sampling["num_frames"])

        def at_rate(total: int, fps: float) -> list[int]:
            if not (math.isfinite(fps) and fps > 0):
                raise ValueError("the clip's frame rate is unknown: sample it by num_frames instead of fps")
            return evenly_spread(total, self.count_at_rate(total / fps, sampling["fps"], sampling["min_frames"],
                                                           sampling["max_frames"]))
        return at_rate

    def _padded_count(self, n: int, sampling: dict) -> int:
        if "num_frames" in sampling:
            return sampling["num_frames"]
        chunk = self.frames_per_chunk
        return max(sampling["min_frames"], chunk * -(-n // chunk))

    def __call__(self, videos, teacher: bool = False, flips: Sequence[bool] | None = None,
                 return_tensors: str | None = "pt", num_frames: int | None = None, fps: float | None = None,
                 min_frames: int | None = None, max_frames: int | None = None, do_sample_frames: bool | None = None,
                 return_metadata: bool = False, **kwargs) -> BatchFeature:
        """videos: one video or a list, possibly nested per sample (paths or uint8 (n, H, W, 3)) ->
        `pixel_values_videos` (V, C, T, 4, H, W), `teacher_pixel_values_videos` with `teacher=True`,
        `frame_grids` (V lists of (rows, cols), one per frame) and, with `return_metadata`, `video_metadata`
        (V transformers `VideoMetadata`: frame indices, source fps, duration, size, backend). Sampling
        arguments override the processor's fields for this call. `flips` (training) mirrors video i when flips[i]."""
        if kwargs:
            raise TypeError(f"unexpected video processor arguments {sorted(kwargs)}")
        sampling = self.sampling(num_frames, fps, min_frames, max_frames)
        sample = self.do_sample_frames if do_sample_frames is None else do_sample_frames
        students, teachers, grids, metadata = [], [], [], []
        for i, video in enumerate(flatten_videos(videos)):
            frames, count, meta = self.load(video, sampling, sample)
            if len(frames) > count:
                raise ValueError(f"video {i} has {len(frames)} frames, more than the {count} sampled: give a path "
                                 f"to sample from, or at most {count} frames")
            student, teacher_frames = preprocess_video(frames, self.frame_config_for(count),
                                                       flip=bool(flips and flips[i]), teacher=teacher)
            students.append(student)
            teachers.append(teacher_frames)
            grids.append(self.frame_grids(frames.shape[1], frames.shape[2], frames.shape[0], count))
            metadata.append(meta)
        if len({len(g) for g in grids}) > 1:
            raise ValueError(f"the videos of one call give {sorted({len(g) for g in grids})} frames: sampled by rate, "
                             "clips of different lengths must be processed in separate calls")
        data = {"pixel_values_videos": torch.stack(students) if students else None}
        if teacher:
            data["teacher_pixel_values_videos"] = torch.stack(teachers) if teachers else None
        data["frame_grids"] = grids
        if return_metadata:
            data["video_metadata"] = metadata
        return BatchFeature(data)

    preprocess = __call__


def flatten_videos(videos) -> list:
    """One video, a list of videos, or a list of per-sample lists (what `apply_chat_template` passes) -> a flat
    list of videos (paths, arrays or tensors)."""
    if isinstance(videos, (str, os.PathLike, np.ndarray, torch.Tensor)):
        return [videos]
    flat = []
    for video in videos:
        if isinstance(video, (list, tuple)):
            flat.extend(flatten_videos(video))
        else:
            flat.append(video)
    return flat


AutoVideoProcessor.register(VideoPandaConfig, VideoPandaVideoProcessor, exist_ok=True)

__all__ = ["VideoPandaVideoProcessor", "VideoReadError", "flatten_videos"]
