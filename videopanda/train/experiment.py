"""One experiment, one file: the typed experiment that a training run follows (docs/experiments.md).

An experiment file (YAML) holds everything the three stages need: the model's starting folders and
shape, the STAB switches, distillation (on/off, cosine or MSE), data, per-stage learning rates, batches
and epochs, DeepSpeed config and save policy. A file may start with `extends: <other file>` (a path
relative to itself) and then holds only what changes; its own keys win, nested sections merge.

Loading is strict (pydantic models with `extra="forbid"`, docs/DESIGN.md "Experiments"): every key
must be a field of `Experiment` (or of `STABConfig` under `model.stab`, or a frame field under
`model.config`), every number in its range, and after merging every field must have a value; a problem is
one line naming the file and the key path. Command-line overrides `key.path=value` (values in YAML
syntax) go on top and are recorded with the resolved experiment.

Paths: `model.shape` and `training.deepspeed` written in a file are relative to that file (they name
files shipped with the configs); every other path (model folders, data, run folder) is taken as given,
relative to the working directory, and stored absolute in the resolved experiment. `run_dir` may use
`{name}`. A stage starts from `stages.<stage>.init` (default: `model.base` for prealign, the run's
previous stage folder otherwise) and writes `stages.<stage>.output_dir` (default `run_dir/<stage>`).

Each stage's output folder stores the resolved experiment (`experiment.json`); resuming or skipping a
stage whose folder holds a checkpoint or a finished stage of another experiment is refused with the list of
differences (`check_stage_folder`); a folder holding only the record of a run that stopped before its first
checkpoint is free for any experiment. What is compared is the stage's view: every section but `runtime` and the
other stages' settings (so per-stage command-line overrides of one stage do not conflict with another),
without the name and the folder locations (a renamed or moved run is the same run).
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, PrivateAttr, Strict, \
    ValidationError, field_validator
from pydantic_core import PydanticCustomError

from videopanda.constants import EXPERIMENT_RECORD

STAGES = ("prealign", "pretrain", "finetune")
FRAME_FIELDS = ("num_frames", "frames_per_chunk", "image_size", "teacher_image_size")
"""VideoPandaConfig fields an experiment may set (`model.config`) for a fresh visual part."""
ATTN_IMPLEMENTATIONS = ("auto", "sdpa", "eager", "flash_attention_2")
"""`runtime.attn_implementation`: auto, or the attention kernel transformers is asked for."""
DISTILL_LOSSES = ("cosine", "mse")
"""How the distillation loss compares student and teacher: the paper's cosine, or its Table 4 MSE."""
FILE_RELATIVE = (("model", "shape"), ("training", "deepspeed"))
"""Keys whose relative paths, written in a file, are relative to that file."""
CONFIG_DIR_ENV = "VIDEOPANDA_CONFIG_DIR"
LAUNCHER_DIR_ENV = "VIDEOPANDA_LAUNCHER_DIR"


class ExperimentError(ValueError):
    """A bad experiment file, override or run folder; the message names the file or folder and the key."""


@dataclass(frozen=True)
class Bounds:
    """The values a numeric field may take: finite, at least `low` (above it when `low_open`), at most `high`
    (below it when `high_open`), or one of the sentinels `also` (max_steps' -1)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also: tuple = ()

    def admits(self, value: float) -> bool:
        if value in self.also:
            return True
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self, integer: bool) -> str:
        """`an integer >= 1`, `a finite number in [0, 1]`, `-1 or an integer >= 1`, ..."""
        kind = "an integer" if integer else "a finite number"
        if self.low is not None and self.high is not None:
            text = (f"{kind} in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
                    f"{')' if self.high_open else ']'}")
        elif self.low is not None:
            text = f"{kind} {'>' if self.low_open else '>='} {self.low:g}"
        else:
            text = f"{kind} {'<' if self.high_open else '<='} {self.high:g}"
        return " or ".join([*(f"{v:g}" for v in self.also), text])

    def validator(self, integer: bool) -> AfterValidator:
        """A pydantic check of a parsed value against these bounds."""
        def check(value):
            if not self.admits(value):
                raise PydanticCustomError("bounds", "must be {expected}", {"expected": self.describe(integer)})
            return value

        return AfterValidator(check)


POSITIVE_INT = Bounds(low=1)
NON_NEGATIVE = Bounds(low=0)
FRACTION = Bounds(low=0, high=1)
DROPOUT = Bounds(low=0, high=1, high_open=True)
SEED = Bounds(low=0, high=2**32 - 1)
"""numpy's seeds (`transformers.set_seed` seeds numpy too)."""


