"""Checks that run before any process group starts: wrong folders or data fail in seconds, on every
rank, with one message naming the path, instead of after minutes of model loading or in a hung collective.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

from videopanda.io import OutputError, describe_os_error, write_text_atomic
from videopanda.log import get_logger
from videopanda.serve.model_folder import ADAPTER_RECORD, ModelFolderError, is_adapter_folder, \
    missing_tensors_message, model_identity, read_adapter_record, read_model_folder
from videopanda.train.arguments import BatchPlan, derive_batch, report_integrations
from videopanda.train.checkpointing import FINAL_MARKER, checkpoint_folders, checkpoint_world_size, finished_stage, \
    holds_last_step, is_complete, is_finished, latest_complete_checkpoint
from videopanda.train.experiment import Experiment, ExperimentError, ResolvedExperiment, check_stage_folder

logger = get_logger(__name__)

VIDEO_PROBE = 200
"""How many video samples' files are looked for: at least one must exist under the video folder."""


class PreflightError(Exception):
    """Something the run needs is missing or wrong; the message says what and where."""


@dataclass
class Preflight:
    """What the checks found, for the run to use: the starting folder's config.json (read once, here), the
    DeepSpeed config (read once, here; None without DeepSpeed) and, for a LoRA run, its base's identity
    (`model_identity` of the starting folder, computed once: every adapter folder the run saves records it)."""

    init_config: dict
    init_kind: str
    data_json: list[Path]
    video_folder: Path
    num_samples: int
    num_video_samples: int
    batch: BatchPlan
    resume_from: Path | None
    deepspeed: dict | None
    base_identity: str | None = None

    @property
    def deepspeed_stage(self) -> int | None:
        return None if self.deepspeed is None else int(self.deepspeed.get("zero_optimization", {}).get("stage", 0))


def _has_config(folder: Path, what: str) -> None:
    if not folder.is_dir():
        raise PreflightError(f"{what} {folder} does not exist")
    if not (folder / "config.json").is_file():
        raise PreflightError(f"{what} {folder} has no config.json (not a model folder)")


def _model_folder(folder: Path, what: str) -> None:
    _has_config(folder, what)
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


def _resume(resolved: ResolvedExperiment, stage: str, resume: str, output: Path) -> Path | None:
    """The checkpoint the run resumes from (None: none). `--resume PATH` must be complete, and its stage folder
    must hold this stage of this experiment: the comparison a stage folder's own checkpoints get
    (`check_stage_folder`), so another experiment's or stage's checkpoint is never continued."""
    if resume == "never":
        existing = checkpoint_folders(output)
        if existing:
            raise PreflightError(f"{output} already holds checkpoints ({existing[-1][1].name}); "
                                 f"use --resume auto, or a fresh output folder (stages.<stage>.output_dir)")
        return None
    if resume == "auto":
        return latest_complete_checkpoint(output)
    path = Path(resume)
    if not is_complete(path):
        raise PreflightError(f"--resume {path} is not a complete checkpoint")
    try:
        check_stage_folder(resolved, stage, path.parent, holds_outputs=True)
    except ExperimentError as err:
        raise PreflightError(f"--resume {path}: {err}") from None
    return path


def _starting_folder(experiment: Experiment, stage: str, model: Path) -> tuple[dict, str, object]:
    """The stage's starting folder checked -> its config.json's content (read once for the run), its kind and the
    `VideoPandaConfig` the stage's model gets. It must be a full model folder (a LoRA adapter folder is refused
    with the way to make one), read without error by `_read_starting_folder`, whose weight files hold every tensor
    the model takes from them, and a finished training output if it is one."""
    _has_config(model, "model folder")
    if is_adapter_folder(model):
        raise PreflightError(f"model folder {model} is a LoRA adapter folder ({ADAPTER_RECORD}), not a full model "
                             f"folder to start from: write one with `videopanda merge-lora {model} OUT` and start "
                             f"from OUT")
    config, kind, model_config, stored = _read_starting_folder(experiment, stage, model)
    if stage != "prealign" and kind != "videopanda":
        logger.warning("stage %s normally starts from the previous stage's output, but %s is a %s folder",
                       stage, model, kind)
    if kind == "videopanda":
        _same_visual_part(experiment, model, config)
    _all_tensors_stored(model, kind, model_config, stored)
    if checkpoint_folders(model) and not is_finished(model):
        raise PreflightError(f"model folder {model} is a training output that never finished "
                             f"(no training_complete.json): finish or resume that stage first")
    return config, kind, model_config


