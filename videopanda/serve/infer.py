"""`videopanda infer`: answer one question about one video with a Video-Panda model folder.

    videopanda infer --model FOLDER --video FILE --question TEXT [--max-new-tokens N]
                     [--num-frames 8] [--device cpu|cuda] [--dtype auto|float32|bfloat16|float16]
                     [--system user|human]

Pipeline: check the folder -> `read_video` -> load the model and its `VideoPandaProcessor` -> the chat
template's prompt -> `processor(text=..., videos=frames)` -> greedy `generate` with the KV cache. Only the answer goes
to stdout. Errors are one line on stderr: a folder that cannot be loaded as a Video-Panda model
(`ModelFolderError`, naming the file) or a model that does not fit in memory (`MemoryBudgetError`) exits
with code 2; a missing or unreadable video, a bad option, or a prompt longer than the model's context
(`ContextLengthError`), with code 1.

Generation settings have one source, the folder's `generation_config.json` (every folder this project
saves has one: `videopanda.model.videopanda.project_generation_config`): its new-token limit unless
`--max-new-tokens` is given, its EOS and pad ids; decoding is always greedy with one beam and the KV
cache (the paper's decoding). A folder without the file (the released layout) gets the project's defaults.

Context guard (`fit_context`, shared by `infer`, `chat`, `demo`, `eval qa` and `eval mc`): a prompt
(text and the video's placeholder tokens) that leaves no room under the model's `max_position_embeddings`
is refused before anything is generated, naming both lengths; otherwise the answer is capped to the room
left (positions past the context were never trained and give garbage).

Checking a folder (`check_model_folder`, `validate_model_folder`) reads no weights: config.json must be a
JSON object whose fields have the types the config class declares; every weight file must be there with
a readable header (`checkpoint.stored_tensors`); the tokenizer files must be there and parse.

Memory: before reading weights, `load_model` compares `estimate_memory` (the weights the model keeps, from
the files' headers, at the chosen dtype; plus the KV cache of a full context, 10% of the weights and
256 MiB for activations) with the memory available: RAM on cpu (`/proc/meminfo` MemAvailable, lowered to
the cgroup's limit less its usage), free device memory on cuda. The environment variable
`VIDEOPANDA_MEMORY_BUDGET` (bytes, or a size such as `24GB` or `512MiB`) replaces that measurement.

Choices of this project: `--system` defaults to "user" (the training system text; "human" is
the original inference template); `--device` defaults to cuda when available; `--dtype auto` (the default)
is the checkpoint's own (`dtype` / `torch_dtype` in config.json, float32 when absent) on any device.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from videopanda.log import get_logger

if TYPE_CHECKING:
    import torch

logger = get_logger(__name__)

DTYPE_NAMES = ("float32", "bfloat16", "float16")
"""The dtypes a model runs in (`--dtype`, config.json's `dtype`), as torch names them."""
MEMORY_BUDGET_ENV = "VIDEOPANDA_MEMORY_BUDGET"
ACTIVATION_FLOOR = 256 * 2**20
"""Bytes reserved for activations (the video front end, logits) beyond the KV cache and 10% of the weights."""
LLM_MODEL_TYPES = ("videopanda", "eve", "llama")
"""Model types whose config.json carries the Llama fields whose types are checked."""
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_JSON_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json")
CGROUP_ROOT = Path("/sys/fs/cgroup")
UNLIMITED = 2**60
"""cgroup v1 writes "no limit" as a number near 2**63."""


class InferError(Exception):
    """A bad request (options, device); the message says what."""


class ModelFolderError(InferError):
    """A folder that cannot be loaded as a model; the message names the file (or folder) and why, in one line."""


class MemoryBudgetError(InferError):
    """The model would not fit in the memory available; the message says how much it needs and how much there is."""


class ContextLengthError(InferError):
    """A prompt that leaves no room in the model's context; the message gives its length and the context's."""


def torch_dtype(name: str) -> torch.dtype | None:
    """The torch dtype named `name` (one of DTYPE_NAMES); None for "auto" (the checkpoint's own)."""
    import torch

    return None if name == "auto" else getattr(torch, name)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """--model and the options that decide how it answers (shared by `infer`, `chat` and `demo`)."""
    parser.add_argument("--model", required=True, help="Video-Panda model folder (ours or the released layout)")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="longest answer, in tokens (default: the folder's generation_config.json, else 1024)")
    parser.add_argument("--num-frames", type=int, default=None, help="frames to sample (default: the model's, 8)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--dtype", choices=("auto", *DTYPE_NAMES), default="auto",
                        help="auto: the checkpoint's own dtype from config.json, float32 when it has none")
    parser.add_argument("--system", choices=("user", "human"), default="user",
                        help="system text: 'user' (training) or 'human' (the original inference template)")