# ---- the value types of the settings: YAML scalars as the old loader took them, numbers in their bounds ----


def _wrong_type(kind: str) -> PydanticCustomError:
    return PydanticCustomError("wrong_type", "must be {kind}", {"kind": kind})


def _as_float(value: Any) -> float:
    """int or float; also a string that reads as a number (YAML 1.1 reads 4e-5, without a dot, as a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _wrong_type("float")
    try:
        return float(value)
    except ValueError:
        raise _wrong_type("float") from None


def _as_str(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _wrong_type("str")
    return str(value)


def _one_of(*choices: str) -> Any:
    def check(value: str) -> str:
        if value not in choices:
            raise PydanticCustomError("one_of", "must be one of {choices}", {"choices": ", ".join(choices)})
        return value

    return Annotated[str, BeforeValidator(_as_str), AfterValidator(check)]


Text = Annotated[str, BeforeValidator(_as_str)]
Flag = Annotated[bool, Strict()]
Files = Annotated[list[Text], BeforeValidator(lambda value: value if isinstance(value, list) or value is None
                                             else [value])]
"""A list of paths; one path alone is a list of one."""
PositiveInt = Annotated[int, Strict(), POSITIVE_INT.validator(integer=True)]
NonNegativeInt = Annotated[int, Strict(), NON_NEGATIVE.validator(integer=True)]
Seed = Annotated[int, Strict(), SEED.validator(integer=True)]
StepLimit = Annotated[int, Strict(), Bounds(low=1, also=(-1,)).validator(integer=True)]
NonNegative = Annotated[float, BeforeValidator(_as_float), NON_NEGATIVE.validator(integer=False)]
Fraction = Annotated[float, BeforeValidator(_as_float), FRACTION.validator(integer=False)]
Dropout = Annotated[float, BeforeValidator(_as_float), DROPOUT.validator(integer=False)]
Positive = Annotated[float, BeforeValidator(_as_float), Bounds(low=0, low_open=True).validator(integer=False)]


class Settings(BaseModel):
    """A section of an experiment: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


def _doc(text: str) -> Any:
    return Field(description=text)


def _optional(text: str) -> Any:
    return Field(default=None, description=text)


class ModelSettings(Settings):
    base: Text = _doc("prealign's starting folder: EVE-7B-Pretrain-v1.0 or a plain Llama folder")
    init: _one_of("auto", "videopanda", "eve", "llama") = _doc(
        "how to read the starting folder: auto (its config.json), videopanda, eve, llama")
    teacher: Text = _doc("LanguageBind_Video_merge folder (the distillation teacher)")
    shape: Text = _doc("VideoPandaConfig JSON (configs/model/*.json): its frame fields and `stab` shape a fresh "
                       "visual part")
    stab: dict[str, Any] = _doc("STABConfig fields on top of the shape's `stab`, e.g. the switches use_lste: false")
    config: dict[str, Any] = _doc(f"VideoPandaConfig frame fields on top of the shape's ({', '.join(FRAME_FIELDS)})")

    @field_validator("stab")
    @classmethod
    def _known_stab_fields(cls, value: dict) -> dict:
        return _checked_visual_fields(value, _stab_fields(), "model.stab")

    @field_validator("config")
    @classmethod
    def _known_frame_fields(cls, value: dict) -> dict:
        return _checked_visual_fields(value, FRAME_FIELDS, "model.config")


class DistillationSettings(Settings):
    enabled: Flag = _doc("train with the distillation loss (the paper's LanguageBind teacher)")
    loss: _one_of(*DISTILL_LOSSES) = _doc("cosine (the paper's) or mse (paper Table 4)")


class DataSettings(Settings):
    root: Text | None = _doc("DATA_ROOT holding train/train_json/ and the videos (null: $DATA_ROOT)")
    video_folder: Text | None = _doc("folder the samples' `video` paths are relative to (null: DATA_ROOT/train)")
    max_length: PositiveInt = _doc("model_max_length of the tokenizer (text tokens, placeholders included)")
    random_flip: Flag = _doc("random horizontal flip of training videos (the same for student and teacher)")
    group_by_modality_length: Flag = _doc("batches of one modality and similar length")


class TrainingSettings(Settings):
    seed: Seed = _doc("seed of initialisation, data order and dropout")
    weight_decay: NonNegative = _doc("AdamW weight decay (never applied to biases and norms)")
    max_grad_norm: NonNegative = _doc("gradient clipping (0: none)")
    deepspeed: Text | None = _doc("DeepSpeed JSON config (null: none)")
    gradient_checkpointing: Flag = _doc("activation checkpointing in the LLM")
    precision: _one_of("auto", "bf16", "fp32") = _doc("auto (bf16 + tf32 on GPU, fp32 on CPU), bf16, fp32")


