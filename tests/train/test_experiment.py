"""Experiment files: strict typed loading, `extends` and overrides, the shipped recipe and ablations, MSE
distillation, and run folders that store their experiment (an ablation trained through all three stages by
the launchers, a stage folder of another experiment refused)."""
import json
import logging
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from videopanda.train.experiment import (ExperimentError, experiment_names, find_experiment, read_record,
                                         resolve_experiment)

REPO = Path(__file__).resolve().parents[2]
TABLE_ABLATIONS = {"no-row-tokens": ("model", "stab", "use_row_tokens", False),
                   "no-fsra": ("model", "stab", "use_fsra", False),
                   "avgpool-lsd": ("model", "stab", "lsd_mode", "avgpool"),
                   "no-lste": ("model", "stab", "use_lste", False),
                   "no-gstra": ("model", "stab", "use_gstra", False),
                   "no-distill": ("distillation", None, "enabled", False),
                   "mse-distill": ("distillation", None, "loss", "mse")}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_table_ablation_is_a_few_lines_on_top_of_its_recipe():
    names = experiment_names()
    for base in ("videopanda-7b", "quickstart"):
        for ablation, (section, sub, key, value) in TABLE_ABLATIONS.items():
            recipe = resolve_experiment(base).experiment.to_dict()
            path = find_experiment(f"{base}/{ablation}")
            assert len(path.read_text().splitlines()) <= 5, path
            ablated = resolve_experiment(f"{base}/{ablation}").experiment
            assert ablated.name == f"{base}-{ablation}" and ablated.run_dir != resolve_experiment(base).experiment.run_dir
            changed = ablated.to_dict()
            part = changed[section] if sub is None else changed[section][sub]
            assert part[key] == value
            del part[key]
            for item in (recipe, changed):
                item.pop("name"), item.pop("run_dir")
            holder = recipe[section] if sub is None else recipe[section][sub]
            holder.pop(key, None)
            assert changed == recipe, f"{base}/{ablation} changes more than {section}.{key}"
        assert {f"{base}/no-lste-no-gstra"} <= set(names)
    both = resolve_experiment("videopanda-7b/no-lste-no-gstra").experiment.switches()
    assert both["use_lste"] is False and both["use_gstra"] is False and both["distillation"] == "cosine"
    paper, scripts = (resolve_experiment(n).experiment.stages for n in ("videopanda-7b", "videopanda-7b-scripts"))
    assert [paper.prealign.global_batch_size, paper.pretrain.global_batch_size, paper.finetune.global_batch_size] \
        == [2048, 2048, 1024]
    assert [scripts.prealign.global_batch_size, scripts.pretrain.global_batch_size,
            scripts.finetune.global_batch_size] == [512, 512, 256]


