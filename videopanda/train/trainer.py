"""`VideoPandaTrainer`: the HF Trainer with Video-Panda's parameter groups, loss parts, sampler and saving.

- Optimizer: AdamW with up to four groups: visual parts (STAB, projector, distillation head) at
  `visual_learning_rate` and the rest at the base rate, each split into decayed matrices and
  never-decayed biases / norms / vectors; the parts are the model's declared module objects
  (`stages.parameter_parts`), logged one line each. Under a DeepSpeed config that offloads the
  optimizer, DeepSpeedCPUAdam takes the same groups.
- Loss: the model is a `TrainingModel`; a micro-batch's lm_loss is a mean over its supervised tokens and its
  distill_loss a mean over its content frames. The micro-batches one device accumulates for an optimizer
  step weigh them by their share of the step's tokens and frames (`accumulation_weights`, counted when
  the step's batches are fetched), so the step's loss is the mean over all its tokens (frames) on that
  device, as one micro-batch of the same samples would give: the per-device split never changes the
  gradient. Devices are then averaged (DDP / DeepSpeed), as the original's per-GPU means were. `lm_loss`
  and `distill_loss` are logged separately (tensorboard and the JSONL loss log) with the same weights,
  averaged over the steps and ranks of the logging interval; distill_loss only where there was video.
- Sampler: `ModalityLengthGroupedSampler` in its global order (accelerate shards it per rank); its
  epoch is set at every epoch's start, a resumed epoch included (`SamplerEpoch`).
- Saving: every saved folder (checkpoints and the final output) is a complete inference folder: the
  `TrainingModel`'s weights in the released key names (`TrainingModel.save_pretrained`; teacher tensors
  stay out unless `save_teacher`), config, tokenizer and processor files; every checkpoint gets its
  completion marker after all ranks wrote it, and old checkpoints are pruned only after that
  (`checkpointing`). A failed write stops the run with one `OutputError` line and no marker. Every
  checkpoint also holds the loss accumulated since the last log (`UNLOGGED_LOSS`, summed over ranks);
  a run resumed from it adds that to its first log, so the loss curve is the uninterrupted one whatever
  `logging_steps` is.
- Data report: the replacement records of the batches each rank actually trained on (not of
  prefetched ones) are counted per rank, gathered at every checkpoint and at the end, and added to
  the report saved in the checkpoint the run resumed from (`run_data_report`).
- Preemption: `StopOnSignal` stops every rank at the same optimizer step once SIGTERM / SIGUSR1
  reached any of them, with a complete checkpoint of that step (not logged unless a log is due). The
  last step is always logged, so `state.log_history` covers the whole run (`checkpointing.run_train_loss`).

The Trainer's public surface does the rest; what has no public hook (the sampler, the step's micro-batches,
the checkpoint's error line and marker, the model files, the loss since the last log) is reached through
`hf_trainer_internals.TrainerInternals` only.
"""
from __future__ import annotations

import json
import math
import signal
from collections import deque
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import TrainerCallback
from transformers.trainer import TRAINING_ARGS_NAME

from videopanda.data.dataset import bad_record, data_report, merge_data_reports
from videopanda.io import describe_os_error, write_json_atomic, write_text_atomic
from videopanda.log import get_logger
from videopanda.train.checkpointing import (DATA_REPORT, STOP_SIGNALS, UNLOGGED_LOSS, StopSignals, checkpoint_step,
                                            mark_complete, prune_checkpoints, read_data_report, read_unlogged_loss)
from videopanda.train.hf_trainer_internals import TrainerInternals
from videopanda.train.stages import GROUPS, VISUAL_GROUPS, parameter_parts

logger = get_logger(__name__)

LOSS_LOG = "loss_log.jsonl"


def no_decay(name: str, param: torch.nn.Parameter) -> bool:
    """Biases, norms and other vectors (embeddings of one token, balance) are never decayed."""
    return param.dim() < 2 or "norm" in name.lower()


