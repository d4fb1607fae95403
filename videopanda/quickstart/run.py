"""The quickstart: the whole Video-Panda recipe on the synthetic benchmark, on CPU (`videopanda quickstart`).

Steps, each one an ordinary command that is logged before it runs (so it can be re-run by hand), all run in
the working directory (relative folders are taken from there), from a checkout or an installed package:

1. `videopanda synth` writes the dataset under the data folder, then `videopanda quickstart-models` the
   tokenizer, the base Llama and the teacher (`videopanda.quickstart.models`); each is skipped when the
   folder's metadata says a matching one is there already.
2. prealign, pretrain and finetune of the experiment `configs/experiments/quickstart.yaml` (or, with
   `--ablation NAME`, `configs/experiments/quickstart/NAME.yaml`, which extends it) through
   `EXPERIMENT=... scripts/videopanda/{stage}.sh` (torchrun, 2 processes, DeepSpeed ZeRO-2 on CPU, gloo;
   `videopanda.train.experiment.launcher_dir` finds the launchers, `PYTHON` is this interpreter), each
   stage starting from the previous one's folder; the quickstart adds its folders and seed as `key=value`
   overrides. The model shape comes from the experiment's `model.shape` (`configs/model/tiny.json`).
3. `videopanda eval qa` (one process per core, each answering half of the questions), `eval merge` and
   `eval judge --judge exact` on the held-out questions.
4. `OUT/summary.json`, `OUT/loss_curves.png` and a results table in the log (and `OUT/results.md`), every
   accuracy with its 95% Wilson interval and the number of questions it is over.
5. Only with `--curve-every-epochs`: learning curves, each finetune checkpoint evaluated as in step 3 on a
   fixed subset of the held-out questions (`videopanda.quickstart.curves`; `OUT/learning_curves.png`).

With `--seeds`, each seed runs as above and `OUT/table.md` gives every accuracy per seed and pooled over the
seeds; with `--compare ABLATION` the two variants are paired per seed and pooled by `eval compare`'s exact
McNemar test (`paired_comparisons`).

`OUT/run_settings.json` records what the results depend on; re-running into the same folder resumes
(finished stages and answers are reused), a folder whose run finished (it has `OUT/summary.json`) is
reported as it is, and a folder holding a run with other settings is refused.

Choices for the synthetic data (where the real recipe's settings would not work here; the numbers are in
the experiment file):
- No random horizontal flip: it would turn "left" into "right" without changing the answer.
- Short stages with higher learning rates than the 7B recipe (a 1M-parameter LLM trained from
  scratch, not a pre-trained 7B), most of the budget in finetuning (the stage the questions are
  asked in), the STAB and projector at 5x the LLM's rate; no gradient checkpointing (nothing to
  save at this size).
- The random teacher's position embeddings and patch embedding are drawn larger than its other
  weights (`ModelsConfig.teacher_position_std` 0.5, `teacher_patch_std` 0.1), so that, like a real
  LanguageBind teacher, its features say both where each patch is and what it shows, and its patch
  positions vary smoothly over the grid as a trained ViT's do (`teacher_position_frequencies` 2,
  `videopanda.train.teacher.smooth_position_embedding`). The Llama sees
  its visual tokens only in order (RoPE), which tells rows apart (a row is several tokens) but hardly
  columns. Position alone (patch std 0.02) crowds colour out of the features and the colour questions
  fall to chance; position 1.0 with patch 0.1 does the same to a lesser degree (measured with earlier
  synthetic generators, on 112 px frames).
- The tiny Llama and STAB of `configs/model/tiny.json`: no dropout in the STAB (the 7B recipe's 0.5
  in GSTRA and the context projection; with it the full model learned more slowly than the
  no-LSTE/no-GSTRA ablation), 4 attention heads of 32 dims and an MLP of 352 (with 8 heads and an
  MLP of 256 the motion questions stayed at chance in every run of an earlier generator); the teacher's
  temporal attention spans the model's frames (`num_frames`).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from videopanda.constants import NUM_FRAMES
from videopanda.io import read_json, save_figure_atomic, write_json_atomic, write_text_atomic
from videopanda.log import get_logger, setup_logging
from videopanda.quickstart.accuracy import accuracies, accuracy_cell, counts, pooled_cell
from videopanda.quickstart.curves import (CURVE_DIR, CURVE_STAGE, CurveSettings, checkpoint_epoch, curve_checkpoints,
                                          curve_table, finetune_overrides, plot_curves, write_question_subset)
from videopanda.quickstart.models import META_FILE, ModelsConfig, llm_fields, teacher_num_frames

logger = get_logger(__name__)

STAGES = ("prealign", "pretrain", "finetune")
DATASET = "synth"
LOSS_LOG = "loss_log.jsonl"
RUN_SETTINGS = "run_settings.json"
FRAME_CACHE = "frame_cache"
"""Subfolder of the data folder holding the decoded training frames (`runtime.frame_cache`), shared by the
stages, their epochs and later runs on the same data."""
DEFAULT_CURVE_QUESTIONS = 100
EXPERIMENT = "quickstart"
"""The quickstart's experiment (configs/experiments/quickstart.yaml); its ablations are quickstart/<name>.yaml."""


