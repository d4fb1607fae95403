"""Checkpoint names and files: the released Video-Panda / EVE key layouts mapped onto ours, and readers.

Name maps (all take and return full state-dict keys):

- `released_key_to_model_key`: a released Video-Panda-7B key (docs/DESIGN.md, `checkpoint.py`) -> our
  `VideoPandaForCausalLM` key, or None for what inference ignores (the `vision_tower` /
  `mm_projector` aliases, the teacher, the compressor, `lmhra2`). The LLM and projector names are
  already ours; STAB names go through `stab.released_stab_key_to_module_key`.
- `eve_key_to_model_key`: an EVE-7B-Pretrain key -> ours, for the stage-1 initialisation:
  `model.vision_tower.*` (minus its CLIP teacher) -> STAB, `model.mm_projector.*` -> projector,
  `model.vision_tower_compressor.*` (minus its `clip_layer.` CLIP copy) -> distillation head, whose
  module names are the checkpoint names (`train.distillation.DistillationHead`), so only the prefix changes.

`AutoModelForCausalLM.from_pretrained` applies the STAB part of the released map through
transformers' own conversion-mapping registry (`register_released_key_mapping`), one exact
`WeightRenaming` per released STAB key. The registry is also used in reverse by `save_pretrained`,
so our own folders store the STAB under the released names too, and both layouts load the same way.

Readers: `read_state_dict(folder, prefixes=None)` reads `model.safetensors[.index.json]` or
`pytorch_model[.bin | -*.bin + .bin.index.json]` (`.bin` with `weights_only=True`), all tensors or only
those under some key prefixes (`read_prefixed_tensors`); `stored_tensors(folder)` lists every tensor's
dtype and shape from the files' headers (safetensors header, `.bin` pickle on the meta device) without
reading data, checking on the way that every file is there and readable;
`place_state_dict` copies a mapped state dict into a module and reports, loudly, every key it could
not place and every parameter left unset.
"""
from __future__ import annotations

import json
import math
import pickle
import re
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from videopanda.log import get_logger

logger = get_logger(__name__)

MODEL_TYPE = "videopanda"
STAB_PREFIX = "model.video_tower."
PROJECTOR_PREFIX = "model.video_projector."
TEACHER_PREFIX = "model.video_teacher."
HEAD_PREFIX = "model.video_tower_compressor."
ALIAS_PREFIXES = ("model.vision_tower.", "model.mm_projector.")
UNUSED_STAB_PREFIX = "lmhra2."
"""The released STAB carries a second LSTE (`lmhra2`) that its forward never uses."""

EVE_TOWER_PREFIX = "model.vision_tower."
EVE_PROJECTOR_PREFIX = "model.mm_projector."
EVE_HEAD_PREFIX = "model.vision_tower_compressor."
HEAD_TEACHER_PARTS = ("teacher_layer.", "clip_layer.")
"""The compressor (distillation head) of the released (`teacher_layer.`) and EVE (`clip_layer.`)
checkpoints holds a copy of its teacher under these names; the head never loads them."""

IGNORED_ON_LOAD = (
    r"^model\.vision_tower\.",
    r"^model\.mm_projector\.",
    r"^model\.video_teacher\.",
    r"^model\.video_tower_compressor\.",
    r"^model\.vision_tower_compressor\.",
    r"^model\.video_tower\.lmhra2\.",
)
"""Regexes of released (and EVE) keys that `from_pretrained` never uses (`_keys_to_ignore_on_load_unexpected`);
training places the distillation head itself (`train.stages`)."""

SAFE_INDEX, SAFE_SINGLE = "model.safetensors.index.json", "model.safetensors"
BIN_INDEX, BIN_SINGLE = "pytorch_model.bin.index.json", "pytorch_model.bin"


def released_stab_keys() -> list[str]:
    """Every STAB key of the released checkpoint, without the `model.video_tower.` prefix
    (docs/DESIGN.md, `checkpoint.py`)."""
    keys = ["class_embedding", "split_embedding", "temporal_cls_token", "balance", "patch_embedding.weight"]
    for lste in ("lmhra1", "lmhra2"):
        bn = f"{lste}.pos_embed.0."
        keys += [bn + n for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]
        keys += [f"{lste}.pos_embed.{i}.{n}" for i in (1, 2, 3) for n in ("weight", "bias")]
    keys += ["dpe.weight", "dpe.bias"]
    keys += ["dec.attn.in_proj_weight", "dec.attn.in_proj_bias", "dec.attn.out_proj.weight", "dec.attn.out_proj.bias"]
    keys += [f"dec.ln_{i}.{n}" for i in (1, 2, 3) for n in ("weight", "bias")]
    keys += [f"dec.mlp.{layer}.{n}" for layer in ("c_fc", "c_proj") for n in ("weight", "bias")]
    keys += ["proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias"]
    for attention in ("local_attention", "global_attention"):
        keys += [f"{attention}.{n}" for n in ("q.0.weight", "q.0.bias", "q.1.weight", "kv.0.weight", "kv.0.bias",
                                               "kv.1.weight", "proj.weight", "proj.bias")]
    return keys


