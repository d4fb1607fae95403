"""Stage initialisation and freezing (the paper's three-stage training recipe).

Parts, as the models declare them (`parts()`, module objects): `stab`, `projector` and `llm`
(`VideoPandaForCausalLM`: embeddings, decoder layers, final norm, lm_head), and, in training with
distillation, `distill_head` and `teacher` (always frozen) (`TrainingModel`). Every parameter belongs to
exactly one part; one that belongs to none is an error naming it (`parameter_parts`).

- prealign trains stab + projector + distill_head; the LLM is frozen.
- pretrain and finetune train everything but the teacher.

Initialisation (`build_model`), from the stage's starting folder (`stages.<stage>.init`, default `model.base`
for prealign and the previous stage's folder after it):
- a Video-Panda folder (model_type "videopanda": the previous stage's output, or a tiny model made for
  the quickstart): `from_pretrained`, plus the distillation head from its `model.video_tower_compressor.*`
  tensors (which `from_pretrained` ignores; the released names, so the released folders load too); a
  folder holding any head tensor, or one this trainer finished, must hold the complete head.
- an EVE-7B-Pretrain folder: the LLM through `from_pretrained`, then its `model.vision_tower.*` (minus
  the CLIP teacher), `model.mm_projector.*` and `model.vision_tower_compressor.*` (minus its `clip_layer.`
  CLIP copy) through `checkpoint.eve_key_to_model_key` into the STAB, projector and head; the temporal STAB
  parts (LSTE, DPE, GSTRA with its query, context projection and balance) start fresh. What was loaded and
  what was not is logged. With distillation on, the head must come complete (its 31 tensors, nothing
  extra): anything else is an error naming the tensors.
- a plain Llama folder: the LLM only; every visual part starts fresh (the experiment's `model.shape` and
  `model.stab` set the STAB).
The teacher always comes from the LanguageBind folder (`model.teacher`). The starting folder's config.json is
read once per run (preflight) and handed to these functions.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from videopanda.log import get_logger
from videopanda.model.checkpoint import (
    EVE_HEAD_PREFIX,
    EVE_PROJECTOR_PREFIX,
    EVE_TOWER_PREFIX,
    HEAD_PREFIX,
    HEAD_TEACHER_PARTS,
    PROJECTOR_PREFIX,
    STAB_PREFIX,
    eve_key_to_model_key,
    place_state_dict,
    read_prefixed_tensors,
)
from videopanda.train.checkpointing import FINAL_MARKER

logger = get_logger(__name__)

GROUPS = ("llm", "stab", "projector", "distill_head", "teacher")
VISUAL_GROUPS = frozenset({"stab", "projector", "distill_head"})
TEMPORAL_STAB_PARTS = ("lste.", "dpe.", "gstra.", "context.")
"""STAB parts (module names) that an EVE initialisation leaves fresh: LSTE, DPE, GSTRA (+ query), context."""

INIT_KINDS = ("videopanda", "eve", "llama")


def parameter_parts(model: nn.Module) -> dict[str, str]:
    """Parameter name -> the part (`model.parts()`) it belongs to, for every parameter of `model`.

    Raises ValueError naming the parameters that belong to no declared part or to two."""
    owner: dict[int, str] = {}
    for part, modules in model.parts().items():
        if part not in GROUPS:
            raise ValueError(f"{type(model).__name__} declares an unknown part {part!r} (known: {GROUPS})")
        for module in modules:
            for param in module.parameters():
                if owner.setdefault(id(param), part) != part:
                    raise ValueError(f"a parameter of part {part!r} also belongs to part {owner[id(param)]!r}")
    parts, orphans = {}, []
    for name, param in model.named_parameters():
        if id(param) in owner:
            parts[name] = owner[id(param)]
        else:
            orphans.append(name)
    if orphans:
        raise ValueError(f"parameters in no declared part of {type(model).__name__}: {', '.join(orphans)}")
    return parts


def trainable_groups(stage: str) -> frozenset[str]:
    if stage == "prealign":
        return VISUAL_GROUPS
    if stage in ("pretrain", "finetune"):
        return frozenset(set(GROUPS) - {"teacher"})
    raise ValueError(f"unknown stage {stage!r}")


@dataclass
class GroupInfo:
    name: str
    trainable: bool
    num_params: int


def apply_stage(model: nn.Module, stage: str) -> list[GroupInfo]:
    """Set requires_grad per part for `stage`; returns the parts present, in `GROUPS` order (the optimizer
    logs one line per part with its learning rate: `trainer.parameter_groups`)."""
    train = trainable_groups(stage)
    counts: dict[str, int] = {}
    parts = parameter_parts(model)
    for name, param in model.named_parameters():
        param.requires_grad_(parts[name] in train)
        counts[parts[name]] = counts.get(parts[name], 0) + param.numel()
    return [GroupInfo(g, g in train, counts[g]) for g in GROUPS if g in counts]


# ---- initialisation --------------------------------------------------------------------------------


def read_config(folder: str | Path) -> dict:
    """A model folder's config.json content: a JSON object (ValueError naming the file otherwise)."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no config.json (not a model folder)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a JSON {type(config).__name__} where an object is needed")
    return config


