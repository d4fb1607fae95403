"""One reader for a model folder: `read_model_folder` checks it and reads its small files and weight headers once.

    folder = read_model_folder("out/finetune")      # -> ModelFolder (frozen), or ModelFolderError in one line
    model, processor = load_model(folder, "cuda")   # reuses what was read: nothing is parsed twice

What the reader reads, each once, and keeps in the `ModelFolder` it returns:
- `config.json`, parsed and built into a `VideoPandaConfig`, whose `@strict` field types and own checks
  (`model/videopanda.py`) refuse a wrong value; the dtype it names (`dtype` / `torch_dtype`, float32 when
  absent: `checkpoint_dtype`);
- every weight file's header (`checkpoint.stored_tensors`: the index, each shard there and readable, each
  tensor's dtype and shape) without reading weights;
- `generation_config.json` when there is one (the project's answer settings, `project_generation_config`);
  a folder without it (the released layout) gets the settings `from_pretrained` takes from config.json;
- the tokenizer files: there, and parsing;
- for a LoRA adapter folder (`videopanda_adapter.json` beside peft's `adapter_config.json`,
  `adapter_model.safetensors` and `visual.safetensors`, written by `videopanda.train.lora`): the record
  and its base folder, read by this same reader. The weights are the base's; the config, generation
  settings and tokenizer the adapter folder's own.

Everything else reuses the description: `load_model` (`from_pretrained` with the config and generation
settings already read), the memory check (`estimate_memory` from the headers), `frame_config_for`, and the
fingerprint (`model_identity`). Errors are one line naming the file: `ModelFolderError` (exit 2 in every
command), `MemoryBudgetError` when the model would not fit.

Memory: before reading weights, `load_model` compares `estimate_memory` (the weights the model keeps, at
the chosen dtype; the KV cache of a full context; 10% of the weights and 256 MiB for activations) with
the memory available: on cpu psutil's available RAM (the kernel's MemAvailable, which does not see a
container's cgroup limit: set the budget there), on cuda the device's free memory
(`torch.cuda.mem_get_info`). `VIDEOPANDA_MEMORY_BUDGET` (bytes, or a size such as `24GB` or `512MiB`,
read by accelerate's `convert_file_size_to_int`) replaces that measurement.

Identity (`model_identity`, the fingerprint of eval predictions and of an adapter's base): a hash of the
folder's small files (config, generation config, tokenizer files, the weight index) and, per weight file,
its name, size and a checksum of its whole content (a zip `.bin`'s stored CRC-32s, any other file's CRC-32
read in 16 MiB blocks), so two checkpoints of one run differ. An adapter folder's identity hashes its small
files, adapter config, adapter and visual weights and its base's identity. Within a process a full folder
whose files keep their sizes, times and inodes is checksummed once.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import re
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from videopanda.log import get_logger

if TYPE_CHECKING:
    import torch
    from transformers import GenerationConfig

    from videopanda.data.frames import FrameConfig
    from videopanda.model.checkpoint import StoredTensor
    from videopanda.model.videopanda import VideoPandaConfig

logger = get_logger(__name__)

DTYPE_NAMES = ("float32", "bfloat16", "float16")
"""The dtypes a model runs in (`--dtype`, config.json's `dtype`), as torch names them."""
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_JSON_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "tokenizer.json")
ADAPTER_RECORD = "videopanda_adapter.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
VISUAL_WEIGHTS = "visual.safetensors"
ADAPTER_FILES = (ADAPTER_RECORD, ADAPTER_CONFIG, ADAPTER_WEIGHTS, VISUAL_WEIGHTS)
MEMORY_BUDGET_ENV = "VIDEOPANDA_MEMORY_BUDGET"
ACTIVATION_FLOOR = 256 * 2**20
"""Bytes reserved for activations (the video front end, logits) beyond the KV cache and 10% of the weights."""
_IDENTITY_FILES = ("config.json", GENERATION_CONFIG, "tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja")
_BLOCK = 16 * 1024 * 1024


