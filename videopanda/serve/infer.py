"""`videopanda infer`: answer one question about one video with a Video-Panda model folder.

    videopanda infer --model FOLDER --video FILE --question TEXT [--max-new-tokens N]
                     [--num-frames 8 | --fps F [--max-frames 32]] [--device cpu|cuda]
                     [--dtype auto|float32|bfloat16|float16] [--system user|human]

Pipeline: `model_folder.read_model_folder` (config, weight headers, generation settings and tokenizer files,
each read once) -> `model_folder.load_model` (the model and its `VideoPandaProcessor`) -> the chat template's
prompt -> `processor(text=..., videos=path)` (the video processor decodes and samples the video: the
original's 8 frames, `--num-frames N` or `--fps F`) -> greedy `generate` with the KV cache. Only the answer
goes to stdout. Errors are one line on stderr: a folder that cannot be loaded as a Video-Panda model
(`ModelFolderError`, naming the file) or a model that does not fit in memory (`MemoryBudgetError`) exits with
code 2; a missing or unreadable video (a missing or empty file is found before the model loads), a bad
option, or a prompt longer than the model's context (`ContextLengthError`), with code 1.

Generation settings have one source, the folder's `generation_config.json` (every folder this project
saves has one: `videopanda.model.videopanda.project_generation_config`): its new-token limit unless
`--max-new-tokens` is given, its EOS and pad ids; decoding is always greedy with one beam and the KV
cache (the paper's decoding). A folder without the file (the released layout) gets the project's defaults.

Context guard (`fit_context`, shared by `infer`, `chat`, `demo`, `eval qa` and `eval mc`): a prompt
(text and the video's placeholder tokens) that leaves no room under the model's `max_position_embeddings`
is refused before anything is generated, naming both lengths and the most frames that would fit; otherwise
the answer is capped to the room left (positions past the context were never trained and give garbage).

Checking a folder and the memory it needs: `videopanda.serve.model_folder`.

Choices of this project: `--system` defaults to "user" (the training system text; "human" is
the original inference template); `--device` defaults to cuda when available; `--dtype auto` (the default)
is the checkpoint's own (`dtype` / `torch_dtype` in config.json, float32 when absent) on any device.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from videopanda.log import get_logger
from videopanda.serve.model_folder import (
    DTYPE_NAMES,
    InferError,
    MemoryBudgetError,
    ModelFolderError,
    load_model,
    read_model_folder,
    torch_dtype,
)

logger = get_logger(__name__)


class ContextLengthError(InferError):
    """A prompt that leaves no room in the model's context; the message gives its length and the context's."""


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model and the options that decide how it answers (shared by `infer`, `chat` and `demo`)."""
    parser.add_argument("--model", required=True, help="Video-Panda model folder (ours or the released layout)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="longest answer, in tokens (default: the folder's generation_config.json, else 1024)")
    add_sampling_options(parser)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--dtype", choices=("auto", *DTYPE_NAMES), default="auto",
                        help="auto: the checkpoint's own dtype from config.json, float32 when it has none")
    parser.add_argument("--system", choices=("user", "human"), default="user",
                        help="system text: 'user' (training) or 'human' (the original inference template)")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    """--num-frames / --fps / --max-frames: how frames are sampled from a video (infer, chat, demo, eval qa, eval mc)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--num-frames", type=int, default=None,
                       help="frames to sample, a multiple of 4 (the STAB's chunk length; default: the model's, 8)")
    group.add_argument("--fps", type=float, default=None,
                       help="sample this many frames a second instead, rounded to whole chunks of 4 (at least 4)")
    parser.add_argument("--max-frames", type=int, default=None,
                        help="with --fps: at most this many frames, a multiple of 4 (default 32)")


def sampling_arguments(args: argparse.Namespace) -> dict:
    """The sampling options given on the command line, as the video processor's keyword arguments."""
    names = ("num_frames", "fps", "max_frames")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _parser() -> argparse.ArgumentParser:
    from videopanda.argparsing import CommandParser

    parser = CommandParser(prog="videopanda infer", description="Answer a question about one video.")
    add_model_options(parser)
    parser.add_argument("--video", required=True, help="video file")
    parser.add_argument("--question", required=True, help="question about the video")
    return parser


def check_sampling(num_frames: int | None, fps: float | None, max_frames: int | None) -> None:
    """InferError for sampling options that contradict each other: a count and a rate, or a bound on the frames
    sampled by rate (`max_frames`) without a rate."""
    if num_frames is not None and fps is not None:
        raise InferError("give the number of frames or a frame rate, not both")
    if max_frames is not None and fps is None:
        raise InferError("--max-frames bounds the frames sampled by rate: give --fps too (or --num-frames alone)")


def video_with_sampling(video, num_frames: int | None = None, fps: float | None = None,
                        max_frames: int | None = None):
    """The video processor `video` itself (no setting given: it samples as saved), or a copy that samples
    `num_frames` frames (a multiple of the chunk length) by count, or `fps` frames a second (at most
    `max_frames`, else `video`'s bound). Raises InferError for a bad setting."""
    from videopanda.data.video_processor import VideoPandaVideoProcessor

    check_sampling(num_frames, fps, max_frames)
    same_count = num_frames is None or (num_frames == video.num_frames and video.fps is None)
    if same_count and fps in (None, video.fps) and max_frames in (None, video.max_frames):
        return video
    fields = {**video.to_dict(), "num_frames": num_frames or video.num_frames, "fps": fps,
              "max_frames": max_frames or video.max_frames}
    try:  # the video processor's own serialisation, as processor_config.json holds it, with the new sampling
        return VideoPandaVideoProcessor(**fields)
    except ValueError as err:
        raise InferError(str(err)) from err


def with_sampling(processor, num_frames: int | None = None, fps: float | None = None,
                  max_frames: int | None = None):
    """The processor itself, or a copy whose video processor is `video_with_sampling`'s."""
    from videopanda.data.processor import VideoPandaProcessor

    video = video_with_sampling(processor.video_processor, num_frames, fps, max_frames)
    return processor if video is processor.video_processor else VideoPandaProcessor(video, processor.tokenizer)


def video_prompt(processor, question: str, system: str = "user") -> str:
    """The chat template's generation prompt for one question about one video."""
    return processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
        add_generation_prompt=True, system=system)


