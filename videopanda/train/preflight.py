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
from videopanda.train.arguments import BatchPlan, derive_batch
from videopanda.train.checkpointing import checkpoint_folders, is_finished, latest_complete_checkpoint
from videopanda.train.experiment import Experiment, ExperimentError, ResolvedExperiment, check_stage_folder

logger = get_logger(__name__)

VIDEO_PROBE = 200
"""How many video samples' files are looked for: at least one must exist under the video folder."""


class PreflightError(Exception):
    """Something the run needs is missing or wrong; the message says what and where."""


@dataclass
class Preflight:
    """What the checks found, for the run to use: the starting folder's config.json (read once, here) and the
    DeepSpeed config (read once, here; None without DeepSpeed)."""

    init_config: dict
    init_kind: str
    data_json: list[Path]
    video_folder: Path
    num_samples: int
    num_video_samples: int
    batch: BatchPlan
    resume_from: Path | None
    deepspeed: dict | None

    @property
    def deepspeed_stage(self) -> int | None:
        return None if self.deepspeed is None else int(self.deepspeed.get("zero_optimization", {}).get("stage", 0))


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


def _deepspeed(path: str | None) -> dict | None:
    if path is None:
        return None
    config_path = Path(path)
    if not config_path.is_file():
        raise PreflightError(f"DeepSpeed config {config_path} does not exist")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise PreflightError(f"DeepSpeed config {config_path} is not valid JSON: {err}") from None
    if not isinstance(config, dict):
        raise PreflightError(f"DeepSpeed config {config_path} is not a JSON object")
    return config


def _data(experiment: Experiment, stage: str) -> tuple[list[Path], Path, int, int]:
    from videopanda.data.dataset import DataFormatError, load_samples, video_of

    root = experiment.data.root
    if root is not None and not Path(root).is_dir():
        raise PreflightError(f"DATA_ROOT {root} does not exist")
    paths = experiment.data_json_paths(stage)
    if not paths:
        raise PreflightError(f"no training JSON given (stages.{stage}.data_json)")
    for path in paths:
        if not path.is_absolute() and path.parent == Path(".") and not root:
            raise PreflightError(f"training JSON {path.name}: set DATA_ROOT (or data.root) or give a path")
        if not path.is_file():
            raise PreflightError(f"training JSON {path} does not exist "
                                 f"(expected layout: DATA_ROOT/train/train_json/<name>.json)")
    try:
        samples = load_samples(paths, first_half=bool(experiment.stage(stage).first_half))
    except DataFormatError as err:
        raise PreflightError(str(err)) from None
    if not samples:
        raise PreflightError(f"training JSON {', '.join(map(str, paths))}: no samples")
    videos = [video_of(s) for s in samples if video_of(s) is not None]
    folder = experiment.video_folder_path()
    if videos:
        if folder is None:
            raise PreflightError("the data has videos: set DATA_ROOT (or data.root / data.video_folder)")
        if not folder.is_dir():
            raise PreflightError(f"video folder {folder} does not exist")
        probe = videos[:VIDEO_PROBE]
        if not any((folder / v).is_file() for v in probe if isinstance(v, str)):
            raise PreflightError(f"none of the first {len(probe)} videos of the training JSON exists under {folder} "
                                 f"(e.g. {folder / str(probe[0])}): wrong DATA_ROOT or data.video_folder?")
    return paths, folder or Path("."), len(samples), len(videos)


def _resume(resume: str, output: Path) -> Path | None:
    if resume == "never":
        existing = checkpoint_folders(output)
        if existing:
            raise PreflightError(f"{output} already holds checkpoints ({existing[-1][1].name}); "
                                 f"use --resume auto, or a fresh output folder (stages.<stage>.output_dir)")
        return None
    if resume == "auto":
        return latest_complete_checkpoint(output)
    path = Path(resume)
    from videopanda.train.checkpointing import is_complete

    if not is_complete(path):
        raise PreflightError(f"--resume {path} is not a complete checkpoint")
    return path


def _starting_folder(experiment: Experiment, stage: str, model: Path) -> tuple[dict, str]:
    """The stage's starting folder checked: its config.json (read here, once for the run) and its kind."""
    from videopanda.train.stages import detect_init_kind, read_config

    _model_folder(model, "model folder")
    try:
        config = read_config(model)
        kind = detect_init_kind(model, experiment.init_kind(stage), config)
    except (ValueError, FileNotFoundError) as err:
        raise PreflightError(str(err)) from None
    if stage != "prealign" and kind != "videopanda":
        logger.warning("stage %s normally starts from the previous stage's output, but %s is a %s folder",
                       stage, model, kind)
    if kind == "videopanda":
        _same_visual_part(experiment, model, config)
    if checkpoint_folders(model) and not is_finished(model):
        raise PreflightError(f"model folder {model} is a training output that never finished "
                             f"(no training_complete.json): finish or resume that stage first")
    return config, kind