def parameter_groups(model: torch.nn.Module, learning_rate: float, visual_learning_rate: float,
                     weight_decay: float) -> list[dict]:
    """Trainable parameters in (visual | rest) x (decay | no decay) groups, by the parts `model.parts()`
    declares; empty groups are left out. Logs one line per part: trainable or frozen, size, learning rate."""
    parts = parameter_parts(model)
    buckets: dict[tuple[bool, bool], list] = {}
    sizes: dict[str, list[int]] = {}  # part -> [parameters, trainable parameters]
    for name, param in model.named_parameters():
        size = sizes.setdefault(parts[name], [0, 0])
        size[0] += param.numel()
        if not param.requires_grad:
            continue
        size[1] += param.numel()
        buckets.setdefault((parts[name] in VISUAL_GROUPS, no_decay(name, param)), []).append(param)
    for part in (g for g in GROUPS if g in sizes):
        total, trainable = sizes[part]
        rate = visual_learning_rate if part in VISUAL_GROUPS else learning_rate
        state = f"trainable, {_millions(total)} params, lr {rate:.0e}" if trainable == total else (
            f"frozen, {_millions(total)} params" if not trainable else
            f"partly trainable ({_millions(trainable)} of {_millions(total)} params), lr {rate:.0e}")
        logger.info("%s: %s", part, state)
    groups = []
    for (visual, plain), params in sorted(buckets.items()):
        groups.append({"params": params, "lr": visual_learning_rate if visual else learning_rate,
                       "weight_decay": 0.0 if plain else weight_decay,
                       "name": f"{'visual' if visual else 'base'}{'_no_decay' if plain else ''}"})
    if not groups:
        raise ValueError("no trainable parameters")
    return groups


def accumulation_weights(batches: list[dict]) -> list[tuple[float, float]]:
    """The micro-batches one device accumulates for an optimizer step -> per micro-batch (lm weight, distill
    weight): its share of the step's supervised tokens and of its content frames (`loss_counts`). Weighted so,
    the micro-batches' mean losses add up to the mean over all tokens (frames) of the step, what one
    micro-batch holding all of them gives. Without any token (frame) in the step, equal shares."""
    from videopanda.train.training_model import loss_counts

    counts = [loss_counts(batch) for batch in batches]
    shares = []
    for part in zip(*counts):
        total = sum(part)
        shares.append([n / total if total else 1.0 / len(part) for n in part])
    return list(zip(*shares)) if counts else []


def _millions(count: int) -> str:
    return f"{count / 1e6:.2f}M" if count < 1e9 else f"{count / 1e9:.2f}B"


