"""`videopanda train`: one training stage, in one process or under torchrun (see TRAIN_AND_VALIDATE.md).

`videopanda train --experiment FILE --stage STAGE [key.path=value ...] [--resume ...] [--check-only]`: the
experiment (`videopanda.train.experiment`) holds every setting, `key.path=value` overrides any of them (recorded
with the run), and the stage's HF `TrainingArguments` are built from it (`videopanda.train.arguments`).

Order of work: parse arguments -> SIGTERM / SIGUSR1 handlers -> preflight checks (no process group
yet) -> model, teacher, data -> HF TrainingArguments (this starts the process group) -> train, resuming
from the latest complete checkpoint -> final model folder, `data_report.json` and
`training_complete.json` -> barrier and process-group teardown.

DeepSpeed always runs in a process group: a run with a DeepSpeed config started as one plain process (no
torchrun variables) becomes a world of one (`world_of_one`).

Exit status: 0 finished (or already finished), 2 bad input (preflight), 1 an output could not be
written (one line naming it, e.g. "...: no space left on device") or a crash, and
`PREEMPTED_EXIT_CODE` (75) when SIGTERM / SIGUSR1 stopped the run after a complete checkpoint.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from videopanda.io import OutputError, write_json_atomic
from videopanda.log import get_logger, setup_logging
from videopanda.train.arguments import training_arguments
from videopanda.train.experiment import STAGES, Experiment, ExperimentError, ResolvedExperiment, resolve_experiment, \
    write_record
from videopanda.train.checkpointing import (DATA_REPORT, FINAL_MARKER, PREEMPTED_EXIT_CODE, StopSignals,
                                            checkpoint_step, discard_incomplete, export_model_files, holds_last_step,
                                            is_finished, latest_complete_checkpoint, read_data_report,
                                            run_train_loss, tell_launcher, trainer_state, writing)
from videopanda.train.preflight import Preflight, PreflightError, run_preflight

logger = get_logger(__name__)

DEFAULT_EXPERIMENT = "videopanda-7b"


def build_parser() -> argparse.ArgumentParser:
    from videopanda.argparsing import CommandParser

    parser = CommandParser(
        prog="videopanda train",
        usage="videopanda train --experiment FILE --stage {prealign,pretrain,finetune} [key.path=value ...]",
        description="Run one Video-Panda training stage of an experiment (configs/experiments/*.yaml; "
                    "docs/experiments.md). Launch it under torchrun for several processes "
                    "(scripts/videopanda/{prealign,pretrain,finetune}.sh with EXPERIMENT=...).",
        epilog="`key.path=value` sets any key of the experiment, e.g. stages.prealign.max_steps=10 or "
               "model.stab.use_lste=false; what was overridden is recorded in the stage folder's experiment.json.")
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
    return parser


def stage_device(experiment: Experiment) -> str:
    import torch

    device = experiment.runtime.device
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PreflightError("runtime.device cuda but no CUDA device is visible")
    return device


def trains_in_bf16(experiment: Experiment, device: str) -> bool:
    """training.precision bf16, or auto on CUDA (fp32 otherwise)."""
    return experiment.training.precision == "bf16" or (experiment.training.precision == "auto" and device == "cuda")


def attn_implementation(requested: str, device: str) -> str:
    if requested != "auto":
        return requested
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
"""What torchrun (or another launcher) sets in every process it starts."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def world_of_one(needed: bool) -> Iterator[None]:
    """While inside, a process started without a launcher (none of `LAUNCHER_ENV` set) is rank 0 of a world of
    one on 127.0.0.1 and a free port, when `needed`: DeepSpeed, and Accelerate's barriers under it, need a
    process group, which the HF Trainer starts only from these variables. Variables already set are kept;
    the ones added are removed on leaving."""
    if not needed or any(name in os.environ for name in LAUNCHER_ENV):
        yield
        return
    world = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
    added = {name: value for name, value in world.items() if name not in os.environ}
    if "MASTER_PORT" not in os.environ:
        added["MASTER_PORT"] = str(_free_port())
    os.environ.update(added)
    logger.info("one process without torchrun: DeepSpeed runs as a world of one (port %s)", os.environ["MASTER_PORT"])
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def _final_record(resolved: ResolvedExperiment, stage: str, plan: Preflight, global_step: int,
                  train_loss: float | None, timing: dict | None = None) -> dict:
    """What `training_complete.json` says; `timing` (`_loop_timing`) when this call trained."""
    experiment = resolved.experiment
    return {"stage": stage, "experiment": experiment.name, "global_step": global_step, "train_loss": train_loss,
            "init": str(experiment.stage_init(stage)), "init_kind": plan.init_kind,
            "teacher": experiment.model.teacher if experiment.distillation.enabled else None,
            "world_size": plan.batch.world_size, "global_batch_size": plan.batch.global_batch_size,
            "timing": timing}