def generation_settings(tokenizer, max_new_tokens: int | None = None, saved=None) -> dict:
    """The arguments of `model.generate` for every answer this project gives (`infer`, `eval qa`, `chat`,
    `demo`): greedy, one beam, the KV cache, stop at EOS (the paper's evaluation decoding; docs/DESIGN.md,
    "Generation settings and the context guard").

    `saved`: the model's `generation_config` (its folder's generation_config.json). Its new-token limit
    applies when `max_new_tokens` is None, its EOS and pad ids before the tokenizer's; without it, the
    project's limit (`MAX_NEW_TOKENS`) and the tokenizer's ids (pad: the pad id, else unk, else EOS)."""
    from videopanda.model.videopanda import MAX_NEW_TOKENS

    saved_limit = getattr(saved, "max_new_tokens", None)
    limit = max_new_tokens if max_new_tokens is not None else saved_limit or MAX_NEW_TOKENS
    if limit < 1:
        raise InferError(f"--max-new-tokens must be at least 1, got {limit}")
    eos = next((t for t in (getattr(saved, "eos_token_id", None), tokenizer.eos_token_id) if t is not None), None)
    pad = next((t for t in (getattr(saved, "pad_token_id", None), tokenizer.pad_token_id, tokenizer.unk_token_id)
                if t is not None), eos)
    return {"max_new_tokens": limit, "do_sample": False, "num_beams": 1, "use_cache": True,
            "eos_token_id": eos, "pad_token_id": pad}


def fit_context(prompt_tokens: int, max_context: int, max_new_tokens: int, subject: str = "the prompt is",
                frame_tokens: Sequence[int] = (), frames_per_chunk: int = 4) -> int:
    """The new-token limit a prompt of `prompt_tokens` leaves under a context of `max_context` positions:
    min(max_new_tokens, room). Raises ContextLengthError, "<subject> N tokens (the video's included), over
    the model's context of M tokens", when no token fits (`max_new_tokens` 0: when the prompt itself does
    not fit, for scoring a text without generating). `frame_tokens`: the video's tokens per frame (its
    placeholder runs); when given, the error also names the most frames, in whole chunks, that would fit, and the
    options that sample that many (by count, or as the bound of sampling by rate)."""
    room = max_context - prompt_tokens
    needed = min(1, max_new_tokens)
    if room >= needed:
        return min(max_new_tokens, room)
    over = "over" if room < 0 else "filling"
    hint = ""
    if frame_tokens:
        free = max_context - needed - (prompt_tokens - sum(frame_tokens))
        fit = max(0, free // max(frame_tokens)) // frames_per_chunk * frames_per_chunk
        hint = (f"; {len(frame_tokens)} frames were sampled, {fit} would fit (--num-frames {fit}, or --max-frames "
                f"{fit} with --fps)" if fit else
                f"; the text alone leaves no room for {frames_per_chunk} frames")
    raise ContextLengthError(f"{subject} {prompt_tokens} tokens (the video's included), {over} the model's "
                             f"context of {max_context} tokens{hint}")


def answer(model, processor, video, question: str, max_new_tokens: int | None = None, system: str = "user") -> str:
    """Greedy answer to `question` about a video (a path, sampled by the processor's video processor, or uint8
    frames (n, H, W, 3)), at most `max_new_tokens` tokens (None: the model's generation config). Raises
    ContextLengthError when the prompt leaves no room, VideoReadError for a video that cannot be read."""
    tokenizer = processor.tokenizer
    inputs = processor(text=video_prompt(processor, question, system), videos=video, return_frame_grids=True)
    frame_tokens = processor.video_processor.token_counts(inputs.pop("frame_grids")[0])
    inputs = inputs.to(model.device)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
    prompt_length = inputs["input_ids"].shape[1]
    settings = generation_settings(tokenizer, max_new_tokens, model.generation_config)
    settings["max_new_tokens"] = fit_context(prompt_length, model.config.max_position_embeddings,
                                             settings["max_new_tokens"], frame_tokens=frame_tokens,
                                             frames_per_chunk=processor.video_processor.frames_per_chunk)
    output = model.generate(**inputs, **settings)
    return tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True).strip()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import torch

    from videopanda.data.video import VideoReadError, check_video_file

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if device == "cuda" and not torch.cuda.is_available():
            raise InferError("--device cuda was asked for but no CUDA device is available")
        folder = read_model_folder(args.model)
        check_video_file(args.video)
        model, processor = load_model(folder, device, torch_dtype(args.dtype))
        processor = with_sampling(processor, **sampling_arguments(args))
        text = answer(model, processor, args.video, args.question, args.max_new_tokens, args.system)
    except (InferError, VideoReadError, ValueError) as err:
        message = " ".join(str(err).split())
        print(f"videopanda infer: error: {message}", file=sys.stderr)
        return 2 if isinstance(err, (ModelFolderError, MemoryBudgetError)) else 1
    print(text)
    return 0