def detect_init_kind(folder: str | Path, init: str, config: dict) -> str:
    """videopanda / eve / llama: `init` unless "auto", else from the folder's config.json (`config`: its
    content) model_type."""
    if init != "auto":
        if init not in INIT_KINDS:
            raise ValueError(f"model.init must be auto or one of {INIT_KINDS}, got {init!r}")
        return init
    model_type = config.get("model_type")
    if model_type == "videopanda":
        return "videopanda"
    if model_type == "eve" or any(k in config for k in ("mm_vision_tower", "mm_projector_type")):
        return "eve"
    if model_type == "llama":
        return "llama"
    raise ValueError(f"{folder}: model_type {model_type!r} is none of videopanda, eve, llama; set model.init")


def unloaded_tensors(kind: str, config, stored: Iterable[str]) -> list[str]:
    """The tensors `build_model` takes from a starting folder of `kind` through `from_pretrained` that its weight
    files (`stored`: the names written there) do not hold, sorted: `from_pretrained` would leave them at their
    random initial values without a word. `config`: the `VideoPandaConfig` the model is built with (on the meta
    device, no memory). A Video-Panda folder gives the whole model (stored under the released names); an EVE or
    Llama folder the LLM only (the visual parts start fresh or are placed by `load_eve_visual_parts`). Tied tensors
    count as one."""
    import copy

    from videopanda.model.checkpoint import released_key_to_model_key
    from videopanda.model.videopanda import VideoPandaForCausalLM

    with torch.device("meta"):
        model = VideoPandaForCausalLM(copy.deepcopy(config))
    rename = released_key_to_model_key if kind == "videopanda" else (lambda key: key)
    have = {rename(key) for key in stored}
    tied: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        if kind == "videopanda" or not name.startswith((STAB_PREFIX, PROJECTOR_PREFIX)):
            tied.setdefault(id(tensor), []).append(name)
    return sorted(names[0] for names in tied.values() if have.isdisjoint(names))


def _place_parts(parts: dict[str, nn.Module], state: dict[str, torch.Tensor], key_map: Callable[[str], str | None],
                 source: str, expect_missing: dict[str, tuple[str, ...]], strict: bool,
                 strict_parts: tuple[str, ...] = ()) -> dict[str, int]:
    """Place mapped tensors into each part (model prefix -> module); returns tensors placed per part.
    Tensors that map outside every part are reported as unplaceable. The parts in `strict_parts` (or all,
    with strict) raise on any tensor they cannot place or any of theirs left unset."""
    placed: dict[str, int] = {}
    leftovers = []
    for prefix, module in parts.items():
        def local(name: str, prefix=prefix) -> str | None:
            ours = key_map(name)
            return ours[len(prefix):] if ours is not None and ours.startswith(prefix) else None

        mine = {k: v for k, v in state.items() if local(k) is not None}
        report = place_state_dict(module, mine, local, source=f"{source} -> {prefix.rstrip('.')}",
                                  expect_missing=expect_missing.get(prefix, ()), strict=strict or prefix in strict_parts)
        placed[prefix] = len(report.placed)
    for name in state:
        ours = key_map(name)
        if ours is not None and not ours.startswith(tuple(parts)):
            leftovers.append(name)
    if leftovers:
        message = f"{source}: {len(leftovers)} tensors fit no visual part: {', '.join(sorted(leftovers))}"
        if strict:
            raise ValueError(message)
        logger.warning(message)
    return placed


