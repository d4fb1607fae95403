"""Checkpoints that are either complete or ignored, and auto-resume from the latest complete one.

The HF Trainer writes `output_dir/checkpoint-<step>/` in place (model, DeepSpeed or optimizer states,
scheduler, per-rank RNG states, trainer_state.json). A crash or SIGKILL in the middle leaves a
folder that cannot be resumed from. So: after every rank has finished writing (a barrier), rank 0
writes `COMPLETE_MARKER` into the folder atomically (temp file + fsync + rename); only folders with
the marker count as checkpoints. Old checkpoints are deleted only after a newer one carries its
marker, so a crash at any moment leaves at least one loadable checkpoint (once one has been saved).
The final model folder gets `FINAL_MARKER` the same way once `save_model` has finished. A write that
fails (a full disk, a permission) stops the run with one `OutputError` line naming the folder, before
any marker is written (`writing`).

Preemption: while `StopSignals` is active, SIGTERM and SIGUSR1 only set a flag; the trainer finishes
the optimizer step, saves a complete checkpoint of it (the same marker as a scheduled one, so
auto-resume picks it up) and the process exits with `PREEMPTED_EXIT_CODE`. When the environment names
a file in `PREEMPT_FILE_ENV`, local rank 0 writes one line there saying so, or that the run finished
(the launchers turn torchrun's own exit status back into `PREEMPTED_EXIT_CODE` or 0 with it).
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from videopanda.io import OutputError, atomic_path, describe_os_error, write_json_atomic
from videopanda.log import get_logger

logger = get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "checkpoint_complete.json"
FINAL_MARKER = "training_complete.json"
DATA_REPORT = "data_report.json"
"""Bad and replaced samples of the run so far: in every checkpoint, and in the output folder at the end."""
UNLOGGED_LOSS = "unlogged_loss.json"
"""In every checkpoint: the training loss of the steps after the last log, summed over ranks, which a
resumed run adds to its first log (so the loss curve does not depend on where the run was interrupted)."""

PREEMPTED_EXIT_CODE = 75
"""Exit status of a run stopped by SIGTERM / SIGUSR1 after saving a complete checkpoint (EX_TEMPFAIL:
run the same command again to resume). A run killed before it could save exits otherwise."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPT_FILE_ENV = "VIDEOPANDA_PREEMPT_FILE"
TRAINER_STATE = "trainer_state.json"
RESUME_ONLY = {COMPLETE_MARKER, DATA_REPORT, UNLOGGED_LOSS, TRAINER_STATE, "optimizer.pt", "scheduler.pt", "scaler.pt",
               "latest", "zero_to_fp32.py", "zero_to_torch.py"}
"""Files of a checkpoint that only resuming needs (so do `rng_state*.pth` and DeepSpeed's folders); the
other files are the model folder `save_model` writes."""


def checkpoint_folders(output_dir: str | Path) -> list[tuple[int, Path]]:
    """All `checkpoint-<step>` folders of output_dir, by step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = CHECKPOINT_PATTERN.match(child.name)
        if match and child.is_dir():
            found.append((int(match.group(1)), child))
    return sorted(found)


def is_complete(checkpoint: str | Path) -> bool:
    """True when the checkpoint's marker exists and names its own step."""
    marker = Path(checkpoint) / COMPLETE_MARKER
    try:
        payload = json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    match = CHECKPOINT_PATTERN.match(Path(checkpoint).name)
    return bool(match) and payload.get("global_step") == int(match.group(1))


def latest_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    complete = [path for _, path in checkpoint_folders(output_dir) if is_complete(path)]
    return complete[-1] if complete else None


def mark_complete(checkpoint: str | Path, global_step: int, world_size: int) -> Path:
    """Call on one process after all ranks have finished writing `checkpoint`."""
    return write_json_atomic(Path(checkpoint) / COMPLETE_MARKER,
                             {"global_step": global_step, "world_size": world_size, "time": time.time()})


