"""Typed arguments of `videopanda train` (SPEC section 6) and the per-stage recipe defaults.

`TrainArgs` is one dataclass; `parse_train_args(argv)` builds the command line from its fields (one
`--field-name` per field, help from the field metadata) and fills what was left unset from the
stage's `StageRecipe`. `derive_batch` turns a target global batch into the per-device batch and the
gradient-accumulation steps for a given world size.
"""
from __future__ import annotations

import argparse
import os
import types
import typing
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

STAGES = ("prealign", "pretrain", "finetune")


@dataclass(frozen=True)
class StageRecipe:
    """What SPEC section 6 fixes per stage (learning rates, warm-up, global batch, data) and what it trains."""

    learning_rate: float
    visual_learning_rate: float
    warmup_ratio: float
    global_batch_size: int
    data_json: tuple[str, ...]
    first_half: bool
    trains_llm: bool


RECIPES: dict[str, StageRecipe] = {
    # Paper global batches (the original scripts used 512 / 512 / 256).
    "prealign": StageRecipe(4e-5, 4e-4, 0.03, 2048, ("valley_.json",), True, False),
    "pretrain": StageRecipe(4e-5, 4e-5, 0.01, 2048, ("valley_.json",), False, True),
    "finetune": StageRecipe(2e-5, 2e-5, 0.01, 1024, ("videochatgpt_tune_.json",), False, True),
}


def _help(text: str, default=MISSING, factory=MISSING, **extra):
    kwargs = {"default": default} if default is not MISSING else {}
    if factory is not MISSING:
        kwargs["default_factory"] = factory
    return field(metadata={"help": text, **extra}, **kwargs)


@dataclass
class TrainArgs:
    """Everything one training stage needs. Fields left None take the stage's recipe value."""

    stage: str = _help("prealign | pretrain | finetune: decides what is frozen and the recipe defaults",
                       choices=STAGES)
    model: str = _help("initial model folder: an EVE-7B-Pretrain or plain Llama folder (prealign), or the "
                       "previous stage's output (a Video-Panda folder)")
    output_dir: str = _help("where checkpoints, logs and the final model folder go")
    teacher: str | None = _help("LanguageBind_Video_merge folder (the distillation teacher)", None)
    distill: bool = _help("train with the distillation loss (needs --teacher)", True)
    init: str = _help("how to read --model: auto (from its config.json model_type), videopanda, eve, llama",
                      "auto", choices=("auto", "videopanda", "eve", "llama"))
    stab: list[str] = _help("STAB settings KEY=VALUE for a model whose visual part starts fresh (eve / llama "
                            "init), e.g. width=1024 use_lste=false", factory=list)
    model_config: list[str] = _help("VideoPandaConfig fields KEY=VALUE for a fresh visual part (eve / llama init), "
                                    "e.g. num_frames=8 image_size=448 teacher_image_size=224", factory=list)
    data_root: str | None = _help("DATA_ROOT of SPEC section 6 (default: $DATA_ROOT)", None)
    data_json: list[str] | None = _help("training JSON files; names without a folder are looked up in "
                                        "DATA_ROOT/train/train_json (default: the stage's recipe)", None)
    video_folder: str | None = _help("folder the samples' `video` paths are relative to (default DATA_ROOT/train)", None)
    first_half: bool | None = _help("keep only the first half of each JSON (default: on for prealign)", None)
    global_batch_size: int | None = _help("target global batch (default: paper 2048 / 2048 / 1024)", None)
    per_device_batch_size: int = _help("largest per-device micro batch; the actual one divides the global batch", 4)
    learning_rate: float | None = _help("base learning rate (default 4e-5 / 4e-5 / 2e-5)", None)
    visual_learning_rate: float | None = _help("learning rate of STAB, projector and distillation head "
                                               "(default 4e-4 for prealign, else the base rate)", None)
    warmup_ratio: float | None = _help("linear warm-up fraction before the cosine decay (default 0.03 / 0.01 / 0.01)", None)
    weight_decay: float = _help("AdamW weight decay (never applied to biases and norms)", 0.0)
    max_grad_norm: float = _help("gradient clipping", 1.0)
    num_train_epochs: float = _help("epochs", 1.0)
    max_steps: int = _help("stop after this many optimizer steps (-1: the epochs decide)", -1)
    max_length: int = _help("model_max_length of the tokenizer (text tokens, placeholders included)", 4096)
    save_steps: int = _help("checkpoint every N optimizer steps", 200)
    save_total_limit: int = _help("complete checkpoints kept (older ones are deleted after a newer one is complete)", 2)
    logging_steps: int = _help("log every N optimizer steps", 1)
    seed: int = _help("seed of initialisation, data order and dropout", 42)
    deepspeed: str | None = _help("DeepSpeed JSON config (configs/deepspeed/zero2.json, ...)", None)
    gradient_checkpointing: bool = _help("activation checkpointing in the LLM", True)
    attn_implementation: str = _help("auto (flash_attention_2 when installed on GPU, else sdpa), sdpa, eager, "
                                     "flash_attention_2", "auto")
    precision: str = _help("auto (bf16 + tf32 on GPU, fp32 on CPU), bf16, fp32", "auto",
                           choices=("auto", "bf16", "fp32"))
    device: str = _help("auto, cuda or cpu", "auto", choices=("auto", "cuda", "cpu"))
    num_workers: int = _help("DataLoader worker processes per rank", 4)
    random_flip: bool = _help("random horizontal flip of training videos (the same for student and teacher)", True)
    group_by_modality_length: bool = _help("batches of one modality and similar length", True)
    save_teacher: bool = _help("also store the teacher's weights in the output folders", False)
    resume: str = _help("auto (latest complete checkpoint in output_dir), never, or a checkpoint folder", "auto")
    report_to: str = _help("logging integrations for the HF Trainer (tensorboard, none, ...)", "tensorboard")
    check_only: bool = _help("validate folders and data, then exit (no process group, no training)", False)

    # ---- resolved values ---------------------------------------------------------------------

    @property
    def recipe(self) -> StageRecipe:
        return RECIPES[self.stage]

    @property
    def trains_llm(self) -> bool:
        return self.recipe.trains_llm

    def resolve(self) -> "TrainArgs":
        """Fill unset fields from the stage recipe and the environment (DATA_ROOT); returns self."""
        if self.stage not in RECIPES:
            raise ValueError(f"unknown stage {self.stage!r}; choose one of {', '.join(STAGES)}")
        recipe = self.recipe
        if self.learning_rate is None:
            self.learning_rate = recipe.learning_rate
        if self.visual_learning_rate is None:
            same = recipe.visual_learning_rate == recipe.learning_rate
            self.visual_learning_rate = self.learning_rate if same else recipe.visual_learning_rate
        if self.warmup_ratio is None:
            self.warmup_ratio = recipe.warmup_ratio
        if self.global_batch_size is None:
            self.global_batch_size = recipe.global_batch_size
        if self.first_half is None:
            self.first_half = recipe.first_half
        if self.data_json is None:
            self.data_json = list(recipe.data_json)
        if self.data_root is None:
            self.data_root = os.environ.get("DATA_ROOT") or None
        return self

    def data_json_paths(self) -> list[Path]:
        """Absolute JSON paths: a bare file name is looked up in DATA_ROOT/train/train_json."""
        paths = []
        for name in self.data_json or []:
            path = Path(name)
            if not path.is_absolute() and path.parent == Path(".") and self.data_root:
                path = Path(self.data_root) / "train" / "train_json" / name
            paths.append(path)
        return paths

    def video_folder_path(self) -> Path | None:
        if self.video_folder:
            return Path(self.video_folder)
        return Path(self.data_root) / "train" if self.data_root else None

    def stab_overrides(self) -> dict:
        """`--stab KEY=VALUE ...` as a dict with ints, floats and booleans parsed."""
        return _parse_pairs(self.stab, "--stab")

    def config_overrides(self) -> dict:
        """`--model-config KEY=VALUE ...` as a dict with ints, floats and booleans parsed."""
        return _parse_pairs(self.model_config, "--model-config")