@pytest.mark.parametrize("text, message", [
    ("extends: {parent}\nstages:\n  prealign: {{learning_rat: 1.0e-3}}\n", "unknown key stages.prealign.learning_rat"),
    ("extends: {parent}\nmodel:\n  stab: {{use_lstee: false}}\n", "unknown key model.stab.use_lstee"),
    ("extends: {parent}\ndistillation: {{loss: l1}}\n", "distillation.loss must be one of cosine, mse, got 'l1'"),
    ("extends: {parent}\nsave: {{steps: many}}\n", "save.steps must be int, got 'many'"),
    ("run_dir: x\n", "missing key model"),
    ("extends: nowhere.yaml\n", "extends nowhere.yaml, which does not exist"),
    ("extends: {parent}\nstages:\n  prealign: {{epochs: -3}}\n", "stages.prealign.epochs must be a finite number > 0, got -3"),
    ("extends: {parent}\nstages:\n  pretrain: {{epochs: 0}}\n", "stages.pretrain.epochs must be a finite number > 0, got 0"),
    ("extends: {parent}\nstages:\n  finetune: {{learning_rate: .nan}}\n",
     "stages.finetune.learning_rate must be a finite number >= 0, got nan"),
    ("extends: {parent}\nstages:\n  finetune: {{visual_learning_rate: .inf}}\n",
     "stages.finetune.visual_learning_rate must be a finite number >= 0, got inf"),
    ("extends: {parent}\nstages:\n  prealign: {{warmup_ratio: 1.5}}\n",
     "stages.prealign.warmup_ratio must be a finite number in [0, 1], got 1.5"),
    ("extends: {parent}\nstages:\n  prealign: {{global_batch_size: 0}}\n",
     "stages.prealign.global_batch_size must be an integer >= 1, got 0"),
    ("extends: {parent}\nstages:\n  prealign: {{per_device_batch_size: -2}}\n",
     "stages.prealign.per_device_batch_size must be an integer >= 1, got -2"),
    ("extends: {parent}\nstages:\n  prealign: {{max_steps: 0}}\n",
     "stages.prealign.max_steps must be -1 or an integer >= 1, got 0"),
    ("extends: {parent}\ntraining: {{weight_decay: -0.1}}\n", "training.weight_decay must be a finite number >= 0"),
    ("extends: {parent}\ntraining: {{max_grad_norm: .nan}}\n", "training.max_grad_norm must be a finite number >= 0"),
    ("extends: {parent}\ntraining: {{seed: -1}}\n", "training.seed must be an integer in [0, 4.29497e+09], got -1"),
    ("extends: {parent}\ndata: {{max_length: 0}}\n", "data.max_length must be an integer >= 1, got 0"),
    ("extends: {parent}\nsave: {{steps: 0}}\n", "save.steps must be an integer >= 1, got 0"),
    ("extends: {parent}\nsave: {{total_limit: 0}}\n", "save.total_limit must be an integer >= 1, got 0"),
    ("extends: {parent}\nruntime: {{num_workers: -1}}\n", "runtime.num_workers must be an integer >= 0, got -1"),
    ("extends: {parent}\nruntime: {{logging_steps: 0}}\n", "runtime.logging_steps must be an integer >= 1, got 0"),
    ("extends: {parent}\nlora: {{rank: 0}}\n", "lora.rank must be an integer >= 1, got 0"),
    ("extends: {parent}\nlora: {{dropout: 1.0}}\n", "lora.dropout must be a finite number in [0, 1), got 1.0"),
    ("extends: {parent}\nmodel: {{stab: {{num_heads: 0}}}}\n", "model.stab.num_heads must be an integer >= 1, got 0"),
    ("extends: {parent}\nmodel: {{stab: {{dropout: .nan}}}}\n",
     "model.stab.dropout must be a finite number in [0, 1), got nan"),
    ("extends: {parent}\nmodel: {{config: {{num_frames: -8}}}}\n",
     "model.config.num_frames must be an integer >= 1, got -8"),
    ("extends: {parent}\nmodel: {{config: {{image_size: 112.5}}}}\n",
     "model.config.image_size must be an integer >= 1, got 112.5"),
])
def test_a_bad_file_is_one_line_naming_the_file_and_the_key(tmp_path, text, message):
    path = _write(tmp_path / "bad.yaml", text.format(parent=REPO / "configs" / "experiments" / "videopanda-7b.yaml"))
    with pytest.raises(ExperimentError) as error:
        resolve_experiment(path)
    assert str(path) in str(error.value) and message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("shape, message", [
    ("{not json", "cannot be read as JSON"),
    ("[128]", "holds a JSON array, not a JSON object"),
    ('{"stab": 3}', "its stab is not a JSON object"),
    ('{"num_frames": 0}', "num_frames must be an integer >= 1, got 0"),
    ('{"stab": {"width": -64}}', "stab.width must be an integer >= 1, got -64"),
])
def test_a_bad_model_shape_file_is_one_line_naming_it(tmp_path, shape, message):
    shape_path = _write(tmp_path / "shape.json", shape)
    path = _write(tmp_path / "mine.yaml", f"extends: {REPO / 'configs/experiments/quickstart.yaml'}\n"
                                          "model: {shape: shape.json}\n")
    with pytest.raises(ExperimentError) as error:
        resolve_experiment(path)
    text = str(error.value)
    assert str(path) in text and f"model.shape {shape_path}" in text and message in text and "\n" not in text


def test_an_override_out_of_range_is_one_line_naming_the_key(tmp_path):
    for override, message in [("stages.finetune.learning_rate=nan", "learning_rate must be a finite number >= 0, got 'nan'"),
                              ("stages.prealign.epochs=-3", "stages.prealign.epochs must be a finite number > 0, got -3")]:
        with pytest.raises(ExperimentError) as error:
            resolve_experiment("quickstart", [override])
        assert "quickstart.yaml with overrides: " in str(error.value) and message in str(error.value)
    edges = resolve_experiment("quickstart", ["model.stab.lste_hidden=null", "stages.prealign.warmup_ratio=1",
                                              "stages.prealign.max_steps=-1", "training.max_grad_norm=0"])
    assert edges.experiment.stage("prealign").warmup_ratio == 1.0 and edges.experiment.training.max_grad_norm == 0