def ablation_names() -> list[str]:
    """The quickstart's ablations: the experiment files under configs/experiments/quickstart/."""
    from videopanda.train.experiment import experiment_names

    return [name.split("/", 1)[1] for name in experiment_names(EXPERIMENT)]


@dataclass
class QuickstartConfig:
    out: Path = Path("outputs/quickstart-seed0")
    data: Path = Path("data/synth-seed0")
    seed: int = 0
    num_train: int = 3000
    num_test: int = 400
    nproc: int = 2
    ablation: str | None = None
    global_batch_size: int | None = None
    overrides: list[str] = field(default_factory=list)
    eval_batch_size: int = 16
    max_new_tokens: int = 16
    curve: CurveSettings | None = None

    @property
    def python(self) -> str:
        return sys.executable

    @property
    def experiment(self) -> str:
        return f"{EXPERIMENT}/{self.ablation}" if self.ablation else EXPERIMENT

    def train_overrides(self) -> list[str]:
        """What the quickstart sets on top of its experiment file, for every stage: its folders (the frame cache
        in the data folder), the seed, a global batch from the command line, then the user's own `--set`
        overrides."""
        out = [f"run_dir={self.out.resolve()}", f"model.base={(self.data / 'models' / 'base').resolve()}",
               f"model.teacher={(self.data / 'models' / 'teacher').resolve()}", f"data.root={self.data.resolve()}",
               f"runtime.frame_cache={(self.data / FRAME_CACHE).resolve()}", f"training.seed={self.seed}"]
        if self.global_batch_size is not None:
            out += [f"stages.{stage}.global_batch_size={self.global_batch_size}" for stage in STAGES]
        return out + list(self.overrides)

    def resolved(self):
        """The resolved experiment (`videopanda.train.experiment.ResolvedExperiment`) the stages run."""
        from videopanda.train.experiment import resolve_experiment

        return resolve_experiment(self.experiment, self.train_overrides())

    @property
    def model_config(self) -> Path:
        """The tiny model's shape (the experiment's `model.shape`): `videopanda quickstart-models` reads its
        Llama fields."""
        return Path(self.resolved().experiment.model.shape)


# ---- steps ---------------------------------------------------------------------------------------


def command_line(cmd: list[str], env: dict[str, str] | None = None) -> str:
    """The shell line that re-runs `cmd` by hand: the environment it was given, then the command."""
    return shlex.join([*(f"{k}={v}" for k, v in (env or {}).items()), *cmd])


def _start(cmd: list[str], log_file: Path, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, object]:
    """Start `cmd` in the working directory with its output in `log_file`, whose first line is the command
    itself."""
    line = command_line(cmd, env)
    logger.info("$ %s", line)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_file, "w")
    handle.write(f"$ {line}\n")
    handle.flush()
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    return proc, handle


def _run(cmd: list[str], log_file: Path, env: dict[str, str] | None = None) -> float:
    """Run a command with its output in `log_file`; returns seconds taken. Raises on failure, showing the log's tail."""
    start = time.monotonic()
    proc, handle = _start(cmd, log_file, env)
    with handle:
        code = proc.wait()
    elapsed = time.monotonic() - start
    if code != 0:
        tail = "".join(log_file.read_text(errors="replace").splitlines(keepends=True)[-40:])
        raise RuntimeError(f"command failed with exit code {code} (full log: {log_file}):\n{tail}")
    return elapsed


def read_data_meta(data: Path) -> dict | None:
    """The data folder's `synth_meta.json` (written by `videopanda synth`, its "models" by `videopanda
    quickstart-models`), or None when there is none."""
    path = data / META_FILE
    return read_json(path) if path.is_file() else None


TEACHER_FIELDS = {"teacher_position_std": None, "teacher_patch_std": None, "teacher_position_frequencies": 0,
                  "teacher_temporal_std": None}
"""ModelsConfig teacher fields checked for reuse -> value meant when a folder's metadata lacks the field."""


def _dataset_changes(cfg: QuickstartConfig, meta: dict | None) -> list[str]:
    """What makes the data folder's dataset unusable: none there, another seed, size or generator version."""
    from videopanda.data.synth import GENERATOR_VERSION

    if meta is None:
        return ["no dataset there"]
    wanted = {"seed": (meta.get("seed"), cfg.seed), "num_train": (meta.get("num_train"), cfg.num_train),
              "num_test": (meta.get("num_test"), cfg.num_test),
              "generator_version": (meta.get("generator_version"), GENERATOR_VERSION)}
    return [f"{name} {have!r} != {want!r}" for name, (have, want) in wanted.items() if have != want]


