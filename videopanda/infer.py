"""`videopanda infer`: answer one question about one video with a Video-Panda model folder.

    videopanda infer --model FOLDER --video FILE --question TEXT [--max-new-tokens 1024]
                     [--num-frames 8] [--device cpu|cuda] [--dtype float32|bfloat16|float16]
                     [--system user|human]

Pipeline: check the folder's config -> `read_video` -> load the model -> `preprocess_video(flip=False)` -> `build_generation_prompt` ->
`tokenize_prompt` -> greedy `generate` with the KV cache. Only the answer goes to stdout. A missing or
unreadable video, or a folder that is not a Video-Panda model, is one line on stderr and exit code 1.

Choices where SPEC is silent: `--system` defaults to "user" (the training system text; "human" is
the original inference template); `--device` defaults to cuda when available; `--dtype` defaults to
bfloat16 on cuda and float32 on cpu.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError

from videopanda.log import get_logger

logger = get_logger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class InferError(Exception):
    """A bad request (options, device); the message says what."""


class ModelFolderError(InferError):
    """A folder that cannot be loaded as a Video-Panda model; the message names the folder and why."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="videopanda infer", description="Answer a question about one video.")
    parser.add_argument("--model", required=True, help="Video-Panda model folder (ours or the released layout)")
    parser.add_argument("--video", required=True, help="video file")
    parser.add_argument("--question", required=True, help="question about the video")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    parser.add_argument("--num-frames", type=int, default=None, help="frames to sample (default: the model's, 8)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None)
    parser.add_argument("--system", choices=("user", "human"), default="user",
                        help="system text: 'user' (training) or 'human' (the original inference template)")
    return parser


def check_model_folder(folder: str | Path):
    """The folder's VideoPandaConfig, read without loading weights. Raises ModelFolderError naming the folder."""
    from transformers import AutoConfig

    import videopanda.model  # noqa: F401  (registers the Auto classes)
    from videopanda.model.checkpoint import MODEL_TYPE, checkpoint_files

    folder = Path(folder)
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder does not exist")
    if not config_path.is_file():
        raise ModelFolderError(f"{folder}: not a model folder (no config.json)")
    try:
        model_type = json.loads(config_path.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ModelFolderError(f"{config_path}: unreadable config ({err})") from err
    if model_type != MODEL_TYPE:
        raise ModelFolderError(f"{folder}: model_type is {model_type!r}, not a Video-Panda model ({MODEL_TYPE!r})")
    try:
        checkpoint_files(folder)
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError, StrictDataclassError) as err:
        raise ModelFolderError(f"{folder}: {err}") from err


def frame_config_for(config, num_frames: int | None = None):
    """The model's frame layout (FrameConfig), optionally with another number of frames."""
    from videopanda.data.frames import FrameConfig

    try:
        return FrameConfig(num_frames=num_frames or config.num_frames, frames_per_chunk=config.frames_per_chunk,
                           image_size=config.image_size, teacher_image_size=config.teacher_image_size,
                           patch_size=config.stab_config.patch_size)
    except ValueError as err:
        raise InferError(str(err)) from err


def load_model(folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """-> (model in eval mode on `device`, tokenizer). Raises ModelFolderError naming the folder."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_model_folder(folder)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, StrictDataclassError) as err:
        raise ModelFolderError(f"{folder}: cannot load the model ({err})") from err
    return model.to(device).eval(), tokenizer


def answer(model, tokenizer, frames: torch.Tensor, question: str, max_new_tokens: int = 1024,
           num_frames: int | None = None, system: str = "user") -> str:
    """Greedy answer to `question` about uint8 frames (n, H, W, 3) from `read_video`."""
    from videopanda.data.conversation import SYSTEM_HUMAN, SYSTEM_USER, build_generation_prompt, tokenize_prompt
    from videopanda.data.frames import preprocess_video

    frame_config = frame_config_for(model.config, num_frames)
    student, _ = preprocess_video(frames, frame_config, flip=False)
    prompt = build_generation_prompt(question, frame_config.num_frames, SYSTEM_HUMAN if system == "human" else SYSTEM_USER)
    input_ids = tokenize_prompt(prompt, tokenizer).unsqueeze(0).to(model.device)
    output = model.generate(
        input_ids,
        videos=[student],
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
    )
    return tokenizer.decode(output[0], skip_special_tokens=True).strip()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from videopanda.data.video import VideoReadError, read_video

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[args.dtype or ("bfloat16" if device == "cuda" else "float32")]
    try:
        if device == "cuda" and not torch.cuda.is_available():
            raise InferError("--device cuda was asked for but no CUDA device is available")
        config = check_model_folder(args.model)
        frames = read_video(args.video, num_frames=frame_config_for(config, args.num_frames).num_frames)
        model, tokenizer = load_model(args.model, device, dtype)
        text = answer(model, tokenizer, frames, args.question, args.max_new_tokens, args.num_frames, args.system)
    except (InferError, VideoReadError) as err:
        message = " ".join(str(err).split())
        print(f"videopanda infer: error: {message}", file=sys.stderr)
        return 1
    print(text)
    return 0
