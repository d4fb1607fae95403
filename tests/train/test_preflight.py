"""What `videopanda train` refuses before it writes anything: broken or wrong starting folders, output folders that
overlap what the stage reads or hold another stage, checkpoints of another experiment, stage, base or world size, and
settings the model cannot take. Real folders made by real (tiny) runs; each refusal is one line, exit status 2."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from videopanda.train.cli import main

LORA = ["lora.enabled=true", "lora.rank=4", "lora.alpha=8", "lora.dropout=0.1"]
TWO_STEPS = ["stages.{stage}.max_steps=2", "save.steps=1", "save.total_limit=2"]


def train(trainkit, args: list[str]) -> None:
    """One `videopanda train` process that must finish."""
    done = subprocess.run([trainkit.python, "-m", "videopanda.train", *args], env=trainkit.env(), cwd=trainkit.repo,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_args, trainkit, llama_dir):
    """A finished prealign (Video-Panda folder) of two steps from the tiny Llama, with a checkpoint after each."""
    output = tmp_path_factory.mktemp("base") / "prealign"
    train(trainkit, tiny_args("prealign", llama_dir, output, *TWO_STEPS))
    return output


def copy_model(folder: Path, where: Path) -> Path:
    """The model files of `folder` (no checkpoints) in a new folder `where`."""
    shutil.copytree(folder, where, ignore=shutil.ignore_patterns("checkpoint-*"))
    return where


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, base, tiny_args, trainkit):
    """A finished two-step LoRA finetune (an adapter folder, a checkpoint after each step) on its own copy of `base`."""
    folder = tmp_path_factory.mktemp("lora")
    own_base = copy_model(base, folder / "base")
    output = folder / "finetune"
    train(trainkit, tiny_args("finetune", own_base, output, *TWO_STEPS, *LORA))
    return own_base, output


def refused(args: list[str], vp_log: list[str]) -> str:
    """The one line `videopanda train ARGS` (in this process) stops with, exit status 2."""
    assert main(args) == 2, vp_log[-3:]
    assert "\n" not in vp_log[-1]
    return vp_log[-1]


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- broken starting folders (defects 1, 2) -------------------------------------------------------------------


def _truncate(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _config(change):
    def apply(folder: Path) -> None:
        path = folder / "config.json"
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    return apply


def _drop_tensor(folder: Path) -> None:
    weights = folder / "model.safetensors"
    tensors = load_file(weights)
    tensors.pop("model.layers.0.self_attn.q_proj.weight")
    save_file(tensors, weights, metadata={"format": "pt"})


BROKEN = {
    "truncated": (_truncate, "{folder}/model.safetensors cannot be read: "),
    "hidden_size_text": (_config(lambda c: {**c, "hidden_size": "64"}),
                         "{folder}/config.json: Field 'hidden_size' expected int, got str (value: '64')"),
    "config_a_list": (_config(lambda c: [1]), "{folder}/config.json: "),
    "tensor_missing": (_drop_tensor, "{folder}/model.safetensors: 1 of the model's tensors are not in its weight files "
                                     "(model.layers.0.self_attn.q_proj.weight)"),
}


@pytest.mark.parametrize("start", ["videopanda", "llama"])
@pytest.mark.parametrize("broken", list(BROKEN))
def test_a_broken_starting_folder_is_one_line_naming_its_file(base, llama_dir, tiny_args, tmp_path, vp_log, start,
                                                               broken):
    """A Video-Panda folder (pretrain) and a Llama folder (prealign): read by the model-folder reader, or for the
    Llama the same checks, before the output folder exists."""
    stage, source = ("pretrain", base) if start == "videopanda" else ("prealign", llama_dir)
    folder = copy_model(source, tmp_path / "start")
    damage, message = BROKEN[broken]
    damage(folder)
    line = refused(tiny_args(stage, folder, tmp_path / "out", "--check-only"), vp_log)
    assert line.startswith(message.format(folder=folder)), line
    assert not (tmp_path / "out").exists()


def test_a_missing_tensor_stops_the_run_before_it_writes_anything(base, tiny_args, tmp_path, vp_log):
    """Not only the check: the training command itself refuses, and no stage folder (no experiment.json) appears."""
    folder = copy_model(base, tmp_path / "start")
    _drop_tensor(folder)
    line = refused(tiny_args("pretrain", folder, tmp_path / "out", "stages.{stage}.max_steps=1"), vp_log)
    assert "are not in its weight files" in line and not (tmp_path / "out").exists()


def test_an_adapter_folder_as_starting_folder_points_to_merge_lora(lora_run, tiny_args, tmp_path, vp_log):
    _, adapter = lora_run
    line = refused(tiny_args("finetune", adapter, tmp_path / "out", "--check-only"), vp_log)
    assert line == (f"model folder {adapter} is a LoRA adapter folder (videopanda_adapter.json), not a full model "
                    f"folder to start from: write one with `videopanda merge-lora {adapter} OUT` and start from OUT")
    assert not (tmp_path / "out").exists()


# ---- output folders (defect 5) ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where, relation", [("same", "is"), ("inside", "is inside"), ("around", "holds")])
def test_an_output_folder_overlapping_the_starting_folder_is_refused(llama_dir, tiny_args, tmp_path, vp_log, where,
                                                                      relation):
    start = copy_model(llama_dir, tmp_path / "llama")
    output = {"same": start, "inside": start / "out", "around": tmp_path}[where]
    before = contents(tmp_path)
    line = refused(tiny_args("prealign", start, output, "stages.{stage}.max_steps=1"), vp_log)
    assert line.startswith(f"output folder {output} {relation} the starting folder {start}: "), line
    assert contents(tmp_path) == before


def test_a_folder_finished_by_another_stage_is_not_this_stage_finished(base, tiny_args, tmp_path, vp_log):
    """A pretrain whose output folder holds a finished prealign is refused (it used to say "nothing to do"), and
    the folder is left as it was, its record included."""
    output = copy_model(base, tmp_path / "run")
    before = contents(output)
    line = refused(tiny_args("pretrain", base, output, "stages.{stage}.max_steps=1"), vp_log)
    assert line == (f"output folder {output} holds a finished prealign stage (training_complete.json), not pretrain: "
                    f"use another output folder (stages.pretrain.output_dir=...)")
    assert contents(output) == before


def test_checkpoints_of_another_stage_are_not_resumed(base, tiny_args, tmp_path, vp_log):
    """A stage folder's record names its stage: a pretrain never resumes prealign's checkpoints."""
    output = tmp_path / "run"
    shutil.copytree(base, output)
    (output / "training_complete.json").unlink()  # prealign stopped after its checkpoints
    line = refused(tiny_args("pretrain", base, output, "--check-only"), vp_log)
    assert line.startswith(f"{output} holds stage prealign of experiment 'videopanda-7b', not stage pretrain"), line


# ---- resuming (defects 3, 4, 6) ---------------------------------------------------------------------------------


def test_resume_path_of_another_experiment_or_stage_is_refused(base, llama_dir, tiny_args, tmp_path, vp_log):
    checkpoint = base / "checkpoint-1"
    same = tiny_args("prealign", llama_dir, tmp_path / "same", *TWO_STEPS, "--check-only", "--resume", str(checkpoint))
    assert main(same) == 0 and f"resume {checkpoint}" in vp_log[-1], vp_log[-3:]
    other = tiny_args("prealign", llama_dir, tmp_path / "other", *TWO_STEPS, "distillation.loss=mse",
                      "--resume", str(checkpoint))
    line = refused(other, vp_log)
    assert line.startswith(f"--resume {checkpoint}: {base} holds stage prealign of experiment 'videopanda-7b' with "
                           f"other settings than 'videopanda-7b' (stored -> now): distillation.loss: \"cosine\" -> "
                           f"\"mse\""), line
    stage = tiny_args("pretrain", base, tmp_path / "stage", *TWO_STEPS, "--resume", str(checkpoint))
    assert refused(stage, vp_log).startswith(f"--resume {checkpoint}: {base} holds stage prealign")
    assert not any((tmp_path / name).exists() for name in ("other", "stage"))


def test_a_lora_run_whose_base_changed_does_not_resume(lora_run, tiny_args, tmp_path, vp_log):
    own_base, output = lora_run
    args = tiny_args("finetune", own_base, output, *TWO_STEPS, *LORA)
    assert main(args + ["--check-only"]) == 0, vp_log[-3:]
    record = json.loads((output / "checkpoint-2" / "videopanda_adapter.json").read_text())
    weights = own_base / "model.safetensors"
    tensors = load_file(weights)
    tensors["model.layers.0.self_attn.q_proj.weight"] += 0.25
    save_file(tensors, weights, metadata={"format": "pt"})
    before = contents(output)
    line = refused(args, vp_log)
    assert line.startswith(f"{output / 'checkpoint-2'}: its adapters were trained on a base of identity "
                           f"{record['base_identity']} (videopanda_adapter.json), but the starting folder {own_base} "
                           f"now has identity "), line
    assert contents(output) == before


def test_a_deepspeed_checkpoint_of_another_world_size_is_refused(tiny_args, llama_dir, tmp_path, trainkit, vp_log,
                                                                 monkeypatch):
    """ZeRO-2 splits the optimizer states by process: a checkpoint written by one process (a world of one under the
    shipped ZeRO-2 config) is refused by a run of two, before any process group or model."""
    output = tmp_path / "zero2"
    zero2 = trainkit.repo / "configs" / "deepspeed" / "zero2.json"
    args = tiny_args("prealign", llama_dir, output, *TWO_STEPS, f"training.deepspeed={zero2}")
    env = trainkit.env()
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    done = subprocess.run([trainkit.python, "-m", "videopanda.train", *args], env=env, cwd=trainkit.repo,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    checkpoint = output / "checkpoint-1"  # not the last step: resuming it trains with DeepSpeed's states
    resume = args + ["--check-only", "--resume", str(checkpoint)]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(resume) == 0, vp_log[-3:]
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert refused(resume, vp_log) == (
        f"{checkpoint} was written by 1 process(es), and this run has 2: its DeepSpeed (ZeRO-2) states are split by "
        f"process; resume it with 1 process(es), or start over in another output folder")


# ---- settings the model cannot take (defect 7) -----------------------------------------------------------------



@pytest.mark.parametrize("override, message", [
    ("model.stab.use_lste=maybe", "override 'model.stab.use_lste=maybe': model.stab.use_lste must be true or false, "
                                  "got 'maybe'"),
    ("model.config.num_frames=6", "model.config: num_frames 6 is not a multiple of frames_per_chunk 4"),
    ("model.config.image_size=100", "model.config: image_size 100 is not a multiple of teacher_image_size 56"),
    ("model.config.teacher_image_size=70", "model.config: image_size 112 is not a multiple of teacher_image_size 70"),
    ("model.config.teacher_image_size=28", "takes 56 px frames but the model's teacher_image_size is 28"),
    ("model.config.num_frames=12", "cannot take the model's 12-frame videos"),
    ("runtime.attn_implementation=bogus", "runtime.attn_implementation must be one of auto, sdpa, eager, "
                                          "flash_attention_2, got 'bogus'"),
    ("runtime.report_to=bogus", "runtime.report_to 'bogus': bogus is none of none, all, "),
    ("lora.target_modules=[nonexistent_proj]", "lora.target_modules[0] must be one of q_proj, k_proj, v_proj, o_proj, "
                                               "gate_proj, up_proj, down_proj, got 'nonexistent_proj'"),
    ("lora.target_modules=[lm_head]", "lora.target_modules[0] must be one of q_proj"),
    ("lora.target_modules=[]", "lora.target_modules must name at least one of q_proj"),
])
def test_a_setting_the_model_cannot_take_is_refused_before_anything_is_written(llama_dir, tiny_args, tmp_path, vp_log,
                                                                                override, message):
    """Each used to pass resolution and preflight, write the stage's experiment.json and crash with a traceback once
    the model, the teacher, peft or the HF Trainer met it."""
    args = tiny_args("prealign", llama_dir, tmp_path / "out", "stages.{stage}.max_steps=1", "lora.enabled=true",
                     override)
    assert message in refused(args, vp_log)
    assert not (tmp_path / "out").exists()


def test_a_shape_file_with_a_switch_that_is_not_a_bool_is_one_line_naming_it(llama_dir, tiny_args, tmp_path, vp_log):
    shape = tmp_path / "shape.json"
    shape.write_text(json.dumps({"num_frames": 4, "frames_per_chunk": 4, "image_size": 112, "teacher_image_size": 56,
                                 "stab": {"width": 32, "num_heads": 4, "padding_window": 8, "use_fsra": "false"}}))
    args = tiny_args("prealign", llama_dir, tmp_path / "out", "stages.{stage}.max_steps=1", f"model.shape={shape}")
    assert refused(args, vp_log).endswith(f"model.shape {shape}: stab.use_fsra must be true or false, got 'false'")
    assert not (tmp_path / "out").exists()