def load_eve_visual_parts(model: nn.Module, head: nn.Module | None, folder: str | Path) -> None:
    """STAB (non-temporal parts), projector and, when `head` is given, the complete distillation head from an
    EVE-7B-Pretrain folder. Raises ValueError naming every head tensor missing from the folder or not
    placeable in the head (the STAB and projector only warn)."""
    prefixes = (EVE_TOWER_PREFIX, EVE_PROJECTOR_PREFIX) + ((EVE_HEAD_PREFIX,) if head is not None else ())
    state = read_prefixed_tensors(folder, prefixes)
    parts: dict[str, nn.Module] = {STAB_PREFIX: model.model.video_tower, PROJECTOR_PREFIX: model.model.video_projector}
    if head is not None:
        parts[HEAD_PREFIX] = head
    placed = _place_parts(parts, state, eve_key_to_model_key, f"EVE {folder}", {STAB_PREFIX: TEMPORAL_STAB_PARTS},
                          strict=False, strict_parts=(HEAD_PREFIX,))
    fresh = sorted({name.split(".")[0] for name, _ in model.model.video_tower.named_parameters()
                    if name.startswith(TEMPORAL_STAB_PARTS)})
    head_part = ("distillation head not loaded (no teacher)" if head is None else
                 f"{placed[HEAD_PREFIX]} of {len(head.state_dict())} distillation-head tensors")
    logger.info("EVE init: loaded %d STAB, %d projector tensors, %s; fresh: STAB temporal parts (%s)",
                placed[STAB_PREFIX], placed[PROJECTOR_PREFIX], head_part, ", ".join(fresh))


def load_head_from_folder(head: nn.Module, folder: str | Path) -> int:
    """The distillation head from a Video-Panda folder's `model.video_tower_compressor.*` (released names;
    its `teacher_layer.` copy ignored). A folder holding head tensors must hold the whole head and nothing
    else (ValueError naming the tensors otherwise); a folder without any starts the head fresh with a
    warning, unless this trainer finished it (FINAL_MARKER), which is an error. Returns the number of
    tensors placed."""
    def key_map(name: str) -> str | None:
        local = name[len(HEAD_PREFIX):]
        return None if local.startswith(HEAD_TEACHER_PARTS) else local

    state = {k: v for k, v in read_prefixed_tensors(folder, (HEAD_PREFIX,)).items() if key_map(k) is not None}
    if not state:
        if (Path(folder) / FINAL_MARKER).is_file():
            raise ValueError(f"{folder}: finished by this trainer but holds no distillation head ({HEAD_PREFIX}*)")
        logger.warning("%s holds no distillation head (%s*): it starts fresh", folder, HEAD_PREFIX)
        return 0
    report = place_state_dict(head, state, key_map, source=f"distillation head from {folder}", strict=True)
    return len(report.placed)


def _videopanda_model(folder: str | Path, kind: str, folder_config: dict, stab_overrides: dict,
                      config_overrides: dict | None, dtype: torch.dtype, attn_implementation: str, quantize: str):
    """The `VideoPandaForCausalLM` of the starting folder (its config.json as `folder_config`): a Video-Panda
    folder as it is, an EVE / Llama folder's LLM with a fresh visual part."""
    from videopanda.model.videopanda import VideoPandaConfig, VideoPandaForCausalLM

    if kind == "videopanda":
        quantized = {} if quantize == "none" else {"quantization_config": _nf4_config(), "device_map": {"": "cuda"}}
        # what `from_pretrained` would make of the folder's config.json, from the content already read
        config = VideoPandaConfig.from_dict(dict(folder_config), dtype=dtype, attn_implementation=attn_implementation)
        return VideoPandaForCausalLM.from_pretrained(folder, config=config, dtype=dtype,
                                                     attn_implementation=attn_implementation, **quantized)
    from videopanda.train.experiment import videopanda_config_from_llm

    config = videopanda_config_from_llm(folder_config, stab_overrides, config_overrides)
    model = VideoPandaForCausalLM.from_pretrained(folder, config=config, dtype=dtype,
                                                  attn_implementation=attn_implementation)
    if kind == "llama":
        logger.info("Llama init: LLM loaded; STAB, projector and distillation head start fresh")
    return model