def _model_changes(cfg: QuickstartConfig, meta: dict | None) -> list[str]:
    """What makes the data folder's base models unusable: another base Llama shape, teacher frame count or
    teacher initialisation (models made before the frame count was recorded had 8-frame teachers)."""
    models = (meta or {}).get("models", {})
    wanted = {"base Llama": (models.get("llm"), llm_fields(cfg.model_config)),
              "teacher frames": (models.get("teacher_num_frames", NUM_FRAMES), teacher_num_frames(cfg.model_config))}
    wanted.update({name: (models.get(name, absent), getattr(ModelsConfig, name))
                   for name, absent in TEACHER_FIELDS.items()})
    return [f"{name} {have!r} != {want!r}" for name, (have, want) in wanted.items() if have != want]


def stale_data_reason(cfg: QuickstartConfig) -> str | None:
    """Why the data folder cannot be reused (None when it can): no dataset there, or one written with a
    different seed, size, generator version, base Llama shape or teacher initialisation."""
    meta = read_data_meta(cfg.data)
    if meta is None:
        return "no dataset there"
    return "; ".join(_dataset_changes(cfg, meta) + _model_changes(cfg, meta)) or None


def ensure_data(cfg: QuickstartConfig) -> None:
    """Generate the synthetic dataset, then its base models, unless matching ones are there already (new
    data always gets new models: the tokenizer is trained on its text)."""
    meta = read_data_meta(cfg.data)
    if meta is not None and meta.get("seed") != cfg.seed:
        raise RuntimeError(f"{cfg.data} holds the synthetic data of seed {meta.get('seed')}, not of seed {cfg.seed}: "
                           "pass another --data (the default is one folder per seed) or delete it")
    data_changes, model_changes = _dataset_changes(cfg, meta), _model_changes(cfg, meta)
    if not data_changes and not model_changes:
        logger.info("reusing the synthetic data in %s (same seed, sizes and models)", cfg.data)
        return
    if data_changes:
        logger.info("generating the synthetic data in %s (%s)", cfg.data, "; ".join(data_changes))
        # New clips get new cache keys anyway; the old clips' frames would only take up space.
        shutil.rmtree(cfg.data / FRAME_CACHE, ignore_errors=True)
        _run([cfg.python, "-m", "videopanda", "synth", "--out", str(cfg.data), "--seed", str(cfg.seed),
              "--num-train", str(cfg.num_train), "--num-test", str(cfg.num_test), "--workers", str(cfg.nproc)],
             cfg.out / "logs" / "synth.log")
    logger.info("making the base models in %s (%s)", cfg.data / "models",
                "; ".join(model_changes) if not data_changes else "new data")
    _run([cfg.python, "-m", "videopanda", "quickstart-models", "--data", str(cfg.data),
          "--model-config", str(cfg.model_config)], cfg.out / "logs" / "models.log")


def stage_flags(cfg: QuickstartConfig, stage: str) -> list[str]:
    """`videopanda train` arguments of one stage on top of the launcher's `EXPERIMENT` (the same for every
    stage: the experiment file holds the per-stage settings), and with learning curves the finetune stage's
    checkpoints at the curve's epochs (`curves.finetune_overrides`)."""
    if cfg.curve is None or stage != CURVE_STAGE:
        return cfg.train_overrides()
    return cfg.train_overrides() + finetune_overrides(cfg.curve, cfg.resolved().experiment)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_loss_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def run_stage(cfg: QuickstartConfig, stage: str) -> dict:
    """One training stage through its launcher (it starts from the previous stage's folder in OUT); returns {"name", "final_loss", "steps", "elapsed_s", ...}."""
    out_dir = cfg.out / stage
    from videopanda.train.experiment import launcher_dir

    env = {"EXPERIMENT": cfg.experiment, "GPUS_PER_NODE": str(cfg.nproc), "MASTER_PORT": str(_free_port()),
           "OMP_NUM_THREADS": "1", "PYTHON": cfg.python}
    cmd = ["bash", str(launcher_dir() / f"{stage}.sh"), *stage_flags(cfg, stage)]
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_loss, args=(out_dir / LOSS_LOG, stage, stop), daemon=True)
    watcher.start()
    try:
        elapsed = _run(cmd, cfg.out / "logs" / f"{stage}.log", env)
    finally:
        stop.set()
        watcher.join()
    records = _read_loss_log(out_dir / LOSS_LOG)
    if not records:
        raise RuntimeError(f"stage {stage} wrote no losses to {out_dir / LOSS_LOG}")
    last = records[-1]
    result = {"name": stage, "final_loss": last["loss"], "steps": last["step"], "elapsed_s": round(elapsed, 1)}
    for key in ("lm_loss", "distill_loss"):
        if key in last:
            result[f"final_{key}"] = last[key]
    logger.info("stage %s done: %d steps, final loss %.4f, %.0f s", stage, result["steps"], result["final_loss"], elapsed)
    return result