class InferError(Exception):
    """A bad request (options, device); the message says what."""


class ModelFolderError(InferError):
    """A folder that cannot be loaded as a model; the message names the file (or folder) and why, in one line."""


class AdapterFolderError(ModelFolderError, ValueError):
    """An adapter folder that cannot be used; the message names the file."""


class MemoryBudgetError(InferError):
    """The model would not fit in the memory available; the message says how much it needs and how much there is."""


@dataclass(frozen=True)
class AdapterRecord:
    """`videopanda_adapter.json`: the base folder the adapters were trained on, its `model_identity` then
    (None in folders written before it was recorded) and which visual parts trained."""

    base: Path
    base_identity: str | None
    visual: str | None


@dataclass(frozen=True)
class ModelFolder:
    """What `read_model_folder` found in a checked folder; nothing here needs reading again.

    `tensors`: every stored tensor (name -> dtype, shape, file) of the weights `from_pretrained` reads (the
    base's for an adapter folder); `unlisted`: legacy-format `.bin` files whose tensors a header cannot list.
    `base`: for an adapter folder, its base as this reader describes it (`adapter` holds its record)."""

    path: Path
    config: VideoPandaConfig
    dtype: torch.dtype
    tensors: Mapping[str, StoredTensor]
    unlisted: tuple[Path, ...]
    generation_config: GenerationConfig
    adapter: AdapterRecord | None = None
    base: ModelFolder | None = None

    @property
    def weights(self) -> Path:
        """The folder `from_pretrained` reads the model's weights from."""
        return self.base.path if self.base is not None else self.path


def torch_dtype(name: str) -> torch.dtype | None:
    """The torch dtype named `name` (one of DTYPE_NAMES); None for "auto" (the checkpoint's own)."""
    import torch

    return None if name == "auto" else getattr(torch, name)


def checkpoint_dtype(raw: Mapping[str, Any], config_path: Path | str = "config.json") -> torch.dtype:
    """The dtype a config.json says its weights are in (`dtype`, else `torch_dtype`); float32 when absent."""
    name = raw.get("dtype") or raw.get("torch_dtype") or "float32"
    if not isinstance(name, str) or name.removeprefix("torch.") not in DTYPE_NAMES:
        raise ModelFolderError(f"{config_path}: dtype {json.dumps(name)[:40]} is none of {', '.join(DTYPE_NAMES)}")
    return torch_dtype(name.removeprefix("torch."))


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


def _one_line(err: BaseException) -> str:
    """A library error in one line: a strict-dataclass error by its cause ("Field 'x' expected int, got str")."""
    from videopanda.model.checkpoint import one_line_error

    return one_line_error(err.__cause__ if err.__cause__ is not None and "Validation error" in str(err) else err)


def _model_config(config_path: Path, raw: dict) -> VideoPandaConfig:
    """config.json's object as a `VideoPandaConfig`: the class's `@strict` field types and its own checks
    of the multimodal fields (`model/videopanda.py`), then the frame layout they give."""
    from huggingface_hub.errors import StrictDataclassError

    from videopanda.model.checkpoint import MODEL_TYPE
    from videopanda.model.videopanda import VideoPandaConfig

    if raw.get("model_type") != MODEL_TYPE:
        raise ModelFolderError(f"{config_path.parent}: model_type is {raw.get('model_type')!r}, not {MODEL_TYPE!r}")
    try:
        config = VideoPandaConfig.from_dict(raw)
    except (ValueError, TypeError, KeyError, AttributeError, StrictDataclassError) as err:
        raise ModelFolderError(f"{config_path}: {_one_line(err)}") from err
    config.name_or_path = str(config_path.parent)
    try:
        frame_config_for(config)
    except InferError as err:
        raise ModelFolderError(f"{config_path}: {err}") from err
    return config