def _loop_timing(metrics: dict, plan: Preflight, global_step: int) -> dict:
    """The training loop of this call (the Trainer's `train_runtime`, from its first step to its last, without
    start-up and saving): {"train_runtime_s", "steps"} (the steps this call ran, after a resumed checkpoint's)."""
    first = checkpoint_step(plan.resume_from) if plan.resume_from is not None else 0
    return {"train_runtime_s": round(float(metrics["train_runtime"]), 3), "steps": global_step - first}


def finish_from_last_checkpoint(resolved: ResolvedExperiment, stage: str, plan: Preflight) -> int:
    """The run stopped after its last step's checkpoint but before its final outputs: write them from that
    checkpoint (model files, data report, training_complete.json) on rank 0, without training."""
    from videopanda.data.dataset import log_data_report

    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    checkpoint, output = Path(plan.resume_from), resolved.experiment.stage_output(stage)
    logger.info("%s holds the last step: writing the final outputs from it", checkpoint)
    export_model_files(checkpoint, output)
    report = read_data_report(checkpoint)
    if report is not None:
        log_data_report(report)
        write_json_atomic(output / DATA_REPORT, report)
    state = trainer_state(checkpoint)
    write_json_atomic(output / FINAL_MARKER, _final_record(resolved, stage, plan, int(state["global_step"]),
                                                          run_train_loss(state.get("log_history", []))))
    logger.info("stage %s finished: %s", stage, output)
    return 0


def _preempted(trainer, cause: str, output_dir: str, step: int | None) -> int:
    """Report a stop on SIGTERM / SIGUSR1 (every rank calls this) and return PREEMPTED_EXIT_CODE."""
    latest = latest_complete_checkpoint(output_dir)
    if step is None:
        message = f"{cause} before the first step: nothing new to save (latest complete checkpoint: {latest or 'none'})"
    else:
        message = f"{cause}: stopped after step {step}; {latest} is complete"
    message += "; run the same command again to resume"
    if trainer.args.should_save:
        logger.warning("%s", message)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        tell_launcher(f"preempted ({message})")
    trainer.accelerator.wait_for_everyone()
    return PREEMPTED_EXIT_CODE


def _hf_config(raw: dict):
    """The transformers config that `AutoConfig.from_pretrained` makes of a config.json's content `raw` (a
    generic `PreTrainedConfig` for a model type transformers does not know, such as EVE's)."""
    from transformers import AutoConfig, PreTrainedConfig

    try:
        return AutoConfig.for_model(**raw)
    except ValueError:
        return PreTrainedConfig.from_dict(dict(raw))


