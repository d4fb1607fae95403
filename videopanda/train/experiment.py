"""One experiment, one file: the typed experiment that a training run follows (docs/experiments.md).

An experiment file (YAML) holds everything the three stages need: the model's starting folders and
shape, the STAB switches, distillation (on/off, cosine or MSE), data, per-stage learning rates, batches
and epochs, DeepSpeed config and save policy. A file may start with `extends: <other file>` (a path
relative to itself) and then holds only what changes; its own keys win, nested sections merge.

Loading is strict: every key must be a field of `Experiment` (or of `STABConfig` under `model.stab`,
or a frame field under `model.config`), and after merging every field must have a value; a problem is
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
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from videopanda.constants import EXPERIMENT_RECORD

STAGES = ("prealign", "pretrain", "finetune")
FRAME_FIELDS = ("num_frames", "frames_per_chunk", "image_size", "teacher_image_size")
"""VideoPandaConfig fields an experiment may set (`model.config`) for a fresh visual part."""
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


POSITIVE_INT = Bounds(low=1)
NON_NEGATIVE = Bounds(low=0)
FRACTION = Bounds(low=0, high=1)
DROPOUT = Bounds(low=0, high=1, high_open=True)
SEED = Bounds(low=0, high=2**32 - 1)
"""numpy's seeds (`transformers.set_seed` seeds numpy too)."""


def _doc(text: str, **extra) -> Any:
    return field(metadata={"help": text, **extra})


def _optional(text: str, **extra) -> Any:
    return field(default=None, metadata={"help": text, **extra})


@dataclass
class ModelSettings:
    base: str = _doc("prealign's starting folder: EVE-7B-Pretrain-v1.0 or a plain Llama folder")
    init: str = _doc("how to read the starting folder: auto (its config.json), videopanda, eve, llama",
                     choices=("auto", "videopanda", "eve", "llama"))
    teacher: str = _doc("LanguageBind_Video_merge folder (the distillation teacher)")
    shape: str = _doc("VideoPandaConfig JSON (configs/model/*.json): its frame fields and `stab` shape a fresh "
                      "visual part")
    stab: dict = _doc("STABConfig fields on top of the shape's `stab`, e.g. the switches use_lste: false")
    config: dict = _doc(f"VideoPandaConfig frame fields on top of the shape's ({', '.join(FRAME_FIELDS)})")


@dataclass
class DistillationSettings:
    enabled: bool = _doc("train with the distillation loss (the paper's LanguageBind teacher)")
    loss: str = _doc("cosine (the paper's) or mse (paper Table 4)", choices=DISTILL_LOSSES)


@dataclass
class DataSettings:
    root: str | None = _doc("DATA_ROOT holding train/train_json/ and the videos (null: $DATA_ROOT)")
    video_folder: str | None = _doc("folder the samples' `video` paths are relative to (null: DATA_ROOT/train)")
    max_length: int = _doc("model_max_length of the tokenizer (text tokens, placeholders included)",
                           bounds=POSITIVE_INT)
    random_flip: bool = _doc("random horizontal flip of training videos (the same for student and teacher)")
    group_by_modality_length: bool = _doc("batches of one modality and similar length")


@dataclass
class TrainingSettings:
    seed: int = _doc("seed of initialisation, data order and dropout", bounds=SEED)
    weight_decay: float = _doc("AdamW weight decay (never applied to biases and norms)", bounds=NON_NEGATIVE)
    max_grad_norm: float = _doc("gradient clipping", bounds=NON_NEGATIVE)
    deepspeed: str | None = _doc("DeepSpeed JSON config (null: none)")
    gradient_checkpointing: bool = _doc("activation checkpointing in the LLM")
    precision: str = _doc("auto (bf16 + tf32 on GPU, fp32 on CPU), bf16, fp32", choices=("auto", "bf16", "fp32"))


@dataclass
class SaveSettings:
    steps: int = _doc("checkpoint every N optimizer steps", bounds=POSITIVE_INT)
    total_limit: int = _doc("complete checkpoints kept (older ones go once a newer one is complete)",
                            bounds=POSITIVE_INT)
    teacher: bool = _doc("also store the teacher's weights in the output folders")


@dataclass
class RuntimeSettings:
    """How a run executes; not part of what makes two runs the same experiment."""

    device: str = _doc("auto, cuda or cpu", choices=("auto", "cuda", "cpu"))
    num_workers: int = _doc("DataLoader worker processes per rank", bounds=NON_NEGATIVE)
    attn_implementation: str = _doc("auto (flash_attention_2 when installed on GPU, else sdpa), sdpa, eager, "
                                    "flash_attention_2")
    report_to: str = _doc("logging integrations of the HF Trainer (tensorboard, none, ...)")
    logging_steps: int = _doc("log every N optimizer steps", bounds=POSITIVE_INT)
    frame_cache: str | None = _doc("folder of decoded training frames (videopanda.data.frame_cache), relative to "
                                   "the working directory: each clip is decoded once and its frames reused by every "
                                   "epoch, stage and run that reads it (the same frames bit for bit; uncompressed, "
                                   "about num_frames x H x W x 3 bytes a clip); null: decode every time")


