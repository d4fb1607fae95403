"""`VideoPandaProcessor`: video files or frames + prompt text -> the model's inputs, with the exact token count.

    processor = AutoProcessor.from_pretrained(folder)
    messages = [{"role": "user", "content": [{"type": "video", "path": "clip.mp4"},
                                             {"type": "text", "text": "What happens?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    answer_ids = model.generate(**inputs)[:, inputs["input_ids"].shape[1]:]

or, in two steps, `prompt = processor.apply_chat_template(messages, add_generation_prompt=True)` and
`processor(text=prompt, videos="clip.mp4")`. Sampling arguments (`num_frames`, `fps`, `max_frames`, ...) go
to the video processor, in `processor_kwargs` of `apply_chat_template` or in the call.

Shapes: V videos, C chunks, T frames per chunk, S prompt length.

- Frames: the `VideoPandaVideoProcessor` (`video_processor.py`) decodes and samples a path, then
  `preprocess_video` (`frames.py`): `pixel_values_videos` (V, C, T, 4, image_size, image_size); with
  `teacher=True` (training) also `teacher_pixel_values_videos` (V, C, T, 4, teacher_image_size, teacher_image_size).
- Text: the chat template writes `<video>` for each video item; the processor gives it one `<image>` per
  frame of its video (8 for the original's sampling: the original's prompt). A prompt may also hold the
  `<image>` runs itself (the training text: one per frame). Each `<image>` becomes `num_tokens(grid)`
  copies of the `<image>` token id, where `grid` is the LSD grid the STAB will give that frame: the valid
  patch box of the frame from `frame_placement` (a padding frame: the STAB's padding window), halved by
  LSD (`STABConfig.frame_grid`), counted by `STABConfig.num_tokens`: the STAB's own functions.
- Tokenisation is that of `conversation.tokenize_conversation` / `tokenize_prompt` (the text split at
  `<image>`, each piece encoded alone, one BOS), so ids and labels are the original's with each
  frame's -200 replaced by its run of placeholder ids.
- `<image>` is added to the tokenizer as one special token; its id (len(tokenizer) before adding,
  32000 for the released vocabulary) is the model config's `image_token_id`. The embedding matrix is
  not resized: the model scatters the visual tokens over those positions.
- A folder without processor files (the released layout) gets a processor built from its config.json.
  The chat template is this module's: the prompt format belongs to the model, so a template saved in a
  folder (earlier versions wrote `<image>` * 8 into it) is not read back.
- Importing this module registers `VideoPandaProcessor` with `AutoProcessor` and the video processor with
  `AutoVideoProcessor` (and, through `videopanda.model`, the config and the model with `AutoConfig` /
  `AutoModelForCausalLM`).
"""
from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoProcessor, AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessorMixin

from videopanda.constants import FRAME_PLACEHOLDER, VIDEO_TOKEN
from videopanda.data.conversation import EOS_TEXT, SYSTEM_HUMAN, SYSTEM_USER, encode_text, tokenize_conversation
from videopanda.data.video_processor import PROCESSOR_FILES, VideoPandaVideoProcessor
from videopanda.model.videopanda import VideoPandaConfig

SYSTEMS = {"user": SYSTEM_USER, "human": SYSTEM_HUMAN}
PLACEHOLDERS = re.compile(f"({re.escape(VIDEO_TOKEN)}|{re.escape(FRAME_PLACEHOLDER)})")


def chat_template() -> str:
    """Vicuna v1.1 (the original's prompt, `conversation.py`) as a Jinja template. A leading system message
    sets the system text; otherwise the `system` variable picks "user" (default, the training text) or
    "human" (the original inference text). Each video item of a user message becomes `<video>`, and the
    items' `<video>`s + newline go in front of its text; the processor expands each `<video>` into one
    `<image>` per frame of its video, so `<video>` + newline gives the original's `<image>` * 8 + newline."""
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
        "{%- if message['content'] is string -%}{%- set text = message['content'] | trim -%}{%- set videos = 0 -%}"
        "{%- else -%}"
        "{%- set text = message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') | trim -%}"
        "{%- set videos = message['content'] | selectattr('type', 'equalto', 'video') | list | length -%}"
        "{%- endif -%}"
        "{%- if message['role'] == 'user' -%}"
        "{{- ' USER: ' if loop.first else 'USER: ' -}}"
        "{%- if videos > 0 -%}{{- '" + VIDEO_TOKEN + "' * videos + '\\n' -}}{%- endif -%}"
        "{{- text -}}"
        "{%- else -%}{{- ' ASSISTANT: ' + text + '" + EOS_TEXT + "' -}}{%- endif -%}"
        "{%- endfor -%}"
        "{%- if add_generation_prompt -%}{{- ' ASSISTANT:' -}}{%- endif -%}"
    )


