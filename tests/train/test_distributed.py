"""Real multi-process training on CPU: torchrun with 2 processes, DeepSpeed (gloo), a tiny model and a DATA_ROOT
of real mp4s mixed with text-only samples."""
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, set_seed

import videopanda  # noqa: F401  (registers the Auto classes)
from videopanda.train.stages import build_model, parameter_parts

pytestmark = pytest.mark.slow

def saved_part(key: str) -> str:
    """The part of a tensor in a saved folder (released names)."""
    for prefix, part in (("model.video_tower_compressor.", "distill_head"), ("model.video_tower.", "stab"),
                         ("model.video_projector.", "projector")):
        if key.startswith(prefix):
            return part
    return "llm"


STEPS = ["stages.{stage}.max_steps=6", "save.steps=2", "training.deepspeed=configs/deepspeed/zero2.json"]


@pytest.fixture(scope="module")
def prealign_run(tmp_path_factory, tiny_args, trainkit, llama_dir):
    """An uninterrupted ZeRO-2 prealign: 6 steps of global batch 8 (2 per device, 2 ranks, 2 accumulation steps),
    2 epochs over 24 samples, a checkpoint every 2 steps."""
    output = tmp_path_factory.mktemp("prealign") / "out"
    trainkit.torchrun(tiny_args("prealign", llama_dir, output, *STEPS, "save.total_limit=10"))
    return output


def test_prealign_freezes_the_llm_and_trains_the_visual_parts(prealign_run, llama_dir, teacher_dir, trainkit):
    set_seed(42)  # the run builds its fresh visual part the same way on every rank
    initial = build_model(llama_dir, init="auto", stab_overrides={"width": 32, "num_heads": 4, "padding_window": 8},
                          config_overrides={"num_frames": 4, "frames_per_chunk": 4, "image_size": 112,
                                            "teacher_image_size": 56},
                          teacher_folder=teacher_dir, dtype=torch.float32, attn_implementation="sdpa")
    parts = parameter_parts(initial)
    start = {n: p.detach().clone() for n, p in initial.named_parameters()}
    trained = AutoModelForCausalLM.from_pretrained(prealign_run)
    saved = load_file(prealign_run / "model.safetensors")
    assert not any(k.startswith("model.video_teacher.") for k in saved), "teacher weights must stay out"
    for name in ("processor_config.json", "tokenizer_config.json", "config.json"):
        assert (prealign_run / name).is_file(), name
    final = {f"model.{n}": p for n, p in trained.named_parameters()}
    final.update({f"distill_head.{k[len('model.video_tower_compressor.'):]}": v for k, v in saved.items()
                  if k.startswith("model.video_tower_compressor.")})
    llm_dir = load_file(llama_dir / "model.safetensors")
    for name, before in start.items():
        group = parts[name]
        if group == "teacher":
            continue
        if group == "llm":
            assert torch.equal(final[name], before) and torch.equal(final[name], llm_dir[name[len("model."):]]), name
        else:
            assert not torch.equal(final[name], before), f"{name} ({group}) did not change"
    log = trainkit.read_loss_log(prealign_run)
    assert [r["step"] for r in log] == list(range(1, 7))
    assert all("lm_loss" in r for r in log) and sum("distill_loss" in r for r in log) >= 3
    video_steps = [r for r in log if "distill_loss" in r]
    # loss = lm_loss + distill_loss x (share of the step's micro-batches holding video)
    assert all(r["lm_loss"] - 1e-5 < r["loss"] <= r["lm_loss"] + r["distill_loss"] + 1e-5 for r in video_steps)


def test_kill_and_resume_reproduces_the_uninterrupted_run(prealign_run, tmp_path, tiny_args, trainkit, llama_dir):
    output = tmp_path / "out"
    args = tiny_args("prealign", llama_dir, output, *STEPS, "save.total_limit=10")
    process = subprocess.Popen(trainkit.command(args), env=trainkit.env(), cwd=trainkit.repo, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = output / "checkpoint-2" / "checkpoint_complete.json"
    deadline = time.time() + 300
    while not marker.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert marker.exists(), "the run never completed its first checkpoint"
    assert not (output / "training_complete.json").exists(), "the run finished before it could be killed"
    killed_at = len(trainkit.read_loss_log(output))
    trainkit.torchrun(args)
    resumed, reference = trainkit.read_loss_log(output), trainkit.read_loss_log(prealign_run)
    assert [r["step"] for r in resumed] == list(range(1, 7)), f"killed after {killed_at} logged steps"
    for ours, ref in zip(resumed, reference):
        assert ("distill_loss" in ours) == ("distill_loss" in ref), (ours, ref)
        for key in ("loss", "lm_loss", "distill_loss", "learning_rate", "grad_norm"):
            if key in ref:
                assert ours[key] == pytest.approx(ref[key], rel=1e-6, abs=1e-7), (key, ours, ref)
    final, ref_final = load_file(output / "model.safetensors"), load_file(prealign_run / "model.safetensors")
    assert final.keys() == ref_final.keys()
    assert all(torch.allclose(final[k], ref_final[k], rtol=1e-5, atol=1e-6) for k in final)


def test_pretrain_under_zero3_from_the_prealign_output(prealign_run, tmp_path, tiny_args, trainkit):
    """ZeRO-3 (the STAB a leaf module, its gradients reduced by DeepSpeed's leaf hook) trains like ZeRO-2."""
    runs = {}
    for zero in ("zero3", "zero2"):
        runs[zero] = tmp_path / zero
        trainkit.torchrun(tiny_args("pretrain", prealign_run, runs[zero], "stages.{stage}.max_steps=3", "save.steps=2",
                                    f"training.deepspeed=configs/deepspeed/{zero}.json"))
    log, reference = trainkit.read_loss_log(runs["zero3"]), trainkit.read_loss_log(runs["zero2"])
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["lm_loss"] > 0 for r in log) and any("distill_loss" in r for r in log)
    for ours, ref in zip(log, reference):  # grad_norm covers the STAB's gradients
        assert ours.keys() == ref.keys()
        for key in ("loss", "lm_loss", "distill_loss", "grad_norm"):
            if key in ref:
                assert ours[key] == pytest.approx(ref[key], rel=1e-5), (key, ours, ref)
    before, after = load_file(prealign_run / "model.safetensors"), load_file(runs["zero3"] / "model.safetensors")
    changed = {saved_part(k) for k in after if not torch.equal(after[k], before[k])}
    assert {"llm", "stab", "projector", "distill_head"} <= changed
    zero2 = load_file(runs["zero2"] / "model.safetensors")
    assert after.keys() == zero2.keys()
    assert all(torch.allclose(after[k], zero2[k], rtol=1e-5, atol=1e-6) for k in after)
