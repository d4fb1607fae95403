"""LoRA finetuning on the tiny shapes: real runs of `videopanda train`, real adapter folders, merge and reload."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from videopanda.model.checkpoint import PROJECTOR_PREFIX, STAB_PREFIX

pytest.importorskip("peft")

LORA = ["lora.enabled=true", "lora.rank=4", "lora.alpha=8", "lora.dropout=0.1"]
STEPS = ["stages.{stage}.max_steps=6", "save.steps=2", "runtime.logging_steps=1", "stages.{stage}.learning_rate=3e-3",
         "stages.{stage}.visual_learning_rate=1e-3", "stages.{stage}.warmup_ratio=0"]


def train_command(trainkit, args: list[str]) -> list[str]:
    return [trainkit.python, "-m", "videopanda.train", *args]


def train(trainkit, args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(train_command(trainkit, args), env=trainkit.env(), cwd=trainkit.repo, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return done


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_args, trainkit, llama_dir):
    """A Video-Panda folder: two prealign steps from the tiny Llama, in one process."""
    output = tmp_path_factory.mktemp("base") / "prealign"
    train(trainkit, tiny_args("prealign", llama_dir, output, "stages.{stage}.max_steps=2", "save.steps=100"))
    return output


@pytest.fixture(scope="module")
def lora_args(tiny_args, base):
    def make(output: Path, *extra: str) -> list[str]:
        return tiny_args("finetune", base, output, *STEPS, *extra, *LORA)

    return make


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, lora_args, trainkit):
    """An uninterrupted LoRA finetune of 6 steps (a checkpoint every 2)."""
    output = tmp_path_factory.mktemp("lora") / "finetune"
    train(trainkit, lora_args(output))
    return output


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    from helpers.media import make_frames, write_video

    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    write_video(path, make_frames(8, height=48, width=64, seed=3), fps=4)
    return path


def llm_key(key: str) -> bool:
    return not key.startswith(("model.video_tower", "model.video_projector", "model.video_teacher"))


def test_the_adapter_folder_is_small_and_records_its_base(adapter, base):
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "visual.safetensors", "videopanda_adapter.json",
            "config.json", "processor_config.json", "training_complete.json"} <= names, names
    assert "model.safetensors" not in names
    assert json.loads((adapter / "videopanda_adapter.json").read_text())["base"] == str(base.resolve())
    adapters = load_file(adapter / "adapter_model.safetensors")
    assert adapters and all("lora_" in key and ".layers." in key for key in adapters)
    # q, k, v, o, gate, up, down in 2 layers, A and B each
    assert len(adapters) == 2 * 7 * 2
    assert (adapter / "adapter_model.safetensors").stat().st_size < (base / "model.safetensors").stat().st_size / 4


def test_lora_lowers_the_loss_and_changes_only_adapters_and_visual_parts(adapter, base):
    from videopanda.serve.model_folder import load_model

    log = [json.loads(line) for line in (adapter / "loss_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 7))
    assert sum(r["lm_loss"] for r in log[3:]) < sum(r["lm_loss"] for r in log[:3]), log

    base_state = load_file(base / "model.safetensors")
    model, _ = load_model(adapter, "cpu")
    ours = model.state_dict()
    llm = [k for k in base_state if llm_key(k)]
    assert llm
    for key in llm:  # adapted layers keep their base weight under `base_layer`
        stored = ours.get(key)
        if stored is None:
            stored = ours[key.replace(".weight", ".base_layer.weight")]
        assert torch.equal(stored, base_state[key]), key
    visual = load_file(adapter / "visual.safetensors")
    changed = [k for k in visual if k in base_state and not torch.equal(visual[k], base_state[k])]
    assert any(k.startswith(STAB_PREFIX) for k in changed) and any(k.startswith(PROJECTOR_PREFIX) for k in changed)
    lora_b = [v for k, v in ours.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every one trained


def test_frozen_visual_parts_stay_as_loaded(tmp_path, lora_args, trainkit, base):
    output = tmp_path / "frozen"
    train(trainkit, lora_args(output, "stages.{stage}.max_steps=2", "lora.visual=freeze"))
    base_state, visual = load_file(base / "model.safetensors"), load_file(output / "visual.safetensors")
    shared = [k for k in visual if k in base_state]
    assert shared and all(torch.equal(visual[k], base_state[k]) for k in shared)


def test_merged_folder_answers_as_base_plus_adapter_and_loads_in_another_process(adapter, tmp_path, trainkit, video):
    from videopanda.data.video import read_video
    from videopanda.serve.infer import answer
    from videopanda.serve.model_folder import load_model

    merged = tmp_path / "merged"
    done = subprocess.run([trainkit.python, "-m", "videopanda", "merge-lora", str(adapter), str(merged)],
                          env=trainkit.env(), cwd=trainkit.repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (merged / "adapter_config.json").exists() and (merged / "model.safetensors").is_file()
    assert not any("lora" in k or "base_layer" in k for k in load_file(merged / "model.safetensors"))

    frames = read_video(video, num_frames=4)
    with_adapter, processor = load_model(adapter, "cpu")
    full, full_processor = load_model(merged, "cpu")
    questions = ["what colour is the circle?", "what moves left?"]
    ours = [answer(with_adapter, processor, frames, q, max_new_tokens=12) for q in questions]
    assert ours == [answer(full, full_processor, frames, q, max_new_tokens=12) for q in questions]

    infer = subprocess.run([trainkit.python, "-m", "videopanda", "infer", "--model", str(adapter), "--video",
                            str(video), "--question", questions[0], "--max-new-tokens", "12", "--device", "cpu"],
                           env=trainkit.env(), cwd=trainkit.repo, capture_output=True, text=True, timeout=300)
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert infer.stdout.strip() == ours[0]


def test_a_killed_lora_run_resumes_to_the_same_loss_curve(adapter, tmp_path, lora_args, trainkit):
    output = tmp_path / "killed"
    command = train_command(trainkit, lora_args(output))
    with open(tmp_path / "first.log", "w") as handle:
        process = subprocess.Popen(command, env=trainkit.env(), cwd=trainkit.repo, start_new_session=True,
                                   stdout=handle, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while process.poll() is None and time.time() < deadline and len(read_steps(output)) < 3:
                time.sleep(0.05)
            assert process.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            os.killpg(process.pid, signal.SIGKILL)
        finally:
            process.wait(timeout=60)
    assert (output / "checkpoint-2" / "checkpoint_complete.json").is_file()
    assert not (output / "training_complete.json").exists()
    train(trainkit, lora_args(output))
    resumed, reference = read_log(output), read_log(adapter)
    assert [r["step"] for r in resumed] == [r["step"] for r in reference] == list(range(1, 7))
    for ours, theirs in zip(resumed, reference):
        for key in ("loss", "lm_loss", "distill_loss", "learning_rate", "grad_norm"):
            assert ours[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-7), (key, ours, theirs)
    for name in ("adapter_model.safetensors", "visual.safetensors"):
        final, ref = load_file(output / name), load_file(adapter / name)
        assert final.keys() == ref.keys()
        assert all(torch.allclose(final[k], ref[k], rtol=1e-5, atol=1e-6) for k in final), name


def read_steps(output: Path) -> list[int]:
    log = output / "loss_log.jsonl"
    lines = log.read_text().split("\n")[:-1] if log.exists() else []
    return [json.loads(line)["step"] for line in lines]


def read_log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "loss_log.jsonl").read_text().splitlines()]


def test_qlora_without_cuda_stops_before_training_with_one_line(tmp_path, lora_args, trainkit):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    output = tmp_path / "qlora"
    done = subprocess.run(train_command(trainkit, lora_args(output, "lora.quantize=nf4")), env=trainkit.env(),
                          cwd=trainkit.repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "QLoRA" in line]
    assert len(errors) == 1 and "needs a CUDA device" in errors[0], done.stderr[-3000:]
    assert not output.exists() or not any(output.glob("checkpoint-*"))


ZERO2 = ["training.deepspeed=configs/deepspeed/zero2.json", "training.gradient_checkpointing=true", "save.total_limit=10"]


def saved_by(log: str, folder: Path) -> list[str]:
    """The ranks whose `videopanda` logger said it saved the adapters to `folder` (from the torchrun output)."""
    return [line.split("[rank ")[1].split("]")[0] for line in log.splitlines()
            if f"saving the adapters to {folder}" in line and line.rstrip().endswith(str(folder))]


@pytest.mark.slow
def test_lora_under_zero2_with_activation_checkpointing_on_two_processes(base, tmp_path, lora_args, trainkit, video):
    """2 processes, DeepSpeed ZeRO-2 (gloo on CPU), activation checkpointing: the loss goes down, rank 0 alone
    writes the adapter folder, which `videopanda infer` loads; every base LLM weight stays bit-identical; a run
    killed after its first checkpoint resumes to the same loss curve and the same adapters."""
    from videopanda.serve.model_folder import load_model

    output = tmp_path / "zero2"
    done = trainkit.torchrun(lora_args(output, *ZERO2))
    log = done.stdout + done.stderr
    settings = torch.load(output / "training_args.bin", weights_only=False)
    assert settings.activation_checkpointing and settings.deepspeed and settings.world_size == 2
    reference = read_log(output)
    assert [r["step"] for r in reference] == list(range(1, 7))
    assert sum(r["lm_loss"] for r in reference[3:]) < sum(r["lm_loss"] for r in reference[:3]), reference
    assert saved_by(log, output) == ["0"], log[-4000:]
    assert saved_by(log, output / "checkpoint-2") == ["0"], log[-4000:]

    base_state = load_file(base / "model.safetensors")
    model, _ = load_model(output, "cpu")
    ours = model.state_dict()
    llm = [k for k in base_state if llm_key(k)]
    for key in llm:
        stored = ours.get(key)
        if stored is None:
            stored = ours[key.replace(".weight", ".base_layer.weight")]
        assert torch.equal(stored, base_state[key]), key
    lora_b = [v for k, v in ours.items() if "lora_B" in k]
    assert len(lora_b) == 2 * 7 and all(v.abs().sum() > 0 for v in lora_b)
    infer = subprocess.run([trainkit.python, "-m", "videopanda", "infer", "--model", str(output), "--video",
                            str(video), "--question", "what moves left?", "--max-new-tokens", "8", "--device", "cpu"],
                           env=trainkit.env(), cwd=trainkit.repo, capture_output=True, text=True, timeout=300)
    assert infer.returncode == 0 and infer.stdout.strip(), infer.stderr[-3000:]

    killed = tmp_path / "killed"
    args = lora_args(killed, *ZERO2)
    marker = killed / "checkpoint-2" / "checkpoint_complete.json"
    process = subprocess.Popen(trainkit.command(args), env=trainkit.env(), cwd=trainkit.repo, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not marker.exists() and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert marker.exists(), "the run never completed its first checkpoint"
    assert not (killed / "training_complete.json").exists(), "the run finished before it could be killed"
    trainkit.torchrun(args)
    resumed = read_log(killed)
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for ours_step, theirs in zip(resumed, reference):
        assert ours_step.keys() == theirs.keys(), (ours_step, theirs)
        for key in ("loss", "lm_loss", "distill_loss", "learning_rate", "grad_norm"):
            if key in theirs:
                    assert ours_step[key] == pytest.approx(theirs[key], rel=1e-6, abs=1e-7), (key, ours_step, theirs)
    for name in ("adapter_model.safetensors", "visual.safetensors"):
        final, ref = load_file(killed / name), load_file(output / name)
        assert final.keys() == ref.keys()
        assert all(torch.allclose(final[k], ref[k], rtol=1e-5, atol=1e-6) for k in final), name


def test_activation_checkpointing_leaves_the_adapter_gradients_unchanged(base):
    """The frozen embeddings give the checkpointed decoder layers inputs without grad: non-reentrant
    checkpointing (the trainer's setting) still gives the adapters exactly the gradients of a plain backward."""
    from videopanda.train.lora import add_adapters, freeze_for_lora
    from videopanda.train.experiment import LoraSettings
    from videopanda.train.stages import build_model

    model = build_model(base, init="auto", stab_overrides={}, teacher_folder=None, dtype=torch.float32,
                        attn_implementation="sdpa")
    add_adapters(model.model, LoraSettings(enabled=True, rank=4, alpha=8, dropout=0.0))
    freeze_for_lora(model, "train")
    model.train()
    with torch.no_grad():  # B starts at zero: give the adapters an output so A gets a gradient too
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02, generator=torch.Generator().manual_seed(len(name)))
    ids = torch.randint(3, model.model.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    adapters = {n: p for n, p in model.named_parameters() if "lora_" in n}

    def adapter_grads() -> dict:
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in adapters.items()}

    plain = adapter_grads()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.is_activation_checkpointing
    checkpointed = adapter_grads()
    assert len(plain) == 2 * 7 * 2 and all(g.abs().sum() > 0 for g in plain.values())
    for name, grad in plain.items():
        assert torch.allclose(checkpointed[name], grad, rtol=1e-5, atol=1e-7), name