def _parser() -> argparse.ArgumentParser:
    from videopanda.argparsing import CommandParser

    parser = CommandParser(prog="videopanda infer", description="Answer a question about one video.")
    add_model_options(parser)
    parser.add_argument("--video", required=True, help="video file")
    parser.add_argument("--question", required=True, help="question about the video")
    return parser


def _read_json_object(path: Path, what: str) -> dict:
    """A JSON file that must hold an object; ModelFolderError naming the file otherwise."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as err:
        raise ModelFolderError(f"{path}: cannot be read ({err.strerror or err})") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFolderError(f"{path}: unreadable {what}, not JSON text ({err})") from err
    if not isinstance(data, dict):
        raise ModelFolderError(f"{path}: unreadable {what}, a JSON {type(data).__name__} where an object is needed")
    return data


_JSON_TYPES = {"int": int, "float": float, "bool": bool, "str": str, "dict": dict, "list": list, "None": type(None)}
_JSON_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "an object",
               list: "a list", type(None): "null"}


def _json_types(annotation) -> tuple[type, ...] | None:
    """The JSON value types a dataclass field annotation allows, or None when it names anything else
    (a TypedDict, a Literal, torch.dtype), which is then not checked here."""
    if isinstance(annotation, type):
        annotation = annotation.__name__
    text = annotation if isinstance(annotation, str) else str(annotation)
    members = [member.strip().split("[", 1)[0] for member in text.split("|")]
    if not all(member in _JSON_TYPES for member in members):
        return None
    return tuple(_JSON_TYPES[member] for member in members)


def _fits(value, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int):
        return int in types or float in types
    return isinstance(value, types)


def _check_field_types(path: Path, raw: dict, declared: dict, where: str = "") -> None:
    """ModelFolderError naming `path` and the first field of `raw` whose value the declaration does not allow."""
    for name, annotation in declared.items():
        types = _json_types(annotation)
        if name in raw and types is not None and not _fits(raw[name], types):
            wanted = " or ".join(_JSON_NAMES[t] for t in types)
            raise ModelFolderError(f"{path}: field {where + name!r} must be {wanted}, not {json.dumps(raw[name])[:60]}")


def _check_config_fields(path: Path, raw: dict) -> None:
    """Types of the fields a Llama-based config (ours, EVE's, Llama's) declares, of its `stab` block, and
    its dtype's name."""
    from videopanda.model.stab import STABConfig
    from videopanda.model.videopanda import VideoPandaConfig

    declared = {f.name: f.type for f in dataclasses.fields(VideoPandaConfig)}
    declared["torch_dtype"] = "str | None"
    _check_field_types(path, raw, declared)
    if isinstance(raw.get("stab"), dict):
        _check_field_types(path, raw["stab"], {f.name: f.type for f in dataclasses.fields(STABConfig)}, "stab.")
    checkpoint_dtype(raw, path)


def checkpoint_dtype(raw: dict, config_path: Path | str = "config.json") -> torch.dtype:
    """The dtype a config.json says its weights are in (`dtype`, else `torch_dtype`); float32 when absent."""
    name = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    if not isinstance(name, str) or name.removeprefix("torch.") not in DTYPE_NAMES:
        raise ModelFolderError(f"{config_path}: dtype {json.dumps(name)[:40]} is none of {', '.join(DTYPE_NAMES)}")
    return torch_dtype(name.removeprefix("torch."))