def stage_tokenizer(experiment: Experiment, stage: str, plan: Preflight):
    """The tokenizer of the stage's starting folder, padding on the right (unk as pad when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(experiment.stage_init(stage), config=_hf_config(plan.init_config),
                                              model_max_length=experiment.data.max_length, padding_side="right")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    return tokenizer


def stage_model(experiment: Experiment, stage: str, plan: Preflight, dtype, attn: str):
    """The stage's training model (parts frozen for `stage`, lockstep on), its LoRA adapters (`LoraRun`, or
    None) and the DeepSpeed config it trains with (None without DeepSpeed)."""
    from videopanda.train.stages import apply_stage, build_model, prepare_zero3
    from videopanda.train.trainer import LoraRun

    folder, lora = experiment.stage_init(stage), experiment.lora_for(stage)
    frame_fields, stab = experiment.visual_overrides()
    distill = experiment.distillation
    model = build_model(folder, init=experiment.init_kind(stage), stab_overrides=stab, config_overrides=frame_fields,
                        teacher_folder=experiment.model.teacher if distill.enabled else None, dtype=dtype,
                        attn_implementation=attn, distill_loss=distill.loss,
                        quantize=lora.quantize if lora else "none", folder_config=plan.init_config)
    model.config.use_cache = False
    # Text-only batches still run the visual parts (x 0): several processes must run the same modules every step
    # (ZeRO-3 gathers, DDP / ZeRO-1/2 reduce the same gradients), and with the LLM frozen (prealign) such a batch
    # would otherwise have no gradient at all. It also keeps AdamW's steps on the visual parts as they were.
    model.lockstep = True
    apply_stage(model, stage)
    adapter = None
    if lora is not None:
        from videopanda.train.lora import add_adapters, freeze_for_lora

        adapter = LoraRun(add_adapters(model.model, lora), base=str(folder), visual=lora.visual,
                          base_identity=plan.base_identity)
        freeze_for_lora(model, lora.visual)
    deepspeed = plan.deepspeed
    if plan.deepspeed_stage == 3:
        deepspeed = prepare_zero3(model, deepspeed)
    return model, adapter, deepspeed


def stage_data(experiment: Experiment, stage: str, plan: Preflight, model, tokenizer):
    """The processor of `model` with `tokenizer`, and the stage's training dataset."""
    from videopanda.data.dataset import VideoInstructDataset
    from videopanda.data.processor import VideoPandaProcessor

    processor = VideoPandaProcessor.from_model_config(model.config, tokenizer)
    if processor.image_token_id != model.config.image_token_id:
        raise PreflightError(f"{experiment.stage_init(stage)}: the tokenizer's {processor.image_token_id} for the "
                             f"frame placeholder differs from the config's image_token_id {model.config.image_token_id}")
    frame_cache = None
    if experiment.runtime.frame_cache:
        from videopanda.data.frame_cache import FrameCache

        frame_cache = FrameCache(experiment.runtime.frame_cache)
        logger.info("decoded frames are cached in %s", frame_cache.folder)
    dataset = VideoInstructDataset(plan.data_json, plan.video_folder, processor,
                                   first_half=bool(experiment.stage(stage).first_half),
                                   random_flip=experiment.data.random_flip, seed=experiment.training.seed,
                                   model_max_length=experiment.data.max_length, frame_cache=frame_cache)
    logger.info("data: %d samples (%d with video) from %s", plan.num_samples, plan.num_video_samples,
                ", ".join(str(p) for p in plan.data_json))
    return processor, dataset


def _fit(trainer, resolved: ResolvedExperiment, stage: str, plan: Preflight, stop) -> int:
    """Train (resuming from the plan's checkpoint), then write the model folder, the data report and
    `training_complete.json`; PREEMPTED_EXIT_CODE when a signal stopped the run at a checkpoint."""
    from videopanda.data.dataset import log_data_report

    output = resolved.experiment.stage_output(stage)
    if plan.resume_from is not None:
        logger.info("resuming from %s", plan.resume_from)
    # A write that fails on one rank (the loss log, a report) ends that process; the others then fail in their
    # next collective: on a full disk `writing` says so in one line on every rank.
    with writing(output, full_disk_only=True):
        result = trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
        if stop.stopped_at is not None:
            return _preempted(trainer, stop.signal, str(output), stop.stopped_at)
        with writing(output):
            trainer.save_model(str(output))
        report = trainer.run_data_report()
        trainer.accelerator.wait_for_everyone()
        if trainer.args.should_save:
            log_data_report(report)
            write_json_atomic(output / DATA_REPORT, report)
            step = trainer.state.global_step
            write_json_atomic(output / FINAL_MARKER, _final_record(resolved, stage, plan, step,
                                                                  run_train_loss(trainer.state.log_history),
                                                                  _loop_timing(result.metrics, plan, step)))
            logger.info("stage %s finished: %s", stage, output)
        trainer.accelerator.wait_for_everyone()
    return 0