def _stab_module_key(released: str) -> str | None:
    """A released STAB name (no prefix) -> the STAB module's name; None for `lmhra2`.

    A name the STAB cannot place comes back unchanged so that `place_state_dict` reports it.
    """
    from videopanda.model.stab import released_stab_key_to_module_key

    if released.startswith(UNUSED_STAB_PREFIX):
        return None
    mapped = released_stab_key_to_module_key(released)
    return released if mapped is None else mapped


def stab_renames() -> dict[str, str]:
    """Released STAB name -> module name (no prefixes) for every released key whose name differs."""
    renames = {}
    for released in released_stab_keys():
        ours = _stab_module_key(released)
        if ours is not None and ours != released:
            renames[released] = ours
    clashes = set(renames) & set(renames.values())
    if clashes:
        raise RuntimeError(f"STAB key map is not one-to-one: {sorted(clashes)} are both source and target names")
    return renames


def released_key_to_model_key(key: str, include_training: bool = False) -> str | None:
    """A released Video-Panda key -> our key, or None when inference does not use it.

    include_training keeps the distillation head (`model.video_tower_compressor.*` minus its teacher
    copy) for a model with distillation enabled; the teacher itself is always loaded from LanguageBind.
    """
    if key.startswith(STAB_PREFIX):
        ours = _stab_module_key(key[len(STAB_PREFIX):])
        return None if ours is None else STAB_PREFIX + ours
    if key.startswith(HEAD_PREFIX):
        return key if include_training and not key[len(HEAD_PREFIX):].startswith(HEAD_TEACHER_PARTS) else None
    if key.startswith(ALIAS_PREFIXES) or key.startswith(TEACHER_PREFIX):
        return None
    return key


def model_key_to_released_key(key: str) -> str:
    """Inverse of `released_key_to_model_key` for the keys our model holds."""
    if key.startswith(STAB_PREFIX):
        inverse = {ours: released for released, ours in stab_renames().items()}
        name = key[len(STAB_PREFIX):]
        return STAB_PREFIX + inverse.get(name, name)
    return key


def _is_eve_teacher_key(name: str) -> bool:
    """EVE's vision tower also holds its CLIP teacher; those parts are named for it."""
    return any("teacher" in part or "clip" in part for part in name.split("."))


def eve_key_to_model_key(key: str) -> str | None:
    """An EVE-7B-Pretrain key -> our key (stage-1 initialisation), None for what stage 1 does not take.

    LLM keys keep their names; the vision tower goes to the STAB (its CLIP teacher dropped), the
    projector to ours, the compressor (minus its teacher copy) to the distillation head.
    """
    if key.startswith(EVE_TOWER_PREFIX):
        name = key[len(EVE_TOWER_PREFIX):]
        if _is_eve_teacher_key(name):
            return None
        ours = _stab_module_key(name)
        return None if ours is None else STAB_PREFIX + ours
    if key.startswith(EVE_PROJECTOR_PREFIX):
        return PROJECTOR_PREFIX + key[len(EVE_PROJECTOR_PREFIX):]
    if key.startswith(EVE_HEAD_PREFIX):
        name = key[len(EVE_HEAD_PREFIX):]
        return None if name.startswith(HEAD_TEACHER_PARTS) else HEAD_PREFIX + name
    return key


def weight_renamings() -> list:
    """transformers `WeightRenaming`s: released STAB names -> ours, one exact (anchored) rule per key."""
    from transformers.core_model_loading import WeightRenaming

    return [
        WeightRenaming(source_patterns="^" + re.escape(STAB_PREFIX + released), target_patterns=STAB_PREFIX + ours)
        for released, ours in stab_renames().items()
    ]


def register_released_key_mapping() -> None:
    """Register the released -> ours STAB renames for model_type "videopanda" with transformers.

    `from_pretrained` then loads the released layout as is, and `save_pretrained` writes the
    STAB under the released names (the registry works both ways).
    """
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping

    register_checkpoint_conversion_mapping(MODEL_TYPE, weight_renamings(), overwrite=True)