class SaveSettings(Settings):
    steps: PositiveInt = _doc("checkpoint every N optimizer steps")
    total_limit: PositiveInt = _doc("complete checkpoints kept (older ones go once a newer one is complete)")
    teacher: Flag = _doc("also store the teacher's weights in the output folders")


class RuntimeSettings(Settings):
    """How a run executes; not part of what makes two runs the same experiment."""

    device: _one_of("auto", "cuda", "cpu") = _doc("auto, cuda or cpu")
    num_workers: NonNegativeInt = _doc("DataLoader worker processes per rank")
    attn_implementation: _one_of(*ATTN_IMPLEMENTATIONS) = _doc("auto (flash_attention_2 when installed on GPU, else "
                                                               "sdpa), sdpa, eager, flash_attention_2")
    report_to: Text = _doc("logging integrations of the HF Trainer (tensorboard, none, ...)")
    logging_steps: PositiveInt = _doc("log every N optimizer steps")
    frame_cache: Text | None = _doc("folder of decoded training frames (videopanda.data.frame_cache), relative to "
                                    "the working directory: each clip is decoded once and its frames reused by every "
                                    "epoch, stage and run that reads it (the same frames bit for bit; uncompressed, "
                                    "about num_frames x H x W x 3 bytes a clip); null: decode every time")


class StageSettings(Settings):
    data_json: Files = _doc("training JSON files; a bare name is looked up in DATA_ROOT/train/train_json")
    first_half: Flag = _doc("keep only the first half of each JSON")
    learning_rate: NonNegative = _doc("base learning rate")
    visual_learning_rate: NonNegative | None = _doc("learning rate of STAB, projector and distillation head "
                                                    "(null: the base rate)")
    warmup_ratio: Fraction = _doc("linear warm-up fraction before the cosine decay")
    global_batch_size: PositiveInt = _doc("samples per optimizer step over all processes")
    per_device_batch_size: PositiveInt = _doc("largest per-device micro batch; the actual one divides the global "
                                              "batch")
    epochs: Positive = _doc("epochs")
    max_steps: StepLimit = _doc("stop after this many optimizer steps (-1: the epochs decide)")
    init: Text | None = _optional("starting folder (null: model.base for prealign, else the previous stage's "
                                  "folder in run_dir)")
    output_dir: Text | None = _optional("output folder (null: run_dir/<stage>)")


class StagesSettings(Settings):
    prealign: StageSettings = _doc("stage 1: STAB, projector and distillation head (LLM frozen)")
    pretrain: StageSettings = _doc("stage 2: everything but the teacher")
    finetune: StageSettings = _doc("stage 3: everything but the teacher")


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The Llama's attention and MLP projections: where LoRA puts adapters by default."""
QUANTIZE = ("none", "nf4")
LORA_STAGE = "finetune"
"""The stage LoRA applies to (its output, an adapter folder, is the run's last)."""


def _some_of(choices: tuple[str, ...]) -> Any:
    """A non-empty list of `choices` (one alone is a list of one): the LLM's decoder layers name their projections
    so, and peft would stop with its own traceback on a name that matches no module, only after the model loaded."""
    def check(value: list) -> list:
        if not value:
            raise PydanticCustomError("one_of", "must name at least one of {choices}", {"choices": ", ".join(choices)})
        return value

    return Annotated[list[_one_of(*choices)], BeforeValidator(lambda value: value if isinstance(value, list) or
                                                              value is None else [value]), AfterValidator(check)]


Targets = _some_of(LORA_TARGETS)


class LoraSettings(Settings):
    """LoRA (and QLoRA) for the finetune stage; every field has a default, so `lora: {enabled: true}` is enough."""

    enabled: Flag = Field(default=False, description="finetune with LoRA adapters on the LLM (peft)")
    rank: PositiveInt = Field(default=128, description="adapter rank r")
    alpha: PositiveInt = Field(default=256, description="lora_alpha (the update is scaled by alpha / rank)")
    dropout: Dropout = Field(default=0.05, description="dropout on the adapters' input")
    target_modules: Targets = Field(default_factory=lambda: list(LORA_TARGETS), description=(
        f"projection names inside the LLM's decoder layers that get adapters (some of {', '.join(LORA_TARGETS)})"))
    visual: _one_of("train", "freeze") = Field(default="train", description=(
        "train: STAB, projector and distillation head train fully (at visual_learning_rate); freeze: they stay "
        "as loaded"))
    quantize: _one_of(*QUANTIZE) = Field(default="none", description=(
        "none (LoRA) or nf4: QLoRA, the base LLM in 4-bit NF4 with bf16 compute (CUDA and the qlora extra)"))