def _generation_config(folder: Path, raw: dict) -> GenerationConfig:
    """The folder's generation_config.json, or (without one) the settings `from_pretrained` would take from
    config.json (`raw`, its object)."""
    from transformers import GenerationConfig

    if not (folder / GENERATION_CONFIG).is_file():
        return GenerationConfig.from_dict(dict(raw), _from_model_config=True)
    try:
        return GenerationConfig.from_pretrained(folder)
    except (OSError, ValueError, TypeError) as err:
        raise ModelFolderError(f"{folder / GENERATION_CONFIG}: {_one_line(err)}") from err


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


def read_adapter_record(folder: str | Path) -> AdapterRecord:
    """The adapter folder's `videopanda_adapter.json` after checking that every adapter file is there."""
    folder = Path(folder)
    for name in ADAPTER_FILES:
        if not (folder / name).is_file():
            raise AdapterFolderError(f"{folder}: adapter folder without {name}")
    try:
        record = json.loads((folder / ADAPTER_RECORD).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise AdapterFolderError(f"{folder / ADAPTER_RECORD}: unreadable ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("base"), str):
        raise AdapterFolderError(f"{folder / ADAPTER_RECORD}: no `base` folder recorded")
    return AdapterRecord(Path(record["base"]), record.get("base_identity"), record.get("visual"))


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_RECORD).is_file()


def read_model_folder(path: str | Path, tokenizer: bool = True) -> ModelFolder:
    """Check a Video-Panda model folder (ours, the released layout, or a LoRA adapter folder) and describe it,
    reading each file once and no weights (module docstring). `tokenizer` False: the tokenizer files are not
    checked (an adapter's base, whose tokenizer is the adapter folder's). Raises ModelFolderError naming the
    file, in one line."""
    from videopanda.model.checkpoint import stored_tensors

    folder = Path(path)
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: model folder does not exist")
    if not config_path.is_file():
        raise ModelFolderError(f"{folder}: not a model folder (no config.json)")
    raw = _read_json_object(config_path, "config")
    config = _model_config(config_path, raw)
    dtype = checkpoint_dtype(raw, config_path)
    adapter = base = None
    if is_adapter_folder(folder):
        adapter = read_adapter_record(folder)
        if is_adapter_folder(adapter.base):
            raise AdapterFolderError(f"{folder / ADAPTER_RECORD}: its base {adapter.base} is an adapter folder too; "
                                     "adapters go on a full model folder (`videopanda merge-lora` makes one)")
        try:
            base = read_model_folder(adapter.base, tokenizer=False)
        except ModelFolderError as err:
            raise AdapterFolderError(f"{folder / ADAPTER_RECORD}: its base cannot be used: {err}") from err
        tensors, unlisted = base.tensors, base.unlisted
    else:
        try:
            tensors, unlisted = stored_tensors(folder)
        except (OSError, ValueError, pickle.UnpicklingError) as err:
            raise ModelFolderError(str(err)) from err
    if tokenizer:
        _check_tokenizer_files(folder)
    return ModelFolder(folder, config, dtype, tensors, tuple(unlisted), _generation_config(folder, raw),
                       adapter, base)


def frame_config_for(config, num_frames: int | None = None) -> FrameConfig:
    """The model's frame layout (FrameConfig), optionally with another number of frames."""
    from videopanda.data.frames import FrameConfig

    try:
        return FrameConfig(num_frames=num_frames or config.num_frames, frames_per_chunk=config.frames_per_chunk,
                           image_size=config.image_size, teacher_image_size=config.teacher_image_size,
                           patch_size=config.stab_config.patch_size)
    except ValueError as err:
        raise InferError(str(err)) from err


# ------------------------------------------------------------------------------------ identity


def _weight_signature(path: Path, digest: hashlib._Hash) -> None:
    size = path.stat().st_size
    digest.update(f"{path.name}\0{size}\0".encode())
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
        for info in entries:
            digest.update(f"{info.filename}\0{info.CRC}\0{info.file_size}\n".encode())
        if any(info.CRC for info in entries):
            return
        # written without CRCs (torch.save can skip them): checksum the bytes like any other file
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            crc = zlib.crc32(block, crc)
    digest.update(f"crc32\0{crc:08x}\n".encode())


_identities: dict[tuple, str] = {}


def _folder_state(folder: Path) -> tuple | None:
    """What tells a folder's files apart without reading them: its real path and (name, size, mtime_ns, inode)
    of each file in it; None when it cannot be listed."""
    try:
        files = [(entry.name, entry.stat()) for entry in os.scandir(folder) if entry.is_file()]
        return (str(folder.resolve()),
                *sorted((name, stat.st_size, stat.st_mtime_ns, stat.st_ino) for name, stat in files))
    except OSError:
        return None


def model_identity(folder: str | os.PathLike | ModelFolder) -> str:
    """A 16-hex-digit identity of a model folder's contents, or of an adapter folder's and its base's (module
    docstring). Raises ModelFolderError naming the file it cannot read. A full folder whose files keep their
    sizes, times and inodes is checksummed once per process; an adapter folder (small) is always summed anew,
    its base through this cache, so a changed base is always seen."""
    folder = Path(folder.path if isinstance(folder, ModelFolder) else folder)
    state = None if is_adapter_folder(folder) else _folder_state(folder)
    if state is None:
        return _checksum_identity(folder)
    if state not in _identities:
        _identities[state] = _checksum_identity(folder)
    return _identities[state]


def _checksum_identity(folder: Path) -> str:
    from videopanda.model.checkpoint import checkpoint_files

    digest = hashlib.sha256()
    adapter = is_adapter_folder(folder)
    small = [folder / name for name in _IDENTITY_FILES + ((ADAPTER_CONFIG,) if adapter else ())]
    for path in small + sorted(folder.glob("*.index.json")):
        if path.is_file():
            digest.update(f"{path.name}\0".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    try:
        if adapter:
            digest.update(f"base\0{model_identity(read_adapter_record(folder).base)}\n".encode())
            weights = [folder / ADAPTER_WEIGHTS, folder / VISUAL_WEIGHTS]
        else:
            weights, _ = checkpoint_files(folder)
    except (OSError, ValueError) as error:
        raise ModelFolderError(" ".join(str(error).split())) from error
    for path in sorted(weights):
        if not path.is_file():
            raise ModelFolderError(f"{path}: weight file named by the checkpoint index is missing")
        try:
            _weight_signature(path, digest)
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
            raise ModelFolderError(f"{path}: unreadable weight file ({' '.join(str(error).split())})") from error
    return digest.hexdigest()[:16]


def check_base(folder: ModelFolder) -> None:
    """AdapterFolderError (one line) unless an adapter folder's base is the model the adapters were trained on
    (its `model_identity` equals the recorded `base_identity`); a record without one (written before it was
    recorded) only warns, naming the folder."""
    if folder.adapter is None:
        return
    base, recorded = folder.adapter.base, folder.adapter.base_identity
    if recorded is None:
        logger.warning("%s: %s records no identity of its base %s (written by an older version): cannot tell "
                       "whether the base is still the model the adapters were trained on", folder.path,
                       ADAPTER_RECORD, base)
        return
    actual = model_identity(folder.base)
    if actual != recorded:
        raise AdapterFolderError(f"{folder.path}: its base {base} is not the model the adapters were trained on "
                                 f"(identity {actual}, recorded {recorded} in {ADAPTER_RECORD}); restore that "
                                 f"base or point `base` at a copy of it")


# ------------------------------------------------------------------------------------ memory


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


def estimate_memory(folder: ModelFolder, dtype: torch.dtype) -> MemoryEstimate:
    """What loading `folder` at `dtype` and generating a full context needs, from its weight headers.

    weights: every stored tensor the model keeps (not the keys `from_pretrained` ignores), floating ones
    at `dtype`'s width; a legacy-format `.bin` counts as its file size scaled from the checkpoint's dtype.
    kv_cache: 2 x layers x key/value heads x head_dim x max_position_embeddings x width.
    activations: 10% of the weights + ACTIVATION_FLOOR."""
    from videopanda.model.checkpoint import IGNORED_ON_LOAD

    width = dtype.itemsize
    ignored = re.compile("|".join(IGNORED_ON_LOAD))
    weights = sum(t.numel * (width if t.dtype.is_floating_point else t.dtype.itemsize)
                  for key, t in folder.tensors.items() if not ignored.match(key))
    weights += sum(path.stat().st_size * width // folder.dtype.itemsize for path in folder.unlisted)
    config = folder.config
    heads = config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_cache = 2 * config.num_hidden_layers * heads * head_dim * config.max_position_embeddings * width
    return MemoryEstimate(dtype, weights, kv_cache, weights // 10 + ACTIVATION_FLOOR)


def format_size(n: int) -> str:
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def available_memory(device: str) -> tuple[int, str]:
    """(bytes available to a model on `device`, where that figure comes from): `VIDEOPANDA_MEMORY_BUDGET`
    when set, else the free memory of a cuda device, else psutil's available RAM."""
    budget = os.environ.get(MEMORY_BUDGET_ENV, "").strip()
    if budget:
        from accelerate.utils import convert_file_size_to_int

        try:
            return (int(budget) if budget.isdigit() else convert_file_size_to_int(budget)), MEMORY_BUDGET_ENV
        except ValueError:
            raise InferError(f"{MEMORY_BUDGET_ENV}: {budget!r} is not a size (e.g. 1000, 1MB, 24GB, 512MiB)") from None
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise InferError(f"{device} was asked for but no CUDA device is available")
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free, f"free on {device}"
    import psutil

    return psutil.virtual_memory().available, "available RAM"


def check_memory(folder: ModelFolder, dtype: torch.dtype, device: str = "cpu",
                 budget: int | None = None) -> MemoryEstimate:
    """The estimate for `dtype`, or MemoryBudgetError when it exceeds `budget` (default: `available_memory`).
    The message says what is needed and what is available, and which smaller dtype would fit, if any."""
    need = estimate_memory(folder, dtype)
    available, source = (budget, "memory_budget") if budget is not None else available_memory(device)
    if need.total <= available:
        return need
    message = (f"{folder.path}: the model does not fit in memory: at {str(dtype).removeprefix('torch.')} it needs "
               f"about {format_size(need.total)} ({format_size(need.weights)} of weights + "
               f"{format_size(need.kv_cache + need.activations)} for the KV cache and activations), but "
               f"{format_size(available)} is available ({source})")
    smaller = [d for d in map(torch_dtype, DTYPE_NAMES) if d.itemsize < dtype.itemsize]
    for candidate in smaller:
        fits = estimate_memory(folder, candidate)
        if fits.total <= available:
            message += f"; --dtype {str(candidate).removeprefix('torch.')} would fit (about {format_size(fits.total)})"
            break
    else:
        message += "; no smaller dtype would fit either" if smaller else ""
    raise MemoryBudgetError(message)


# ------------------------------------------------------------------------------------ loading


def read_visual(folder: Path, include_training: bool) -> dict:
    """visual.safetensors of an adapter folder in our model's key names (the distillation head's, under
    `model.video_tower_compressor.`, only with `include_training`)."""
    from safetensors.torch import load_file

    from videopanda.model.checkpoint import released_key_to_model_key

    out = {}
    for key, tensor in load_file(folder / VISUAL_WEIGHTS).items():
        name = released_key_to_model_key(key, include_training=include_training)
        if name is not None:
            out[name] = tensor
    return out


def load_visual_into(model, state: dict, source: Path) -> None:
    """Copy mapped visual tensors into a `VideoPandaForCausalLM`; every STAB / projector tensor must come."""
    from videopanda.model.checkpoint import PROJECTOR_PREFIX, STAB_PREFIX

    wanted = {k for k in model.state_dict() if k.startswith((STAB_PREFIX, PROJECTOR_PREFIX))}
    ours = {k: v for k, v in state.items() if k.startswith((STAB_PREFIX, PROJECTOR_PREFIX))}
    if ours.keys() != wanted:
        raise AdapterFolderError(f"{source / VISUAL_WEIGHTS}: missing {sorted(wanted - ours.keys())}, "
                                 f"unexpected {sorted(ours.keys() - wanted)}")
    model.load_state_dict(ours, strict=False)


def attach_adapter(model, folder: str | Path):
    """The adapter folder's visual weights and adapters on `model` (its base, loaded; changed in place)
    -> the `PeftModel` (unmerged adapters, inference mode)."""
    from peft import PeftModel

    from peft import get_peft_model_state_dict
    from safetensors import safe_open

    folder = Path(folder)
    load_visual_into(model, read_visual(folder, include_training=False), folder)
    # peft warns of missing keys (checked below, in one line) and of a deprecated transformers method it calls
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Found missing adapter keys")
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.* is deprecated")
        peft_model = PeftModel.from_pretrained(model, folder, is_trainable=False)
    with safe_open(folder / ADAPTER_WEIGHTS, "pt") as stored:
        missing = sorted(set(get_peft_model_state_dict(peft_model)) - set(stored.keys()))
    if missing:  # peft leaves them at their initial values (B = 0): the adapter would silently do nothing
        raise AdapterFolderError(f"{folder / ADAPTER_WEIGHTS}: {len(missing)} adapter tensor(s) missing "
                                 f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    return peft_model


def _quiet_transformers() -> None:
    """transformers' own progress bars and notices would bury the one line a command promises."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _saved_processor(folder: ModelFolder):
    """(the folder's `VideoPandaVideoProcessor`, the rest of its saved processor dict and extra arguments):
    its saved processor files, else (the released layout) the model config's frame layout and sampling
    (an empty dict)."""
    from videopanda.data.processor import PROCESSOR_FILES, VideoPandaProcessor, VideoPandaVideoProcessor

    if not any((folder.path / name).is_file() for name in PROCESSOR_FILES):
        return VideoPandaVideoProcessor.from_model_config(folder.config), {}, {}
    saved, extra = VideoPandaProcessor.get_processor_dict(folder.path)
    saved.pop("chat_template", None)  # the prompt format is the processor module's (videopanda.data.processor)
    if not saved.get("video_processor"):
        raise ValueError("processor_config.json has no 'video_processor'")
    return VideoPandaVideoProcessor(**saved.pop("video_processor")), saved, extra


def folder_video_processor(folder: ModelFolder):
    """The video processor `load_model` gives the folder's processor (its saved sampling included), read
    without the tokenizer or the weights. Raises ModelFolderError naming the folder."""
    from videopanda.model.checkpoint import one_line_error

    try:
        return _saved_processor(folder)[0]
    except Exception as err:
        raise ModelFolderError(f"{folder.path}: the processor files cannot be read ({one_line_error(err)})") from err


def _processor(folder: ModelFolder):
    """The folder's `VideoPandaProcessor` (`_saved_processor`); the tokenizer built with the config already
    read, so config.json is not read again."""
    from transformers import AutoTokenizer

    from videopanda.data.processor import VideoPandaProcessor

    tokenizer = AutoTokenizer.from_pretrained(folder.path, config=folder.config)
    video, saved, extra = _saved_processor(folder)
    return VideoPandaProcessor.from_args_and_dict([video, tokenizer], saved, **extra)


def _load_processor(folder: ModelFolder):
    """The folder's `VideoPandaProcessor`, checked against the model's vocabulary and placeholder id."""
    from videopanda.model.checkpoint import one_line_error

    try:
        processor = _processor(folder)
    except Exception as err:  # tokenizers fail in many ways on broken files
        logger.debug("processor of %s", folder.path, exc_info=True)
        raise ModelFolderError(f"{folder.path}: the tokenizer cannot be loaded ({one_line_error(err)})") from err
    config = folder.config
    text_tokens = len(processor.tokenizer) - 1  # without the <image> placeholder
    if text_tokens > config.vocab_size:
        raise ModelFolderError(f"{folder.path}: the tokenizer has {text_tokens} tokens but config.json's vocab_size "
                               f"is {config.vocab_size}")
    if processor.image_token_id != config.image_token_id:
        raise ModelFolderError(f"{folder.path}: the tokenizer's <image> id {processor.image_token_id} is not "
                               f"config.json's image_token_id {config.image_token_id}")
    return processor


def _check_all_loaded(weights: Path, loading: dict) -> None:
    """ModelFolderError when `from_pretrained` found no stored tensor for some of the model's weights (it would
    leave them at their random initial values); `loading`: its `output_loading_info`."""
    missing = sorted(loading.get("missing_keys") or ())
    if missing:
        raise ModelFolderError(missing_tensors_message(weights, missing))


def missing_tensors_message(where: Path, missing: list[str]) -> str:
    """The one line for weight files (`where`: the file, or its folder) that lack some of the model's tensors."""
    shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
    return f"{where}: {len(missing)} of the model's tensors are not in its weight files ({shown}); a partial save?"


def load_model(folder: str | Path | ModelFolder, device: str = "cpu", dtype: torch.dtype | None = None, *,
               memory_budget: int | None = None, keep_peft: bool = False):
    """-> (model in eval mode on `device`, its `VideoPandaProcessor`).

    `folder`: a path (read with `read_model_folder`) or what that returned. dtype None: the checkpoint's own.
    Checks the tokenizer against the model, an adapter's base against its record (`check_base`) and that the
    model fits (`check_memory`; `memory_budget` in bytes overrides the memory available) before reading any
    weights. A LoRA adapter folder loads its base's weights, then its own visual weights, adapters and
    generation settings on top (unmerged): the model returned is the `VideoPandaForCausalLM` holding them,
    or with `keep_peft` the peft wrapper (for `merge_and_unload`). Raises ModelFolderError naming the
    file, MemoryBudgetError."""
    import torch
    from transformers import AutoModelForCausalLM

    from videopanda.model.checkpoint import one_line_error

    folder = folder if isinstance(folder, ModelFolder) else read_model_folder(folder)
    dtype = folder.dtype if dtype is None else dtype
    _quiet_transformers()
    processor = _load_processor(folder)
    check_base(folder)
    check_memory(folder, dtype, device, memory_budget)
    weights_config = copy.deepcopy((folder.base or folder).config)  # from_pretrained sets fields on it
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(folder.weights, config=weights_config, dtype=dtype,
                                                              generation_config=folder.generation_config,
                                                              output_loading_info=True)
        _check_all_loaded(folder.weights, loading)
        if folder.adapter is not None:
            peft_model = attach_adapter(model, folder.path)
            model = peft_model if keep_peft else model
    except ModelFolderError:
        raise
    except Exception as err:  # headers were fine, the data was not: any reader error ends here
        logger.debug("loading %s", folder.path, exc_info=True)
        raise ModelFolderError(f"{folder.path}: cannot load the model ({one_line_error(err)})") from err
    try:
        model = model.to(device)
    except torch.OutOfMemoryError as err:
        raise MemoryBudgetError(f"{folder.path}: {device} ran out of memory while the model was moved there") from err
    return model.eval(), processor