def _watch_loss(path: Path, stage: str, stop: threading.Event) -> None:
    """Log the running loss of a stage every 20 s while it trains."""
    while not stop.wait(20.0):
        records = _read_loss_log(path)
        if records:
            r = records[-1]
            logger.info("  %s step %d: loss %.4f", stage, r["step"], r["loss"])


def answer_and_judge(cfg: QuickstartConfig, model: Path, eval_dir: Path, data_root: Path, log_dir: Path) -> dict:
    """Zero-shot QA on the held-out questions of `data_root` (one process per core), merge, exact-match judge,
    into `eval_dir` with the logs in `log_dir`; returns the judge's results.json."""
    pred_dir = eval_dir / "predictions"
    common = ["--model", str(model), "--dataset", DATASET, "--data-root", str(data_root), "--output-dir",
              str(pred_dir), "--device", "cpu", "--batch-size", str(cfg.eval_batch_size), "--max-new-tokens",
              str(cfg.max_new_tokens), "--num-chunks", str(cfg.nproc), "--no-progress"]
    procs = [_start([cfg.python, "-m", "videopanda", "eval", "qa", *common, "--chunk-idx", str(chunk)],
                    log_dir / f"eval_qa_{chunk}.log", {"OMP_NUM_THREADS": "1"})
             for chunk in range(cfg.nproc)]
    failed = []
    for chunk, (proc, log) in enumerate(procs):
        if proc.wait() != 0:
            failed.append(chunk)
        log.close()
    if failed:
        raise RuntimeError(f"eval qa failed for chunk(s) {failed}; see {log_dir}/eval_qa_*.log")
    merged = eval_dir / "merge.jsonl"
    _run([cfg.python, "-m", "videopanda", "eval", "merge", "--pred-dir", str(pred_dir), "--dataset", DATASET,
          "--data-root", str(data_root), "--output", str(merged)], log_dir / "eval_merge.log")
    _run([cfg.python, "-m", "videopanda", "eval", "judge", "--pred-file", str(merged), "--output-dir",
          str(eval_dir / "judge"), "--judge", "exact", "--dataset", DATASET, "--no-progress"],
         log_dir / "eval_judge.log")
    return read_json(eval_dir / "judge" / "results.json")


def evaluate(cfg: QuickstartConfig, model: Path) -> dict:
    """The final model on all held-out questions (`answer_and_judge` into OUT/eval): the accuracies with their
    intervals and counts (`accuracy.accuracies`), the coverage and the judge."""
    start = time.monotonic()
    results = answer_and_judge(cfg, model, cfg.out / "eval", cfg.data, cfg.out / "logs")
    numbers = accuracies(results)
    return {"accuracy": numbers.pop("accuracy"), "per_type": numbers.pop("per_type"), "num_yes": results["num_yes"],
            "num_no": results["num_no"], "num_failed": results["num_failed"],
            "num_failed_inference": results.get("num_failed_inference", 0), "judge": results.get("judge"),
            "elapsed_s": round(time.monotonic() - start, 1), **numbers}


def learning_curve(cfg: QuickstartConfig) -> dict:
    """Every complete finetune checkpoint on the first `cfg.curve.questions` held-out questions (OUT/curve):
    one point per checkpoint with its step, epoch, accuracies (intervals and counts) and evaluation time."""
    start = time.monotonic()
    folder = cfg.out / CURVE_DIR
    root = write_question_subset(cfg.data, folder / "questions", cfg.curve.questions, DATASET)
    points = []
    for step, checkpoint in curve_checkpoints(cfg.out / CURVE_STAGE):
        began = time.monotonic()
        results = answer_and_judge(cfg, checkpoint, folder / f"step-{step}", root,
                                   cfg.out / "logs" / CURVE_DIR / f"step-{step}")
        points.append({"step": step, "epoch": checkpoint_epoch(checkpoint), **accuracies(results),
                       "elapsed_s": round(time.monotonic() - began, 1)})
        logger.info("learning curve, step %d: accuracy %s", step, accuracy_cell(points[-1]))
    if not points:
        raise RuntimeError(f"{cfg.out / CURVE_STAGE} holds no complete checkpoint to draw the learning curve from")
    elapsed = time.monotonic() - start
    return {**cfg.curve.to_dict(), "points": points, "elapsed_s": round(elapsed, 1),
            "seconds_per_point": round(elapsed / len(points), 1)}


# ---- report --------------------------------------------------------------------------------------


