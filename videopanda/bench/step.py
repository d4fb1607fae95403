"""`videopanda bench step --stage S [key.path=value ...]`: one training stage's step in this process, part by part.

What one rank of `videopanda train` computes for a micro-batch, without the launcher, DeepSpeed or the Trainer:
the stage's model as training builds it (`videopanda.train.cli.stage_model`: parts frozen for the stage,
lockstep, distillation), its dataset through the frame cache and the collator, and AdamW over the stage's
parameter groups at their learning rates, clipped at `training.max_grad_norm`. Every step is timed in four
parts: data (load `per_device_batch_size` samples and collate them), forward, backward, and optimizer
(clipping, the update, zeroing the gradients). The samples are a seeded permutation of the stage's data
(`training.seed`). The stage's output folder is never written: a temporary folder stands in for it.

`bench quickstart` gives the launcher's seconds per step for the same stage; the difference is what DeepSpeed,
the Trainer and the collectives add (docs/benchmarks.md, "The quickstart: where its time goes").
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from videopanda.bench.timing import BenchError, environment, format_table, median, print_profile, set_threads, \
    synchronize
from videopanda.log import get_logger

logger = get_logger(__name__)

PARTS = ("data", "forward", "backward", "optimizer")


@dataclass(frozen=True)
class StepBenchConfig:
    experiment: str
    stage: str
    overrides: tuple[str, ...] = ()
    steps: int = 10
    warmup: int = 2
    threads: int = 1
    compile: bool = False
    profile: int = 0
    """Print the top N ops of one more step from torch.profiler (0: none)."""
    command: str = ""


@dataclass
class _Stage:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dataset: object
    collator: object
    order: list[int]
    batch_size: int
    max_grad_norm: float | None
    device: torch.device


def _prepare(config: StepBenchConfig, scratch: Path) -> _Stage:
    """The stage's model, optimizer, dataset and collator, built as `videopanda train` builds them on one rank."""
    from transformers import set_seed

    from videopanda.data.dataset import VideoInstructCollator
    from videopanda.train.cli import attn_implementation, stage_data, stage_device, stage_model, stage_tokenizer, \
        trains_in_bf16
    from videopanda.train.experiment import ExperimentError, resolve_experiment
    from videopanda.train.preflight import PreflightError, run_preflight
    from videopanda.train.trainer import parameter_groups

    overrides = [*config.overrides, f"stages.{config.stage}.output_dir={scratch}", "training.deepspeed=null"]
    try:
        resolved = resolve_experiment(config.experiment, overrides)
        plan = run_preflight(resolved, config.stage, "never", world_size=1)
    except (ExperimentError, PreflightError) as err:
        raise BenchError(str(err)) from None
    experiment, stage = resolved.experiment, config.stage
    device = stage_device(experiment)
    set_threads(torch.device(device), config.threads)
    set_seed(experiment.training.seed)
    dtype = torch.bfloat16 if trains_in_bf16(experiment, device) else torch.float32
    model, _, _ = stage_model(experiment, stage, plan, dtype,
                              attn_implementation(experiment.runtime.attn_implementation, device))
    model.to(device).train()
    processor, dataset = stage_data(experiment, stage, plan, model, stage_tokenizer(experiment, stage, plan))
    groups = parameter_groups(model, experiment.stage(stage).learning_rate, experiment.visual_learning_rate(stage),
                              experiment.training.weight_decay)
    generator = torch.Generator().manual_seed(experiment.training.seed)
    return _Stage(model=model, optimizer=torch.optim.AdamW(groups), dataset=dataset,
                  collator=VideoInstructCollator(processor, experiment.data.max_length),
                  order=torch.randperm(len(dataset), generator=generator).tolist(),
                  batch_size=plan.batch.per_device_batch_size, max_grad_norm=experiment.training.max_grad_norm,
                  device=torch.device(device))


