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
])
def test_a_bad_model_shape_file_is_one_line_naming_it(tmp_path, shape, message):
    shape_path = _write(tmp_path / "shape.json", shape)
    path = _write(tmp_path / "mine.yaml", f"extends: {REPO / 'configs/experiments/quickstart.yaml'}\n"
                                          "model: {shape: shape.json}\n")
    with pytest.raises(ExperimentError) as error:
        resolve_experiment(path)
    text = str(error.value)
    assert str(path) in text and f"model.shape {shape_path}" in text and message in text and "\n" not in text


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
    from videopanda.train.args import parse_train_args
    from videopanda.train.experiment import check_stage_folder, write_record

    monkeypatch.chdir(tmp_path)
    assert resolve_experiment("videopanda-7b").experiment.runtime.frame_cache is None
    assert resolve_experiment("quickstart").experiment.runtime.frame_cache is None
    cached = resolve_experiment("quickstart", ["runtime.frame_cache=frames"])
    assert cached.experiment.runtime.frame_cache == str(tmp_path / "frames")
    args = parse_train_args(["--experiment", "quickstart", "--stage", "finetune", "--frame-cache", "other/frames"])
    assert args.frame_cache == str(tmp_path / "other" / "frames")
    assert parse_train_args(["--experiment", "quickstart", "--stage", "finetune"]).frame_cache is None
    write_record(cached, tmp_path / "finetune")
    for other in (resolve_experiment("quickstart"), args.experiment):
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


def _tiny_experiment(folder: Path, parent: str, llama_dir, teacher_dir, data_root) -> Path:
    """An experiment file on tiny shapes extending a shipped one (the recipe or one of its ablations)."""
    shape = _write(folder / "tiny-shape.json", json.dumps({
        "num_frames": 4, "frames_per_chunk": 4, "image_size": 112, "teacher_image_size": 56,
        "stab": {"width": 32, "num_heads": 4, "padding_window": 8}}))
    stage = "{global_batch_size: 4, per_device_batch_size: 2, max_steps: 1, first_half: false}"
    return _write(folder / f"tiny-{parent.rsplit('/', 1)[-1]}.yaml", f"""\
extends: {REPO / 'configs' / 'experiments' / parent}.yaml
run_dir: {folder / 'runs' / '{name}'}
model: {{base: {llama_dir}, init: llama, teacher: {teacher_dir}, shape: {shape}}}
data: {{root: {data_root}}}
training: {{deepspeed: null, gradient_checkpointing: false}}
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
