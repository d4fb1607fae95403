"""`videopanda train`: one training stage, in one process or under torchrun (see TRAIN_AND_VALIDATE.md).

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

import importlib.util
import json
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from videopanda.io import OutputError, write_json_atomic
from videopanda.log import get_logger, setup_logging
from videopanda.train.args import TrainArgs, parse_train_args, training_arguments
from videopanda.train.experiment import ExperimentError, write_record
from videopanda.train.checkpointing import (DATA_REPORT, FINAL_MARKER, PREEMPTED_EXIT_CODE, StopSignals,
                                            discard_incomplete, export_model_files, holds_last_step, is_finished,
                                            latest_complete_checkpoint, read_data_report, run_train_loss,
                                            tell_launcher, trainer_state, writing)
from videopanda.train.preflight import Preflight, PreflightError, run_preflight

logger = get_logger(__name__)


def _device(args: TrainArgs) -> str:
    import torch

    if args.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise PreflightError("--device cuda but no CUDA device is visible")
    return args.device


def _attn_implementation(requested: str, device: str) -> str:
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


def _final_record(args: TrainArgs, plan: Preflight, global_step: int, train_loss: float | None) -> dict:
    """What `training_complete.json` says."""
    return {"stage": args.stage, "experiment": args.experiment.experiment.name if args.experiment else None,
            "global_step": global_step, "train_loss": train_loss, "init": str(args.model),
            "init_kind": plan.init_kind, "teacher": args.teacher if args.distill else None,
            "world_size": plan.batch.world_size, "global_batch_size": plan.batch.global_batch_size}


def finish_from_last_checkpoint(args: TrainArgs, plan: Preflight) -> int:
    """The run stopped after its last step's checkpoint but before its final outputs: write them from that
    checkpoint (model files, data report, training_complete.json) on rank 0, without training."""
    from videopanda.data.dataset import log_data_report

    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    checkpoint, output = Path(plan.resume_from), Path(args.output_dir)
    logger.info("%s holds the last step: writing the final outputs from it", checkpoint)
    export_model_files(checkpoint, output)
    report = read_data_report(checkpoint)
    if report is not None:
        log_data_report(report)
        write_json_atomic(output / DATA_REPORT, report)
    state = trainer_state(checkpoint)
    write_json_atomic(output / FINAL_MARKER, _final_record(args, plan, int(state["global_step"]),
                                                          run_train_loss(state.get("log_history", []))))
    logger.info("stage %s finished: %s", args.stage, args.output_dir)
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


def train(args: TrainArgs, plan: Preflight, signals: StopSignals | None = None) -> int:
    """Run the stage; `signals` (installed by the caller) turns SIGTERM / SIGUSR1 into a checkpointed stop."""
    import torch
    from transformers import AutoTokenizer, set_seed

    from videopanda.data.dataset import VideoInstructCollator, VideoInstructDataset, log_data_report
    from videopanda.data.processor import VideoPandaProcessor
    from videopanda.train.stages import apply_stage, build_model, prepare_zero3
    from videopanda.train.trainer import (LOSS_LOG, LoraRun, LossLogCallback, StopOnSignal, VideoPandaTrainer,
                                          agreed_stop_signal)

    signals = signals or StopSignals()

    device = _device(args)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device == "cuda")
    dtype = torch.bfloat16 if bf16 else torch.float32
    attn = _attn_implementation(args.attn_implementation, device)
    batch = plan.batch
    logger.info("stage %s on %d process(es), %s, %s, attention %s: global batch %d = %d per device x %d processes x %d "
                "accumulation steps", args.stage, batch.world_size, device, "bf16" if bf16 else "fp32", attn,
                batch.global_batch_size, batch.per_device_batch_size, batch.world_size, batch.gradient_accumulation_steps)

    set_seed(args.seed)  # identical fresh weights on every rank
    tokenizer = AutoTokenizer.from_pretrained(args.model, model_max_length=args.max_length, padding_side="right")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token
    model = build_model(args.model, init=args.init, stab_overrides=args.stab_overrides(),
                        config_overrides=args.config_overrides(),
                        teacher_folder=args.teacher if args.distill else None, dtype=dtype, attn_implementation=attn,
                        distill_loss=args.distill_loss, quantize=args.lora.quantize if args.lora else "none")
    model.config.use_cache = False
    # Text-only batches still run the visual parts (x 0): several processes must run the same modules every step
    # (ZeRO-3 gathers, DDP / ZeRO-1/2 reduce the same gradients), and with the LLM frozen (prealign) such a batch
    # would otherwise have no gradient at all. It also keeps AdamW's steps on the visual parts as they were.
    model.lockstep = True
    apply_stage(model, args.stage)
    adapter = None
    if args.lora is not None:
        from videopanda.train.lora import add_adapters, freeze_for_lora

        adapter = LoraRun(add_adapters(model.model, args.lora), base=args.model, visual=args.lora.visual)
        freeze_for_lora(model, args.lora.visual)
    deepspeed = args.deepspeed
    if plan.deepspeed_stage == 3:
        deepspeed = prepare_zero3(model, json.loads(Path(args.deepspeed).read_text()))

    processor = VideoPandaProcessor.from_model_config(model.config, tokenizer)
    if processor.image_token_id != model.config.image_token_id:
        raise PreflightError(f"{args.model}: the tokenizer's {processor.image_token_id} for the frame placeholder "
                             f"differs from the config's image_token_id {model.config.image_token_id}")
    frame_cache = None
    if args.frame_cache:
        from videopanda.data.frame_cache import FrameCache

        frame_cache = FrameCache(args.frame_cache)
        logger.info("decoded frames are cached in %s", frame_cache.folder)
    dataset = VideoInstructDataset(plan.data_json, plan.video_folder, processor, first_half=bool(args.first_half),
                                   random_flip=args.random_flip, seed=args.seed, model_max_length=args.max_length,
                                   frame_cache=frame_cache)
    logger.info("data: %d samples (%d with video) from %s", plan.num_samples, plan.num_video_samples,
                ", ".join(str(p) for p in plan.data_json))

    training_args = training_arguments(args, batch, device, bf16, deepspeed)  # from here on the process group exists
    stop = StopOnSignal(signals)
    trainer = VideoPandaTrainer(
        model=model, args=training_args, train_dataset=dataset,
        data_collator=VideoInstructCollator(processor, args.max_length), processing_class=processor,
        callbacks=[LossLogCallback(Path(args.output_dir) / LOSS_LOG), stop],
        visual_learning_rate=args.visual_learning_rate, save_teacher=args.save_teacher,
        keep_checkpoints=args.save_total_limit, group_by_modality_length=args.group_by_modality_length,
        adapter=adapter,
    )
    if training_args.should_save:
        discard_incomplete(args.output_dir)
    trainer.accelerator.wait_for_everyone()
    early = agreed_stop_signal(signals, training_args.device)
    if early is not None:
        return _preempted(trainer, early, args.output_dir, None)
    if plan.resume_from is not None:
        logger.info("resuming from %s", plan.resume_from)
    output = Path(args.output_dir)
    # A write that fails on one rank (the loss log, a report) ends that process; the others then fail in their
    # next collective: on a full disk `writing` says so in one line on every rank.
    with writing(output, full_disk_only=True):
        trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
        if stop.stopped_at is not None:
            return _preempted(trainer, stop.signal, args.output_dir, stop.stopped_at)
        with writing(output):
            trainer.save_model(args.output_dir)
        report = trainer.run_data_report()
        trainer.accelerator.wait_for_everyone()
        if training_args.should_save:
            log_data_report(report)
            write_json_atomic(output / DATA_REPORT, report)
            write_json_atomic(output / FINAL_MARKER, _final_record(args, plan, trainer.state.global_step,
                                                                  run_train_loss(trainer.state.log_history)))
            logger.info("stage %s finished: %s", args.stage, args.output_dir)
        trainer.accelerator.wait_for_everyone()
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        tell_launcher(f"finished ({args.output_dir})")
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    import sys

    try:
        args = parse_train_args(list(sys.argv[1:] if argv is None else argv))
    except ExperimentError as err:
        logger.error("%s", err)
        return 2
    signals = StopSignals()
    if not args.check_only:
        signals.install()  # from here on a SIGTERM / SIGUSR1 stops the run at a checkpoint, not at once
    status = None
    try:
        plan = run_preflight(args)
        if args.check_only:
            logger.info("check passed: %s init, %d samples (%d with video), global batch %d = %d x %d x %d, resume %s",
                        plan.init_kind, plan.num_samples, plan.num_video_samples, plan.batch.global_batch_size,
                        plan.batch.per_device_batch_size, plan.batch.world_size, plan.batch.gradient_accumulation_steps,
                        plan.resume_from or "none")
            return 0
        if int(os.environ.get("RANK", "0")) == 0 and args.experiment is not None:
            write_record(args.experiment, args.output_dir)
        if args.resume == "auto" and is_finished(args.output_dir):
            logger.info("%s already holds a finished %s stage (%s); nothing to do", args.output_dir, args.stage,
                        FINAL_MARKER)
            return 0
        if plan.resume_from is not None and holds_last_step(plan.resume_from, args.max_steps):
            return finish_from_last_checkpoint(args, plan)
        with world_of_one(args.deepspeed is not None):
            status = train(args, plan, signals)
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