def _batch(stage: _Stage, index: int) -> dict:
    """The collated micro-batch `index` (samples taken in `stage.order`, wrapping around), on the device."""
    picked = [stage.order[(index * stage.batch_size + i) % len(stage.order)] for i in range(stage.batch_size)]
    batch = stage.collator([stage.dataset[i] for i in picked])
    return {key: value.to(stage.device) for key, value in batch.items() if isinstance(value, torch.Tensor)}


def _step(stage: _Stage, forward, index: int) -> dict:
    """One timed step: seconds per part, the loss and the batch's sequence length."""
    device, seconds = stage.device, {}
    start = time.perf_counter()
    batch = _batch(stage, index)
    marks = [start, time.perf_counter()]
    loss = forward(**batch).loss
    synchronize(device)
    marks.append(time.perf_counter())
    loss.backward()
    synchronize(device)
    marks.append(time.perf_counter())
    if stage.max_grad_norm:
        torch.nn.utils.clip_grad_norm_(stage.model.parameters(), stage.max_grad_norm)
    stage.optimizer.step()
    stage.optimizer.zero_grad(set_to_none=True)
    synchronize(device)
    marks.append(time.perf_counter())
    for part, (begin, end) in zip(PARTS, zip(marks, marks[1:])):
        seconds[part] = end - begin
    return {**seconds, "total": marks[-1] - marks[0], "loss": float(loss.detach()),
            "sequence_length": int(batch["input_ids"].shape[1])}


def run_step_bench(config: StepBenchConfig) -> dict:
    """Time `config.steps` steps after `config.warmup` untimed ones; the report's `median_s` gives each part."""
    if config.steps < 1 or config.warmup < 0:
        raise BenchError(f"--steps must be at least 1 and --warmup at least 0, got {config.steps} and {config.warmup}")
    with tempfile.TemporaryDirectory(prefix="videopanda-bench-step-") as scratch:
        stage = _prepare(config, Path(scratch))
        forward = torch.compile(stage.model) if config.compile else stage.model
        warmup = [_step(stage, forward, i) for i in range(config.warmup)]
        timed = [_step(stage, forward, config.warmup + i) for i in range(config.steps)]
        if config.profile:
            print_profile(f"{config.stage} step", lambda: _step(stage, forward, config.warmup + config.steps),
                          stage.device, config.profile)
        trainable = sum(p.numel() for p in stage.model.parameters() if p.requires_grad)
    medians = {part: median([step[part] for step in timed]) for part in (*PARTS, "total")}
    return {
        "bench": "step", "command": config.command, "experiment": config.experiment, "stage": config.stage,
        "overrides": list(config.overrides), "environment": environment(stage.device, torch.get_num_threads()),
        "compile": config.compile, "per_device_batch_size": stage.batch_size, "trainable_params": trainable,
        "warmup_s": [step["total"] for step in warmup], "steps": timed, "median_s": medians,
        "samples_per_s": stage.batch_size / medians["total"],
    }


def format_report(report: dict) -> str:
    medians = report["median_s"]
    rows = [{"part": part, "median_s": medians[part], "share": 100 * medians[part] / medians["total"]}
            for part in PARTS]
    rows.append({"part": "total", "median_s": medians["total"], "share": 100.0})
    env = report["environment"]
    lengths = sorted({step["sequence_length"] for step in report["steps"]})
    head = (f"{report['stage']} step of {report['experiment']}, {report['per_device_batch_size']} samples of "
            f"{lengths[0]}-{lengths[-1]} tokens, {len(report['steps'])} timed steps after "
            f"{len(report['warmup_s'])} untimed{', torch.compile' if report['compile'] else ''}; "
            f"{env['device']}, {env['threads']} thread(s), {env['cpu']}")
    table = format_table(rows, [("part", "part", ""), ("median_s", "median s", ".3f"), ("share", "% of step", ".0f")])
    return f"{head}\n{table}\n{report['samples_per_s']:.1f} samples/s"