def one_line_error(err: BaseException) -> str:
    """One line for a library error: its first line, or for torch's weights-only refusal (a page of advice
    around one line) the line that says what was refused."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    refusal = [line for line in lines if "WeightsUnpickler error" in line]
    return (refusal or lines or [type(err).__name__])[0]


def _read_file(path: Path, prefixes: tuple[str, ...] | None) -> dict[str, torch.Tensor]:
    """The tensors of one weight file (all, or those whose key starts with one of `prefixes`), on the CPU.

    A `.bin` holding anything but tensors raises `pickle.UnpicklingError` (`weights_only=True`); any other
    unreadable file raises ValueError. Both name the file in one line."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint shard {path} is missing")
    wanted = (lambda key: True) if prefixes is None else (lambda key: key.startswith(prefixes))
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                return {k: handle.get_tensor(k) for k in handle.keys() if wanted(k)}
        return {k: v for k, v in torch.load(path, map_location="cpu", weights_only=True, mmap=True).items() if wanted(k)}
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(f"{path}: {one_line_error(err)}") from err
    except Exception as err:  # a truncated or foreign file
        raise ValueError(f"{path} cannot be read: {one_line_error(err)}") from err


def _read_index(index: Path) -> dict[str, str]:
    """The tensor name -> file name map of a sharded checkpoint's index json; ValueError naming the index."""
    try:
        data = json.loads(index.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{index}: not a checkpoint index (not JSON text: {err})") from err
    except OSError as err:
        raise ValueError(f"{index}: cannot be read ({err.strerror or err})") from err
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if (not isinstance(weight_map, dict) or not weight_map
            or not all(isinstance(name, str) and name for name in weight_map.values())):
        raise ValueError(f'{index}: not a checkpoint index (needs a non-empty "weight_map" object of '
                         f"tensor name -> file name)")
    return weight_map


def _check_shard_keys(path: Path, weight_map: Mapping[str, str], keys: Iterable[str]) -> None:
    """ValueError unless the shard at `path` holds exactly the keys the index assigns to it."""
    listed = {k for k, name in weight_map.items() if name == path.name}
    found = set(keys)
    if listed != found:
        raise ValueError(
            f"{path}: index and shard disagree (in index only: {sorted(listed - found)[:5]}, "
            f"in shard only: {sorted(found - listed)[:5]})"
        )


def checkpoint_files(folder: str | Path) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of a model folder and, when sharded, its index's key -> file map.

    Prefers safetensors over `.bin`, an index over a single file. Raises FileNotFoundError naming the folder,
    or the index and the first file it names that is missing; ValueError naming an index that is not one.
    """
    folder = Path(folder)
    for index_name, single_name in ((SAFE_INDEX, SAFE_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        index = folder / index_name
        if index.is_file():
            weight_map = _read_index(index)
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [path for path in files if not path.is_file()]
            if missing:
                more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
                raise FileNotFoundError(f"{index}: weight file {missing[0]} is missing{more}")
            return files, weight_map
        if (folder / single_name).is_file():
            return [folder / single_name], None
    raise FileNotFoundError(
        f"{folder}: no model weights ({SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX})"
    )


def read_state_dict(folder: str | Path, prefixes: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a model folder, on the CPU, under their stored names: all of them, or only those whose
    key starts with one of `prefixes` (then, with an index, only the shards holding such keys are opened).

    Raises FileNotFoundError naming the folder or a shard named by the index that is missing, ValueError
    when the index and the shards disagree or a file cannot be read (see `_read_file`).
    """
    files, weight_map = checkpoint_files(folder)
    if weight_map is not None and prefixes is not None:
        weight_map = {k: name for k, name in weight_map.items() if k.startswith(prefixes)}
        files = [path for path in files if path.name in set(weight_map.values())]
    state: dict[str, torch.Tensor] = {}
    for path in tqdm(files, desc=f"reading {Path(folder).name}", disable=len(files) < 2):
        shard = _read_file(path, prefixes)
        if weight_map is not None:
            _check_shard_keys(path, weight_map, shard)
        state.update(shard)
    return state


def read_prefixed_tensors(folder: str | Path, prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Only the tensors whose key starts with one of `prefixes` (`read_state_dict` with prefixes): the
    teacher's `vision_model.*`, the visual parts of an EVE folder, the distillation head of ours, so a
    7B LLM is never read."""
    return read_state_dict(folder, prefixes)


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as its weight file describes it (read without its data)."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    file: Path

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16,
    "U8": torch.uint8, "BOOL": torch.bool,
}
LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
"""How a `.bin` in torch's pre-zip format starts: pickle protocol 2, then torch's magic number."""


def file_tensors(path: Path) -> dict[str, StoredTensor] | None:
    """Every tensor of one weight file, from its header only: the JSON header of a safetensors file (checked
    against the file's size, so a truncated file fails), the pickle of a zip `.bin` unpickled onto the meta
    device (`weights_only=True`). None for a `.bin` in torch's legacy pre-zip format, whose tensors cannot
    be listed without reading it all.

    Raises FileNotFoundError, pickle.UnpicklingError (a `.bin` holding anything but tensors) or ValueError
    (truncated, garbage, not a state dict), each naming the file in one line."""
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint shard {path} is missing")
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt", device="cpu") as handle:
                headers = {k: handle.get_slice(k) for k in handle.keys()}
                listed = {k: (part.get_dtype(), tuple(part.get_shape())) for k, part in headers.items()}
        except Exception as err:  # safetensors raises its own error type for a bad header
            raise ValueError(f"{path} cannot be read: {one_line_error(err)}") from err
        unknown = sorted({dtype for dtype, _ in listed.values()} - set(SAFETENSORS_DTYPES))
        if unknown:
            raise ValueError(f"{path}: tensors of unsupported dtype {', '.join(unknown)}")
        return {k: StoredTensor(SAFETENSORS_DTYPES[dtype], shape, path) for k, (dtype, shape) in listed.items()}
    if not zipfile.is_zipfile(path):
        with path.open("rb") as handle:
            if handle.read(len(LEGACY_TORCH_MAGIC)) == LEGACY_TORCH_MAGIC:
                return None
        raise ValueError(f"{path} cannot be read: not a complete PyTorch weight file (truncated or corrupt)")
    try:
        loaded = torch.load(path, map_location="meta", weights_only=True)
    except pickle.UnpicklingError as err:
        raise pickle.UnpicklingError(f"{path}: {one_line_error(err)}") from err
    except Exception as err:  # a damaged archive
        raise ValueError(f"{path} cannot be read: {one_line_error(err)}") from err
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{path}: not a state dict (tensor name -> tensor)")
    return {k: StoredTensor(v.dtype, tuple(v.shape), path) for k, v in loaded.items()}


def stored_tensors(folder: str | Path) -> tuple[dict[str, StoredTensor], list[Path]]:
    """Every tensor of a model folder from its weight files' headers (`file_tensors`), and the legacy-format
    `.bin` files whose tensors could not be listed. Checks what `read_state_dict` would, without reading
    data: raises FileNotFoundError (no weights, a missing shard), ValueError (a bad index or file, an
    index that disagrees with a shard) or pickle.UnpicklingError, each naming the file."""
    files, weight_map = checkpoint_files(folder)
    tensors: dict[str, StoredTensor] = {}
    unlisted: list[Path] = []
    for path in files:
        found = file_tensors(path)
        if found is None:
            unlisted.append(path)
            continue
        if weight_map is not None:
            _check_shard_keys(path, weight_map, found)
        tensors.update(found)
    return tensors, unlisted


@dataclass
class PlacementReport:
    """What `place_state_dict` did: keys placed, ignored on purpose, not placeable, and parameters left unset."""

    placed: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.placed)} placed, {len(self.ignored)} ignored, {len(self.unplaced)} unplaced, "
                f"{len(self.missing)} left unset")


def place_state_dict(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    key_map: Callable[[str], str | None],
    *,
    source: str = "checkpoint",
    expect_missing: Iterable[str] = (),
    strict: bool = False,
) -> PlacementReport:
    """Copy `state_dict` (stored names) into `module` under `key_map(name)` (None = ignore on purpose).

    Logs a warning naming every key that maps to nothing in `module` and every parameter or buffer
    of `module` that received nothing (unless its name starts with one of `expect_missing`, e.g. the
    temporal parts that stage 1 starts fresh). With strict, either kind raises instead.
    Shape mismatches always raise.
    """
    report = PlacementReport()
    targets = module.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        ours = key_map(name)
        if ours is None:
            report.ignored.append(name)
        elif ours not in targets:
            report.unplaced.append(name if ours == name else f"{name} (as {ours})")
        else:
            if tuple(targets[ours].shape) != tuple(tensor.shape):
                raise ValueError(f"{source}: {name} has shape {tuple(tensor.shape)}, "
                                 f"{ours} expects {tuple(targets[ours].shape)}")
            mapped[ours] = tensor
            report.placed.append(name)
    expect = tuple(expect_missing)
    report.missing = [k for k in targets if k not in mapped and not (expect and k.startswith(expect))]
    problems = []
    if report.unplaced:
        problems.append(f"{len(report.unplaced)} keys could not be placed: {', '.join(report.unplaced)}")
    if report.missing:
        problems.append(f"{len(report.missing)} model tensors received nothing: {', '.join(report.missing)}")
    if problems and strict:
        raise ValueError(f"{source}: " + "; ".join(problems))
    for problem in problems:
        logger.warning("%s: %s", source, problem)
    module.load_state_dict(mapped, strict=False)
    logger.info("%s: %s", source, report.summary())
    return report
