"""Arguments, batch derivation, preflight errors and checkpoint bookkeeping (in-process, no training)."""
import json
import logging
import re

import pytest
import torch.distributed as dist

from helpers.full_disk import full_disk
from videopanda.train.args import derive_batch, parse_train_args
from videopanda.train.checkpointing import (COMPLETE_MARKER, discard_incomplete, latest_complete_checkpoint,
                                            mark_complete, prune_checkpoints)
from videopanda.train.cli import main


def test_the_recipe_experiment_fills_every_stage():
    prealign = parse_train_args(["--stage", "prealign", "--model", "m", "--output-dir", "o"])
    assert (prealign.learning_rate, prealign.visual_learning_rate, prealign.warmup_ratio) == (4e-5, 4e-4, 0.03)
    assert prealign.global_batch_size == 2048 and prealign.first_half and prealign.data_json == ["valley_.json"]
    finetune = parse_train_args(["--stage", "finetune", "--model", "m", "--output-dir", "o", "--learning-rate", "1e-5"])
    assert (finetune.learning_rate, finetune.visual_learning_rate, finetune.warmup_ratio) == (1e-5, 1e-5, 0.01)
    assert finetune.global_batch_size == 1024 and not finetune.first_half
    assert finetune.data_json == ["videochatgpt_tune_.json"]
    assert finetune.experiment.overrides[0] == f"stages.finetune.init={'m'}"
    assert parse_train_args(["--stage", "pretrain", "--model", "m", "--output-dir", "o", "--stab", "width=64",
                             "use_lste=false"]).stab_overrides() == {"width": 64, "use_lste": False}


def test_global_batch_is_split_exactly():
    plan = derive_batch(2048, 64, 4)
    assert (plan.per_device_batch_size, plan.gradient_accumulation_steps) == (4, 8)
    plan = derive_batch(12, 2, 4)
    assert plan.per_device_batch_size * plan.world_size * plan.gradient_accumulation_steps == 12
    assert plan.per_device_batch_size == 3
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        derive_batch(8, 3, 4)


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def vp_log():
    """Messages of the `videopanda` loggers (they do not propagate to pytest's caplog)."""
    handler = _Records()
    logging.getLogger("videopanda").addHandler(handler)
    yield handler.messages
    logging.getLogger("videopanda").removeHandler(handler)


@pytest.fixture
def base_args(llama_dir, teacher_dir, data_root, tmp_path):
    return ["--stage", "prealign", "--model", str(llama_dir), "--teacher", str(teacher_dir), "--data-root",
            str(data_root), "--output-dir", str(tmp_path / "out"), "--global-batch-size", "4", "--check-only"]


@pytest.mark.parametrize("change, message", [
    (lambda a, p: a + ["--data-root", str(p / "nowhere")], "DATA_ROOT .*nowhere does not exist"),
    (lambda a, p: a + ["--data-json", "missing_.json"], "training JSON .*missing_.json does not exist"),
    (lambda a, p: a + ["--video-folder", str(p)], "none of the first .* videos .* exists under"),
    (lambda a, p: a + ["--teacher", str(p / "no_teacher")], "teacher folder .*no_teacher does not exist"),
    (lambda a, p: a + ["--model", str(p)], "model folder .* has no config.json"),
    (lambda a, p: a + ["--deepspeed", str(p / "ds.json")], "DeepSpeed config .*ds.json does not exist"),
])
def test_bad_inputs_are_reported_before_any_process_group(base_args, tmp_path, vp_log, change, message):
    assert main(change(base_args, tmp_path)) == 2
    assert any(re.search(message, m) for m in vp_log), vp_log
    assert not (dist.is_available() and dist.is_initialized())


def test_a_full_output_disk_is_reported_before_any_process_group(base_args, tmp_path, vp_log):
    with full_disk(tmp_path / "full", size_kb=64, fill=True) as full:
        assert main(base_args + ["--output-dir", str(full / "out")]) == 2
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