class VideoPandaProcessor(ProcessorMixin):
    """A tokenizer and a `VideoPandaVideoProcessor`; see the module docstring."""

    def __init__(self, video_processor=None, tokenizer=None, chat_template=None, **kwargs):
        if tokenizer is not None and FRAME_PLACEHOLDER not in tokenizer.get_vocab():
            tokenizer.add_tokens([FRAME_PLACEHOLDER], special_tokens=True)
        if chat_template is None:
            chat_template = globals()["chat_template"]()
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
        the processor's public `get_processor_dict` / `from_args_and_dict` (transformers' own sub-processor loading
        goes through the top-level `AutoVideoProcessor`, a placeholder without torchvision, which this
        processor does not use)."""
        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir() and not any((folder / name).is_file() for name in PROCESSOR_FILES):
            from videopanda.model.videopanda import VideoPandaConfig

            config = VideoPandaConfig.from_pretrained(folder)
            return cls.from_model_config(config, AutoTokenizer.from_pretrained(folder))
        processor_dict, instantiation_kwargs = cls.get_processor_dict(pretrained_model_name_or_path, **kwargs)
        processor_dict.pop("chat_template", None)
        fields = dict(processor_dict.get("video_processor") or {})
        if not fields:
            raise ValueError(f"{pretrained_model_name_or_path}: processor_config.json has no 'video_processor'")
        parts = [VideoPandaVideoProcessor(**fields), AutoTokenizer.from_pretrained(pretrained_model_name_or_path)]
        return cls.from_args_and_dict(parts, processor_dict, **instantiation_kwargs)

    def __call__(self, text=None, videos=None, padding_side: str = "left", teacher: bool = False,
                 flips: Sequence[bool] | None = None, return_frame_grids: bool = False,
                 return_tensors: str | None = "pt", add_special_tokens: bool = True, images=None, audio=None,
                 **video_kwargs) -> BatchFeature:
        """text: a prompt or a list of B prompts; videos: the videos their placeholders stand for, in order
        (one list, or one list per prompt as `apply_chat_template` passes them).

        A video's placeholders are one `<video>` (the chat template's) or one `<image>` per frame (the
        training text); each frame becomes its run of placeholder ids. `video_kwargs` go to the video
        processor (num_frames, fps, min_frames, max_frames, do_sample_frames, return_metadata).
        -> BatchFeature: input_ids (B, S) and attention_mask (B, S), padded on `padding_side` with the
        tokenizer's pad id; pixel_values_videos (V, C, T, 4, H, W) when there are videos (and
        teacher_pixel_values_videos with teacher=True); with return_frame_grids, frame_grids (V lists of
        (rows, cols)); with return_metadata, video_metadata. Only "pt" tensors are returned; the single BOS
        is always added (`add_special_tokens`, and `images` / `audio` when None, are accepted for
        transformers' chat-template call)."""
        if images is not None or audio is not None:
            raise ValueError("VideoPandaProcessor takes videos (image and audio inputs are not part of the model)")
        if text is None:
            raise ValueError("VideoPandaProcessor needs text (a prompt with <video> or one <image> per frame)")
        prompts = [text] if isinstance(text, str) else list(text)
        visual = self.video_processor(videos, teacher=teacher, flips=flips, **video_kwargs) if videos is not None else {}
        grids = list(visual.get("frame_grids", []))
        runs = self._placeholder_runs(prompts, grids)
        rows = [encode_text(prompt, self.tokenizer, run)[0]
                for prompt, run in zip((PLACEHOLDERS.sub(FRAME_PLACEHOLDER, p) for p in prompts), runs)]
        data = dict(self.pad(rows, padding_side))
        if videos is not None:
            data["pixel_values_videos"] = visual["pixel_values_videos"]
            if teacher:
                data["teacher_pixel_values_videos"] = visual["teacher_pixel_values_videos"]
            if return_frame_grids:
                data["frame_grids"] = grids
            if "video_metadata" in visual:
                data["video_metadata"] = visual["video_metadata"]
        return BatchFeature(data, tensor_type=None)

    def _placeholder_runs(self, prompts: Sequence[str], grids: list[list[tuple[int, int]]]) -> list[list[list[int]]]:
        """Per prompt, per placeholder: its run of placeholder ids. A `<video>` stands for every frame of the
        next video (one run: the frames' runs back to back, as `<image>` * n with no text between them gives);
        an `<image>` for the next frame; a video ends within one prompt."""
        counts = [self.video_processor.token_counts(g) for g in grids]
        token, runs, video, frame = self.image_token_id, [], 0, 0
        for b, prompt in enumerate(prompts):
            runs.append([])
            for mark in PLACEHOLDERS.findall(prompt):
                if video == len(counts):
                    raise ValueError(f"prompt {b} holds placeholders for more videos than the {len(counts)} given "
                                     "(a video content item needs a 'path' or 'url')")
                if mark == VIDEO_TOKEN and frame:
                    raise ValueError(f"prompt {b}: {VIDEO_TOKEN} after {frame} {FRAME_PLACEHOLDER} of a video's frames")
                frames = counts[video][frame:] if mark == VIDEO_TOKEN else counts[video][frame:frame + 1]
                runs[-1].append([token] * sum(frames))
                frame += len(frames)
                if frame == len(counts[video]):
                    video, frame = video + 1, 0
            if frame:
                raise ValueError(f"prompt {b} holds {frame} {FRAME_PLACEHOLDER} placeholders, not a multiple of the "
                                 f"video's {len(counts[video])} frames: one per frame of each video (or one {VIDEO_TOKEN})")
        if video != len(counts):
            raise ValueError(f"the prompts hold placeholders for {video} videos but {len(counts)} videos were given")
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