def plot_losses(cfg: QuickstartConfig, path: Path) -> Path:
    """One panel per stage: total loss and, when logged, its LM and distillation parts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(STAGES), figsize=(5 * len(STAGES), 3.6), squeeze=False)
    for ax, stage in zip(axes[0], STAGES):
        records = _read_loss_log(cfg.out / stage / LOSS_LOG)
        for key, style in (("loss", "-"), ("lm_loss", "--"), ("distill_loss", ":")):
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), style, label=key)
        ax.set_title(stage)
        ax.set_xlabel("optimizer step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0][0].set_ylabel("loss")
    title = "Video-Panda quickstart (synthetic video QA)" + (f", ablation: {cfg.ablation}" if cfg.ablation else "")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure_atomic(fig, path)


def results_table(summary: dict) -> str:
    """The stages, the accuracies (95% interval, questions) and, with learning curves, the curve's points."""
    lines = ["| stage | steps | final loss | time (s) |", "|---|---:|---:|---:|"]
    lines += [f"| {s['name']} | {s['steps']} | {s['final_loss']:.4f} | {s['elapsed_s']:.0f} |" for s in summary["stages"]]
    ev = summary["eval"]
    lines += ["", "| question type | accuracy (%) [95% interval] (questions) |", "|---|---:|"]
    lines += [f"| {t} | {accuracy_cell(ev, t)} |" for t in ev["per_type"]]
    lines += [f"| **overall** | **{accuracy_cell(ev)}** |", "",
              f"{judged(summary)} questions judged, judge: {ev['judge']}; total time {summary['elapsed_s']:.0f} s"]
    curve = summary.get("curve")
    if curve:
        lines += ["", f"Learning curve: accuracy (%) [95% interval] (questions) on the first {curve['questions']} "
                  f"held-out questions every {curve['every_epochs']:g} finetune epochs "
                  f"({curve['seconds_per_point']:.0f} s per point, {curve['elapsed_s']:.0f} s in all):", "",
                  curve_table({summary.get("ablation") or "full model": [curve]})]
    return "\n".join(lines)


# ---- entry point ---------------------------------------------------------------------------------


def run_settings(cfg: QuickstartConfig) -> dict:
    """Everything a run's results depend on: the resolved experiment (less its runtime section), the model
    shape file's contents, the quickstart's own settings (the learning curve's when it has one) and the data
    folder's metadata (as JSON values)."""
    experiment = cfg.resolved().experiment.to_dict()
    experiment.pop("runtime")
    settings = {"experiment": experiment, "model_config": read_json(cfg.model_config),
                "seed": cfg.seed, "num_train": cfg.num_train, "num_test": cfg.num_test, "nproc": cfg.nproc,
                "ablation": cfg.ablation, "eval_batch_size": cfg.eval_batch_size,
                "max_new_tokens": cfg.max_new_tokens, "data": read_data_meta(cfg.data)}
    if cfg.curve is not None:  # only then: a folder of a run without curves keeps its settings
        settings["curve"] = cfg.curve.to_dict()
    return json.loads(json.dumps(settings))


def claim_output_folder(out: Path, settings: dict) -> None:
    """Record `settings` in `out`, or check them against the run already there. Finished stages and
    answered questions in `out` are reused (that is how a crashed run resumes), so a folder holding a
    run with other settings is refused rather than silently mixed into this one."""
    path = out / RUN_SETTINGS
    if path.is_file():
        previous = read_json(path)
        changed = sorted(k for k in settings.keys() | previous.keys() if settings.get(k) != previous.get(k))
        if changed:
            raise RuntimeError(f"{out} holds a quickstart run with other settings ({', '.join(changed)} differ); "
                               "its finished stages and answers would be reused: delete it or pass another --out")
        logger.info("%s holds a run with the same settings: finished stages and answers are reused", out)
        return
    leftovers = [name for name in (*STAGES, "eval") if (out / name).exists()]
    if leftovers:
        raise RuntimeError(f"{out} holds {', '.join(leftovers)} from a run whose settings were not recorded "
                           f"(no {RUN_SETTINGS}); delete it or pass another --out")
    write_json_atomic(path, settings)