def _check_tokenizer_files(folder: Path) -> None:
    """The tokenizer files are there and parse (without building the tokenizer)."""
    for name in TOKENIZER_JSON_FILES:
        if (folder / name).exists():
            _read_json_object(folder / name, "tokenizer file")
    if (folder / "tokenizer.json").is_file():
        return
    model_file = folder / "tokenizer.model"
    if not model_file.is_file():
        raise ModelFolderError(f"{folder}: no tokenizer (neither tokenizer.json nor tokenizer.model)")
    import sentencepiece

    try:
        sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    except (RuntimeError, OSError) as err:
        raise ModelFolderError(f"{model_file}: not a SentencePiece tokenizer model ({err})") from err


def validate_model_folder(folder: str | Path, model_types: tuple[str, ...] | None = ("videopanda",),
                          tokenizer: bool = True) -> dict:
    """config.json of a model folder as a dict, after checking the folder without reading weights.

    Checks: the folder and config.json exist; config.json is a JSON object whose `model_type` is one of
    `model_types` (None: any); for Llama-based types its fields have the declared JSON types; every weight
    file (single, or each shard an index names) is there and its header reads; with `tokenizer`, the
    tokenizer files are there and parse. Raises ModelFolderError naming the file, in one line.
    """
    from videopanda.train.lora import AdapterFolderError, base_folder, is_adapter_folder
    from videopanda.model.checkpoint import stored_tensors

    folder = Path(folder)
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder does not exist")
    if not config_path.is_file():
        raise ModelFolderError(f"{folder}: not a model folder (no config.json)")
    raw = _read_json_object(config_path, "config")
    model_type = raw.get("model_type")
    if model_types is not None and model_type not in model_types:
        raise ModelFolderError(f"{folder}: model_type is {model_type!r}, "
                               f"not one of {', '.join(map(repr, model_types))}")
    if model_type in LLM_MODEL_TYPES:
        _check_config_fields(config_path, raw)
    if is_adapter_folder(folder):  # LoRA adapters: the weights are the base folder's plus the adapter files
        try:
            base = base_folder(folder)
        except AdapterFolderError as err:
            raise ModelFolderError(str(err)) from err
        validate_model_folder(base, model_types, tokenizer=False)
    else:
        try:
            stored_tensors(folder)
        except (OSError, ValueError, pickle.UnpicklingError) as err:
            raise ModelFolderError(str(err)) from err
    if tokenizer:
        _check_tokenizer_files(folder)
    return raw


def _quiet_transformers() -> None:
    """transformers' own progress bars and notices would bury the one line a command promises."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _inspect(folder: str | Path):
    """(config.json as a dict, its VideoPandaConfig) of a checked Video-Panda folder."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    import videopanda.model  # noqa: F401  (registers the Auto classes)
    from videopanda.model.checkpoint import MODEL_TYPE, one_line_error

    raw = validate_model_folder(folder, (MODEL_TYPE,))
    config_path = Path(folder) / "config.json"
    _quiet_transformers()
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, StrictDataclassError) as err:
        raise ModelFolderError(f"{config_path}: {one_line_error(err)}") from err
    try:
        frame_config_for(config)
    except InferError as err:
        raise ModelFolderError(f"{config_path}: {err}") from err
    return raw, config


def check_model_folder(folder: str | Path):
    """The folder's VideoPandaConfig, read without loading weights (see `validate_model_folder`).
    Raises ModelFolderError naming the file."""
    return _inspect(folder)[1]