@dataclass
class StageSettings:
    data_json: list[str] = _doc("training JSON files; a bare name is looked up in DATA_ROOT/train/train_json")
    first_half: bool = _doc("keep only the first half of each JSON")
    learning_rate: float = _doc("base learning rate", bounds=NON_NEGATIVE)
    visual_learning_rate: float | None = _doc("learning rate of STAB, projector and distillation head "
                                              "(null: the base rate)", bounds=NON_NEGATIVE)
    warmup_ratio: float = _doc("linear warm-up fraction before the cosine decay", bounds=FRACTION)
    global_batch_size: int = _doc("samples per optimizer step over all processes", bounds=POSITIVE_INT)
    per_device_batch_size: int = _doc("largest per-device micro batch; the actual one divides the global batch",
                                      bounds=POSITIVE_INT)
    epochs: float = _doc("epochs", bounds=Bounds(low=0, low_open=True))
    max_steps: int = _doc("stop after this many optimizer steps (-1: the epochs decide)",
                          bounds=Bounds(low=1, also=(-1,)))
    init: str | None = _optional("starting folder (null: model.base for prealign, else the previous stage's "
                                 "folder in run_dir)")
    output_dir: str | None = _optional("output folder (null: run_dir/<stage>)")


@dataclass
class StagesSettings:
    prealign: StageSettings = _doc("stage 1: STAB, projector and distillation head (LLM frozen)")
    pretrain: StageSettings = _doc("stage 2: everything but the teacher")
    finetune: StageSettings = _doc("stage 3: everything but the teacher")


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""The Llama's attention and MLP projections: where LoRA puts adapters by default."""
QUANTIZE = ("none", "nf4")
LORA_STAGE = "finetune"
"""The stage LoRA applies to (its output, an adapter folder, is the run's last)."""


@dataclass
class LoraSettings:
    """LoRA (and QLoRA) for the finetune stage; every field has a default, so `lora: {enabled: true}` is enough."""

    enabled: bool = field(default=False, metadata={"help": "finetune with LoRA adapters on the LLM (peft)"})
    rank: int = field(default=128, metadata={"help": "adapter rank r", "bounds": POSITIVE_INT})
    alpha: int = field(default=256, metadata={"help": "lora_alpha (the update is scaled by alpha / rank)",
                                              "bounds": POSITIVE_INT})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the adapters' input", "bounds": DROPOUT})
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS), metadata={
        "help": "projection names inside the LLM's decoder layers that get adapters"})
    visual: str = field(default="train", metadata={
        "help": "train: STAB, projector and distillation head train fully (at visual_learning_rate); freeze: they "
                "stay as loaded", "choices": ("train", "freeze")})
    quantize: str = field(default="none", metadata={
        "help": "none (LoRA) or nf4: QLoRA, the base LLM in 4-bit NF4 with bf16 compute (CUDA and the qlora extra)",
        "choices": QUANTIZE})


@dataclass
class Experiment:
    name: str = _doc("the experiment's name (default: its file's path under configs/experiments, '/' -> '-')")
    run_dir: str = _doc("the run folder, one subfolder per stage; may use {name}")
    model: ModelSettings = _doc("starting folders, shape and STAB switches")
    distillation: DistillationSettings = _doc("the distillation loss")
    data: DataSettings = _doc("training data")
    training: TrainingSettings = _doc("optimisation settings shared by the stages")
    save: SaveSettings = _doc("checkpoint policy")
    runtime: RuntimeSettings = _doc("execution settings (not compared between runs)")
    stages: StagesSettings = _doc("per-stage settings")
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={
        "help": "LoRA / QLoRA adapters for the finetune stage (off by default)"})

    def stage(self, stage: str) -> StageSettings:
        if stage not in STAGES:
            raise ExperimentError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        return getattr(self.stages, stage)

    def to_dict(self) -> dict:
        return asdict(self)

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

    def visual_overrides(self) -> tuple[dict, dict]:
        """(VideoPandaConfig frame fields, STAB fields) of a fresh visual part: the shape file's, then the
        experiment's `model.config` and `model.stab` on top."""
        from videopanda.io import read_json

        try:
            shape = read_json(self.model.shape)
        except ValueError as err:
            raise ExperimentError(f"model.shape {err}") from None
        config = {k: shape[k] for k in FRAME_FIELDS if k in shape}
        _check_mapping(config, FRAME_FIELDS, f"model.shape {self.model.shape}", "")
        config.update(self.model.config)
        if not isinstance(shape.get("stab") or {}, dict):
            raise ExperimentError(f"model.shape {self.model.shape}: its stab is not a JSON object")
        _check_mapping(shape.get("stab") or {}, _stab_fields(), f"model.shape {self.model.shape}", "stab")
        stab = dict(shape.get("stab") or {})
        stab.update(self.model.stab)
        return config, stab

    def switches(self) -> dict:
        """The ablation switches as this experiment sets them (STAB defaults filled in) and distillation."""
        from videopanda.model.stab import ABLATION_SWITCHES, STABConfig

        stab = asdict(STABConfig(**self.visual_overrides()[1]))
        return {**{k: stab[k] for k in ABLATION_SWITCHES},
                "distillation": self.distillation.loss if self.distillation.enabled else "off"}


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


