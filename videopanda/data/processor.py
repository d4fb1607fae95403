"""`VideoPandaProcessor`: video file or frames + prompt text -> the model's inputs, with the exact token count.

    processor = AutoProcessor.from_pretrained(folder)
    prompt = processor.apply_chat_template([{"role": "user", "content": [{"type": "video"},
                                             {"type": "text", "text": question}]}], add_generation_prompt=True)
    inputs = processor(text=prompt, videos=path)          # input_ids, attention_mask, pixel_values_videos
    answer_ids = model.generate(**inputs)[:, inputs["input_ids"].shape[1]:]

Shapes: V videos, C chunks, T frames per chunk, S prompt length.

- Frames: `read_video` (a path) or uint8 frames (n, H, W, 3), then `preprocess_video` (`frames.py`):
  `pixel_values_videos` (V, C, T, 4, image_size, image_size); with `teacher=True` (training)
  also `teacher_pixel_values_videos` (V, C, T, 4, teacher_image_size, teacher_image_size).
- Text: every `<image>` in the prompt stands for one frame; each run of `num_frames` of them takes the
  next video, in order. Each placeholder becomes `num_tokens(grid)` copies of the `<image>` token id,
  where `grid` is the LSD grid the STAB will give that frame: the valid patch box of the frame from
  `frame_placement` (a padding frame: the STAB's padding window), halved by LSD
  (`STABConfig.frame_grid`), counted by `STABConfig.num_tokens`: the STAB's own functions.
- Tokenisation is that of `conversation.tokenize_conversation` / `tokenize_prompt` (the text split at
  `<image>`, each piece encoded alone, one BOS), so ids and labels are the original's with each
  frame's -200 replaced by its run of placeholder ids.
- `<image>` is added to the tokenizer as one special token; its id (len(tokenizer) before adding,
  32000 for the released vocabulary) is the model config's `image_token_id`. The embedding matrix is
  not resized: the model scatters the visual tokens over those positions.
- A folder without processor files (the released layout) gets a processor built from its config.json.
- Importing this module registers `VideoPandaProcessor` with `AutoProcessor` (and, through
  `videopanda.model`, the config and the model with `AutoConfig` / `AutoModelForCausalLM`).
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from transformers import AutoProcessor, AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessorMixin
from transformers.video_processing_utils import VideoProcessorMixin

from videopanda.constants import (
    FRAME_PLACEHOLDER,
    NUM_FRAMES,
    STUDENT_IMAGE_SIZE,
    TEACHER_IMAGE_SIZE,
)
from videopanda.data.conversation import EOS_TEXT, SYSTEM_HUMAN, SYSTEM_USER, encode_text, tokenize_conversation
from videopanda.data.frames import FrameConfig, frame_placement, preprocess_video
from videopanda.model.stab import STABConfig
from videopanda.model.videopanda import VideoPandaConfig

PROCESSOR_FILES = ("processor_config.json", "video_preprocessor_config.json", "preprocessor_config.json")
SYSTEMS = {"user": SYSTEM_USER, "human": SYSTEM_HUMAN}


def chat_template(num_frames: int) -> str:
    """Vicuna v1.1 (the original's prompt, `conversation.py`) as a Jinja template. A leading system message
    sets the system text; otherwise the `system` variable picks "user" (default, the training text) or
    "human" (the original inference text). A video item in a user message becomes `<image>` * num_frames +
    newline in front of its text."""
    user, human = json.dumps(SYSTEM_USER), json.dumps(SYSTEM_HUMAN)
    return (
        "{%- set texts = {'user': " + user + ", 'human': " + human + "} -%}"
        "{%- if messages[0]['role'] == 'system' -%}"
        "{%- set sys = messages[0]['content'] if messages[0]['content'] is string "
        "else messages[0]['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') -%}"
        "{%- set rest = messages[1:] -%}"
        "{%- else -%}{%- set sys = texts[system | default('user')] -%}{%- set rest = messages -%}{%- endif -%}"
        "{{- sys | trim -}}"
        "{%- for message in rest -%}"
        "{%- if message['content'] is string -%}{%- set text = message['content'] | trim -%}{%- set video = false -%}"
        "{%- else -%}"
        "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') | trim -%}"
        "{%- set video = message['content'] | selectattr('type', 'equalto', 'video') | list | length > 0 -%}"
        "{%- endif -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{- ' USER: ' if loop.first else 'USER: ' -}}"
        "{%- if video -%}{{- '" + FRAME_PLACEHOLDER + "' * " + str(num_frames) + " + '\\n' -}}{%- endif -%}"
        "{{- text -}}"
        "{%- else -%}{{- ' ASSISTANT: ' + text + '" + EOS_TEXT + "' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- ' ASSISTANT:' -}}{%- endif -%}"
    )


class VideoPandaVideosKwargs(TypedDict, total=False):
    num_frames: int
    image_size: int
    teacher_image_size: int
    stab_config: dict
    return_tensors: str


FLAT_STAB_FIELDS = ("frames_per_chunk", "patch_size", "window", "padding_window", "use_row_tokens")
"""The STAB fields that processor configs of earlier versions saved next to the others, not in `stab_config`."""


class VideoPandaVideoProcessor(VideoProcessorMixin):
    """Videos (paths or uint8 frames) -> student (and teacher) tensors and each frame's LSD grid.

    Its fields are the number of frames, the two image sizes and the model's `STABConfig` (`stab_config`,
    saved in processor_config.json as a dict). The frame layout (`frames_per_chunk`, `patch_size`) and
    every frame's token count come from the STAB config, through its own functions, so a STAB switch that
    changes the token count needs no change here. A processor config saved by an earlier version holds
    the `FLAT_STAB_FIELDS` at the top level instead; they are read into the STAB config (its other fields
    at their defaults, which no token count depends on)."""

    valid_kwargs = VideoPandaVideosKwargs
    model_input_names = ["pixel_values_videos"]

    def __init__(self, num_frames: int = NUM_FRAMES, image_size: int = STUDENT_IMAGE_SIZE,
                 teacher_image_size: int = TEACHER_IMAGE_SIZE, stab_config: STABConfig | Mapping | None = None,
                 **kwargs):
        kwargs.pop("video_processor_type", None)
        flat = {name: kwargs.pop(name) for name in FLAT_STAB_FIELDS if name in kwargs}
        super().__init__(**kwargs)
        if flat and stab_config is not None:
            raise ValueError(f"video processor: {sorted(flat)} belong in stab_config, not next to it")
        if not isinstance(stab_config, STABConfig):
            stab_config = STABConfig(**(dict(stab_config) if stab_config is not None else flat))
        self.num_frames, self.image_size, self.teacher_image_size = num_frames, image_size, teacher_image_size
        self.stab_config = stab_config
        self.frame_config  # validates the geometry

    @classmethod
    def from_model_config(cls, config) -> "VideoPandaVideoProcessor":
        """From a `VideoPandaConfig` (ours or a released one)."""
        return cls(num_frames=config.num_frames, image_size=config.image_size,
                   teacher_image_size=config.teacher_image_size, stab_config=config.stab_config)

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
        return FrameConfig(self.num_frames, self.frames_per_chunk, self.image_size, self.teacher_image_size,
                           self.patch_size)

    def frame_grids(self, height: int, width: int, num_real: int) -> list[tuple[int, int]]:
        """LSD grids of the num_frames frames of a video whose decoded frames are height x width and of which
        num_real are real (the rest padding frames)."""
        place = frame_placement(height, width, self.frame_config)[0]
        p, side = self.patch_size, self.image_size // self.patch_size
        rows = -(-(place.top + place.height) // p) - place.top // p
        cols = -(-(place.left + place.width) // p) - place.left // p
        stab = self.stab_config
        real, pad = stab.frame_grid((rows, cols), (side, side)), stab.frame_grid(None, (side, side))
        return [real] * num_real + [pad] * (self.num_frames - num_real)

    def token_counts(self, grids: Sequence[tuple[int, int]]) -> list[int]:
        """Per frame, the number of STAB tokens (and placeholder ids) of each grid."""
        return [self.stab_config.num_tokens(g) for g in grids]

    def load(self, video) -> np.ndarray:
        """A path (decoded with `read_video`) or uint8 frames (n, H, W, 3) -> uint8 (n, H, W, 3)."""
        if isinstance(video, (str, os.PathLike)):
            from videopanda.data.video import read_video

            return read_video(video, num_frames=self.num_frames).numpy()
        return video.numpy(force=True) if isinstance(video, torch.Tensor) else np.asarray(video)

    def __call__(self, videos, teacher: bool = False, flips: Sequence[bool] | None = None,
                 return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """videos: one video or a list (paths or uint8 (n, H, W, 3)) -> `pixel_values_videos` (V, C, T, 4, H, W),
        `teacher_pixel_values_videos` with `teacher=True`, and `frame_grids` (V lists of num_frames
        (rows, cols)). `flips` (training) mirrors video i when flips[i]."""
        if kwargs:
            raise TypeError(f"unexpected video processor arguments {sorted(kwargs)}")
        if isinstance(videos, (str, os.PathLike, np.ndarray, torch.Tensor)):
            videos = [videos]
        students, teachers, grids = [], [], []
        for i, video in enumerate(videos):
            frames = self.load(video)
            student, teacher_frames = preprocess_video(frames, self.frame_config, flip=bool(flips and flips[i]),
                                                       teacher=teacher)
            students.append(student)
            teachers.append(teacher_frames)
            grids.append(self.frame_grids(frames.shape[1], frames.shape[2], frames.shape[0]))
        data = {"pixel_values_videos": torch.stack(students) if students else None}
        if teacher:
            data["teacher_pixel_values_videos"] = torch.stack(teachers) if teachers else None
        data["frame_grids"] = grids
        return BatchFeature(data)

    preprocess = __call__


class VideoPandaProcessor(ProcessorMixin):
    """A tokenizer and a `VideoPandaVideoProcessor`; see the module docstring."""

    def __init__(self, video_processor=None, tokenizer=None, chat_template=None, **kwargs):
        if tokenizer is not None and FRAME_PLACEHOLDER not in tokenizer.get_vocab():
            tokenizer.add_tokens([FRAME_PLACEHOLDER], special_tokens=True)
        if chat_template is None and video_processor is not None:
            chat_template = globals()["chat_template"](video_processor.num_frames)
        super().__init__(video_processor, tokenizer, chat_template=chat_template, **kwargs)

    def check_argument_for_proper_class(self, argument_name, argument):
        """The video processor is checked here: without torchvision (which this processor does not use),
        transformers 5 exports neither `VideoProcessorMixin` nor a working `VIDEO_PROCESSOR_MAPPING`, so its
        own check finds no video processor class, registered with `AutoVideoProcessor` or not."""
        if argument_name == "video_processor":
            if not isinstance(argument, VideoPandaVideoProcessor):
                raise TypeError(f"video_processor must be a VideoPandaVideoProcessor, got {type(argument).__name__}")
            return VideoPandaVideoProcessor
        return super().check_argument_for_proper_class(argument_name, argument)

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(FRAME_PLACEHOLDER)

    @classmethod
    def from_model_config(cls, config, tokenizer) -> "VideoPandaProcessor":
        """A processor for a model config (a released folder has no processor files) and its tokenizer."""
        return cls(VideoPandaVideoProcessor.from_model_config(config), tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """A folder saved with `save_pretrained`, or a model folder without processor files (built from
        its config.json and tokenizer). The video processor is built from processor_config.json here, through
        the processor's public `get_processor_dict` / `from_args_and_dict`: transformers' `AutoVideoProcessor`
        is a torchvision-only placeholder without torchvision, which this processor does not use."""
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir() and not any((folder / name).is_file() for name in PROCESSOR_FILES):
            from videopanda.model.videopanda import VideoPandaConfig

            config = VideoPandaConfig.from_pretrained(folder)
            return cls.from_model_config(config, AutoTokenizer.from_pretrained(folder))
        processor_dict, instantiation_kwargs = cls.get_processor_dict(pretrained_model_name_or_path, **kwargs)
        fields = dict(processor_dict.get("video_processor") or {})
        if not fields:
            raise ValueError(f"{pretrained_model_name_or_path}: processor_config.json has no 'video_processor'")
        parts = [VideoPandaVideoProcessor(**fields), AutoTokenizer.from_pretrained(pretrained_model_name_or_path)]
        return cls.from_args_and_dict(parts, processor_dict, **instantiation_kwargs)

    def __call__(self, text=None, videos=None, padding_side: str = "left", teacher: bool = False,
                 flips: Sequence[bool] | None = None, return_frame_grids: bool = False,
                 return_tensors: str | None = "pt", **kwargs) -> BatchFeature:
        """text: a prompt or a list of B prompts; videos: the videos their `<image>` runs stand for, in order.

        -> BatchFeature: input_ids (B, S) and attention_mask (B, S), padded on `padding_side` with the
        tokenizer's pad id; pixel_values_videos (V, C, T, 4, H, W) when there are videos (and
        teacher_pixel_values_videos with teacher=True); with return_frame_grids, frame_grids (V lists of
        num_frames (rows, cols)). Only "pt" tensors are returned."""
        if kwargs:
            raise TypeError(f"unexpected processor arguments {sorted(kwargs)}")
        if text is None:
            raise ValueError("VideoPandaProcessor needs text (a prompt with one <image> per frame)")
        prompts = [text] if isinstance(text, str) else list(text)
        visual = self.video_processor(videos, teacher=teacher, flips=flips) if videos is not None else {}
        grids = list(visual.get("frame_grids", []))
        runs = self._placeholder_runs(prompts, grids)
        rows = [encode_text(prompt, self.tokenizer, run)[0] for prompt, run in zip(prompts, runs)]
        data = dict(self.pad(rows, padding_side))
        if videos is not None:
            data["pixel_values_videos"] = visual["pixel_values_videos"]
            if teacher:
                data["teacher_pixel_values_videos"] = visual["teacher_pixel_values_videos"]
            if return_frame_grids:
                data["frame_grids"] = grids
        return BatchFeature(data, tensor_type=None)

    def _placeholder_runs(self, prompts: Sequence[str], grids: list[list[tuple[int, int]]]) -> list[list[list[int]]]:
        """Per prompt, per `<image>`: the run of placeholder ids of that frame."""
        n = self.video_processor.num_frames
        counts = [self.video_processor.token_counts(g) for g in grids]
        token = self.image_token_id
        per_prompt = [prompt.count(FRAME_PLACEHOLDER) for prompt in prompts]
        for b, k in enumerate(per_prompt):
            if k % n:
                raise ValueError(f"prompt {b} holds {k} {FRAME_PLACEHOLDER} placeholders, not a multiple of "
                                 f"num_frames ({n}): one per frame of each video")
        if sum(per_prompt) // n != len(counts):
            raise ValueError(f"the prompts hold placeholders for {sum(per_prompt) // n} videos but "
                             f"{len(counts)} videos were given")
        runs, video = [], 0
        for k in per_prompt:
            runs.append([[token] * c for v in range(video, video + k // n) for c in counts[v]])
            video += k // n
        return runs

    def tokenize_conversation(self, conversations, grids: Sequence[tuple[int, int]] | None, system: str = SYSTEM_USER,
                              sample_id=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: a LLaVA-style turn list and its video's frame grids (None: text-only) -> (input_ids,
        labels) int64 (S,), `conversation.tokenize_conversation` with each frame's run of placeholder ids."""
        runs = None
        has_video = grids is not None
        if has_video:
            runs = [[self.image_token_id] * c for c in self.video_processor.token_counts(grids)]
        return tokenize_conversation(conversations, self.tokenizer, self.video_processor.num_frames, system,
                                     has_video=has_video, sample_id=sample_id, placeholder_runs=runs)

    def pad(self, rows: Sequence[Sequence[int]], padding_side: str = "left") -> dict[str, torch.Tensor]:
        """Id lists -> input_ids (B, S) padded with the pad id (unk when none) and attention_mask (B, S)."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        pad = self.tokenizer.pad_token_id
        pad = self.tokenizer.unk_token_id if pad is None else pad
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for b, row in enumerate(rows):
            span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            ids[b, span] = torch.tensor(row, dtype=torch.long)
            mask[b, span] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "pixel_values_videos"]


AutoProcessor.register(VideoPandaConfig, VideoPandaProcessor, exist_ok=True)

__all__ = ["VideoPandaProcessor", "VideoPandaVideoProcessor", "chat_template"]
