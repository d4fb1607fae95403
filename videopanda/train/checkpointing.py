"""Checkpoints that are either complete or ignored, and auto-resume from the latest complete one.

The HF Trainer writes `output_dir/checkpoint-<step>/` in place (model, DeepSpeed or optimizer states,
scheduler, per-rank RNG states, trainer_state.json). A crash or SIGKILL in the middle leaves a
folder that cannot be resumed from. So: after every rank has finished writing (a barrier), rank 0
writes `COMPLETE_MARKER` into the folder atomically (temp file + fsync + rename); only folders with
the marker count as checkpoints. Old checkpoints are deleted only after a newer one carries its
marker, so a crash at any moment leaves at least one loadable checkpoint (once one has been saved).
The final model folder gets `FINAL_MARKER` the same way once `save_model` has finished.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

from videopanda.io import write_json_atomic
from videopanda.log import get_logger

logger = get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKER = "checkpoint_complete.json"
FINAL_MARKER = "training_complete.json"


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


def is_finished(output_dir: str | Path) -> bool:
    return (Path(output_dir) / FINAL_MARKER).is_file()


__all__ = ["COMPLETE_MARKER", "FINAL_MARKER", "checkpoint_folders", "discard_incomplete", "is_complete",
           "is_finished", "latest_complete_checkpoint", "mark_complete", "prune_checkpoints"]