class Experiment(Settings):
    name: Text = _doc("the experiment's name (default: its file's path under configs/experiments, '/' -> '-')")
    run_dir: Text = _doc("the run folder, one subfolder per stage; may use {name}")
    model: ModelSettings = _doc("starting folders, shape and STAB switches")
    distillation: DistillationSettings = _doc("the distillation loss")
    data: DataSettings = _doc("training data")
    training: TrainingSettings = _doc("optimisation settings shared by the stages")
    save: SaveSettings = _doc("checkpoint policy")
    runtime: RuntimeSettings = _doc("execution settings (not compared between runs)")
    stages: StagesSettings = _doc("per-stage settings")
    lora: LoraSettings = Field(default_factory=LoraSettings, description=(
        "LoRA / QLoRA adapters for the finetune stage (off by default)"))
    _shape: dict | None = PrivateAttr(default=None)
    """The model-shape file's content, read once."""

    def stage(self, stage: str) -> StageSettings:
        if stage not in STAGES:
            raise ExperimentError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        return getattr(self.stages, stage)

    def to_dict(self) -> dict:
        return self.model_dump()

    def stage_init(self, stage: str) -> Path:
        own = self.stage(stage).init
        if own is not None:
            return Path(own)
        if stage == "prealign":
            return Path(self.model.base)
        return self.stage_output(STAGES[STAGES.index(stage) - 1])

    def stage_output(self, stage: str) -> Path:
        own = self.stage(stage).output_dir
        return Path(own) if own is not None else Path(self.run_dir) / stage

    def init_kind(self, stage: str) -> str:
        """How to read the stage's starting folder: `model.init` for prealign from `model.base`, else auto."""
        return self.model.init if stage == "prealign" and self.stage(stage).init is None else "auto"

    def visual_learning_rate(self, stage: str) -> float:
        settings = self.stage(stage)
        return settings.learning_rate if settings.visual_learning_rate is None else settings.visual_learning_rate

    def lora_for(self, stage: str) -> LoraSettings | None:
        """The LoRA settings when `stage` trains adapters, else None."""
        return self.lora if self.lora.enabled and stage == LORA_STAGE else None

    def data_json_paths(self, stage: str) -> list[Path]:
        """The stage's training JSONs: a bare file name is looked up in DATA_ROOT/train/train_json."""
        paths = []
        for name in self.stage(stage).data_json:
            path = Path(name)
            if not path.is_absolute() and path.parent == Path(".") and self.data.root:
                path = Path(self.data.root) / "train" / "train_json" / name
            paths.append(path)
        return paths

    def video_folder_path(self) -> Path | None:
        if self.data.video_folder:
            return Path(self.data.video_folder)
        return Path(self.data.root) / "train" if self.data.root else None

    def visual_overrides(self) -> tuple[dict, dict]:
        """(VideoPandaConfig frame fields, STAB fields) of a fresh visual part: the shape file's, then the
        experiment's `model.config` and `model.stab` on top. The shape file is read once."""
        if self._shape is None:
            self._shape = _read_shape(self.model.shape)
        config = {k: self._shape[k] for k in FRAME_FIELDS if k in self._shape}
        config.update(self.model.config)
        stab = dict(self._shape.get("stab") or {})
        stab.update(self.model.stab)
        return config, stab

    def switches(self) -> dict:
        """The ablation switches as this experiment sets them (STAB defaults filled in) and distillation."""
        from videopanda.model.stab import ABLATION_SWITCHES, STABConfig

        stab = asdict(STABConfig(**self.visual_overrides()[1]))
        return {**{k: stab[k] for k in ABLATION_SWITCHES},
                "distillation": self.distillation.loss if self.distillation.enabled else "off"}


def _read_shape(path: str) -> dict:
    """A model-shape file (VideoPandaConfig JSON): its frame fields and `stab`, checked."""
    from videopanda.io import read_json

    try:
        shape = read_json(path)
    except ValueError as err:
        raise ExperimentError(f"model.shape {err}") from None
    problem = _visual_problem({k: shape[k] for k in FRAME_FIELDS if k in shape}, FRAME_FIELDS, "")
    if problem is None and not isinstance(shape.get("stab") or {}, dict):
        problem = "its stab is not a JSON object"
    if problem is None:
        problem = _visual_problem(shape.get("stab") or {}, _stab_fields(), "stab")
    if problem is not None:
        raise ExperimentError(f"model.shape {path}: {problem}")
    return shape


# ---- where the shipped configs are ----------------------------------------------------------------


