"""The HF `TrainingArguments` of one stage, built from the experiment's settings (docs/experiments.md).

`derive_batch` turns the stage's global batch into the per-device batch and the gradient-accumulation steps for
a given world size; `training_arguments` builds the `TrainingArguments` the stage runs with (the DeepSpeed
config included: its gradient clipping always comes from the experiment's `training.max_grad_norm`, 0 meaning
none).
"""
from __future__ import annotations

from dataclasses import dataclass

from videopanda.io import read_json
from videopanda.log import get_logger
from videopanda.train.experiment import Experiment

logger = get_logger(__name__)


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


def report_integrations(value: str) -> list[str]:
    """The HF Trainer's logging integrations named by `runtime.report_to` (comma-separated; "none": none)."""
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


def training_arguments(experiment: Experiment, stage: str, batch: BatchPlan, device: str, bf16: bool,
                       deepspeed: str | dict | None = None):
    """The HF `TrainingArguments` of `stage` of `experiment`, for `batch` (per-device batch and accumulation
    steps) on `device` ("cuda" or "cpu"), with `deepspeed` (a config file or dict; see `deepspeed_config`) or
    None. Creating them sets up the process group when the process was started by torchrun. Logs the
    per-device batch, the accumulation steps and the gradient clipping actually applied."""
    from transformers import TrainingArguments

    settings, on_gpu = experiment.stage(stage), device == "cuda"
    training = TrainingArguments(
        output_dir=str(experiment.stage_output(stage)),
        per_device_train_batch_size=batch.per_device_batch_size,
        gradient_accumulation_steps=batch.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        weight_decay=experiment.training.weight_decay,
        warmup_steps=settings.warmup_ratio,
        lr_scheduler_type="cosine",
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        max_grad_norm=experiment.training.max_grad_norm,
        logging_steps=experiment.runtime.logging_steps,
        save_strategy="steps",
        save_steps=experiment.save.steps,
        save_total_limit=None,  # pruning happens after a checkpoint is marked complete (trainer.py)
        seed=experiment.training.seed,
        data_seed=experiment.training.seed,
        bf16=bf16,
        tf32=True if on_gpu else None,
        use_cpu=not on_gpu,
        ddp_backend="gloo" if not on_gpu and batch.world_size > 1 else None,
        ddp_find_unused_parameters=False,
        deepspeed=deepspeed_config(deepspeed),
        activation_checkpointing=experiment.training.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False},
        dataloader_num_workers=experiment.runtime.num_workers,
        remove_unused_columns=False,
        report_to=report_integrations(experiment.runtime.report_to),
        disable_tqdm=False,
    )
    clip = applied_gradient_clipping(training)
    logger.info("per-device batch %d, %d accumulation step(s); gradient clipping %s (max_grad_norm %g%s)",
                training.per_device_train_batch_size, training.gradient_accumulation_steps,
                f"at norm {clip:g}" if clip > 0 else "off", training.max_grad_norm,
                ", applied by DeepSpeed" if deepspeed is not None else "")
    return training


__all__ = ["BatchPlan", "applied_gradient_clipping", "deepspeed_config", "derive_batch", "report_integrations",
           "training_arguments"]