def _schema(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls)}


def _unwrap_optional(hint) -> tuple[Any, bool]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], True
    return hint, False


def _check_keys(cls: type, data: Any, where: str, prefix: str = "") -> None:
    """Raise ExperimentError on any key of `data` (a partial section) that `cls` does not have."""
    if not isinstance(data, dict):
        raise ExperimentError(f"{where}: {prefix.rstrip('.') or 'the file'} must be a mapping, got {data!r}")
    schema = _schema(cls)
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in schema:
            raise ExperimentError(f"{where}: unknown key {path} (known here: {', '.join(schema)})")
        hint, _ = _unwrap_optional(schema[key])
        if is_dataclass(hint) and value is not None:
            _check_keys(hint, value, where, path + ".")
        elif path == "model.stab":
            _check_mapping(value, _stab_fields(), where, path)
        elif path == "model.config":
            _check_mapping(value, FRAME_FIELDS, where, path)


def _stab_fields() -> tuple[str, ...]:
    from videopanda.model.stab import STABConfig

    return tuple(f.name for f in fields(STABConfig))


def _visual_bounds() -> tuple[dict[str, Bounds], set[str]]:
    """Bounds of the numeric STAB and frame fields (whole numbers >= 1 but the STAB's dropout), and the
    STAB fields that may be null."""
    from videopanda.model.stab import STABConfig

    hints = {name: _unwrap_optional(hint) for name, hint in typing.get_type_hints(STABConfig).items()}
    integers = [name for name, (hint, _) in hints.items() if hint is int]
    nullable = {name for name, (_, optional) in hints.items() if optional}
    return {**{name: POSITIVE_INT for name in (*integers, *FRAME_FIELDS)}, "dropout": DROPOUT}, nullable


def _check_mapping(value: Any, known: tuple[str, ...], where: str, path: str) -> None:
    """Keys of `model.stab` / `model.config` (or a shape file's): known, and numbers in their bounds."""
    if not isinstance(value, dict):
        raise ExperimentError(f"{where}: {path} must be a mapping, got {value!r}")
    bounds, nullable = _visual_bounds()
    prefix = f"{path}." if path else ""
    for key, item in value.items():
        if key not in known:
            raise ExperimentError(f"{where}: unknown key {prefix}{key} (known here: {', '.join(known)})")
        if key not in bounds or (item is None and key in nullable):
            continue
        integer = bounds[key] is POSITIVE_INT
        number = isinstance(item, int if integer else (int, float)) and not isinstance(item, bool)
        if not number or not bounds[key].admits(item):
            raise ExperimentError(f"{where}: {prefix}{key} must be {bounds[key].describe(integer)}, got {item!r}")


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
    _check_keys(Experiment, data, str(path))
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
        _check_keys(Experiment, {k: v for k, v in nested.items() if k != "name"}, f"override {text!r}")
        for section, key in FILE_RELATIVE:
            if keys == [section, key] and isinstance(value, str):
                nested[section][key] = str(Path(value).resolve())
        out = _merge(out, nested)
    return out


