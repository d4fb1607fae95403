"""Checks that run before any process group starts: wrong folders or data fail in seconds, on every
rank, with one message naming the path, instead of after minutes of model loading or in a hung collective.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from videopanda.io import OutputError, describe_os_error, write_text_atomic
from videopanda.log import get_logger
from videopanda.train.args import BatchPlan, TrainArgs, derive_batch
from videopanda.train.checkpointing import checkpoint_folders, is_finished, latest_complete_checkpoint

logger = get_logger(__name__)

VIDEO_PROBE = 200
"""How many video samples' files are looked for: at least one must exist under the video folder."""


class PreflightError(Exception):
    """Something the run needs is missing or wrong; the message says what and where."""


@dataclass
class Preflight:
    init_kind: str
    data_json: list[Path]
    video_folder: Path
    num_samples: int
    num_video_samples: int
    batch: BatchPlan
    resume_from: Path | None
    deepspeed_stage: int | None


def _model_folder(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise PreflightError(f"{what} {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise PreflightError(f"{what} {folder} has no config.json (not a model folder)")
    from videopanda.model.checkpoint import checkpoint_files

    try:
        files, _ = checkpoint_files(folder)
    except (FileNotFoundError, ValueError) as err:
        raise PreflightError(f"{what}: {err}") from None
    missing = [p.name for p in files if not p.is_file()]
    if missing:
        raise PreflightError(f"{what} {folder}: weight files named by its index are missing: {', '.join(missing)}")


def _deepspeed_stage(path: str | None) -> int | None:
    if path is None:
        return None
    config_path = Path(path)
    if not config_path.is_file():
        raise PreflightError(f"DeepSpeed config {config_path} does not exist")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise PreflightError(f"DeepSpeed config {config_path} is not valid JSON: {err}") from None
    return int(config.get("zero_optimization", {}).get("stage", 0))


def _data(args: TrainArgs) -> tuple[list[Path], Path, int, int]:
    from videopanda.data.dataset import DataFormatError, load_samples, video_of

    if args.data_root is not None and not Path(args.data_root).is_dir():
        raise PreflightError(f"DATA_ROOT {args.data_root} does not exist")
    paths = args.data_json_paths()
    if not paths:
        raise PreflightError("no training JSON given (--data-json)")
    for path in paths:
        if not path.is_absolute() and path.parent == Path(".") and not args.data_root:
            raise PreflightError(f"training JSON {path.name}: set DATA_ROOT (or --data-root) or give a path")
        if not path.is_file():
            raise PreflightError(f"training JSON {path} does not exist "
                                 f"(expected layout: DATA_ROOT/train/train_json/<name>.json)")
    try:
        samples = load_samples(paths, first_half=bool(args.first_half))
    except DataFormatError as err:
        raise PreflightError(str(err)) from None
    if not samples:
        raise PreflightError(f"training JSON {', '.join(map(str, paths))}: no samples")
    videos = [video_of(s) for s in samples if video_of(s) is not None]
    folder = args.video_folder_path()
    if videos:
        if folder is None:
            raise PreflightError("the data has videos: set DATA_ROOT (or --data-root / --video-folder)")
        if not folder.is_dir():
            raise PreflightError(f"video folder {folder} does not exist")
        probe = videos[:VIDEO_PROBE]
        if not any((folder / v).is_file() for v in probe if isinstance(v, str)):
            raise PreflightError(f"none of the first {len(probe)} videos of the training JSON exists under {folder} "
                                 f"(e.g. {folder / str(probe[0])}): wrong DATA_ROOT or --video-folder?")
    return paths, folder or Path("."), len(samples), len(videos)


def _resume(args: TrainArgs) -> Path | None:
    if args.resume == "never":
        existing = checkpoint_folders(args.output_dir)
        if existing:
            raise PreflightError(f"{args.output_dir} already holds checkpoints ({existing[-1][1].name}); "
                                 f"use --resume auto, or a fresh --output-dir")
        return None
    if args.resume == "auto":
        return latest_complete_checkpoint(args.output_dir)
    path = Path(args.resume)
    from videopanda.train.checkpointing import is_complete

    if not is_complete(path):
        raise PreflightError(f"--resume {path} is not a complete checkpoint")
    return path


def run_preflight(args: TrainArgs, world_size: int | None = None) -> Preflight:
    """Validate everything `args` points at; raises PreflightError with a message naming the culprit."""
    from videopanda.train.stages import detect_init_kind

    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    model = Path(args.model)
    _model_folder(model, "model folder")
    try:
        kind = detect_init_kind(model, args.init)
    except (ValueError, FileNotFoundError) as err:
        raise PreflightError(str(err)) from None
    if args.stage != "prealign" and kind != "videopanda":
        logger.warning("stage %s normally starts from the previous stage's output, but %s is a %s folder",
                       args.stage, model, kind)
    if checkpoint_folders(model) and not is_finished(model):
        raise PreflightError(f"model folder {model} is a training output that never finished "
                             f"(no training_complete.json): finish or resume that stage first")
    if args.distill:
        if args.teacher is None:
            raise PreflightError("distillation needs --teacher (a LanguageBind_Video_merge folder), or pass --no-distill")
        _model_folder(Path(args.teacher), "teacher folder")
    try:
        args.stab_overrides()
        args.config_overrides()
        batch = derive_batch(args.global_batch_size, world_size, args.per_device_batch_size)
    except ValueError as err:
        raise PreflightError(str(err)) from None
    stage = _deepspeed_stage(args.deepspeed)
    paths, folder, n, n_video = _data(args)
    _output_folder(Path(args.output_dir))
    return Preflight(kind, paths, folder, n, n_video, batch, _resume(args), stage)


def _output_folder(output: Path) -> None:
    """Create the output folder and write a small file into it: a full disk or a read-only folder fails
    here, in seconds, instead of at the first checkpoint (`os.access` says yes to root regardless)."""
    probe = output / f".write-probe-{os.getpid()}"
    try:
        output.mkdir(parents=True, exist_ok=True)
        write_text_atomic(probe, "ok\n" * 512)
        probe.unlink()
    except OSError as exc:
        reason = exc.reason if isinstance(exc, OutputError) else describe_os_error(exc, output).reason
        raise PreflightError(f"output folder {output}: {reason}") from None


__all__ = ["Preflight", "PreflightError", "run_preflight"]