def _remove(path: Path) -> None:
    """Rename first (atomic), then delete: a crash mid-delete never leaves a half-deleted `checkpoint-N`."""
    trash = path.with_name(f".deleting-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune_checkpoints(output_dir: str | Path, keep: int) -> list[Path]:
    """Keep the newest `keep` complete checkpoints; delete older complete ones and every incomplete one
    older than the newest complete one. Returns the deleted folders."""
    folders = checkpoint_folders(output_dir)
    complete = [(step, path) for step, path in folders if is_complete(path)]
    if not complete:
        return []
    newest = complete[-1][0]
    doomed = [path for _, path in complete[:-max(keep, 1)]]
    doomed += [path for step, path in folders if step < newest and not is_complete(path)]
    for path in doomed:
        _remove(path)
    if doomed:
        logger.info("deleted old checkpoints: %s", ", ".join(p.name for p in doomed))
    return doomed


def discard_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete every incomplete checkpoint folder (left by a crash while saving). Call on one process
    before training resumes; returns the deleted folders."""
    doomed = [path for _, path in checkpoint_folders(output_dir) if not is_complete(path)]
    for path in doomed:
        logger.warning("discarding incomplete checkpoint %s (the run stopped while saving it)", path)
        _remove(path)
    return doomed


def finished_stage(output_dir: str | Path) -> str | None:
    """The stage whose `FINAL_MARKER` output_dir holds (the marker's `stage`), None without a marker; "unknown" for
    a marker that names no stage (unreadable), which still marks the folder as finished."""
    marker = Path(output_dir) / FINAL_MARKER
    if not marker.is_file():
        return None
    try:
        stage = json.loads(marker.read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        stage = None
    return stage if isinstance(stage, str) else "unknown"


def is_finished(output_dir: str | Path, stage: str | None = None) -> bool:
    """True when output_dir holds a finished stage (`FINAL_MARKER`): any stage, or with `stage` only that one (a
    folder another stage finished is not this stage finished)."""
    found = finished_stage(output_dir)
    return found is not None and stage in (None, found)


def checkpoint_world_size(checkpoint: str | Path) -> int | None:
    """How many processes wrote a complete checkpoint (its `COMPLETE_MARKER`'s `world_size`); None when the marker
    does not say."""
    try:
        size = json.loads((Path(checkpoint) / COMPLETE_MARKER).read_text()).get("world_size")
    except (OSError, ValueError, AttributeError):
        return None
    return size if isinstance(size, int) and not isinstance(size, bool) else None


def checkpoint_step(checkpoint: str | Path) -> int:
    """The step in a `checkpoint-<step>` folder's name."""
    match = CHECKPOINT_PATTERN.match(Path(checkpoint).name)
    if not match:
        raise ValueError(f"{checkpoint} is not a checkpoint-<step> folder")
    return int(match.group(1))


def _read_optional_json(path: Path, left_out: str) -> dict | None:
    """A checkpoint's optional JSON record, or None when it is absent (an older version) or unreadable (a
    warning says what is `left_out`: these records are reports, not training state)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as err:
        logger.warning("%s: unreadable, %s (%s)", path, left_out, err)
        return None


def read_data_report(checkpoint: str | Path) -> dict | None:
    """The data report saved in a checkpoint, or None (see `_read_optional_json`)."""
    return _read_optional_json(Path(checkpoint) / DATA_REPORT, "counts before this checkpoint are left out")


def read_unlogged_loss(checkpoint: str | Path) -> dict | None:
    """The `UNLOGGED_LOSS` record of a checkpoint, or None: the resumed run's first log then covers the
    steps after the checkpoint only (see `_read_optional_json`)."""
    return _read_optional_json(Path(checkpoint) / UNLOGGED_LOSS,
                               "the loss of the steps before it since the last log is left out")


def run_train_loss(log_history: list[dict]) -> float | None:
    """Mean training loss over every logged step of a run, resumed parts included (a checkpoint's
    trainer state carries the log history): each log's `loss` is the mean over the steps since the
    previous log, so it is weighted by their number. None without a training log."""
    total, steps, last = 0.0, 0, 0
    for entry in sorted((e for e in log_history if "loss" in e and "step" in e), key=lambda e: e["step"]):
        span = entry["step"] - last
        if span > 0:
            total += entry["loss"] * span
            steps += span
            last = entry["step"]
    return total / steps if steps else None


def trainer_state(checkpoint: str | Path) -> dict:
    """The HF trainer state saved in a checkpoint (global_step, max_steps, log_history, ...)."""
    return json.loads((Path(checkpoint) / TRAINER_STATE).read_text())


def holds_last_step(checkpoint: str | Path, max_steps: int) -> bool:
    """True when a complete checkpoint is the run's last step: `max_steps` (> 0), or when the epochs decide
    (`max_steps` <= 0) the last step its trainer state recorded. Resuming from it would train one step
    more (the HF Trainer checks the step limit only after a step)."""
    try:
        state = trainer_state(checkpoint)
    except (OSError, json.JSONDecodeError):
        return False
    last = max_steps if max_steps > 0 else int(state.get("max_steps") or 0)
    return last > 0 and int(state.get("global_step", 0)) >= last


def export_model_files(checkpoint: str | Path, output_dir: str | Path) -> list[Path]:
    """Copy the model folder files of a checkpoint (all but `RESUME_ONLY`, RNG states and folders) into
    output_dir, each atomically; returns the copies."""
    copies = []
    for source in sorted(Path(checkpoint).iterdir()):
        if source.is_dir() or source.name in RESUME_ONLY or source.name.startswith("rng_state"):
            continue
        target = Path(output_dir) / source.name
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        copies.append(target)
    return copies


@contextmanager
def writing(path: str | Path, full_disk_only: bool = False) -> Iterator[None]:
    """Re-raise a failed write inside the block as an `OutputError` naming `path` (one line; a full disk
    is said as "no space left on device" even when a C++ writer lost the errno). Other errors pass.

    With `full_disk_only`, only an error while `path`'s file system is full is turned into that line: for
    a block that also reads files, or that waits in collectives for a rank which stopped on a full disk."""
    try:
        yield
    except OutputError:
        raise
    except Exception as exc:
        err = describe_os_error(exc, path)
        if (isinstance(exc, OSError) and not full_disk_only) or err.errno == errno.ENOSPC:
            raise err from exc
        raise


class StopSignals:
    """While installed, SIGTERM and SIGUSR1 do not end the process: the first one is remembered in
    `received` (its number) for the training loop to act on at the end of its optimizer step.

    The handler only sets the attribute: no logging or I/O from inside a signal handler."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = int(signum)

    def install(self) -> "StopSignals":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def ignore(self) -> None:
        """Ignore both signals until the process exits (the interpreter resets Python handlers to the default
        early in its shutdown, which can take seconds; an ignored signal stays ignored)."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        self._previous.clear()


def tell_launcher(line: str) -> None:
    """Tell the launcher (the file named by `PREEMPT_FILE_ENV`, if any) how the run ended, in one line:
    "preempted (...)" after a stop with a complete checkpoint, "finished (...)" once the final outputs are
    written (torchrun exits non-zero when it was signalled itself, even if its workers finished). Call on
    local rank 0."""
    target = os.environ.get(PREEMPT_FILE_ENV)
    if not target:
        return
    try:
        Path(target).write_text(line + "\n")
    except OSError as err:
        logger.warning("cannot tell the launcher how the run ended: %s", describe_os_error(err, target))


__all__ = ["COMPLETE_MARKER", "DATA_REPORT", "FINAL_MARKER", "PREEMPTED_EXIT_CODE", "PREEMPT_FILE_ENV", "STOP_SIGNALS",
           "StopSignals", "UNLOGGED_LOSS", "checkpoint_folders", "checkpoint_step", "checkpoint_world_size",
           "discard_incomplete", "export_model_files", "finished_stage", "holds_last_step", "is_complete",
           "is_finished", "latest_complete_checkpoint", "mark_complete", "prune_checkpoints", "read_data_report",
           "read_unlogged_loss", "run_train_loss", "tell_launcher", "trainer_state", "writing"]