def _parse_pairs(items: list[str], flag: str) -> dict:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_scalar(raw.strip())
    return out


def _parse_scalar(raw: str):
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def _base_type(annotation) -> tuple[type, bool]:
    """(element type, is_list) of a field annotation like `int | None` or `list[str] | None`."""
    hint = annotation
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        return typing.get_args(hint)[0], True
    return hint, False


def build_parser() -> argparse.ArgumentParser:
    from videopanda.cli import CommandParser

    parser = CommandParser(
        prog="videopanda train",
        description="Run one Video-Panda training stage (see TRAIN_AND_VALIDATE.md). Launch it under torchrun "
                    "for several processes; unset options take the stage's recipe values (SPEC section 6).")
    hints = typing.get_type_hints(TrainArgs)
    for f in fields(TrainArgs):
        kind, is_list = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        kwargs: dict = {"help": f.metadata["help"], "dest": f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if f.default is MISSING and f.default_factory is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = f.default if f.default is not MISSING else f.default_factory()
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif is_list:
            kwargs.update(nargs="+", type=kind)
        else:
            kwargs["type"] = kind
        parser.add_argument(flag, **kwargs)
    return parser


def parse_train_args(argv: list[str]) -> TrainArgs:
    """Command line -> resolved `TrainArgs` (argparse exits with a usage message on bad flags)."""
    namespace = build_parser().parse_args(argv)
    return TrainArgs(**vars(namespace)).resolve()


@dataclass(frozen=True)
class BatchPlan:
    global_batch_size: int
    world_size: int
    per_device_batch_size: int
    gradient_accumulation_steps: int


def derive_batch(global_batch_size: int, world_size: int, max_per_device: int) -> BatchPlan:
    """The largest per-device batch <= max_per_device with global = per_device * world * accumulation exactly.

    Raises ValueError when the global batch is not a multiple of the world size."""
    if global_batch_size < 1 or world_size < 1 or max_per_device < 1:
        raise ValueError("global batch, world size and per-device batch must be positive")
    if global_batch_size % world_size:
        raise ValueError(f"global batch {global_batch_size} is not divisible by the {world_size} processes; "
                         f"pick a multiple of {world_size}")
    per_rank = global_batch_size // world_size
    per_device = max(b for b in range(1, min(max_per_device, per_rank) + 1) if per_rank % b == 0)
    return BatchPlan(global_batch_size, world_size, per_device, per_rank // per_device)


__all__ = ["BatchPlan", "RECIPES", "STAGES", "StageRecipe", "TrainArgs", "build_parser", "derive_batch",
           "parse_train_args"]