def run(cfg: QuickstartConfig) -> dict:
    import videopanda
    from videopanda.train.experiment import config_dir, launcher_dir

    start = time.monotonic()
    logger.info("videopanda from %s, configs from %s, launchers from %s, working directory %s",
                Path(videopanda.__file__).parent, config_dir(), launcher_dir(), Path.cwd())
    ensure_data(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    claim_output_folder(cfg.out, run_settings(cfg))
    summary_path = cfg.out / "summary.json"
    if summary_path.is_file():
        # Written last, so the run finished with these settings: report it rather than re-launch every step,
        # which would only find each done and overwrite the logs and the time of the calls that did the work.
        summary = finished_summary(summary_path)
        logger.info("%s already holds a finished run; its results follow (delete the folder to run it again)",
                    cfg.out)
    else:
        summary = train_and_evaluate(cfg, start)
    table = results_table(summary)
    logger.info("results (%s):\n%s", summary_path, table)
    print(table)
    return summary


def train_and_evaluate(cfg: QuickstartConfig, start: float) -> dict:
    """The three stages and the evaluation (each resumed where an earlier call left it), with `cfg.curve` the
    learning curve, then OUT/summary.json, the loss curves (and learning curves) and OUT/results.md; `start`
    is the call's `time.monotonic()` at its beginning."""
    resumed = any((cfg.out / stage).exists() for stage in STAGES)
    stages = [run_stage(cfg, stage) for stage in STAGES]
    summary = {"stages": stages, "eval": evaluate(cfg, cfg.out / STAGES[-1]), "experiment": cfg.experiment,
               "ablation": cfg.ablation, "model_config": str(cfg.model_config), "seed": cfg.seed,
               "num_train": cfg.num_train, "num_test": cfg.num_test, "resumed": resumed}
    if cfg.curve is not None:
        summary["curve"] = learning_curve(cfg)
    summary["elapsed_s"] = round(time.monotonic() - start, 1)
    write_json_atomic(cfg.out / "summary.json", summary)
    plot_losses(cfg, cfg.out / "loss_curves.png")
    if cfg.curve is not None:
        plot_curves({cfg.ablation or "full model": [summary["curve"]]}, cfg.out / "learning_curves.png",
                    "Learning curves (95% Wilson intervals)" + (f", ablation: {cfg.ablation}" if cfg.ablation else ""))
    write_text_atomic(cfg.out / "results.md", results_table(summary) + "\n")
    return summary


def finished_summary(path: Path) -> dict:
    """The summary.json of a finished run; a RuntimeError naming the file when it cannot be read."""
    try:
        summary = read_json(path)
    except ValueError as exc:
        raise RuntimeError(f"{exc}; delete it to evaluate the run and write it again") from None
    if not (isinstance(summary.get("eval"), dict)
            and isinstance(summary["eval"].get("per_type"), dict) and "elapsed_s" in summary):
        raise RuntimeError(f"{path} is not a quickstart summary; delete it to evaluate the run and write it again")
    return summary


def judged(summary: dict) -> str:
    """"judged of asked" for one run's evaluation: accuracy covers the judged questions only."""
    ev = summary["eval"]
    return f"{ev['num_yes'] + ev['num_no']} of {summary['num_test']}"


def seed_table(runs: dict[str, list[dict]]) -> str:
    """runs: variant name -> its summaries, one per seed -> a markdown table: per variant a row per seed and a
    row pooling the questions of its seeds, each accuracy with its 95% Wilson interval and count."""
    types = sorted({t for summaries in runs.values() for s in summaries for t in s["eval"]["per_type"]})
    columns: list[str | None] = [*types, None]
    lines = ["| model | seed | " + " | ".join(types) + " | overall | time (s) |",
             "|---|---|" + "---:|" * (len(types) + 2)]
    for name, summaries in runs.items():
        for s in summaries:
            cells = [accuracy_cell(s["eval"], t) if t is None or t in s["eval"]["per_type"] else "n/a"
                     for t in columns]
            time_taken = "resumed" if s.get("resumed") else f"{s['elapsed_s']:.0f}"
            lines.append(f"| {name} | {s['seed']} | " + " | ".join(cells) + f" | {time_taken} |")
        seeds = ", ".join(str(s["seed"]) for s in summaries)
        pooled = [_pooled_cell(summaries, t) for t in columns]
        lines.append(f"| {name} | pooled ({seeds}) | " + " | ".join(pooled) + f" | {_seed_times(summaries)} |")
    lines += ["", "Accuracy in % [95% Wilson interval] (questions) on each seed's held-out questions; pooled: the "
              "questions of all seeds together (each seed has its own). Time: the whole job per seed (data, three "
              "stages, evaluation); pooled: mean [lowest, highest] over the seeds whose run was done in one call "
              "(a resumed run's time leaves out the calls before its last).",
              "Questions judged per seed: " + "; ".join(
                  f"{name} {', '.join(judged(s) for s in summaries)}" for name, summaries in runs.items()) + "."]
    return "\n".join(lines)


def _pooled_cell(summaries: list[dict], question_type: str | None) -> str:
    counted = [counts(s["eval"], question_type) for s in summaries]
    if any(c is None for c in counted):
        return "n/a"
    return pooled_cell(sum(right for right, _ in counted), sum(total for _, total in counted))


def _seed_times(summaries: list[dict]) -> str:
    whole = [s["elapsed_s"] for s in summaries if not s.get("resumed")]
    if not whole:
        return "n/a"
    text = f"{sum(whole) / len(whole):.0f} [{min(whole):.0f}, {max(whole):.0f}]"
    return text + (f" ({len(whole)} of {len(summaries)} seeds)" if len(whole) < len(summaries) else "")


def paired_comparisons(folders: dict[int, tuple[Path, Path]]) -> dict:
    """seed -> (judge folder of variant A, of variant B) -> `eval compare`'s reports: {"per_seed": {seed:
    report}, "pooled": the report over the questions of all seeds, each seed's kept apart}. CompareError
    when a seed's two folders are not over the same questions."""
    from videopanda.eval.compare import compare_read, pool_runs, read_run

    read = {seed: (read_run(a), read_run(b)) for seed, (a, b) in folders.items()}
    per_seed = {seed: compare_read(a, b) for seed, (a, b) in read.items()}
    pooled = compare_read(pool_runs({f"seed{seed}": a for seed, (a, _) in read.items()}),
                          pool_runs({f"seed{seed}": b for seed, (_, b) in read.items()}))
    return {"per_seed": per_seed, "pooled": pooled}


def comparison_table(name_a: str, name_b: str, comparisons: dict) -> str:
    """`paired_comparisons` -> a markdown table: per seed and pooled, per question type and overall, B - A in
    points, the discordant questions (right only in A / only in B) and the exact McNemar p-value."""
    reports = {str(seed): report for seed, report in comparisons["per_seed"].items()}
    reports[f"pooled ({', '.join(reports)})"] = comparisons["pooled"]
    types = sorted({t for r in reports.values() for t in r["parts"]["qa"]["per_group"].get("type", {})})
    lines = [f"Paired comparison, B = {name_b} against A = {name_a} on the same held-out questions: B - A in "
             "points (right only in A / right only in B, exact McNemar p).", "",
             "| seed | questions | " + " | ".join(types) + " | overall |", "|---|---:|" + "---:|" * (len(types) + 1)]
    for label, report in reports.items():
        part = report["parts"]["qa"]
        rows = [part["per_group"].get("type", {}).get(t) for t in types] + [part["overall"]]
        cells = ["n/a" if row is None or row["accuracy_diff"] is None else
                 f"{row['accuracy_diff']:+.1f} ({row['right_only_a']} / {row['right_only_b']}, "
                 f"p={row['mcnemar_p']:.3g})" for row in rows]
        covered = f"{part['overall']['n']}" + (f" ({part['num_left_out']} left out)" if part["num_left_out"] else "")
        lines.append(f"| {label} | {covered} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_report(out: Path, runs: dict[str, list[dict]], folders: dict[int, tuple[Path, Path]] | None) -> str:
    """OUT/table.md (the seed table, with two variants their paired comparison, with learning curves their
    table), OUT/runs.json, OUT/compare.json and OUT/learning_curves.png; returns the table."""
    table = seed_table(runs)
    if folders is not None:
        comparisons = paired_comparisons(folders)
        write_json_atomic(out / "compare.json", comparisons)
        table += "\n\n" + comparison_table(*runs, comparisons)
    curves = {name: [s["curve"] for s in summaries] for name, summaries in runs.items()
              if all(s.get("curve") for s in summaries)}
    if curves:
        plot_curves(curves, out / "learning_curves.png", "Learning curves: mean over seeds, band: lowest to "
                    "highest seed (one seed: 95% Wilson interval)")
        table += ("\n\nLearning curves (learning_curves.png): accuracy (%) on each seed's curve questions; a variant "
                  "of several seeds: mean over seeds [lowest, highest seed], of one: [95% interval] (questions)."
                  "\n\n" + curve_table(curves))
    write_text_atomic(out / "table.md", table + "\n")
    write_json_atomic(out / "runs.json", runs)
    return table


def _parse_ablation(parser: argparse.ArgumentParser, text: str | None) -> str | None:
    name = (text or "").strip() or None
    if name is not None and name not in ablation_names():
        parser.error(f"unknown ablation {name!r}; choose one of {', '.join(ablation_names())} "
                     f"(configs/experiments/{EXPERIMENT}/)")
    return name


def build_parser() -> argparse.ArgumentParser:
    from videopanda.argparsing import CommandParser

    parser = CommandParser(prog="videopanda quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default outputs/quickstart-seed<SEED>, "
                        "with _<ablation> appended for --ablation; with --seeds, the folder of the seed table, "
                        "default outputs/quickstart-seeds)")
    parser.add_argument("--data", type=Path, default=None,
                        help="synthetic data folder (default data/synth-seed<SEED>, or env QUICKSTART_DATA); made "
                             "when missing, regenerated when its generator or models are out of date, refused "
                             "when it holds another seed's data")
    parser.add_argument("--ablation", default=os.environ.get("QUICKSTART_ABLATION") or None,
                        help=f"run the experiment configs/experiments/{EXPERIMENT}/<ABLATION>.yaml instead of "
                             f"{EXPERIMENT}.yaml: {', '.join(ablation_names())} (without one: the full model; env "
                             "QUICKSTART_ABLATION sets the default)")
    parser.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                        help="experiment keys to override in every stage, e.g. stages.finetune.epochs=3 "
                             "(docs/experiments.md)")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, default=0, help="seed of the data, the models and training")
    seeds.add_argument("--seeds", type=int, nargs="+", default=None,
                       help="run each of these seeds in turn (each in its default folders) and write their table "
                            "(each accuracy per seed and pooled over the seeds, with its 95%% interval and count) "
                            "to OUT/table.md")
    parser.add_argument("--compare", default=None, metavar="ABLATION",
                        help="with --seeds: also run this ablation on every seed, put it in the table and pair it "
                             "with the other model per seed and pooled (`eval compare`: exact McNemar tests on the "
                             "same questions; OUT/compare.json), e.g. no-lste-no-gstra")
    parser.add_argument("--curve-every-epochs", type=float, default=None, metavar="EPOCHS",
                        help="learning curves: keep a finetune checkpoint every EPOCHS epochs and evaluate each after "
                             "training on the first --curve-questions held-out questions (OUT/summary.json's curve, "
                             "OUT/learning_curves.png; off by default). Cost: one evaluation per point, about 25 s for 100 questions on 2 shared cores "
                             "(a point every epoch: 9 points, about 4 minutes); saving the checkpoints is in the noise")
    parser.add_argument("--curve-questions", type=int, default=None, metavar="K",
                        help="held-out questions of the learning curve (default 100, at most --num-test)")
    parser.add_argument("--num-train", type=int, default=QuickstartConfig.num_train,
                        help="training clips")
    parser.add_argument("--num-test", type=int, default=QuickstartConfig.num_test,
                        help="held-out questions, one clip each")
    parser.add_argument("--nproc", type=int, default=QuickstartConfig.nproc,
                        help="training processes (and eval processes)")
    parser.add_argument("--global-batch-size", type=int, default=None,
                        help="samples per optimiser step in every stage, a multiple of --nproc (default: the "
                             "experiment's)")
    return parser