def build_model(folder: str | Path, *, init: str, stab_overrides: dict, teacher_folder: str | Path | None,
                dtype: torch.dtype, attn_implementation: str, config_overrides: dict | None = None,
                distill_loss: str = "cosine", quantize: str = "none", folder_config: dict | None = None):
    """The `TrainingModel` for one stage, with teacher and distillation head (comparing by `distill_loss`,
    cosine or mse) when `teacher_folder` is given (see module docstring); lockstep off (the caller sets it).
    `quantize="nf4"` (QLoRA, a Video-Panda folder on CUDA) loads the LLM's linear layers in 4-bit NF4 with
    bf16 compute; the STAB, projector and lm_head stay in `dtype`. `folder_config`: the folder's config.json
    content (read here when not given)."""
    from videopanda.train.teacher import LanguageBindVideoTower
    from videopanda.train.distillation import DistillationHead
    from videopanda.train.training_model import TrainingModel

    folder_config = read_config(folder) if folder_config is None else folder_config
    kind = detect_init_kind(folder, init, folder_config)
    logger.info("initialising from %s (%s folder)", folder, kind)
    model = _videopanda_model(folder, kind, folder_config, stab_overrides, config_overrides, dtype,
                              attn_implementation, quantize)
    teacher = head = None
    if teacher_folder is not None:
        teacher = LanguageBindVideoTower.from_pretrained(teacher_folder, dtype=dtype)
        if teacher.config.image_size != model.config.teacher_image_size:
            raise ValueError(f"teacher {teacher_folder} takes {teacher.config.image_size} px frames but the model's "
                             f"teacher_image_size is {model.config.teacher_image_size}")
        frames, teacher_frames = model.config.num_frames, teacher.config.num_frames
        try:
            group = teacher.temporal_group(frames)
        except ValueError as err:
            raise ValueError(f"teacher {teacher_folder} cannot take the model's {frames}-frame videos: {err}") from None
        if group < teacher_frames:
            logger.warning("videos have %d frames, fewer than the teacher's num_frames (%d): its temporal attention "
                           "spans the %d frames of each video", frames, teacher_frames, frames)
        head = DistillationHead(model.config.hidden_size, teacher.config.hidden_size).to(dtype)
        if kind == "videopanda":
            load_head_from_folder(head, folder)
    if kind == "eve":
        load_eve_visual_parts(model, head, folder)
    return TrainingModel(model, teacher, head, distill_loss=distill_loss)


def _nf4_config():
    """bitsandbytes 4-bit NF4 with bf16 compute for the LLM's linear layers only."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                              bnb_4bit_use_double_quant=True,
                              llm_int8_skip_modules=["video_tower", "video_projector", "lm_head"])


def _frames_require_grad(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook of the STAB under ZeRO-3: its input frames require grad while training, so that
    DeepSpeed's leaf-module gradient hook (a full backward hook) fires after every STAB parameter's
    gradient exists (with no input requiring grad, PyTorch runs it as soon as the output's gradient exists,
    before any parameter gradient of the module)."""
    if not torch.is_grad_enabled() or not module.training or not args or not torch.is_tensor(args[0]):
        return None
    return (args[0].detach().requires_grad_(True), *args[1:])


def prepare_zero3(model: nn.Module, config: dict) -> dict:
    """Make ZeRO-3 safe for the STAB; returns the DeepSpeed config to use (a modified copy).

    ZeRO-3 gathers partitioned parameters with collectives around every module call and checks that
    all ranks call the same modules in the same order. The STAB runs its LSD / FSRA / context modules
    once per group of frames sharing a crop box, which depends on the videos a rank holds, and reads
    children's weights directly. So the STAB is a ZeRO-3 leaf module (DeepSpeed's public API): DeepSpeed
    sees it as one module, called once per forward on every rank (text-only batches run it on a dummy
    chunk), and gathers all its parameters at that call. DeepSpeed reduces a leaf's gradients from a full
    backward hook, which PyTorch runs after the parameters' gradients only when the module's input
    requires grad (the pre-hook above) and its output holds a tensor at the top level (the model calls
    the STAB with `packed=True`). Prefetching follows each rank's own trace and is switched off."""
    from deepspeed.utils import set_z3_leaf_modules_by_name

    stab = model.parts()["stab"][0]
    set_z3_leaf_modules_by_name(model, [next(name for name, module in model.named_modules() if module is stab)])
    stab.register_forward_pre_hook(_frames_require_grad)
    out = json.loads(json.dumps(config))
    out.setdefault("zero_optimization", {})["stage3_prefetch_bucket_size"] = 0
    logger.info("ZeRO-3: the STAB is gathered as one leaf module; parameter prefetching off")
    return out


__all__ = ["GROUPS", "GroupInfo", "TEMPORAL_STAB_PARTS", "VISUAL_GROUPS", "apply_stage", "build_model",
           "detect_init_kind", "load_eve_visual_parts", "load_head_from_folder", "parameter_parts", "prepare_zero3",
           "read_config", "trainable_groups", "unloaded_tensors"]