def _read_starting_folder(experiment: Experiment, stage: str, model: Path) -> tuple[dict, str, object, set | None]:
    """(config.json's content, the folder's kind, the `VideoPandaConfig` the model is built with, the names of the
    stored tensors: None where a legacy `.bin` cannot list them).

    A Video-Panda folder is read by the model-folder reader every command uses (`read_model_folder`: the config's
    field types and checks, its dtype, every weight file's header, the tokenizer files), with its one-line errors;
    an EVE or Llama folder's config must make the model with the experiment's fresh visual part, and its weight
    headers must read. config.json is opened once where the kind is known beforehand (`model.init`, or a stage
    after prealign, which starts from a Video-Panda folder): by the reader, or else here; only a folder of
    another kind than expected is read twice."""
    from videopanda.train.stages import detect_init_kind, read_config

    init = experiment.init_kind(stage)
    refusal = None
    if init == "videopanda" or (init == "auto" and stage != "prealign"):
        try:
            return _videopanda_folder(model)
        except PreflightError as err:
            if init == "videopanda":
                raise
            refusal = err
    try:
        raw = read_config(model)
        kind = detect_init_kind(model, init, raw)
    except (ValueError, FileNotFoundError) as err:
        raise (refusal or PreflightError(str(err))) from None
    if kind == "videopanda":
        if refusal is not None:
            raise refusal
        return _videopanda_folder(model)
    return raw, kind, _fresh_model_config(experiment, model, raw), _stored_names(model)


def _videopanda_folder(model: Path) -> tuple[dict, str, object, set | None]:
    """`_read_starting_folder` of a Video-Panda folder, through `read_model_folder`."""
    try:
        folder = read_model_folder(model)
    except ModelFolderError as err:
        raise PreflightError(str(err)) from None
    return folder.config.to_dict(), "videopanda", folder.config, None if folder.unlisted else set(folder.tensors)


def _one_line(err: BaseException) -> str:
    """A library error in one line; a strict-dataclass error by its cause ("Field 'x' expected int, got str")."""
    from huggingface_hub.errors import StrictDataclassError

    from videopanda.model.checkpoint import one_line_error

    return one_line_error(err.__cause__ if isinstance(err, StrictDataclassError) and err.__cause__ else err)


def _fresh_model_config(experiment: Experiment, model: Path, raw: dict):
    """The `VideoPandaConfig` an EVE / Llama folder's config (`raw`) makes with the experiment's fresh visual
    part; PreflightError naming config.json when its fields do not (a wrong type, a contradiction)."""
    from huggingface_hub.errors import StrictDataclassError

    from videopanda.train.experiment import videopanda_config_from_llm

    frame_fields, stab = experiment.visual_overrides()
    try:
        return videopanda_config_from_llm(raw, stab, frame_fields)
    except (TypeError, ValueError, KeyError, AttributeError, StrictDataclassError) as err:
        raise PreflightError(f"{model / 'config.json'}: {_one_line(err)}") from None


def _stored_names(model: Path) -> set | None:
    """The names of the tensors in a folder's weight files, from their headers (None: a legacy `.bin` that cannot
    list them); PreflightError naming the file that is missing, truncated or not a weight file."""
    from videopanda.model.checkpoint import stored_tensors

    try:
        tensors, unlisted = stored_tensors(model)
    except (OSError, ValueError, pickle.UnpicklingError) as err:
        raise PreflightError(_one_line(err)) from None
    return None if unlisted else set(tensors)


