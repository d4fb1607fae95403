"""The command line and the recipe, batch derivation, preflight errors and checkpoint bookkeeping (in-process, no
training)."""
import json
import re

import pytest
import torch.distributed as dist

from helpers.full_disk import full_disk
from videopanda.train.arguments import derive_batch
from videopanda.train.checkpointing import (COMPLETE_MARKER, discard_incomplete, latest_complete_checkpoint,
                                            mark_complete, prune_checkpoints)
from videopanda.train.cli import main
from videopanda.train.experiment import resolve_experiment


def test_the_recipe_experiment_fills_every_stage():
    recipe = resolve_experiment("videopanda-7b", ["stages.finetune.learning_rate=1e-5", "stages.finetune.init=m"])
    experiment = recipe.experiment
    prealign, finetune = experiment.stage("prealign"), experiment.stage("finetune")
    assert (prealign.learning_rate, experiment.visual_learning_rate("prealign"), prealign.warmup_ratio) == \
        (4e-5, 4e-4, 0.03)
    assert prealign.global_batch_size == 2048 and prealign.first_half and prealign.data_json == ["valley_.json"]
    assert (finetune.learning_rate, experiment.visual_learning_rate("finetune"), finetune.warmup_ratio) == \
        (1e-5, 1e-5, 0.01)
    assert finetune.global_batch_size == 1024 and not finetune.first_half
    assert finetune.data_json == ["videochatgpt_tune_.json"]
    assert recipe.overrides[1] == "stages.finetune.init=m" and experiment.stage_init("finetune").name == "m"
    assert experiment.init_kind("prealign") == "auto" and experiment.init_kind("finetune") == "auto"
    stab = resolve_experiment("videopanda-7b", ["model.stab.width=64", "model.stab.use_lste=false"])
    assert stab.experiment.model.stab == {"width": 64, "use_lste": False}


def test_the_command_takes_only_the_experiment_its_stage_and_overrides(capsys):
    """Settings have no flags of their own: every setting is a `key.path=value` override."""
    with pytest.raises(SystemExit) as exit_status:
        main(["--stage", "prealign", "--global-batch-size", "8", "--check-only"])
    assert exit_status.value.code == 2 and "unrecognized arguments: --global-batch-size" in capsys.readouterr().err


def test_global_batch_is_split_exactly():
    plan = derive_batch(2048, 64, 4)
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps) == (4, 8)
    plan = derive_batch(12, 2, 4)
    assert plan.per_device_batch_size * plan.world_size * plan.gradient_accumulation_steps == 12
    assert plan.per_device_batch_size == 3
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        derive_batch(8, 3, 4)


@pytest.fixture
def base_args(llama_dir, teacher_dir, data_root, tmp_path):
    return ["--stage", "prealign", f"stages.prealign.init={llama_dir}", f"model.teacher={teacher_dir}",
            f"data.root={data_root}", f"stages.prealign.output_dir={tmp_path / 'out'}",
            "stages.prealign.global_batch_size=4", "model.config.image_size=112", "model.config.teacher_image_size=56",
            "--check-only"]  # frames of the tiny teacher's size: preflight refuses a teacher that cannot take them


@pytest.mark.parametrize("change, message", [
    (lambda a, p: a + [f"data.root={p / 'nowhere'}"], "DATA_ROOT .*nowhere does not exist"),
    (lambda a, p: a + ["stages.prealign.data_json=missing_.json"], "training JSON .*missing_.json does not exist"),
    (lambda a, p: a + [f"data.video_folder={p}"], "none of the first .* videos .* exists under"),
    (lambda a, p: a + [f"model.teacher={p / 'no_teacher'}"], "teacher folder .*no_teacher does not exist"),
    (lambda a, p: a + [f"stages.prealign.init={p}"], "model folder .* has no config.json"),
    (lambda a, p: a + [f"training.deepspeed={p / 'ds.json'}"], "DeepSpeed config .*ds.json does not exist"),
])
def test_bad_inputs_are_reported_before_any_process_group(base_args, tmp_path, vp_log, change, message):
    assert main(change(base_args, tmp_path)) == 2
    assert any(re.search(message, m) for m in vp_log), vp_log
    assert not (dist.is_available() and dist.is_initialized())


def test_a_full_output_disk_is_reported_before_any_process_group(base_args, tmp_path, vp_log):
    with full_disk(tmp_path / "full", size_kb=64, fill=True) as full:
        assert main(base_args + [f"stages.prealign.output_dir={full / 'out'}"]) == 2
    assert vp_log[-1] == f"output folder {full / 'out'}: no space left on device", vp_log


def test_check_only_passes_on_good_inputs(base_args, vp_log):
    assert main(base_args) == 0
    assert any("check passed: llama init, 12 samples (8 with video)" in m for m in vp_log), vp_log


def test_checkpoints_count_only_when_complete(tmp_path):
    for step in (2, 4, 6, 8):
        (tmp_path / f"checkpoint-{step}").mkdir()
    for step in (2, 4, 6):
        mark_complete(tmp_path / f"checkpoint-{step}", step, 2)
    (tmp_path / "checkpoint-6" / COMPLETE_MARKER).write_text(json.dumps({"global_step": 5}))  # wrong step: invalid
    assert latest_complete_checkpoint(tmp_path).name == "checkpoint-4"
    # checkpoint-8 was interrupted while saving; pruning keeps the newest complete one and everything newer.
    assert [p.name for p in prune_checkpoints(tmp_path, keep=1)] == ["checkpoint-2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6", "checkpoint-8"]
    assert sorted(p.name for p in discard_incomplete(tmp_path)) == ["checkpoint-6", "checkpoint-8"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint-4"]