def train(resolved: ResolvedExperiment, stage: str, plan: Preflight, signals: StopSignals | None = None) -> int:
    """Run the stage; `signals` (installed by the caller) turns SIGTERM / SIGUSR1 into a checkpointed stop."""
    import torch
    from transformers import set_seed

    from videopanda.data.dataset import VideoInstructCollator
    from videopanda.train.trainer import LOSS_LOG, LossLogCallback, StopOnSignal, VideoPandaTrainer, agreed_stop_signal

    signals, experiment = signals or StopSignals(), resolved.experiment
    device = stage_device(experiment)
    bf16 = trains_in_bf16(experiment, device)
    attn, batch = attn_implementation(experiment.runtime.attn_implementation, device), plan.batch
    logger.info("stage %s on %d process(es), %s, %s, attention %s: global batch %d = %d per device x %d processes x %d "
                "accumulation steps", stage, batch.world_size, device, "bf16" if bf16 else "fp32", attn,
                batch.global_batch_size, batch.per_device_batch_size, batch.world_size, batch.gradient_accumulation_steps)
    set_seed(experiment.training.seed)  # identical fresh weights on every rank
    max_length, output = experiment.data.max_length, experiment.stage_output(stage)
    tokenizer = stage_tokenizer(experiment, stage, plan)
    model, adapter, deepspeed = stage_model(experiment, stage, plan, torch.bfloat16 if bf16 else torch.float32, attn)
    processor, dataset = stage_data(experiment, stage, plan, model, tokenizer)
    training_args = training_arguments(experiment, stage, batch, device, bf16, deepspeed)  # the process group exists now
    stop = StopOnSignal(signals)
    trainer = VideoPandaTrainer(
        model=model, args=training_args, train_dataset=dataset,
        data_collator=VideoInstructCollator(processor, max_length), processing_class=processor,
        callbacks=[LossLogCallback(output / LOSS_LOG), stop],
        visual_learning_rate=experiment.visual_learning_rate(stage), save_teacher=experiment.save.teacher,
        keep_checkpoints=experiment.save.total_limit, group_by_modality_length=experiment.data.group_by_modality_length,
        adapter=adapter,
    )
    if training_args.should_save:
        discard_incomplete(output)
    trainer.accelerator.wait_for_everyone()
    early = agreed_stop_signal(signals, training_args.device)
    if early is not None:
        return _preempted(trainer, early, str(output), None)
    status = _fit(trainer, resolved, stage, plan, stop)
    if status == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0:
        tell_launcher(f"finished ({output})")
    return status


def _check_passed(plan: Preflight) -> int:
    logger.info("check passed: %s init, %d samples (%d with video), global batch %d = %d x %d x %d, resume %s",
                plan.init_kind, plan.num_samples, plan.num_video_samples, plan.batch.global_batch_size,
                plan.batch.per_device_batch_size, plan.batch.world_size, plan.batch.gradient_accumulation_steps,
                plan.resume_from or "none")
    return 0


def _run_stage(resolved: ResolvedExperiment, stage: str, command: argparse.Namespace, signals: StopSignals) -> int:
    """Preflight, then (unless --check-only) the stage: skipped when finished (its record kept), completed from its
    last checkpoint when that holds the last step, else trained. The stage folder's record (`experiment.json`,
    naming the stage) is written only once every check has passed."""
    experiment = resolved.experiment
    plan = run_preflight(resolved, stage, command.resume)
    if command.check_only:
        return _check_passed(plan)
    output = experiment.stage_output(stage)
    if command.resume == "auto" and is_finished(output, stage):
        logger.info("%s already holds a finished %s stage (%s); nothing to do", output, stage, FINAL_MARKER)
        return 0
    if int(os.environ.get("RANK", "0")) == 0:
        write_record(resolved, output, stage)
    if plan.resume_from is not None and holds_last_step(plan.resume_from, experiment.stage(stage).max_steps):
        return finish_from_last_checkpoint(resolved, stage, plan)
    with world_of_one(experiment.training.deepspeed is not None):
        return train(resolved, stage, plan, signals)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    import sys

    command = build_parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    try:
        resolved = resolve_experiment(command.experiment, command.overrides)
    except ExperimentError as err:
        logger.error("%s", err)
        return 2
    signals = StopSignals()
    if not command.check_only:
        signals.install()  # from here on a SIGTERM / SIGUSR1 stops the run at a checkpoint, not at once
    status = None
    try:
        status = _run_stage(resolved, command.stage, command, signals)
        return status
    except PreflightError as err:
        logger.error("%s", err)
        return 2
    except OutputError as err:
        logger.error("training stopped: %s", err)
        status = 1
        return status
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        # torchrun sends SIGTERM to the ranks still running once one has exited non-zero: a rank stopping with
        # PREEMPTED_EXIT_CODE or 1 ignores it, so that this SIGTERM cannot become its exit status.
        if status in (PREEMPTED_EXIT_CODE, 1):
            signals.ignore()
        else:
            signals.restore()


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["main", "train"]