def frame_config_for(config, num_frames: int | None = None):
    """The model's frame layout (FrameConfig), optionally with another number of frames."""
    from videopanda.data.frames import FrameConfig

    try:
        return FrameConfig(num_frames=num_frames or config.num_frames, frames_per_chunk=config.frames_per_chunk,
                           image_size=config.image_size, teacher_image_size=config.teacher_image_size,
                           patch_size=config.stab_config.patch_size)
    except ValueError as err:
        raise InferError(str(err)) from err


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs at one dtype: weights, the KV cache of a full context, and the rest of activations."""

    dtype: torch.dtype
    weights: int
    kv_cache: int
    activations: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations


def estimate_memory(folder: str | Path, config, dtype: torch.dtype,
                    stored_dtype: torch.dtype | None = None) -> MemoryEstimate:
    """What loading `folder` at `dtype` and generating a full context needs, from the weight files' headers.

    weights: every stored tensor the model keeps (not the keys `from_pretrained` ignores), floating ones
    at `dtype`'s width; a legacy-format `.bin` counts as its file size scaled from `stored_dtype` to `dtype`.
    kv_cache: 2 x layers x key/value heads x head_dim x max_position_embeddings x width.
    activations: 10% of the weights + ACTIVATION_FLOOR. `stored_dtype` None: float32.
    """
    import torch

    from videopanda.model.checkpoint import IGNORED_ON_LOAD, stored_tensors

    stored_dtype = stored_dtype or torch.float32
    width = dtype.itemsize
    ignored = re.compile("|".join(IGNORED_ON_LOAD))
    tensors, unlisted = stored_tensors(folder)
    weights = sum(t.numel * (width if t.dtype.is_floating_point else t.dtype.itemsize)
                  for key, t in tensors.items() if not ignored.match(key))
    weights += sum(path.stat().st_size * width // stored_dtype.itemsize for path in unlisted)
    heads = config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_cache = 2 * config.num_hidden_layers * heads * head_dim * config.max_position_embeddings * width
    return MemoryEstimate(dtype, weights, kv_cache, weights // 10 + ACTIVATION_FLOOR)


_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_size(text: str) -> int:
    """Bytes from "123", "1MB", "24GB", "1.5G", "512MiB" (k/M/G/T = powers of 1000, Ki/Mi/Gi/Ti of 1024)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"{text!r} is not a size (e.g. 1000, 1MB, 24GB, 512MiB)")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def format_size(n: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _stat_field(path: Path, name: str) -> int:
    """The number after `name` in a "name value [unit]" file (/proc/meminfo, memory.stat); 0 when absent."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == name and parts[1].isdigit():
            return int(parts[1])
    return 0


def cgroup_headroom(root: Path = CGROUP_ROOT) -> int | None:
    """Bytes the cgroup at `root` may still use (limit - usage + reclaimable inactive file cache), or None
    without a limit. Reads cgroup v2 (`memory.max`) or v1 (`memory/memory.limit_in_bytes`)."""
    for limit_file, usage_file, stat_file, inactive in (
            (root / "memory.max", root / "memory.current", root / "memory.stat", "inactive_file"),
            (root / "memory" / "memory.limit_in_bytes", root / "memory" / "memory.usage_in_bytes",
             root / "memory" / "memory.stat", "total_inactive_file")):
        limit = _read_int(limit_file)
        if limit is None or limit >= UNLIMITED:
            continue
        usage = _read_int(usage_file) or 0
        return max(0, limit - max(0, usage - _stat_field(stat_file, inactive)))
    return None


def available_memory(device: str) -> tuple[int | None, str]:
    """(bytes available to a model on `device`, where that figure comes from); None when it cannot be told.

    `VIDEOPANDA_MEMORY_BUDGET` when set; on cuda the device's free memory; on cpu MemAvailable from
    /proc/meminfo, lowered to the cgroup's headroom."""
    budget = os.environ.get(MEMORY_BUDGET_ENV)
    if budget:
        try:
            return parse_size(budget), MEMORY_BUDGET_ENV
        except ValueError as err:
            raise InferError(f"{MEMORY_BUDGET_ENV}: {err}") from err
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InferError(f"{device} was asked for but no CUDA device is available")
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free, f"free on {device}"
    available = _stat_field(Path("/proc/meminfo"), "MemAvailable:") * 1024 or None
    headroom = cgroup_headroom()
    if headroom is not None and (available is None or headroom < available):
        return headroom, "the cgroup's memory limit less its usage"
    return available, "MemAvailable"


def check_memory(folder: str | Path, config, dtype: torch.dtype, device: str = "cpu",
                 stored_dtype: torch.dtype | None = None, budget: int | None = None) -> MemoryEstimate:
    """The estimate for `dtype`, or MemoryBudgetError when it exceeds `budget` (default: `available_memory`).
    The message says what is needed and what is available, and which smaller dtype would fit, if any."""
    need = estimate_memory(folder, config, dtype, stored_dtype)
    available, source = (budget, "memory_budget") if budget is not None else available_memory(device)
    if available is None:
        logger.debug("cannot tell the memory available on %s; loading without a check", device)
        return need
    if need.total <= available:
        return need
    message = (f"{folder}: the model does not fit in memory: at {str(dtype).removeprefix('torch.')} it needs about "
               f"{format_size(need.total)} ({format_size(need.weights)} of weights + "
               f"{format_size(need.kv_cache + need.activations)} for the KV cache and activations), but "
               f"{format_size(available)} is available ({source})")
    smaller = [d for d in map(torch_dtype, DTYPE_NAMES) if d.itemsize < dtype.itemsize]
    for candidate in smaller:
        fits = estimate_memory(folder, config, candidate, stored_dtype)
        if fits.total <= available:
            name = str(candidate).removeprefix("torch.")
            message += f"; --dtype {name} would fit (about {format_size(fits.total)})"
            break
    else:
        message += "; no smaller dtype would fit either" if smaller else ""
    raise MemoryBudgetError(message)


def load_model(folder: str | Path, device: str = "cpu", dtype: torch.dtype | None = None, *,
               memory_budget: int | None = None, keep_peft: bool = False):
    """-> (model in eval mode on `device`, its `VideoPandaProcessor`).

    A LoRA adapter folder (`videopanda.train.lora`) loads its base folder's model (after checking that the base is
    the model the adapters were trained on: `lora.checked_base_folder`), then its own visual weights,
    adapters and generation settings on top (unmerged); the model returned is the `VideoPandaForCausalLM`
    holding them, or with `keep_peft` the peft wrapper (for `merge_and_unload`).

    dtype None: the checkpoint's own (`checkpoint_dtype`). Checks the folder (`validate_model_folder`), the
    tokenizer against the model's vocabulary and placeholder id, and that the model fits (`check_memory`; `memory_budget` in
    bytes overrides the memory available) before reading any weights. Raises ModelFolderError naming the
    file, MemoryBudgetError.
    """
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from videopanda.data.processor import VideoPandaProcessor
    from videopanda.model.checkpoint import one_line_error

    raw, config = _inspect(folder)
    stored = checkpoint_dtype(raw, Path(folder) / "config.json")
    dtype = stored if dtype is None else dtype
    try:
        processor = VideoPandaProcessor.from_pretrained(folder)
    except Exception as err:  # tokenizers fail in many ways on broken files
        logger.debug("processor of %s", folder, exc_info=True)
        raise ModelFolderError(f"{folder}: the tokenizer cannot be loaded ({one_line_error(err)})") from err
    text_tokens = len(processor.tokenizer) - 1  # without the <image> placeholder
    if text_tokens > config.vocab_size:
        raise ModelFolderError(f"{folder}: the tokenizer has {text_tokens} tokens but config.json's vocab_size is "
                               f"{config.vocab_size}")
    if processor.image_token_id != config.image_token_id:
        raise ModelFolderError(f"{folder}: the tokenizer's <image> id {processor.image_token_id} is not config.json's "
                               f"image_token_id {config.image_token_id}")
    from videopanda.train.lora import AdapterFolderError, attach_adapter, checked_base_folder, is_adapter_folder

    adapter = is_adapter_folder(folder)
    try:
        weights = checked_base_folder(folder) if adapter else folder
    except AdapterFolderError as err:
        raise ModelFolderError(str(err)) from err
    check_memory(weights, config, dtype, device, stored, memory_budget)
    try:
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=dtype)
        if adapter:
            if (Path(folder) / GENERATION_CONFIG).is_file():  # the adapter folder's settings, not its base's
                model.generation_config = GenerationConfig.from_pretrained(folder)
            peft_model = attach_adapter(model, folder)
            model = peft_model if keep_peft else model
    except Exception as err:  # headers were fine, the data was not: any reader error ends here
        logger.debug("loading %s", folder, exc_info=True)
        raise ModelFolderError(f"{folder}: cannot load the model ({one_line_error(err)})") from err
    try:
        model = model.to(device)
    except torch.OutOfMemoryError as err:
        raise MemoryBudgetError(f"{folder}: {device} ran out of memory while the model was moved there") from err
    return model.eval(), processor


