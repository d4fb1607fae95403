"""Arguments of `videopanda train`: an experiment file, a stage, and overrides (the paper's three stages).

`videopanda train --experiment FILE --stage STAGE [key.path=value ...]`: the experiment
(`videopanda.train.experiment`) holds every setting; `key.path=value` overrides any of them. The
`--flag` options are shorthands for experiment keys (`SHORTHANDS`: `--global-batch-size 8` is
`stages.<stage>.global_batch_size=8`), turned into overrides, so there is one mechanism and everything
a run used is recorded with it. `TrainArgs` is one stage's flat view of the resolved experiment, what
the trainer reads. `derive_batch` turns a target global batch into the per-device batch and the
gradient-accumulation steps for a given world size, and `training_arguments` builds the HF
`TrainingArguments` a stage runs with (the DeepSpeed config included: its gradient clipping always comes
from the experiment's `training.max_grad_norm`, 0 meaning none).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from videopanda.io import read_json
from videopanda.log import get_logger
from videopanda.train.experiment import (LORA_STAGE, STAGES, ExperimentError, LoraSettings, ResolvedExperiment,
                                         resolve_experiment)

logger = get_logger(__name__)

DEFAULT_EXPERIMENT = "videopanda-7b"

# flag -> (experiment key; "{stage}" is the stage being run, kind: value | bool | pairs | list)
SHORTHANDS: dict[str, tuple[str, str]] = {
    "--model": ("stages.{stage}.init", "value"),
    "--output-dir": ("stages.{stage}.output_dir", "value"),
    "--teacher": ("model.teacher", "value"),
    "--distill": ("distillation.enabled", "bool"),
    "--init": ("model.init", "value"),
    "--stab": ("model.stab", "pairs"),
    "--model-config": ("model.config", "pairs"),
    "--data-root": ("data.root", "value"),
    "--data-json": ("stages.{stage}.data_json", "list"),
    "--video-folder": ("data.video_folder", "value"),
    "--first-half": ("stages.{stage}.first_half", "bool"),
    "--global-batch-size": ("stages.{stage}.global_batch_size", "value"),
    "--per-device-batch-size": ("stages.{stage}.per_device_batch_size", "value"),
    "--learning-rate": ("stages.{stage}.learning_rate", "value"),
    "--visual-learning-rate": ("stages.{stage}.visual_learning_rate", "value"),
    "--warmup-ratio": ("stages.{stage}.warmup_ratio", "value"),
    "--num-train-epochs": ("stages.{stage}.epochs", "value"),
    "--max-steps": ("stages.{stage}.max_steps", "value"),
    "--weight-decay": ("training.weight_decay", "value"),
    "--max-grad-norm": ("training.max_grad_norm", "value"),
    "--max-length": ("data.max_length", "value"),
    "--save-steps": ("save.steps", "value"),
    "--save-total-limit": ("save.total_limit", "value"),
    "--save-teacher": ("save.teacher", "bool"),
    "--logging-steps": ("runtime.logging_steps", "value"),
    "--seed": ("training.seed", "value"),
    "--deepspeed": ("training.deepspeed", "value"),
    "--gradient-checkpointing": ("training.gradient_checkpointing", "bool"),
    "--attn-implementation": ("runtime.attn_implementation", "value"),
    "--precision": ("training.precision", "value"),
    "--device": ("runtime.device", "value"),
    "--num-workers": ("runtime.num_workers", "value"),
    "--random-flip": ("data.random_flip", "bool"),
    "--group-by-modality-length": ("data.group_by_modality_length", "bool"),
    "--report-to": ("runtime.report_to", "value"),
    "--frame-cache": ("runtime.frame_cache", "value"),
}


@dataclass
class TrainArgs:
    """One stage of a resolved experiment, flat: what the trainer reads (see the experiment's field docs)."""

    stage: str
    model: str
    output_dir: str
    teacher: str | None
    distill: bool
    distill_loss: str
    init: str
    stab: dict
    model_config: dict
    data_root: str | None
    data_json: list[str]
    video_folder: str | None
    first_half: bool
    global_batch_size: int
    per_device_batch_size: int
    learning_rate: float
    visual_learning_rate: float
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    num_train_epochs: float
    max_steps: int
    max_length: int
    save_steps: int
    save_total_limit: int
    logging_steps: int
    seed: int
    deepspeed: str | None
    gradient_checkpointing: bool
    attn_implementation: str
    precision: str
    device: str
    num_workers: int
    random_flip: bool
    group_by_modality_length: bool
    save_teacher: bool
    report_to: str
    resume: str = "auto"
    check_only: bool = False
    experiment: ResolvedExperiment | None = None
    lora: LoraSettings | None = None
    """The experiment's LoRA settings when this stage trains adapters, else None."""
    frame_cache: str | None = None
    """Folder of decoded training frames (`videopanda.data.frame_cache.FrameCache`), None: decode every time."""

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
        return dict(self.stab)

    def config_overrides(self) -> dict:
        return dict(self.model_config)


def stage_args(resolved: ResolvedExperiment, stage: str, resume: str = "auto", check_only: bool = False) -> TrainArgs:
    """One stage's `TrainArgs` from a resolved experiment. The STAB and frame settings are the fresh visual
    part's (prealign); later stages check them against their starting folder (preflight)."""
    exp = resolved.experiment
    settings = exp.stage(stage)
    config, stab = exp.visual_overrides()
    return TrainArgs(
        stage=stage, model=str(exp.stage_init(stage)), output_dir=str(exp.stage_output(stage)),
        teacher=exp.model.teacher, distill=exp.distillation.enabled, distill_loss=exp.distillation.loss,
        init=exp.model.init if stage == "prealign" and settings.init is None else "auto",
        stab=stab, model_config=config, data_root=exp.data.root, data_json=list(settings.data_json),
        video_folder=exp.data.video_folder, first_half=settings.first_half,
        global_batch_size=settings.global_batch_size, per_device_batch_size=settings.per_device_batch_size,
        learning_rate=settings.learning_rate,
        visual_learning_rate=(settings.learning_rate if settings.visual_learning_rate is None
                              else settings.visual_learning_rate),
        warmup_ratio=settings.warmup_ratio, weight_decay=exp.training.weight_decay,
        max_grad_norm=exp.training.max_grad_norm, num_train_epochs=settings.epochs, max_steps=settings.max_steps,
        max_length=exp.data.max_length, save_steps=exp.save.steps, save_total_limit=exp.save.total_limit,
        logging_steps=exp.runtime.logging_steps, seed=exp.training.seed, deepspeed=exp.training.deepspeed,
        gradient_checkpointing=exp.training.gradient_checkpointing,
        attn_implementation=exp.runtime.attn_implementation, precision=exp.training.precision,
        device=exp.runtime.device, num_workers=exp.runtime.num_workers, random_flip=exp.data.random_flip,
        group_by_modality_length=exp.data.group_by_modality_length, save_teacher=exp.save.teacher,
        report_to=exp.runtime.report_to, resume=resume, check_only=check_only, experiment=resolved,
        lora=exp.lora if exp.lora.enabled and stage == LORA_STAGE else None, frame_cache=exp.runtime.frame_cache)


def build_parser() -> argparse.ArgumentParser:
    from videopanda.argparsing import CommandParser

    parser = CommandParser(
        prog="videopanda train",
        usage="videopanda train --experiment FILE --stage {prealign,pretrain,finetune} [key.path=value ...]",
        description="Run one Video-Panda training stage of an experiment (configs/experiments/*.yaml; "
                    "docs/experiments.md). Launch it under torchrun for several processes "
                    "(scripts/videopanda/{prealign,pretrain,finetune}.sh with EXPERIMENT=...).",
        epilog="Every --option below the first group is a shorthand for the experiment key it names; "
               "`key.path=value` sets any key. What was overridden is recorded in the stage folder's "
               "experiment.json.")
    parser.add_argument("--experiment", default=DEFAULT_EXPERIMENT,
                        help="experiment file, or a name under configs/experiments such as videopanda-7b/no-lste "
                             "(default: %(default)s)")
    parser.add_argument("--stage", required=True, choices=STAGES, help="the stage to run")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="experiment keys to override, e.g. stages.finetune.learning_rate=1e-5 model.stab.use_lste=false")
    parser.add_argument("--resume", default="auto",
                        help="auto (latest complete checkpoint in the output folder), never, or a checkpoint folder")
    parser.add_argument("--check-only", action="store_true",
                        help="validate folders and data, then exit (no process group, no training)")
    shorthands = parser.add_argument_group("shorthands for experiment keys")
    for flag, (key, kind) in SHORTHANDS.items():
        dest = flag[2:].replace("-", "_")
        text = f"= {key}"
        if kind == "bool":
            shorthands.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        elif kind in ("pairs", "list"):
            shorthands.add_argument(flag, dest=dest, nargs="+", default=None, metavar="KEY=VALUE" if kind == "pairs"
                                    else "FILE", help=text + (".KEY" if kind == "pairs" else ""))
        else:
            shorthands.add_argument(flag, dest=dest, default=None, metavar="VALUE", help=text)
    return parser


