"""What a stage actually trains with: the `TrainingArguments` and DeepSpeed config it builds (gradient clipping as
DeepSpeed reads it, per-device batch, accumulation) and how accumulated micro-batches weigh the loss (real runs)."""
import json
import subprocess

import pytest


# Builds each stage's TrainingArguments as `videopanda train` does, for the batch plan of `devices` processes, and
# prints what the run would use; for each job [experiment, devices, overrides] of argv[1]. It runs in a process of
# its own (a world of one): the arguments set up a process group.
PROBE = """
import json, logging, sys
from deepspeed.runtime.config import get_gradient_clipping
from videopanda.log import setup_logging
from videopanda.train.arguments import derive_batch, training_arguments
from videopanda.train.experiment import resolve_experiment
setup_logging()
records = []
logging.getLogger("videopanda").addHandler(type("H", (logging.Handler,), {"emit": lambda s, r: records.append(r.getMessage())})())
results = []
for experiment, devices, overrides in json.loads(sys.argv[1]):
    out = {}
    for stage in ("prealign", "pretrain", "finetune"):
        settings = resolve_experiment(experiment, overrides).experiment
        plan = derive_batch(settings.stage(stage).global_batch_size, devices, settings.stage(stage).per_device_batch_size)
        training = training_arguments(settings, stage, plan, "cpu", False, settings.training.deepspeed)
        ds = training.hf_deepspeed_config.config
        out[stage] = {"max_grad_norm": training.max_grad_norm, "per_device": training.per_device_train_batch_size,
                      "accumulation": training.gradient_accumulation_steps, "ds_clipping": ds["gradient_clipping"],
                      "deepspeed_reads": get_gradient_clipping(ds), "ds_micro_batch": ds["train_micro_batch_size_per_gpu"],
                      "ds_accumulation": ds["gradient_accumulation_steps"], "log": records[-1]}
    results.append(out)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def probed(trainkit, tmp_path_factory) -> dict:
    """What each stage uses: the scripts experiment on the original's 64 devices, the recipe and its LoRA finetune
    and the quickstart, and the recipe with a DeepSpeed config that has no gradient_clipping key (`bare`)."""
    config = json.loads((trainkit.repo / "configs" / "deepspeed" / "zero2.json").read_text())
    del config["gradient_clipping"]
    bare = tmp_path_factory.mktemp("deepspeed") / "zero2_bare.json"
    bare.write_text(json.dumps(config))
    jobs = {"scripts": ["videopanda-7b-scripts", 64, []], "recipe": ["videopanda-7b", 8, []],
            "lora": ["videopanda-7b/lora", 8, []], "quickstart": ["quickstart", 2, []],
            "bare": ["videopanda-7b", 8, [f"training.deepspeed={bare}"]],
            "bare_0.5": ["videopanda-7b", 8, [f"training.deepspeed={bare}", "training.max_grad_norm=0.5"]]}
    env = {**trainkit.env(), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(trainkit.free_port())}
    done = subprocess.run([trainkit.python, "-c", PROBE, json.dumps(list(jobs.values()))], env=env,
                          cwd=trainkit.repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(zip(jobs, json.loads(done.stdout.splitlines()[-1])))


def test_the_scripts_experiment_trains_with_the_original_batches_and_no_clipping(probed):
    """On the original's 64 devices: 8 / 8 / 4 samples a device, no accumulation, and gradient clipping 0.0 in the
    DeepSpeed config as DeepSpeed reads it (not only a nominal max_grad_norm); the log says so."""
    for stage, per_device in (("prealign", 8), ("pretrain", 8), ("finetune", 4)):
        used = probed["scripts"][stage]
        assert (used["per_device"], used["accumulation"]) == (per_device, 1), stage
        assert (used["ds_micro_batch"], used["ds_accumulation"]) == (per_device, 1), stage
        assert used["max_grad_norm"] == 0 and used["ds_clipping"] == 0.0 and used["deepspeed_reads"] == 0.0, stage
        assert used["log"] == f"per-device batch {per_device}, 1 accumulation step(s); gradient clipping off " \
                              "(max_grad_norm 0, applied by DeepSpeed)", stage


def test_the_recipe_is_unclipped_and_the_quickstart_keeps_its_own_bound(probed):
    """The recipe (which every other 7B experiment extends without touching `training`) trains unclipped; the
    quickstart states its own bound of 1.0 and runs 8 samples a device on its 2 processes."""
    for name in ("recipe", "lora"):
        assert {used["deepspeed_reads"] for used in probed[name].values()} == {0.0}, name
    quickstart = probed["quickstart"].values()
    assert {(u["deepspeed_reads"], u["per_device"], u["accumulation"]) for u in quickstart} == {(1.0, 8, 1)}


def test_one_setting_decides_the_clipping_even_where_the_deepspeed_config_has_no_key(probed):
    """A DeepSpeed config without `gradient_clipping` would get DeepSpeed's own default (1.0 today, 0.0 when the
    original trained); the stage fills it from max_grad_norm instead, either way."""
    assert {used["deepspeed_reads"] for used in probed["bare"].values()} == {0.0}
    assert {used["deepspeed_reads"] for used in probed["bare_0.5"].values()} == {0.5}


def test_accumulated_micro_batches_weigh_every_token_and_frame_alike(tmp_path, tiny_args, trainkit, llama_dir):
    """One optimizer step over the same 4 samples (the tiny set mixes videos and text-only samples, answers of
    different lengths) as one micro-batch of 4 or as 4 accumulated micro-batches of 1: the same loss, lm_loss,
    distill_loss and gradient norm, because each micro-batch counts by its share of the step's supervised tokens
    and content frames."""
    logs = {}
    for per_device in (4, 1):
        output = tmp_path / f"per-device-{per_device}"
        args = tiny_args("prealign", llama_dir, output, "stages.{stage}.global_batch_size=4",
                         f"stages.prealign.per_device_batch_size={per_device}", "stages.{stage}.max_steps=1",
                         "data.group_by_modality_length=false", "model.stab.dropout=0.0")
        done = subprocess.run([trainkit.python, "-m", "videopanda.train", *args], env=trainkit.env(),
                              cwd=trainkit.repo, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        accumulation = 4 // per_device
        assert f"per-device batch {per_device}, {accumulation} accumulation step(s)" in done.stderr
        logs[per_device] = trainkit.read_loss_log(output)
    assert [r["step"] for r in logs[4]] == [r["step"] for r in logs[1]] == [1]
    whole, accumulated = logs[4][0], logs[1][0]
    for key in ("loss", "lm_loss", "distill_loss", "grad_norm"):
        assert accumulated[key] == pytest.approx(whole[key], rel=1e-5), (key, accumulated, whole)