def with_num_frames(processor, num_frames: int | None):
    """The processor itself, or a copy that samples `num_frames` frames (a multiple of frames_per_chunk)."""
    from videopanda.data.processor import VideoPandaProcessor, VideoPandaVideoProcessor

    video = processor.video_processor
    if not num_frames or num_frames == video.num_frames:
        return processor
    fields = {k: getattr(video, k) for k in ("frames_per_chunk", "image_size", "teacher_image_size", "patch_size",
                                             "window", "padding_window", "use_row_tokens")}
    try:
        return VideoPandaProcessor(VideoPandaVideoProcessor(num_frames=num_frames, **fields), processor.tokenizer)
    except ValueError as err:
        raise InferError(str(err)) from err


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


def fit_context(prompt_tokens: int, max_context: int, max_new_tokens: int, subject: str = "the prompt is") -> int:
    """The new-token limit a prompt of `prompt_tokens` leaves under a context of `max_context` positions:
    min(max_new_tokens, room). Raises ContextLengthError, "<subject> N tokens (the video's included), over
    the model's context of M tokens", when no token fits (`max_new_tokens` 0: when the prompt itself does
    not fit, for scoring a text without generating)."""
    room = max_context - prompt_tokens
    if room < min(1, max_new_tokens):
        over = "over" if room < 0 else "filling"
        raise ContextLengthError(f"{subject} {prompt_tokens} tokens (the video's included), {over} the model's "
                                 f"context of {max_context} tokens")
    return min(max_new_tokens, room)