def _flag_overrides(namespace: argparse.Namespace, stage: str) -> list[str]:
    """The shorthand flags given on the command line as `key=value` overrides, in SHORTHANDS order."""
    import json

    out = []
    for flag, (key, kind) in SHORTHANDS.items():
        value = getattr(namespace, flag[2:].replace("-", "_"))
        if value is None:
            continue
        key = key.format(stage=stage)
        if kind == "bool":
            out.append(f"{key}={str(value).lower()}")
        elif kind == "list":
            out.append(f"{key}={json.dumps(value)}")
        elif kind == "pairs":
            for pair in value:
                name, sep, raw = pair.partition("=")
                if not sep or not name.strip():
                    raise ExperimentError(f"{flag} expects KEY=VALUE, got {pair!r}")
                out.append(f"{key}.{name.strip()}={raw.strip()}")
        else:
            out.append(f"{key}={value}")
    return out


def parse_train_args(argv: list[str]) -> TrainArgs:
    """Command line -> the stage's `TrainArgs` (argparse exits on bad flags; ExperimentError on a bad
    experiment file or override)."""
    namespace = build_parser().parse_intermixed_args(argv)
    overrides = _flag_overrides(namespace, namespace.stage) + list(namespace.overrides)
    resolved = resolve_experiment(namespace.experiment, overrides)
    return stage_args(resolved, namespace.stage, resume=namespace.resume, check_only=namespace.check_only)


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