def _all_tensors_stored(model: Path, kind: str, config, stored: set | None) -> None:
    """PreflightError naming the weight file when it lacks tensors the model takes from it (`unloaded_tensors`):
    the stage would train them from random values (a partial save, a hand-edited file)."""
    from videopanda.model.checkpoint import checkpoint_files
    from videopanda.train.stages import unloaded_tensors

    missing = [] if stored is None else unloaded_tensors(kind, config, stored)
    if missing:
        files, _ = checkpoint_files(model)
        where = files[0] if len(files) == 1 else model
        raise PreflightError(missing_tensors_message(where, missing))


def run_preflight(resolved: ResolvedExperiment, stage: str, resume: str = "auto",
                  world_size: int | None = None) -> Preflight:
    """Validate everything the stage points at; raises PreflightError with a message naming the culprit."""
    experiment = resolved.experiment
    world_size = world_size or int(os.environ.get("WORLD_SIZE", "1"))
    model = experiment.stage_init(stage)
    config, kind, model_config = _starting_folder(experiment, stage, model)
    if experiment.distillation.enabled:
        if experiment.model.teacher is None:
            raise PreflightError("distillation needs model.teacher (a LanguageBind_Video_merge folder), or set "
                                 "distillation.enabled=false")
        _model_folder(Path(experiment.model.teacher), "teacher folder")
        _teacher_fits(Path(experiment.model.teacher), model_config)
    settings = experiment.stage(stage)
    try:
        batch = derive_batch(settings.global_batch_size, world_size, settings.per_device_batch_size)
    except ValueError as err:
        raise PreflightError(str(err)) from None
    deepspeed = _deepspeed(experiment.training.deepspeed)
    if experiment.lora_for(stage) is not None:
        _lora_ready(experiment, stage, kind, deepspeed)
    _report_to(experiment.runtime.report_to)
    paths, folder, n, n_video = _data(experiment, stage)
    output = experiment.stage_output(stage)
    _stage_output(resolved, stage, output)
    resume_from = _resume(resolved, stage, resume, output)
    if resume_from is not None and not holds_last_step(resume_from, settings.max_steps):
        _same_world(resume_from, world_size, deepspeed)
    base_identity = _lora_base(model, resume_from) if experiment.lora_for(stage) is not None else None
    _output_folder(output)  # the first thing written: after every check
    return Preflight(config, kind, paths, folder, n, n_video, batch, resume_from, deepspeed, base_identity)


def _teacher_fits(teacher: Path, model_config) -> None:
    """The teacher must take the model's frames: its image size is the model's `teacher_image_size`, and the
    model's videos split into the groups of its temporal attention (`build_model` checks the same once both have
    loaded)."""
    from videopanda.train.teacher import TeacherConfig

    path = teacher / "config.json"
    try:
        config = TeacherConfig.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError, ValueError, AttributeError) as err:
        raise PreflightError(f"teacher config {path} is invalid: {' '.join(str(err).split())}") from None
    if config.image_size != model_config.teacher_image_size:
        raise PreflightError(f"teacher {teacher} takes {config.image_size} px frames but the model's "
                             f"teacher_image_size is {model_config.teacher_image_size} (model.config)")
    frames = model_config.num_frames
    if frames > config.num_frames and frames % config.num_frames:
        raise PreflightError(f"teacher {teacher} cannot take the model's {frames}-frame videos: they do not split "
                             f"into the {config.num_frames}-frame groups of its temporal attention")