def run_preflight(resolved: ResolvedExperiment, stage: str, resume: str = "auto",
                  world_size: int | None = None) -> Preflight:
    """Validate everything the stage points at; raises PreflightError with a message naming the culprit."""
    experiment = resolved.experiment
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    config, kind = _starting_folder(experiment, stage, experiment.stage_init(stage))
    if experiment.distillation.enabled:
        if experiment.model.teacher is None:
            raise PreflightError("distillation needs model.teacher (a LanguageBind_Video_merge folder), or set "
                                 "distillation.enabled=false")
        _model_folder(Path(experiment.model.teacher), "teacher folder")
    settings = experiment.stage(stage)
    try:
        batch = derive_batch(settings.global_batch_size, world_size, settings.per_device_batch_size)
    except ValueError as err:
        raise PreflightError(str(err)) from None
    deepspeed = _deepspeed(experiment.training.deepspeed)
    if experiment.lora_for(stage) is not None:
        _lora_ready(experiment, stage, kind, deepspeed)
    paths, folder, n, n_video = _data(experiment, stage)
    output = experiment.stage_output(stage)
    _output_folder(output)
    try:
        check_stage_folder(resolved, stage, output, holds_outputs=bool(checkpoint_folders(output)) or
                           is_finished(output))
    except ExperimentError as err:
        raise PreflightError(str(err)) from None
    return Preflight(config, kind, paths, folder, n, n_video, batch, _resume(resume, output), deepspeed)


def _lora_ready(experiment: Experiment, stage: str, kind: str, deepspeed: dict | None) -> None:
    """LoRA needs peft; adapters are saved from each rank's full parameters, so not under ZeRO-3; QLoRA
    needs CUDA, bitsandbytes and a Video-Panda starting folder (its visual parts stay unquantized)."""
    import importlib.util

    import torch

    if importlib.util.find_spec("peft") is None:
        raise PreflightError("lora.enabled needs peft: pip install 'videopanda[lora]'")
    if deepspeed is not None and int(deepspeed.get("zero_optimization", {}).get("stage", 0)) == 3:
        raise PreflightError(f"LoRA runs under DeepSpeed ZeRO-2 or without DeepSpeed, not ZeRO-3 "
                             f"({experiment.training.deepspeed})")
    if experiment.lora.quantize == "nf4":
        device = experiment.runtime.device
        if device == "cpu" or not torch.cuda.is_available():
            raise PreflightError("QLoRA (lora.quantize: nf4) needs a CUDA device, and this run has none "
                                 f"(device {device}); use lora.quantize=none for LoRA")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise PreflightError("QLoRA (lora.quantize: nf4) needs bitsandbytes: pip install 'videopanda[qlora]'")
        if kind != "videopanda":
            raise PreflightError(f"QLoRA starts from a Video-Panda folder; {experiment.stage_init(stage)} is a "
                                 f"{kind} folder")


def _same_visual_part(experiment: Experiment, model: Path, folder_config: dict) -> None:
    """A Video-Panda starting folder brings its own STAB and frame settings (`folder_config`, its config.json):
    they must be the experiment's (an ablation must not continue from another experiment's weights)."""
    from dataclasses import asdict

    from videopanda.model.stab import STABConfig
    from videopanda.model.videopanda import VideoPandaConfig

    frame_fields, stab = experiment.visual_overrides()
    try:
        have = VideoPandaConfig.from_dict(dict(folder_config))
        stab.setdefault("width", have.stab["width"])
        stab.setdefault("frames_per_chunk", frame_fields.get("frames_per_chunk", have.frames_per_chunk))
        want_stab = asdict(STABConfig(**stab))
    except (OSError, TypeError, ValueError) as err:
        raise PreflightError(f"model folder {model}: {err}") from None
    changed = [f"stab.{k}: {have.stab.get(k)!r} (folder) != {v!r} (experiment)" for k, v in want_stab.items()
               if have.stab.get(k) != v]
    changed += [f"{k}: {getattr(have, k)!r} (folder) != {v!r} (experiment)"
                for k, v in frame_fields.items() if getattr(have, k) != v]
    if changed:
        raise PreflightError(f"model folder {model} was made with other model settings than {experiment.name}: "
                             f"{'; '.join(changed)}")


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