class LossLogCallback(TrainerCallback):
    """Appends every training log (step, loss, lm_loss, distill_loss, learning_rate, ...) to
    `output_dir/loss_log.jsonl` on the main process. On a resumed run, lines past the resumed step
    (written after the checkpoint by the interrupted run) are dropped first, so the file is the
    loss curve of one uninterrupted run."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if record.get("step", 0) <= state.global_step:
                kept.append(line)
        write_text_atomic(self.path, "".join(f"{line}\n" for line in kept))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        record = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        try:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record) + "\n")
        except OSError as exc:
            raise describe_os_error(exc, self.path) from exc


def max_over_ranks(value: int, device: torch.device | str) -> int:
    """The largest `value` of all ranks (one all-reduce of one number; `value` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return int(tensor.item())


def agreed_stop_signal(signals: StopSignals, device: torch.device | str) -> str | None:
    """The name of the stop signal any rank received (the same answer on every rank), or None."""
    number = max_over_ranks(signals.received or 0, device)
    return signal.Signals(number).name if number else None


class StopOnSignal(TrainerCallback):
    """Stops training at the end of the first optimizer step after SIGTERM / SIGUSR1 reached any rank.

    At every step's end all ranks agree on the stop (`agreed_stop_signal`, so they stop at the same step
    even when the signal reached one rank first); the stop step is then saved like a scheduled
    checkpoint (complete marker and the loss not logged yet included) and the loop ends; `stopped_at`
    and `signal` say when and why. At the last step the run just finishes. The last step of a run is
    always logged, so the log history covers every step."""

    def __init__(self, signals: StopSignals):
        self.signals = signals
        self.stopped_at: int | None = None
        self.signal: str | None = None

    def on_step_end(self, args, state, control, **kwargs):
        name = agreed_stop_signal(self.signals, args.device)
        if control.should_training_stop:  # the last step: the run finishes as usual
            control.should_log = True
            if name is not None and state.is_world_process_zero:
                logger.warning("%s at the last step (%d): finishing the run", name, state.global_step)
        elif name is not None:
            self.stopped_at, self.signal = state.global_step, name
            if state.is_world_process_zero:
                logger.warning("%s: stopping after step %d with a checkpoint", name, state.global_step)
            control.should_save = control.should_training_stop = True
        return control


def _worker_ignores_stop_signals(worker_init_fn, worker_id: int) -> None:
    """DataLoader workers leave SIGTERM / SIGUSR1 to the training process: SLURM signals every process of
    a job step, and PyTorch's worker handler ends a worker on a SIGTERM not sent by its parent, which
    would fail the step that should be checkpointed."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if worker_init_fn is not None:
        worker_init_fn(worker_id)


class _CarryUnloggedLoss(TrainerCallback):
    """At the start of a resumed run, hands the checkpoint's unlogged loss back to the trainer (the Trainer has
    just reset its loss accumulator and last logged step)."""

    def __init__(self, trainer: "VideoPandaTrainer"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer.restore_unlogged_loss()


class SamplerEpoch(TrainerCallback):
    """Sets the training sampler's epoch at every epoch's start. A resumed epoch's DataLoader comes from
    accelerate's `skip_first_batches`, whose `set_epoch` does not reach a sampler under its batch sampler shard:
    a run resumed in the middle of epoch >= 1 would otherwise draw epoch 0's order. `state.epoch` is the epoch
    the loop starts (a whole number at an epoch's start, the resumed step's fraction within it on a resume)."""

    def __init__(self, trainer: "VideoPandaTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.trainer.sampler is not None:
            self.trainer.sampler.set_epoch(math.floor(state.epoch or 0))


@dataclass
class LoraRun:
    """A LoRA run's adapters: the `PeftModel` around the trained model, the base folder it saves as its
    base, whether the visual parts train ("train" / "freeze") and the base's identity when the run started
    (`model_identity`, from preflight; None: computed at the first save)."""

    peft_model: object
    base: str
    visual: str
    base_identity: str | None = None


class VideoPandaTrainer(TrainerInternals):
    # compute_loss weighs each micro-batch by its share of the step's tokens / frames (module docstring), so the
    # Trainer must not divide the loss by the number of accumulation steps.
    loss_is_scaled_for_ga = True

    def __init__(self, *args, visual_learning_rate: float, save_teacher: bool = False, keep_checkpoints: int = 2,
                 group_by_modality_length: bool = True, adapter: LoraRun | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.adapter = adapter
        self.visual_learning_rate = visual_learning_rate
        self.save_teacher = save_teacher
        self.keep_checkpoints = keep_checkpoints
        self.group_by_modality_length = group_by_modality_length
        self.model_accepts_loss_kwargs = False  # the Trainer counts no items for the model (see compute_loss)
        self._step_weights: deque[tuple[float, float]] = deque()  # (lm, distill) of the step's micro-batches to come
        self._loss_parts = torch.zeros(4, dtype=torch.float64)  # lm sum, lm weight, distill sum, distill weight
        self._used_bad: dict[int, dict] = {}  # bad samples in the batches this rank trained on
        self._used_replacements = 0
        self._report_before: dict | None = None  # from the checkpoint this run resumed from
        self._segment_start = 0
        self.sampler = None  # the ModalityLengthGroupedSampler of the training DataLoader
        self._unlogged_before: dict | None = None  # UNLOGGED_LOSS of the checkpoint this run resumed from
        self.add_callback(_CarryUnloggedLoss(self))
        self.add_callback(SamplerEpoch(self))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        if isinstance(resume_from_checkpoint, (str, Path)):
            self._segment_start = checkpoint_step(resume_from_checkpoint)
            self._report_before = read_data_report(resume_from_checkpoint)
            self._unlogged_before = read_unlogged_loss(resume_from_checkpoint)
            if self._report_before is None and self._segment_start:
                logger.warning("%s holds no %s: the data report covers steps after %d only", resume_from_checkpoint,
                               DATA_REPORT, self._segment_start)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ---- data ------------------------------------------------------------------------------------

    def train_sampler(self, dataset):
        """`ModalityLengthGroupedSampler` over `dataset` (None without grouping: the Trainer's random sampler)."""
        from videopanda.data.dataset import ModalityLengthGroupedSampler

        if not self.group_by_modality_length:
            return None
        self.sampler = ModalityLengthGroupedSampler(dataset.lengths, dataset.is_video,
                                                    self.args.per_device_train_batch_size,
                                                    world_size=self.args.world_size, seed=self.args.seed)
        return self.sampler

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        torch_loader = getattr(loader, "base_dataloader", loader)  # accelerate wraps the torch DataLoader
        if torch_loader.num_workers > 0:
            torch_loader.worker_init_fn = partial(_worker_ignores_stop_signals, torch_loader.worker_init_fn)
        return loader

    def run_data_report(self) -> dict:
        """The `data_report` of the run so far, on every rank (a collective: call it on all ranks at once).

        The ranks' counts since this run started are summed with the report of the checkpoint it resumed
        from; `segments` lists, per run segment (start_step, end_step), each rank's replacements and bad
        samples."""
        mine = data_report(len(self.train_dataset), self._used_bad.values(), self._used_replacements)
        ranks = [mine]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            ranks = [None] * dist.get_world_size()
            dist.all_gather_object(ranks, mine)
        before = [self._report_before] if self._report_before else []
        report = merge_data_reports(before + ranks)
        segment = {"start_step": self._segment_start, "end_step": self.state.global_step,
                   "ranks": [{"rank": rank, "replacements": part["replacements"], "bad_samples": part["bad_samples"]}
                             for rank, part in enumerate(ranks)]}
        report["segments"] = [s for b in before for s in b.get("segments", [])] + [segment]
        return report

    # ---- optimizer -------------------------------------------------------------------------------

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        groups = parameter_groups(model or self.model, self.args.learning_rate, self.visual_learning_rate,
                                  self.args.weight_decay)
        kwargs = {"betas": (self.args.adam_beta1, self.args.adam_beta2), "eps": self.args.adam_epsilon}
        if self._offloads_optimizer():
            from deepspeed.ops.adam import DeepSpeedCPUAdam

            self.optimizer = DeepSpeedCPUAdam(groups, lr=self.args.learning_rate, adamw_mode=True, **kwargs)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=self.args.learning_rate, **kwargs)
        return self.optimizer

    def _offloads_optimizer(self) -> bool:
        ds_config = getattr(self.args, "hf_deepspeed_config", None)
        config = ds_config.config if ds_config is not None else {}
        device = config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none")
        return device not in (None, "none")

    # ---- loss ------------------------------------------------------------------------------------

    def step_batches_fetched(self, batches: list[dict]) -> None:
        """Queues the loss weights of one optimizer step's micro-batches (`accumulation_weights`)."""
        self._step_weights = deque(accumulation_weights(batches))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """lm_loss x the micro-batch's token weight + distill_loss x its frame weight (1 and 1 outside a training
        step's queued micro-batches)."""
        lm_weight, distill_weight = self._step_weights.popleft() if self._step_weights else (1.0, 1.0)
        replaced = inputs.pop("replaced", None)
        inputs.pop("ids", None)
        if replaced:
            self.train_dataset.absorb(replaced)
            self._used_replacements += len(replaced)
            for record in replaced:
                self._used_bad.setdefault(record["index"], bad_record(record))
        has_video = inputs.get("pixel_values_videos") is not None
        outputs = model(**inputs)
        loss = outputs.lm_loss * lm_weight
        if outputs.distill_loss is not None:
            loss = loss + outputs.distill_loss * distill_weight
        parts = self._loss_parts
        parts[0] += float(outputs.lm_loss.detach()) * lm_weight
        parts[1] += lm_weight
        if has_video and outputs.distill_loss is not None:
            parts[2] += float(outputs.distill_loss.detach()) * distill_weight
            parts[3] += distill_weight
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: every rank is here (the Trainer gathers the loss too)
            totals = self._loss_parts.to(self.args.device, dtype=torch.float32)
            if self.args.world_size > 1:
                totals = self.accelerator.reduce(totals, reduction="sum")
            lm_sum, lm_n, d_sum, d_n = totals.tolist()
            if lm_n:
                logs["lm_loss"] = lm_sum / lm_n
            if d_n:
                logs["distill_loss"] = d_sum / d_n
            self._loss_parts.zero_()
        super().log(logs, start_time)

    def unlogged_loss(self) -> dict:
        """What the next training log would add up (a collective): the loss sum of the steps after step
        `last_logged_step` and the lm / distill sums and counts, each summed over ranks."""
        loss_sum, last_logged_step = self.loss_since_last_log()
        totals = torch.cat([loss_sum.detach().reshape(1).to("cpu", torch.float64), self._loss_parts])
        totals = totals.to(self.args.device)
        if self.args.world_size > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        loss_sum, *parts = totals.tolist()
        return {"global_step": self.state.global_step, "last_logged_step": last_logged_step,
                "loss_sum": loss_sum, "loss_parts": parts}

    def restore_unlogged_loss(self) -> None:
        """At the start of a run resumed from a checkpoint holding `UNLOGGED_LOSS` of its step: its sums go into
        the first log. A log sums the ranks' accumulators, so rank 0 carries all of it."""
        carried = self._unlogged_before
        if carried is None or carried.get("global_step") != self.state.global_step:
            return
        mine = self.args.process_index == 0
        self.carry_loss_since_last_log(float(carried["loss_sum"]) if mine else 0.0, int(carried["last_logged_step"]))
        if mine:
            self._loss_parts += torch.tensor(carried["loss_parts"], dtype=torch.float64)

    # ---- saving ----------------------------------------------------------------------------------

    def write_model_folder(self, output_dir: str, state_dict: dict | None) -> None:
        """A complete inference folder (see the module docstring); `state_dict` is the `TrainingModel`'s
        (DeepSpeed ZeRO-3 hands over a consolidated one)."""
        if not self.args.should_save:
            return
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        logger.info("saving the %s to %s", "adapters" if self.adapter else "model", output_dir)
        model = self.accelerator.unwrap_model(self.model)
        if self.adapter is not None:  # the live weights: whole on every rank below ZeRO-3
            from videopanda.train.lora import save_adapter_folder

            self.adapter.base_identity = save_adapter_folder(model, self.adapter.peft_model, output_dir,
                                                             self.adapter.base, self.adapter.visual,
                                                             self.adapter.base_identity)
        else:
            model.save_pretrained(output_dir, state_dict=state_dict, save_teacher=self.save_teacher)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, Path(output_dir) / TRAINING_ARGS_NAME)

    def load_checkpoint_weights(self, folder: str, model: torch.nn.Module | None) -> None:
        """Resuming without DeepSpeed: the checkpoint's model files (released names) into the `TrainingModel`
        (DeepSpeed resumes from its own module states instead)."""
        from videopanda.model.checkpoint import read_state_dict

        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        if self.adapter is not None:
            from videopanda.train.lora import load_adapter_state

            load_adapter_state(target, self.adapter.peft_model, folder)
        else:
            target.load_released_state_dict(read_state_dict(folder))

    def checkpoint_saved(self, folder: Path) -> None:
        """Adds the data report and the unlogged loss, then (after every rank) the completion marker, and prunes
        old checkpoints."""
        report, unlogged = self.run_data_report(), self.unlogged_loss()
        if self.args.should_save:
            write_json_atomic(folder / DATA_REPORT, report)
            write_json_atomic(folder / UNLOGGED_LOSS, unlogged)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_complete(folder, self.state.global_step, self.args.world_size)
            prune_checkpoints(folder.parent, self.keep_checkpoints)
        self.accelerator.wait_for_everyone()


__all__ = ["LOSS_LOG", "LoraRun", "LossLogCallback", "SamplerEpoch", "StopOnSignal", "VideoPandaTrainer", "accumulation_weights",
           "agreed_stop_signal", "max_over_ranks", "no_decay", "parameter_groups"]