@pytest.mark.parametrize("stage_settings, check_only, message", [
    ("{learning_rate: .nan}", True, "stages.prealign.learning_rate must be a finite number >= 0, got nan"),
    ("{epochs: -3}", False, "stages.prealign.epochs must be a finite number > 0, got -3"),
])
def test_train_refuses_a_number_out_of_range_before_writing_anything(tmp_path, trainkit, stage_settings, check_only,
                                                                      message):
    path = _write(tmp_path / "bad.yaml", f"extends: {REPO / 'configs/experiments/quickstart.yaml'}\n"
                                         f"run_dir: {tmp_path / 'runs'}\nstages:\n  prealign: {stage_settings}\n")
    done = subprocess.run([trainkit.python, "-m", "videopanda", "train", "--experiment", str(path), "--stage",
                           "prealign", *(["--check-only"] if check_only else [])], cwd=tmp_path, env=trainkit.env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and f"{path}: {message}" in done.stderr
    assert not (tmp_path / "runs").exists()


def _billion_laughs(indent: str) -> str:
    """Nine nested YAML aliases: 9**9 file names in under 1 KB once expanded."""
    lines = [f"{indent}- &a [{', '.join(['a.json'] * 9)}]\n"]
    lines += [f"{indent}- &{name} [{', '.join([f'*{prev}'] * 9)}]\n" for prev, name in zip("abcdefgh", "bcdefghi")]
    return "".join(lines)


def test_a_file_with_yaml_aliases_is_refused_at_once(tmp_path, trainkit):
    path = _write(tmp_path / "laughs.yaml", f"extends: {REPO / 'configs/experiments/quickstart.yaml'}\n"
                                            f"stages:\n  prealign:\n    data_json:\n{_billion_laughs('      ')}")
    assert len(path.read_bytes()) < 1024
    done = subprocess.run([trainkit.python, "-m", "videopanda", "train", "--experiment", str(path), "--stage",
                           "prealign", "--check-only", "training.seed=1"], cwd=tmp_path, env=trainkit.env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{path}: YAML alias *a on line 6: aliases are not allowed" in lines[0], done.stderr
    with pytest.raises(ExperimentError, match=r"override 'model.stab=\[&x 1, \*x\]': YAML alias \*x on line 1"):
        resolve_experiment("quickstart", ["model.stab=[&x 1, *x]"])


def test_a_file_that_is_not_utf8_is_one_line_naming_it(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ExperimentError) as error:
        resolve_experiment(path)
    assert str(error.value) == f"{path}: not UTF-8 text (invalid continuation byte at byte 9)"


def test_overrides_and_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    child = _write(tmp_path / "mine.yaml", f"extends: {REPO / 'configs/experiments/quickstart.yaml'}\n"
                                           "name: my-run\ntraining: {deepspeed: ds.json}\n")
    resolved = resolve_experiment(child, ["stages.finetune.learning_rate=1e-5", "model.stab.use_fsra=false"])
    exp = resolved.experiment
    assert exp.name == "my-run" and exp.run_dir == str(tmp_path / "outputs" / "my-run-seed0")
    assert exp.stages.finetune.learning_rate == 1e-5 and exp.switches()["use_fsra"] is False
    assert exp.training.deepspeed == str(tmp_path / "ds.json")  # relative to the file that says it
    assert exp.model.shape == str(REPO / "configs" / "model" / "tiny.json")
    assert exp.stage_init("pretrain") == Path(exp.run_dir) / "prealign"
    with pytest.raises(ExperimentError, match=r"override 'stages\.finetune\.lr=1': unknown key stages\.finetune\.lr"):
        resolve_experiment(child, ["stages.finetune.lr=1"])



def test_the_frame_cache_is_a_runtime_path_that_does_not_make_another_experiment(tmp_path, monkeypatch):
    from videopanda.train.experiment import check_stage_folder, write_record

    monkeypatch.chdir(tmp_path)
    assert resolve_experiment("videopanda-7b").experiment.runtime.frame_cache is None
    assert resolve_experiment("quickstart").experiment.runtime.frame_cache is None
    cached = resolve_experiment("quickstart", ["runtime.frame_cache=frames"])
    assert cached.experiment.runtime.frame_cache == str(tmp_path / "frames")
    elsewhere = resolve_experiment("quickstart", ["runtime.frame_cache=other/frames"])
    assert elsewhere.experiment.runtime.frame_cache == str(tmp_path / "other" / "frames")
    write_record(cached, tmp_path / "finetune")
    for other in (resolve_experiment("quickstart"), elsewhere):
        check_stage_folder(other, "finetune", tmp_path / "finetune", holds_outputs=True)
    with pytest.raises(ExperimentError, match="data.max_length: 4096 -> 2048"):
        check_stage_folder(resolve_experiment("quickstart", ["data.max_length=2048"]), "finetune",
                           tmp_path / "finetune", holds_outputs=True)


@pytest.mark.parametrize("kind", ["cosine", "mse"])
def test_distillation_loss_kinds(kind):
    from videopanda.train.distillation import distillation_loss

    torch.manual_seed(0)
    student, teacher = torch.randn(4, 8), torch.randn(1, 4, 8)
    valid = torch.ones(1, 2, 2, dtype=torch.bool)
    loss = distillation_loss([student], [(2, 2)], teacher, valid, kind=kind)
    if kind == "cosine":
        expected = 1 - torch.nn.functional.cosine_similarity(student, teacher[0], dim=-1).mean()
    else:
        expected = ((student - teacher[0]) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert distillation_loss([teacher[0].clone()], [(2, 2)], teacher, valid, kind=kind).item() == pytest.approx(0, abs=1e-6)


# ---- run folders -----------------------------------------------------------------------------------------


def _tiny_experiment(folder: Path, parent: str, llama_dir, teacher_dir, data_root, deepspeed: bool = False) -> Path:
    """An experiment file on tiny shapes extending a shipped one (the recipe or one of its ablations); without
    DeepSpeed unless `deepspeed` (then it inherits the shipped ZeRO-2 config)."""
    shape = _write(folder / "tiny-shape.json", json.dumps({
        "num_frames": 4, "frames_per_chunk": 4, "image_size": 112, "teacher_image_size": 56,
        "stab": {"width": 32, "num_heads": 4, "padding_window": 8}}))
    stage = "{global_batch_size: 4, per_device_batch_size: 2, max_steps: 1, first_half: false}"
    return _write(folder / f"tiny-{parent.rsplit('/', 1)[-1]}.yaml", f"""\
extends: {REPO / 'configs' / 'experiments' / parent}.yaml
run_dir: {folder / 'runs' / '{name}'}
model: {{base: {llama_dir}, init: llama, teacher: {teacher_dir}, shape: {shape}}}
data: {{root: {data_root}}}
training: {{{'' if deepspeed else 'deepspeed: null, '}gradient_checkpointing: false}}
save: {{steps: 100}}
runtime: {{device: cpu, num_workers: 0, report_to: none}}
stages: {{prealign: {stage}, pretrain: {stage}, finetune: {stage}}}
""")


def _launch(stage: str, experiment: Path, trainkit, *extra: str) -> subprocess.CompletedProcess:
    env = {**trainkit.env(), "PYTHON": trainkit.python, "EXPERIMENT": str(experiment), "GPUS_PER_NODE": "2",
           "MASTER_PORT": str(trainkit.free_port())}
    for name in ("MODEL", "OUTPUT_DIR", "TEACHER", "DEEPSPEED_CONFIG", "DATA_ROOT"):
        env.pop(name, None)
    return subprocess.run(["bash", "scripts/videopanda/" + stage + ".sh", *extra], cwd=trainkit.repo, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory, llama_dir, teacher_dir, data_root, trainkit):
    """The no-LSTE ablation on tiny shapes through the three stage launchers, one command each."""
    folder = tmp_path_factory.mktemp("experiments")
    experiment = _tiny_experiment(folder, "videopanda-7b/no-lste", llama_dir, teacher_dir, data_root)
    for stage in ("prealign", "pretrain", "finetune"):
        done = _launch(stage, experiment, trainkit, f"runtime.frame_cache={folder / 'frames'}")
        assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return folder, experiment


@pytest.mark.slow
def test_an_ablation_trains_through_all_stages_and_its_model_says_so(ablation_run):
    from videopanda.eval.qa import ModelAnswererConfig, expected_fingerprint

    folder, experiment = ablation_run
    run = folder / "runs" / "tiny-no-lste"
    for stage in ("prealign", "pretrain", "finetune"):
        assert (run / stage / "training_complete.json").is_file(), stage
        record = read_record(run / stage)
        assert record["name"] == "tiny-no-lste" and record["file"] == str(experiment)
        assert record["switches"]["use_lste"] is False and record["experiment"]["model"]["stab"]["use_lste"] is False
    config = json.loads((run / "finetune" / "config.json").read_text())
    assert config["stab"]["use_lste"] is False and config["stab"]["use_gstra"] is True
    stored = list((folder / "frames").rglob("*.npy"))  # the stages read their videos through the frame cache
    assert stored and all(np.load(p).dtype == np.uint8 for p in stored)
    fingerprint = expected_fingerprint(ModelAnswererConfig(model=str(run / "finetune"), device="cpu"))
    assert fingerprint["model"]["experiment"] == "tiny-no-lste"
    assert fingerprint["model"]["switches"] == {"use_row_tokens": True, "use_fsra": True, "lsd_mode": "attention",
                                                "use_lste": False, "use_gstra": True, "distillation": "cosine"}


@pytest.mark.slow
def test_a_stage_folder_of_another_experiment_is_refused(ablation_run, llama_dir, teacher_dir, data_root, trainkit):
    folder, _ = ablation_run
    full = _tiny_experiment(folder, "videopanda-7b", llama_dir, teacher_dir, data_root)
    ablation_run_dir = folder / "runs" / "tiny-no-lste"
    before = (ablation_run_dir / "prealign" / "experiment.json").read_text()
    done = _launch("prealign", full, trainkit, f"run_dir={ablation_run_dir}")
    assert done.returncode == 2
    assert (f"{ablation_run_dir / 'prealign'} holds stage prealign of experiment 'tiny-no-lste' with other settings "
            "than 'tiny-videopanda-7b' (stored -> now): model.stab.use_lste: false -> (absent)") in done.stderr
    assert (ablation_run_dir / "prealign" / "experiment.json").read_text() == before
    assert "frame_cache" not in done.stderr  # the run stored one, this one has none: not a difference
    # a fresh output folder, but starting from the ablation's weights: the model's settings differ
    from videopanda.train.cli import main

    handler = logging.Handler()
    messages = []
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger("videopanda").addHandler(handler)
    try:
        status = main(["--experiment", str(full), "--stage", "pretrain", "--check-only",
                       f"stages.pretrain.init={ablation_run_dir / 'prealign'}", f"run_dir={folder / 'fresh'}"])
    finally:
        logging.getLogger("videopanda").removeHandler(handler)
    assert status == 2
    assert any("was made with other model settings than tiny-videopanda-7b: stab.use_lste: False (folder) != True "
               "(experiment)" in m for m in messages), messages
    assert not os.path.exists(folder / "fresh")


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe", "cannot be read as JSON"),
    (b"{bad", "cannot be read as JSON"),
    (b"[1]", "holds a JSON array, not a JSON object"),
    (b"{}", "not an experiment record"),
])
def test_an_unreadable_stage_record_is_one_line_naming_it(tmp_path, content, message):
    path = tmp_path / "experiment.json"
    path.write_bytes(content)
    with pytest.raises(ExperimentError) as error:
        read_record(tmp_path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value) and "\n" not in str(error.value)
    assert path.read_bytes() == content


# ---- one process ---------------------------------------------------------------------------------------


def _train_in_one_process(trainkit, *args: str) -> subprocess.CompletedProcess:
    """`videopanda train ...` as one plain process: no torchrun, none of its variables."""
    env = trainkit.env()
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return subprocess.run([trainkit.python, "-m", "videopanda", "train", *args], cwd=trainkit.repo, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_a_shipped_experiment_trains_in_one_process_under_its_deepspeed_config(tmp_path, llama_dir, teacher_dir,
                                                                              data_root, trainkit):
    """The README's `videopanda train --experiment ... --stage ...` (ZeRO-2 inherited from the recipe) and the
    LoRA finetune of docs/lora.md on top of its output, each a world of one."""
    from videopanda.train.checkpointing import latest_complete_checkpoint

    experiment = _tiny_experiment(tmp_path, "videopanda-7b/lora", llama_dir, teacher_dir, data_root, deepspeed=True)
    assert resolve_experiment(experiment).experiment.training.deepspeed == str(REPO / "configs/deepspeed/zero2.json")
    run = tmp_path / "runs" / "tiny-lora"
    steps = ["stages.prealign.max_steps=2", "stages.finetune.max_steps=2", "save.steps=1", "lora.rank=4",
             "lora.alpha=8"]
    prealign = _train_in_one_process(trainkit, "--experiment", str(experiment), "--stage", "prealign", *steps)
    assert prealign.returncode == 0, (prealign.stdout + prealign.stderr)[-6000:]
    finetune = _train_in_one_process(trainkit, "--experiment", str(experiment), "--stage", "finetune", *steps,
                                     f"stages.finetune.init={run / 'prealign'}")
    assert finetune.returncode == 0, (finetune.stdout + finetune.stderr)[-6000:]
    for stage in ("prealign", "finetune"):
        finished = json.loads((run / stage / "training_complete.json").read_text())
        assert finished["global_step"] == 2 and finished["world_size"] == 1
        assert finished["timing"]["steps"] == 2 and finished["timing"]["train_runtime_s"] > 0
        assert latest_complete_checkpoint(run / stage).name == "checkpoint-2"
    assert (run / "finetune" / "adapter_model.safetensors").is_file()


def test_a_stage_folder_holding_only_its_record_does_not_block_a_retry(tmp_path, llama_dir, teacher_dir, data_root,
                                                                       trainkit):
    """A run that stopped before its first checkpoint leaves its experiment.json alone: a retry with other settings
    trains there; once that retry has outputs, a third setting is refused."""
    from videopanda.train.experiment import write_record

    experiment = _tiny_experiment(tmp_path, "videopanda-7b", llama_dir, teacher_dir, data_root)
    folder = tmp_path / "runs" / "tiny-videopanda-7b" / "prealign"
    write_record(resolve_experiment(experiment, ["training.seed=7"]), folder)
    retry = _train_in_one_process(trainkit, "--experiment", str(experiment), "--stage", "prealign", "training.seed=8")
    assert retry.returncode == 0, (retry.stdout + retry.stderr)[-6000:]
    assert (folder / "training_complete.json").is_file()
    assert read_record(folder)["experiment"]["training"]["seed"] == 8
    other = _train_in_one_process(trainkit, "--experiment", str(experiment), "--stage", "prealign", "training.seed=9",
                                  "--check-only")
    assert other.returncode == 2 and "training.seed: 8 -> 9" in other.stderr, other.stderr


# ---- each file read once ---------------------------------------------------------------------------------

COUNT_OPENS = """
import collections, json, os, sys
watched = {os.path.realpath(p) for p in json.loads(sys.argv[1])}
opened = collections.Counter()
def count(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.path.realpath(os.fsdecode(args[0]))
        if path in watched:
            opened[path] += 1
sys.addaudithook(count)
from videopanda.train.cli import main
status = main(sys.argv[2:])
sys.stdout.write(json.dumps({"status": status, "opened": opened}) + "\\n")
sys.stdout.flush()
os._exit(0)
"""


def _count_opens(trainkit, files: list[Path], *command: str) -> dict[str, int]:
    """How often `videopanda train COMMAND` (one plain process) opens each of `files` (any that it opens)."""
    env = trainkit.env()
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run([trainkit.python, "-c", COUNT_OPENS, json.dumps([str(f) for f in files]), *command],
                          cwd=trainkit.repo, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-6000:]
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["status"] == 0, done.stderr[-6000:]
    return result["opened"]


def test_a_stage_reads_each_file_of_its_experiment_once(tmp_path, llama_dir, teacher_dir, data_root, trainkit):
    """`videopanda train` opens the experiment file and the files it extends, the model-shape JSON, the DeepSpeed
    JSON and the starting folder's config.json once each (counted by an audit hook on `open`): a check, a
    one-step prealign from a Llama folder and a one-step pretrain from its output, under the shipped ZeRO-2."""
    experiment = _tiny_experiment(tmp_path, "videopanda-7b/no-lste", llama_dir, teacher_dir, data_root,
                                  deepspeed=True)
    settings = [experiment, REPO / "configs/experiments/videopanda-7b/no-lste.yaml",
                REPO / "configs/experiments/videopanda-7b.yaml", tmp_path / "tiny-shape.json",
                REPO / "configs/deepspeed/zero2.json"]
    prealign = tmp_path / "runs" / "tiny-no-lste" / "prealign"
    for stage, starting_folder, extra in (("prealign", llama_dir, ["--check-only"]), ("prealign", llama_dir, []),
                                          ("pretrain", prealign, [])):
        files = [*settings, starting_folder / "config.json"]
        opened = _count_opens(trainkit, files, "--experiment", str(experiment), "--stage", stage, *extra)
        assert opened == {os.path.realpath(f): 1 for f in files}, (stage, extra, opened)
    assert (tmp_path / "runs" / "tiny-no-lste" / "pretrain" / "training_complete.json").is_file()