def _shipped_folder(relative: str, env: str, marker: str) -> Path:
    """The shipped folder `relative` (configs, scripts/videopanda): $`env` when set, else the checkout's,
    else the installed copy under `share/videopanda` (pyproject's data-files) beside the package (a
    `pip install --target` folder) or under `<prefix>`; the first that holds `marker`."""
    package_root = Path(__file__).resolve().parents[2]
    candidates = [Path(os.environ[env])] if os.environ.get(env) else []
    candidates += [package_root / relative, package_root / "share" / "videopanda" / relative,
                   Path(sys.prefix) / "share" / "videopanda" / relative]
    for candidate in candidates:
        if (candidate / marker).exists():
            return candidate
    raise ExperimentError(f"no {relative} folder found (looked in {', '.join(map(str, candidates))}); set {env}")


def config_dir() -> Path:
    """The configs folder: $VIDEOPANDA_CONFIG_DIR, else the checkout's `configs/`, else the installed copy
    under `share/videopanda/configs` (pyproject's data-files)."""
    return _shipped_folder("configs", CONFIG_DIR_ENV, "experiments")


def launcher_dir() -> Path:
    """The training launchers' folder (`launch_stage.sh`, `{prealign,pretrain,finetune}.sh`):
    $VIDEOPANDA_LAUNCHER_DIR, else the checkout's `scripts/videopanda/`, else the installed copy under
    `share/videopanda/scripts/videopanda` (pyproject's data-files)."""
    return _shipped_folder("scripts/videopanda", LAUNCHER_DIR_ENV, "launch_stage.sh")


def experiments_dir() -> Path:
    return config_dir() / "experiments"


def find_experiment(name: str | os.PathLike) -> Path:
    """A file path as given, or a name under configs/experiments (`quickstart/no-lste` -> .../quickstart/no-lste.yaml)."""
    path = Path(name)
    if path.is_file():
        return path.resolve()
    if path.suffix not in (".yaml", ".yml", ".json"):
        candidate = experiments_dir() / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise ExperimentError(f"experiment {name}: no such file, and no {name}.yaml under {experiments_dir()}")


def experiment_names(under: str = "") -> list[str]:
    """Names of the shipped experiments (under a subfolder of configs/experiments when given)."""
    root = experiments_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in (root / under).rglob("*.yaml"))


def default_name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(experiments_dir().resolve()).with_suffix("")).replace(os.sep, "-")
    except (ValueError, ExperimentError):
        return path.stem


# ---- loading ----------------------------------------------------------------------------------------


def _stab_fields() -> tuple[str, ...]:
    from videopanda.model.stab import STABConfig

    return tuple(f.name for f in fields(STABConfig))


def _visual_problem(value: dict, known: tuple[str, ...], path: str) -> str | None:
    """What is wrong with the keys of `model.stab` / `model.config` (or a shape file's): an unknown key, a switch
    that is not true / false, a mode that is not text (STABConfig's field types, which it does not check itself), or a
    number out of its bounds (whole numbers >= 1 but the STAB's dropout; STAB fields typed optional may be null);
    None when nothing is."""
    import typing

    from videopanda.model.stab import STABConfig

    hints = typing.get_type_hints(STABConfig)
    prefix = f"{path}." if path else ""
    for key, item in value.items():
        if key not in known:
            return f"unknown key {prefix}{key} (known here: {', '.join(known)})"
        hint = hints.get(key, int)
        if item is None and type(None) in typing.get_args(hint):
            continue
        for kind, wanted in ((bool, "true or false"), (str, "a string")):
            if kind in (hint, *typing.get_args(hint)) and not isinstance(item, kind):
                return f"{prefix}{key} must be {wanted}, got {item!r}"
        integer, bounds = key != "dropout", DROPOUT if key == "dropout" else POSITIVE_INT
        if int not in (hint, *typing.get_args(hint)) and integer:
            continue  # not a number (a switch or a mode)
        number = isinstance(item, int if integer else (int, float)) and not isinstance(item, bool)
        if not number or not bounds.admits(item):
            return f"{prefix}{key} must be {bounds.describe(integer)}, got {item!r}"
    return None


def _checked_visual_fields(value: dict, known: tuple[str, ...], path: str) -> dict:
    problem = _visual_problem(value, known, path)
    if problem is not None:
        raise PydanticCustomError("visual_field", "{problem}", {"problem": problem})
    return value


_TYPE_ERRORS = {"int_type": "int", "bool_type": "bool", "float_type": "float", "string_type": "str",
                "list_type": "a list"}


def _fields_at(loc: tuple) -> list[str]:
    """The setting names of the section at `loc` (a pydantic error location) of `Experiment`."""
    section: type[BaseModel] = Experiment
    for key in loc:
        section = section.model_fields[key].annotation
    return list(section.model_fields)