def _report_to(value: str) -> list[str]:
    return [] if value in ("none", "") else [v.strip() for v in value.split(",") if v.strip()]


def deepspeed_config(deepspeed: str | dict | None) -> dict | None:
    """A DeepSpeed config (a JSON file's path or a dict) as the dict a stage hands to transformers, with
    `gradient_clipping` "auto" where it has no such key: transformers then fills it from the experiment's
    `training.max_grad_norm`, so that one setting decides the clipping and DeepSpeed's own default (which
    changed between versions) never applies. A given value stays (transformers refuses one that differs
    from max_grad_norm)."""
    if deepspeed is None:
        return None
    config = dict(read_json(deepspeed)) if not isinstance(deepspeed, dict) else dict(deepspeed)
    config.setdefault("gradient_clipping", "auto")
    return config


def applied_gradient_clipping(training) -> float:
    """The gradient-norm bound a run with these `TrainingArguments` applies; 0.0: no clipping. Under
    DeepSpeed the engine clips (the Trainer does not): the value DeepSpeed reads from the config
    transformers filled, through DeepSpeed's own reader; otherwise the Trainer clips at max_grad_norm > 0."""
    ds_config = getattr(training, "hf_deepspeed_config", None)
    if ds_config is not None:
        from deepspeed.runtime.config import get_gradient_clipping

        return float(get_gradient_clipping(ds_config.config))
    return float(training.max_grad_norm) if training.max_grad_norm and training.max_grad_norm > 0 else 0.0


def training_arguments(args: TrainArgs, batch: BatchPlan, device: str, bf16: bool,
                       deepspeed: str | dict | None = None):
    """The HF `TrainingArguments` a stage runs with, for `batch` (per-device batch and accumulation steps) on
    `device` ("cuda" or "cpu"), with `deepspeed` (a config file or dict; see `deepspeed_config`) or None.
    Creating them sets up the process group when the process was started by torchrun. Logs the per-device
    batch, the accumulation steps and the gradient clipping actually applied."""
    from transformers import TrainingArguments

    on_gpu = device == "cuda"
    training = TrainingArguments(
        output_dir=args.output_dir,
        per_device_train_batch_size=batch.per_device_batch_size,
        gradient_accumulation_steps=batch.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        weight_decay=args.weight_decay,
        warmup_steps=args.warmup_ratio,
        lr_scheduler_type="cosine",
        num_train_epochs=args.num_train_epochs,
        max_steps=args.max_steps,
        max_grad_norm=args.max_grad_norm,
        logging_steps=args.logging_steps,
        save_strategy="steps",
        save_steps=args.save_steps,
        save_total_limit=None,  # pruning happens after a checkpoint is marked complete (trainer.py)
        seed=args.seed,
        data_seed=args.seed,
        bf16=bf16,
        tf32=True if on_gpu else None,
        use_cpu=not on_gpu,
        ddp_backend="gloo" if not on_gpu and batch.world_size > 1 else None,
        ddp_find_unused_parameters=False,
        deepspeed=deepspeed_config(deepspeed),
        activation_checkpointing=args.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=args.num_workers,
        remove_unused_columns=False,
        report_to=_report_to(args.report_to),
        disable_tqdm=False,
    )
    clip = applied_gradient_clipping(training)
    logger.info("per-device batch %d, %d accumulation step(s); gradient clipping %s (max_grad_norm %g%s)",
                training.per_device_train_batch_size, training.gradient_accumulation_steps,
                f"at norm {clip:g}" if clip > 0 else "off", training.max_grad_norm,
                ", applied by DeepSpeed" if deepspeed is not None else "")
    return training


__all__ = ["BatchPlan", "SHORTHANDS", "STAGES", "TrainArgs", "applied_gradient_clipping", "build_parser",
           "deepspeed_config", "derive_batch", "parse_train_args", "stage_args", "training_arguments"]