def _typed(hint, value: Any, where: str, path: str) -> Any:
    hint, optional = _unwrap_optional(hint)
    if value is None:
        if optional:
            return None
        raise ExperimentError(f"{where}: {path} must be set (null given)")
    if is_dataclass(hint):
        return _build(hint, value, where, path + ".")
    origin = typing.get_origin(hint)
    if origin is list:
        items = value if isinstance(value, list) else [value]
        return [_typed(typing.get_args(hint)[0], v, where, f"{path}[{i}]") for i, v in enumerate(items)]
    if hint is dict:
        if not isinstance(value, dict):
            raise ExperimentError(f"{where}: {path} must be a mapping, got {value!r}")
        return dict(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 4e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise ExperimentError(f"{where}: {path} must be {getattr(hint, '__name__', hint)}, got {value!r}")


def _build(cls: type, data: dict, where: str, prefix: str = ""):
    schema = _schema(cls)
    values = {}
    for f in fields(cls):
        path = f"{prefix}{f.name}"
        if f.name not in data:
            if f.default is not MISSING:
                values[f.name] = f.default
                continue
            if f.default_factory is not MISSING:
                values[f.name] = f.default_factory()
                continue
            raise ExperimentError(f"{where}: missing key {path}")
        value = _typed(schema[f.name], data[f.name], where, path)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ExperimentError(f"{where}: {path} must be one of {', '.join(choices)}, got {value!r}")
        bounds = f.metadata.get("bounds")
        if bounds is not None and value is not None and not bounds.admits(value):
            integer = _unwrap_optional(schema[f.name])[0] is int
            raise ExperimentError(f"{where}: {path} must be {bounds.describe(integer)}, got {data[f.name]!r}")
        values[f.name] = value
    return cls(**values)


def _absolute(value: str | None) -> str | None:
    return None if value is None else str(Path(os.path.expanduser(value)).absolute())


def resolve_experiment(source: str | os.PathLike, overrides: list[str] = ()) -> "ResolvedExperiment":
    """Experiment file (a path or a shipped name) + `key=value` overrides -> the typed, resolved experiment."""
    path = find_experiment(source)
    raw = apply_overrides(load_layers(path), list(overrides))
    where = f"{path}" + (" with overrides" if overrides else "")
    experiment = _build(Experiment, raw, where)
    experiment.run_dir = _absolute(experiment.run_dir.replace("{name}", experiment.name))
    model = experiment.model
    model.base, model.teacher, model.shape = _absolute(model.base), _absolute(model.teacher), _absolute(model.shape)
    if not Path(model.shape).is_file():
        raise ExperimentError(f"{where}: model.shape {model.shape} does not exist")
    if experiment.data.root is None and os.environ.get("DATA_ROOT"):
        experiment.data.root = os.environ["DATA_ROOT"]
    experiment.data.root = _absolute(experiment.data.root)
    experiment.data.video_folder = _absolute(experiment.data.video_folder)
    experiment.runtime.frame_cache = _absolute(experiment.runtime.frame_cache)
    experiment.training.deepspeed = _absolute(experiment.training.deepspeed)
    for stage in STAGES:
        settings = experiment.stage(stage)
        settings.init, settings.output_dir = _absolute(settings.init), _absolute(settings.output_dir)
    from videopanda.model.stab import STABConfig

    try:
        stab = experiment.visual_overrides()[1]
    except ExperimentError as err:
        raise ExperimentError(f"{where}: {err}") from None
    try:
        STABConfig(**stab)
    except (TypeError, ValueError) as err:
        raise ExperimentError(f"{where}: model.stab: {err}") from None
    return ResolvedExperiment(experiment, str(path), list(overrides))


@dataclass
class ResolvedExperiment:
    """An experiment with where it came from: the file and the command-line overrides."""

    experiment: Experiment
    source: str
    overrides: list[str]

    def record(self) -> dict:
        """What a stage folder stores (`experiment.json`)."""
        return {"name": self.experiment.name, "file": self.source, "overrides": self.overrides,
                "switches": self.experiment.switches(), "experiment": self.experiment.to_dict()}


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


def check_stage_folder(resolved: ResolvedExperiment, stage: str, folder: str | os.PathLike,
                       holds_outputs: bool) -> None:
    """Refuse (ExperimentError with the differences) a stage folder holding training outputs (`holds_outputs`:
    a checkpoint or a finished stage) whose stored experiment differs from `resolved` in the stage's view, or
    that has no record. A record alone (a run that stopped before its first checkpoint) binds nothing: the
    next run writes its own."""
    record = read_record(folder)
    if not holds_outputs:
        return
    if record is None:
        raise ExperimentError(f"{folder} holds training outputs but no {EXPERIMENT_RECORD}: it was made by an "
                              f"unknown experiment; use another output folder")
    stored, current = (stage_view(e, stage) for e in (record["experiment"], resolved.experiment.to_dict()))
    changed = differences(stored, current)
    if changed:
        raise ExperimentError(f"{folder} holds stage {stage} of experiment {record.get('name')!r} with other settings "
                              f"than {resolved.experiment.name!r} (stored -> now): {'; '.join(changed)}; "
                              f"use another run folder (run_dir=...) or delete it")


def write_record(resolved: ResolvedExperiment, folder: str | os.PathLike) -> Path:
    from videopanda.io import write_json_atomic

    return write_json_atomic(Path(folder) / EXPERIMENT_RECORD, resolved.record())


__all__ = ["DISTILL_LOSSES", "Experiment", "ExperimentError", "FRAME_FIELDS", "LORA_TARGETS", "LoraSettings",
           "ResolvedExperiment", "STAGES",
           "StageSettings", "check_stage_folder", "config_dir", "launcher_dir", "differences", "experiment_names",
           "find_experiment", "read_record", "resolve_experiment", "stage_view", "write_record"]