# ---- the base an adapter folder records, merge-lora's output, evaluation, generation settings --------


def videopanda_command(trainkit, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([trainkit.python, "-m", "videopanda", *args], env=trainkit.env(), cwd=trainkit.repo,
                          capture_output=True, text=True, timeout=300)


def infer_with(trainkit, model: Path, video: Path) -> subprocess.CompletedProcess:
    return videopanda_command(trainkit, "infer", "--model", str(model), "--video", str(video), "--question",
                              "what moves left?", "--max-new-tokens", "6", "--device", "cpu")


def copied_adapter(adapter: Path, base: Path, where: Path) -> tuple[Path, Path]:
    """(adapter folder, base folder): copies of both, the adapter's record pointing at the copied base."""
    base_copy = shutil.copytree(base, where / "base")
    copy = shutil.copytree(adapter, where / "adapter", ignore=shutil.ignore_patterns("checkpoint-*"))
    record = json.loads((copy / "videopanda_adapter.json").read_text())
    (copy / "videopanda_adapter.json").write_text(json.dumps({**record, "base": str(base_copy)}))
    return copy, base_copy


def file_contents(*folders: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for folder in folders for p in sorted(folder.rglob("*")) if p.is_file()}


def test_an_adapter_refuses_a_base_whose_weights_changed_since_training(adapter, base, tmp_path, trainkit, video):
    from videopanda.serve.model_folder import model_identity

    record = json.loads((adapter / "videopanda_adapter.json").read_text())
    assert record["base_identity"] == model_identity(base)
    copy, base_copy = copied_adapter(adapter, base, tmp_path)
    same = infer_with(trainkit, copy, video)
    assert same.returncode == 0 and same.stdout.strip(), same.stderr[-3000:]

    state = load_file(base_copy / "model.safetensors")  # another model's weights under the base's name
    key = next(k for k in state if llm_key(k) and "layers.1.mlp.down_proj" in k)
    state[key] = state[key] + 0.01
    save_file(state, str(base_copy / "model.safetensors"), metadata={"format": "pt"})
    for command in (["infer", "--model", str(copy), "--video", str(video), "--question", "what moves left?",
                     "--device", "cpu"], ["merge-lora", str(copy), str(tmp_path / "merged")]):
        done = videopanda_command(trainkit, *command)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and done.stdout == "" and len(lines) == 1, done.stderr[-3000:]
        assert str(copy) in lines[0]
        assert f"its base {base_copy} is not the model the adapters were trained on" in lines[0]
    assert not (tmp_path / "merged").exists()


def test_an_adapter_folder_without_a_recorded_base_identity_loads_with_a_warning(adapter, base, tmp_path, trainkit,
                                                                                  video):
    copy, _ = copied_adapter(adapter, base, tmp_path)
    record = json.loads((copy / "videopanda_adapter.json").read_text())
    record.pop("base_identity", None)  # as written before the identity was recorded
    (copy / "videopanda_adapter.json").write_text(json.dumps(record))
    done = infer_with(trainkit, copy, video)
    assert done.returncode == 0 and done.stdout.strip() == infer_with(trainkit, adapter, video).stdout.strip()
    warnings = [line for line in done.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and str(copy) in warnings[0] and "records no identity of its base" in warnings[0]


@pytest.mark.parametrize("output", ["adapter", "base", "inside_adapter", "inside_base", "link_to_base", "not_empty"])
def test_merge_lora_refuses_an_output_that_would_overwrite_what_it_reads(adapter, base, tmp_path, output, capsys):
    from videopanda.serve.merge_lora import main

    copy, base_copy = copied_adapter(adapter, base, tmp_path)
    (tmp_path / "link").symlink_to(base_copy, target_is_directory=True)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    target = {"adapter": copy, "base": base_copy, "inside_adapter": copy / "merged", "inside_base": base_copy / "m",
              "link_to_base": tmp_path / "link" / "merged", "not_empty": tmp_path / "full"}[output]
    before = file_contents(copy, base_copy, tmp_path / "full")
    assert main([str(copy), str(target)]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and len(lines) == 1 and lines[0].startswith("videopanda merge-lora: error:"), captured.err
    assert str(target) in lines[0]
    assert ("already exists" if output == "not_empty" else "pick a new folder") in lines[0]
    assert file_contents(copy, base_copy, tmp_path / "full") == before


@pytest.mark.parametrize("damage", ["lora_B_missing", "base_is_itself", "base_is_gone"])
def test_an_adapter_folder_that_would_load_wrong_is_refused_in_one_line(damage, adapter, base, tmp_path, trainkit,
                                                                        video):
    """Adapter weights without their B matrices (peft would leave them at zero: the base's answers), a record whose
    base is the adapter folder itself (an adapter on an adapter) and a base that is gone are one line naming the
    adapter folder's file, for infer and merge-lora alike, with nothing written."""
    copy, base_copy = copied_adapter(adapter, base, tmp_path)
    record_path = copy / "videopanda_adapter.json"
    if damage == "lora_B_missing":
        weights = copy / "adapter_model.safetensors"
        state = load_file(weights)
        kept = {key: value for key, value in state.items() if "lora_B" not in key}
        save_file(kept, str(weights), metadata={"format": "pt"})
        expected = f"{weights}: {len(state) - len(kept)} adapter tensor(s) missing"
    elif damage == "base_is_itself":
        record_path.write_text(json.dumps({**json.loads(record_path.read_text()), "base": str(copy)}))
        expected = f"{record_path}: its base {copy} is an adapter folder too"
    else:
        shutil.rmtree(base_copy)
        expected = f"{record_path}: its base cannot be used: {base_copy}: model folder does not exist"
    for command in (["infer", "--model", str(copy), "--video", str(video), "--question", "what moves left?",
                     "--device", "cpu"], ["merge-lora", str(copy), str(tmp_path / "merged")]):
        done = videopanda_command(trainkit, *command)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and done.stdout == "" and len(lines) == 1, done.stderr[-3000:]
        assert expected in lines[0]
    assert not (tmp_path / "merged").exists()


def test_merge_lora_into_a_folder_it_cannot_write_is_one_line(adapter, base, tmp_path, trainkit):
    """An output under a regular file cannot be made: one line naming it, exit 2, nothing left beside it."""
    (tmp_path / "a_file").write_text("not a folder")
    target = tmp_path / "a_file" / "merged"
    done = videopanda_command(trainkit, "merge-lora", str(adapter), str(target))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0].startswith(f"videopanda merge-lora: error: {target}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_merge_lora_on_a_folder_that_is_not_an_adapter_is_one_line(base, tmp_path, trainkit):
    done = videopanda_command(trainkit, "merge-lora", str(base), str(tmp_path / "merged"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[0] == (f"videopanda merge-lora: error: {base}: not an adapter folder (no videopanda_adapter.json); "
                        "merge-lora takes the output (or a checkpoint) of a LoRA finetune")
    assert not (tmp_path / "merged").exists()


@pytest.fixture
def eval_data(tmp_path, video):
    """DATA_ROOT with a 2-question MSVD set, a 1-question EgoSchema set and a one-clip Video-ChatGPT benchmark,
    all on the test clip."""
    data = tmp_path / "data"
    msvd = data / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    (msvd / "videos").mkdir(parents=True)
    shutil.copy(video, msvd / "videos" / "a.mp4")
    questions = ["what moves left?", "what colour?"]
    (msvd / "test_q.json").write_text(json.dumps(
        [{"video_name": "a", "question": q, "question_id": i} for i, q in enumerate(questions)]))
    (msvd / "test_a.json").write_text(json.dumps([{"answer": "red", "question_id": i} for i in range(2)]))
    ego = data / "eval" / "EgoSchema"
    (ego / "videos").mkdir(parents=True)
    shutil.copy(video, ego / "videos" / "uid0.mp4")
    options = {f"option {k}": w for k, w in enumerate(["red", "green", "blue", "up", "left"])}
    (ego / "questions.json").write_text(json.dumps([{"q_uid": "uid0", "question": "what colour is the circle", **options}]))
    (ego / "subset_answers.json").write_text(json.dumps({"uid0": 1}))
    bench = data / "eval" / "Video_ChatGPT_Benchmark"
    (bench / "videos").mkdir(parents=True)
    shutil.copy(video, bench / "videos" / "v_a.mp4")
    (bench / "generic_qa.json").write_text(json.dumps([{"video_name": "v_a", "Q": "What moves?", "A": "A circle."}]))
    (bench / "temporal_qa.json").write_text(json.dumps([{"video_name": "v_a", "Q": "What first?", "A": "Red."}]))
    (bench / "consistency_qa.json").write_text(json.dumps(
        [{"video_name": "v_a", "Q1": "Which shape?", "Q2": "What shape is shown?", "A": "A circle."}]))
    return data


def test_eval_qa_mc_and_benchmark_take_an_adapter_folder_and_never_mix_it_with_its_base(adapter, base, tmp_path,
                                                                                         eval_data):
    from videopanda.eval.cli import main
    from videopanda.serve.model_folder import model_identity
    from videopanda.eval.records import read_jsonl

    qa = ["qa", "--dataset", "msvd", "--data-root", str(eval_data), "--device", "cpu", "--max-new-tokens", "3",
          "--no-progress"]
    out = tmp_path / "qa"
    assert main([*qa, "--model", str(adapter), "--output-dir", str(out)]) == 0
    rows = read_jsonl(out / "chunk-0-of-1.jsonl")
    assert len(rows) == 2 and all(r["pred"] is not None for r in rows), rows
    sidecar = json.loads((out / "chunk-0-of-1.run.json").read_text())
    assert sidecar["fingerprint"]["model"]["id"] == model_identity(adapter) != model_identity(base)
    assert main([*qa, "--model", str(base), "--output-dir", str(out)]) == 2  # its base: refused, never mixed
    assert read_jsonl(out / "chunk-0-of-1.jsonl") == rows

    mc = tmp_path / "mc"
    assert main(["mc", "--benchmark", "egoschema", "--data-root", str(eval_data), "--output-dir", str(mc), "--model",
                 str(adapter), "--device", "cpu", "--method", "loglikelihood", "--no-progress"]) == 0
    results = json.loads((mc / "results.json").read_text())
    assert results["num_items"] == 1 and results["prediction_fingerprint"]["model"]["id"] == model_identity(adapter)

    bench = tmp_path / "benchmark"
    assert main(["benchmark", "--stage", "infer", "--data-root", str(eval_data), "--output-dir", str(bench), "--model",
                 str(adapter), "--device", "cpu", "--max-new-tokens", "3", "--no-progress"]) == 0
    rows = read_jsonl(bench / "predictions" / "chunk-0-of-1.jsonl")
    assert rows and all(r["pred"] is not None for r in rows), rows
    sidecar = json.loads((bench / "predictions" / "chunk-0-of-1.run.json").read_text())
    assert sidecar["fingerprint"]["model"]["id"] == model_identity(adapter)


def test_adapter_identity_covers_its_adapters_and_its_base(adapter, base, tmp_path):
    from videopanda.serve.model_folder import model_identity

    copy, base_copy = copied_adapter(adapter, base, tmp_path)
    first = model_identity(copy)
    state = load_file(copy / "adapter_model.safetensors")
    key = sorted(state)[0]
    state[key] = state[key] + 0.01
    save_file(state, str(copy / "adapter_model.safetensors"), metadata={"format": "pt"})
    second = model_identity(copy)
    state = load_file(base_copy / "model.safetensors")
    key = next(k for k in state if llm_key(k))
    state[key] = state[key] + 0.01
    save_file(state, str(base_copy / "model.safetensors"), metadata={"format": "pt"})
    assert len({first, second, model_identity(copy), model_identity(base)}) == 4


def test_every_folder_a_run_saves_carries_the_generation_settings(adapter, base, tmp_path, trainkit, video):
    """Stage folders, adapter folders, their checkpoints and merged folders hold generation_config.json with
    the project's settings (greedy, the new-token limit, EOS and pad ids), and the model loaded from any of
    them (an adapter folder: its own file, not its base's) generates with them."""
    from transformers import GenerationConfig

    from videopanda.serve.infer import generation_settings
    from videopanda.serve.model_folder import load_model

    merged = tmp_path / "merged"
    assert videopanda_command(trainkit, "merge-lora", str(adapter), str(merged)).returncode == 0
    for folder in (base, adapter, sorted(adapter.glob("checkpoint-*"))[0], merged):
        saved = json.loads((folder / "generation_config.json").read_text())
        assert (saved["do_sample"], saved["num_beams"], saved["max_new_tokens"]) == (False, 1, 1024), folder
        config = json.loads((folder / "config.json").read_text())
        assert saved["eos_token_id"] == config["eos_token_id"] is not None, folder
        assert saved["pad_token_id"] == config["pad_token_id"] is not None, folder
        model, processor = load_model(folder, "cpu")
        assert model.generation_config.to_diff_dict() == GenerationConfig.from_pretrained(folder).to_diff_dict()
        settings = generation_settings(processor.tokenizer, None, model.generation_config)
        assert settings["max_new_tokens"] == 1024 and settings["eos_token_id"] == saved["eos_token_id"]