def _one_line(error: dict) -> str:
    """One pydantic error as the loader states it: the dotted key path, what it must be, what it got."""
    path = "".join(f"[{key}]" if isinstance(key, int) else f".{key}" for key in error["loc"]).lstrip(".")
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        return f"missing key {path}"
    if kind == "extra_forbidden":
        return f"unknown key {path} (known here: {', '.join(_fields_at(error['loc'][:-1]))})"
    if kind == "visual_field":
        return error["msg"]
    if value is None:
        return f"{path} must be set (null given)"
    if kind in ("model_type", "dict_type"):
        return f"{path} must be a mapping, got {value!r}"
    if kind in _TYPE_ERRORS:
        return f"{path} must be {_TYPE_ERRORS[kind]}, got {value!r}"
    if kind in ("wrong_type", "bounds", "one_of"):
        return f"{path} {error['msg']}, got {value!r}"
    return f"{path}: {error['msg']}"


def _validated(data: dict, where: str) -> Experiment:
    try:
        return Experiment.model_validate(data)
    except ValidationError as err:
        raise ExperimentError(f"{where}: {_one_line(err.errors()[0])}") from None


def _check_keys(data: dict, where: str) -> None:
    """ExperimentError naming `where` (one file of an `extends` chain, or one override) for a key of its partial
    mapping that is no setting, or a STAB / frame field out of its bounds; the whole is validated after merging."""
    try:
        Experiment.model_validate(data)
    except ValidationError as err:
        for error in err.errors():
            if error["type"] in ("extra_forbidden", "visual_field"):
                raise ExperimentError(f"{where}: {_one_line(error)}") from None


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _load_yaml(text: str) -> Any:
    """`yaml.safe_load` refusing aliases (ExperimentError naming the line): nested aliases expand
    exponentially (a few hundred bytes can stand for billions of values), and an experiment shares
    settings through `extends` instead."""
    import yaml

    class NoAliases(yaml.SafeLoader):
        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                event = self.peek_event()
                raise ExperimentError(f"YAML alias *{event.anchor} on line {event.start_mark.line + 1}: aliases "
                                      f"are not allowed in experiments (use extends)")
            return super().compose_node(parent, index)

    loader = NoAliases(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ExperimentError(f"{path}: cannot read ({err.strerror or err})") from None
    except UnicodeDecodeError as err:
        raise ExperimentError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except ExperimentError as err:
        raise ExperimentError(f"{path}: {err}") from None
    except yaml.YAMLError as err:
        raise ExperimentError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(data, dict):
        raise ExperimentError(f"{path}: an experiment file is a mapping of keys, got {type(data).__name__}")
    return data


def load_layers(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The merged raw mapping of `path` and its `extends` chain, keys checked, file-relative paths resolved."""
    path = path.resolve()
    if path in seen:
        raise ExperimentError(f"{path}: `extends` loops back to itself ({' -> '.join(map(str, seen))})")
    data = _read_yaml(path)
    parent = data.pop("extends", None)
    own_name = data.pop("name", None)
    _check_keys(data, str(path))
    for section, key in FILE_RELATIVE:
        value = data.get(section, {}).get(key) if isinstance(data.get(section), dict) else None
        if isinstance(value, str) and not Path(value).is_absolute():
            data[section][key] = str((path.parent / value).resolve())
    if parent is not None:
        if not isinstance(parent, str):
            raise ExperimentError(f"{path}: extends must be one file path, got {parent!r}")
        parent_path = path.parent / parent
        if not parent_path.is_file():
            raise ExperimentError(f"{path}: extends {parent}, which does not exist ({parent_path})")
        data = _merge(load_layers(parent_path, (*seen, path)), data)
    data["name"] = own_name if own_name is not None else default_name(path)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (["a", "b", "c"], value parsed as YAML)."""
    import yaml

    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ExperimentError(f"override {text!r}: expected key.path=value")
    try:
        value = _load_yaml(raw) if raw.strip() else None
    except ExperimentError as err:
        raise ExperimentError(f"override {text!r}: {err}") from None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set each `key.path=value` in (a copy of) `data`; unknown keys are errors naming the override."""
    out = json.loads(json.dumps(data))
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        _check_keys(nested, f"override {text!r}")
        for section, key in FILE_RELATIVE:
            if keys == [section, key] and isinstance(value, str):
                nested[section][key] = str(Path(value).resolve())
        out = _merge(out, nested)
    return out


def _absolute(value: str | None) -> str | None:
    return None if value is None else str(Path(os.path.expanduser(value)).absolute())


def _make_paths_absolute(experiment: Experiment) -> None:
    """Every folder and file setting as an absolute path (relative to the working directory); `{name}` in run_dir
    filled in; DATA_ROOT from the environment when the experiment leaves `data.root` null."""
    experiment.run_dir = _absolute(experiment.run_dir.replace("{name}", experiment.name))
    model = experiment.model
    model.base, model.teacher, model.shape = _absolute(model.base), _absolute(model.teacher), _absolute(model.shape)
    if experiment.data.root is None and os.environ.get("DATA_ROOT"):
        experiment.data.root = os.environ["DATA_ROOT"]
    experiment.data.root = _absolute(experiment.data.root)
    experiment.data.video_folder = _absolute(experiment.data.video_folder)
    experiment.runtime.frame_cache = _absolute(experiment.runtime.frame_cache)
    experiment.training.deepspeed = _absolute(experiment.training.deepspeed)
    for stage in STAGES:
        settings = experiment.stage(stage)
        settings.init, settings.output_dir = _absolute(settings.init), _absolute(settings.output_dir)


def resolve_experiment(source: str | os.PathLike, overrides: list[str] = ()) -> "ResolvedExperiment":
    """Experiment file (a path or a shipped name) + `key=value` overrides -> the typed, resolved experiment."""
    from videopanda.model.stab import STABConfig

    path = find_experiment(source)
    where = f"{path}" + (" with overrides" if overrides else "")
    experiment = _validated(apply_overrides(load_layers(path), list(overrides)), where)
    _make_paths_absolute(experiment)
    if not Path(experiment.model.shape).is_file():
        raise ExperimentError(f"{where}: model.shape {experiment.model.shape} does not exist")
    try:
        stab = experiment.visual_overrides()[1]
    except ExperimentError as err:
        raise ExperimentError(f"{where}: {err}") from None
    try:
        STABConfig(**stab)
    except (TypeError, ValueError) as err:
        raise ExperimentError(f"{where}: model.stab: {err}") from None
    _check_frame_layout(experiment, where)
    return ResolvedExperiment(experiment, str(path), list(overrides))


_CONFIG_DROP = ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path", "torch_dtype",
                "dtype", "stab")


def videopanda_config_from_llm(folder_config: dict, stab_overrides: dict, config_overrides: dict | None = None):
    """A VideoPandaConfig carrying an EVE / Llama folder's LLM fields (`folder_config`: its config.json's
    content), `config_overrides` (frame sizes, number of frames, ...) and a fresh STAB (`stab_overrides`)."""
    from videopanda.model.videopanda import VideoPandaConfig

    raw = {k: v for k, v in folder_config.items() if k not in _CONFIG_DROP}
    raw.update(config_overrides or {})
    stab = dict(stab_overrides)
    width = stab.get("width", raw.get("video_hidden_size", 1024))
    stab["width"] = width
    raw.update(video_hidden_size=width, mm_hidden_size=width)
    return VideoPandaConfig(**raw, stab=stab)


def _check_frame_layout(experiment: Experiment, where: str) -> None:
    """ExperimentError unless the frame fields and STAB of a fresh visual part (`visual_overrides`) make a model
    config and a frame layout: `VideoPandaConfig`'s and `FrameConfig`'s own checks (frames in whole chunks, the
    student size a multiple of the teacher's, the teacher's of the patch), so that a bad `model.config` stops here,
    not after the model has loaded."""
    from huggingface_hub.errors import StrictDataclassError

    from videopanda.data.frames import FrameConfig

    frame_fields, stab = experiment.visual_overrides()
    try:
        config = videopanda_config_from_llm({}, stab, frame_fields)
        FrameConfig(num_frames=config.num_frames, frames_per_chunk=config.frames_per_chunk,
                    image_size=config.image_size, teacher_image_size=config.teacher_image_size,
                    patch_size=config.stab_config.patch_size)
    except (TypeError, ValueError, StrictDataclassError) as err:
        cause = err.__cause__ if isinstance(err, StrictDataclassError) and err.__cause__ is not None else err
        raise ExperimentError(f"{where}: model.config: {' '.join(str(cause).split())}") from None


@dataclass
class ResolvedExperiment:
    """An experiment with where it came from: the file and the command-line overrides."""

    experiment: Experiment
    source: str
    overrides: list[str]

    def record(self, stage: str | None = None) -> dict:
        """What a stage folder stores (`experiment.json`), with the stage it holds when given."""
        record = {"name": self.experiment.name, "file": self.source, "overrides": self.overrides,
                  "switches": self.experiment.switches(), "experiment": self.experiment.to_dict()}
        return record if stage is None else {**record, "stage": stage}


# ---- run folders ------------------------------------------------------------------------------------

_NOT_COMPARED = ("name", "run_dir", "runtime")


def stage_view(experiment: dict, stage: str) -> dict:
    """What makes a stage's outputs: everything but `runtime`, the name, the folders and the other stages."""
    view = {k: v for k, v in experiment.items() if k not in _NOT_COMPARED}
    own = {k: v for k, v in experiment["stages"][stage].items() if k != "output_dir"}
    view["stages"] = {stage: own}
    if stage != LORA_STAGE or not (view.get("lora") or {}).get("enabled"):
        view.pop("lora", None)  # LoRA off is what runs recorded before the section existed did
    return view


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, inner in value.items():
        out.update(_flatten(inner, f"{prefix}.{key}" if prefix else str(key)))
    return out


def differences(stored: dict, current: dict) -> list[str]:
    """`key: stored -> current` for every key whose value differs (keys as dotted paths)."""
    a, b = _flatten(stored), _flatten(current)

    def shown(flat: dict, key: str) -> str:
        return json.dumps(flat[key]) if key in flat else "(absent)"

    return [f"{key}: {shown(a, key)} -> {shown(b, key)}" for key in sorted(a.keys() | b.keys())
            if key not in a or key not in b or a[key] != b[key]]


def read_record(folder: str | os.PathLike) -> dict | None:
    path = Path(folder) / EXPERIMENT_RECORD
    if not path.is_file():
        return None
    from videopanda.io import read_json

    try:
        record = read_json(path)
    except ValueError as err:
        raise ExperimentError(str(err)) from None
    if not isinstance(record.get("experiment"), dict):
        raise ExperimentError(f"{path}: not an experiment record")
    return record


def recorded_stage(record: dict, folder: str | os.PathLike) -> str | None:
    """The stage a stage folder's record says it holds: its `stage`, or (a record written before it was stored) the
    one stage whose output folder in the stored experiment is `folder`; None when that does not tell."""
    if isinstance(record.get("stage"), str):
        return record["stage"]
    stored, here = record["experiment"], Path(folder).resolve()
    try:
        found = [stage for stage in STAGES if Path(stored["stages"][stage].get("output_dir") or
                                                   Path(stored["run_dir"]) / stage).resolve() == here]
    except (KeyError, TypeError, AttributeError):
        return None
    return found[0] if len(found) == 1 else None


def check_stage_folder(resolved: ResolvedExperiment, stage: str, folder: str | os.PathLike,
                       holds_outputs: bool) -> None:
    """Refuse (ExperimentError with the differences) a stage folder holding training outputs (`holds_outputs`:
    a checkpoint or a finished stage) whose stored experiment differs from `resolved` in the stage's view, that
    holds another stage (`recorded_stage`), or that has no record. A record alone (a run that stopped before its
    first checkpoint) binds nothing: the next run writes its own."""
    record = read_record(folder)
    if not holds_outputs:
        return
    if record is None:
        raise ExperimentError(f"{folder} holds training outputs but no {EXPERIMENT_RECORD}: it was made by an "
                              f"unknown experiment; use another output folder")
    held = recorded_stage(record, folder)
    if held is not None and held != stage:
        raise ExperimentError(f"{folder} holds stage {held} of experiment {record.get('name')!r}, not stage {stage}; "
                              f"use another output folder (stages.{stage}.output_dir=...)")
    stored, current = (stage_view(e, stage) for e in (record["experiment"], resolved.experiment.to_dict()))
    changed = differences(stored, current)
    if changed:
        raise ExperimentError(f"{folder} holds stage {stage} of experiment {record.get('name')!r} with other settings "
                              f"than {resolved.experiment.name!r} (stored -> now): {'; '.join(changed)}; "
                              f"use another run folder (run_dir=...) or delete it")


def write_record(resolved: ResolvedExperiment, folder: str | os.PathLike, stage: str | None = None) -> Path:
    """Store the resolved experiment (and the stage the folder holds, when given) in a stage folder."""
    from videopanda.io import write_json_atomic

    return write_json_atomic(Path(folder) / EXPERIMENT_RECORD, resolved.record(stage))


__all__ = ["DISTILL_LOSSES", "Experiment", "ExperimentError", "FRAME_FIELDS", "LORA_TARGETS", "LoraSettings",
           "ResolvedExperiment", "STAGES",
           "StageSettings", "check_stage_folder", "config_dir", "launcher_dir", "differences", "experiment_names",
           "find_experiment", "read_record", "recorded_stage", "resolve_experiment", "stage_view",
           "videopanda_config_from_llm", "write_record"]