def _stage_output(resolved: ResolvedExperiment, stage: str, output: Path) -> None:
    """The stage's output folder must be apart from the folders it reads (`_apart`), must not hold another stage's
    finished output (which would be taken as this stage finished), and what it holds must be this stage of this
    experiment (`check_stage_folder`)."""
    experiment = resolved.experiment
    _apart(output, experiment.stage_init(stage), "starting folder", stage)
    if experiment.distillation.enabled:
        _apart(output, Path(experiment.model.teacher), "teacher folder", stage)
    held = finished_stage(output)
    if held is not None and held != stage:
        raise PreflightError(f"output folder {output} holds a finished {held} stage ({FINAL_MARKER}), not {stage}: "
                             f"use another output folder (stages.{stage}.output_dir=...)")
    try:
        check_stage_folder(resolved, stage, output, holds_outputs=bool(checkpoint_folders(output)) or held is not None)
    except ExperimentError as err:
        raise PreflightError(str(err)) from None


def _apart(output: Path, folder: Path, what: str, stage: str) -> None:
    """PreflightError when the output folder is `folder` (symlinks resolved), inside it or holds it: the stage
    writes model files into its output folder, and prunes checkpoints there, while it reads `folder`."""
    out, other = output.resolve(), folder.resolve()
    relation = ("is" if out == other else "is inside" if other in out.parents else
                "holds" if out in other.parents else None)
    if relation is not None:
        raise PreflightError(f"output folder {output} {relation} the {what} {folder}: the stage would write over what "
                             f"it reads; use another output folder (stages.{stage}.output_dir=...)")


def _same_world(checkpoint: Path, world_size: int, deepspeed: dict | None) -> None:
    """A DeepSpeed checkpoint holds each process's partition of the optimizer states (ZeRO-3: of the weights too),
    which only as many processes load (no shipped config asks DeepSpeed for `elastic_checkpoint`): one written by
    another number of processes (`checkpoint_world_size`) is refused here, not by a DeepSpeed traceback after the
    model loaded. Without DeepSpeed a checkpoint holds whole states, and any number of processes resumes it."""
    written = checkpoint_world_size(checkpoint)
    if deepspeed is None or written is None or written == world_size:
        return
    stage = int(deepspeed.get("zero_optimization", {}).get("stage", 0))
    raise PreflightError(f"{checkpoint} was written by {written} process(es), and this run has {world_size}: its "
                         f"DeepSpeed (ZeRO-{stage}) states are split by process; resume it with {written} "
                         f"process(es), or start over in another output folder")


def _lora_base(model: Path, resume_from: Path | None) -> str:
    """The identity (`model_identity`) of a LoRA run's base, its starting folder, computed once for the run. A
    checkpoint whose adapters were trained on a base of another identity (the folder changed since) is refused:
    resuming would continue them on another model; one that records none (an older version) only warns."""
    try:
        identity = model_identity(model)
        recorded = read_adapter_record(resume_from).base_identity if resume_from is not None else identity
    except ModelFolderError as err:
        raise PreflightError(str(err)) from None
    if recorded is None:
        logger.warning("%s records no identity of its base (%s, written by an older version): cannot tell whether "
                       "%s is still the model its adapters were trained on", resume_from, ADAPTER_RECORD, model)
    elif recorded != identity:
        raise PreflightError(f"{resume_from}: its adapters were trained on a base of identity {recorded} "
                             f"({ADAPTER_RECORD}), but the starting folder {model} now has identity {identity}: it "
                             f"changed since; restore it, or start over in another output folder")
    return identity


def _report_to(value: str) -> None:
    """Each logging integration of `runtime.report_to` must be one the HF Trainer knows, and installed: the Trainer
    would refuse it with its own traceback only after the model loaded."""
    from transformers.integrations import get_available_reporting_integrations
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in report_integrations(value):
        if name in ("all", "none"):
            continue
        if name not in INTEGRATION_TO_CALLBACK:
            raise PreflightError(f"runtime.report_to {value!r}: {name} is none of none, all, "
                                 f"{', '.join(sorted(INTEGRATION_TO_CALLBACK))}")
        if name not in get_available_reporting_integrations():
            raise PreflightError(f"runtime.report_to {value!r}: {name} is not installed")


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