def answer(model, processor, frames: torch.Tensor, question: str, max_new_tokens: int | None = None,
           num_frames: int | None = None, system: str = "user") -> str:
    """Greedy answer to `question` about uint8 frames (n, H, W, 3) from `read_video`, at most `max_new_tokens`
    tokens (None: the model's generation config). Raises ContextLengthError when the prompt leaves no room."""
    processor = with_num_frames(processor, num_frames)
    tokenizer = processor.tokenizer
    inputs = processor(text=video_prompt(processor, question, system), videos=frames).to(model.device)
    inputs["pixel_values_videos"] = inputs["pixel_values_videos"].to(model.dtype)
    prompt_length = inputs["input_ids"].shape[1]
    settings = generation_settings(tokenizer, max_new_tokens, model.generation_config)
    settings["max_new_tokens"] = fit_context(prompt_length, model.config.max_position_embeddings,
                                             settings["max_new_tokens"])
    output = model.generate(**inputs, **settings)
    return tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True).strip()


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import torch

    from videopanda.data.video import VideoReadError, read_video

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if device == "cuda" and not torch.cuda.is_available():
            raise InferError("--device cuda was asked for but no CUDA device is available")
        config = check_model_folder(args.model)
        frames = read_video(args.video, num_frames=frame_config_for(config, args.num_frames).num_frames)
        model, processor = load_model(args.model, device, torch_dtype(args.dtype))
        text = answer(model, processor, frames, args.question, args.max_new_tokens, args.num_frames, args.system)
    except (InferError, VideoReadError) as err:
        message = " ".join(str(err).split())
        print(f"videopanda infer: error: {message}", file=sys.stderr)
        return 2 if isinstance(err, (ModelFolderError, MemoryBudgetError)) else 1
    print(text)
    return 0