def _parse_curve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> CurveSettings | None:
    if args.curve_every_epochs is None:
        if args.curve_questions is not None:
            parser.error("--curve-questions needs --curve-every-epochs")
        return None
    questions = DEFAULT_CURVE_QUESTIONS if args.curve_questions is None else args.curve_questions
    if args.curve_every_epochs <= 0:
        parser.error(f"--curve-every-epochs must be positive, got {args.curve_every_epochs:g}")
    if not 1 <= questions <= args.num_test:
        parser.error(f"--curve-questions {questions} is not in 1..--num-test ({args.num_test})")
    return CurveSettings(every_epochs=args.curve_every_epochs, questions=questions)


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str | None]]:
    """The command line, checked, and the variants to run (the ablation or full model, then --compare's)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.global_batch_size is not None and args.global_batch_size % args.nproc:
        parser.error(f"--global-batch-size {args.global_batch_size} is not a multiple of --nproc {args.nproc}")
    if args.compare is not None and args.seeds is None:
        parser.error("--compare needs --seeds")
    if args.seeds is not None and args.data is not None:
        parser.error("--seeds uses one data folder per seed: leave out --data")
    args.curve = _parse_curve(parser, args)
    variants = [_parse_ablation(parser, args.ablation)]
    if args.compare is not None:
        variants.append(_parse_ablation(parser, args.compare))
    return args, variants


def main(argv: list[str]) -> int:
    from videopanda.eval.compare import CompareError

    args, variants = _parse(argv)

    def config(seed: int, ablation: str | None, out: Path | None) -> QuickstartConfig:
        out = out or Path(f"outputs/quickstart-seed{seed}" + (f"_{ablation}" if ablation else ""))
        data = args.data or Path(os.environ.get("QUICKSTART_DATA") or f"data/synth-seed{seed}")
        return QuickstartConfig(out=out, data=data, seed=seed, num_train=args.num_train, num_test=args.num_test,
                                nproc=args.nproc, ablation=ablation, global_batch_size=args.global_batch_size,
                                overrides=args.overrides, curve=args.curve)

    setup_logging()
    try:
        if args.seeds is None:
            run(config(args.seed, variants[0], args.out))
            return 0
        runs: dict[str, list[dict]] = {}
        judge_folders: dict[int, list[Path]] = {}
        for seed in args.seeds:
            for ablation in variants:
                cfg = config(seed, ablation, None)
                runs.setdefault(ablation or "full model", []).append(run(cfg))
                judge_folders.setdefault(seed, []).append(cfg.out / "eval" / "judge")
        out = args.out or Path("outputs/quickstart-seeds")
        out.mkdir(parents=True, exist_ok=True)
        pairs = {seed: tuple(pair) for seed, pair in judge_folders.items()} if len(variants) == 2 else None
        table = seeds_report(out, runs, pairs)
        logger.info("seed table (%s):\n%s", out / "table.md", table)
        print(table)
    except (RuntimeError, ValueError, CompareError) as err:  # ValueError: a bad experiment file or override
        logger.error("%s", err)
        return 1
    return 0
