"""`videopanda infer` end to end on an mp4 through a tiny folder in the released layout, and its error paths."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.media import make_frames, write_random_bytes, write_video
from helpers.released import build_released_folder
from transformers import AutoModelForCausalLM, AutoTokenizer

import videopanda  # noqa: F401  (registers the Auto classes)
from videopanda.data.conversation import SYSTEM_USER, build_generation_prompt, tokenize_prompt
from videopanda.data.frames import FrameConfig, preprocess_video
from videopanda.data.video import read_video
from videopanda.serve.infer import main

NEW_TOKENS = 5
QUESTION = "what colour is the circle?"


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    folder = tmp_path_factory.mktemp("videopanda_fitu")
    build_released_folder(folder, tiny_tokenizer_dir, seed=3)
    return folder


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("clips") / "clip.mp4", make_frames(24, height=48, width=64), fps=8)


def expand(model, ids: list[int], student: torch.Tensor) -> torch.Tensor:
    """(1, S', L): the ids embedded, each -200 replaced by its frame's projected tokens (STAB run here)."""
    embed = model.get_input_embeddings()
    tokens, _ = model.model.video_tower(student)
    frames = iter(model.model.video_projector(t) for t in tokens)
    return torch.cat([next(frames) if i == -200 else embed(torch.tensor([i])) for i in ids])[None]


def expected_answer(folder: Path, clip: Path) -> str:
    """The answer computed independently: the released folder, the data pipeline and a plain greedy loop."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    student, _ = preprocess_video(read_video(clip, num_frames=8), FrameConfig(), flip=False)
    ids = tokenize_prompt(build_generation_prompt(QUESTION, 8, SYSTEM_USER), tokenizer).tolist()
    assert ids.count(-200) == 8
    new = []
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = model(inputs_embeds=expand(model, ids + new, student)).logits
            token = int(logits[0, -1].argmax())
            if token == tokenizer.eos_token_id:
                break
            new.append(token)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    return subprocess.run([sys.executable, "-m", "videopanda", "infer", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_infer_answers_on_an_mp4_through_the_released_layout(folder, clip):
    result = run_cli("--model", str(folder), "--video", str(clip), "--question", QUESTION,
                     "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu", "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    want = expected_answer(folder, clip)
    assert want  # the tiny model's greedy answer is not empty for this seed
    assert result.stdout == want + "\n"  # the answer only
    assert "warn" not in result.stderr.lower() and "deprecated" not in result.stderr, result.stderr


def test_infer_answers_the_same_from_a_folder_training_saved(folder, clip, tmp_path):
    """A folder written by training (weights in the released names, the head included, processor files) loads
    in `videopanda infer` and through the Auto classes, and answers like the folder it started from."""
    from transformers import AutoProcessor

    from videopanda.data.processor import VideoPandaProcessor
    from videopanda.train.stages import build_model

    model = build_model(folder, init="auto", stab_overrides={}, teacher_folder=None, dtype=torch.float32,
                        attn_implementation="sdpa")
    saved = tmp_path / "trained"
    model.save_pretrained(saved)
    VideoPandaProcessor.from_model_config(model.config, AutoTokenizer.from_pretrained(folder)).save_pretrained(saved)
    assert (saved / "processor_config.json").is_file()
    processor = AutoProcessor.from_pretrained(saved)
    assert type(processor) is VideoPandaProcessor and processor.image_token_id == model.config.image_token_id
    assert type(AutoModelForCausalLM.from_pretrained(saved)) is type(model.model)
    args = ("--video", str(clip), "--question", QUESTION, "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu",
            "--dtype", "float32")
    ours, released = run_cli("--model", str(saved), *args), run_cli("--model", str(folder), *args)
    assert ours.returncode == 0 and "warn" not in ours.stderr.lower(), ours.stderr
    assert ours.stdout == released.stdout and ours.stdout.strip()


def test_missing_video_is_one_line_in_a_real_process(folder, tmp_path):
    missing = tmp_path / "nope.mp4"
    result = run_cli("--model", str(folder), "--video", str(missing), "--question", QUESTION)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("videopanda infer: error:") and str(missing) in lines[0]


def one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("videopanda infer: error:"), captured.err
    return lines[0]


def test_unreadable_video(folder, tmp_path, capsys):
    broken = write_random_bytes(tmp_path / "broken.mp4")
    assert main(["--model", str(folder), "--video", str(broken), "--question", QUESTION]) == 1
    assert str(broken) in one_error_line(capsys)


@pytest.mark.parametrize("case", ["absent", "empty", "other_model", "no_weights", "bad_json"])
def test_folder_that_is_not_a_video_panda_model(case, folder, clip, tmp_path, capsys):
    target = tmp_path / case
    if case != "absent":
        target.mkdir()
    if case == "other_model":
        (target / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if case == "no_weights":
        (target / "config.json").write_text((folder / "config.json").read_text())
    if case == "bad_json":
        (target / "config.json").write_text("{not json")
    assert main(["--model", str(target), "--video", str(clip), "--question", QUESTION, "--device", "cpu"]) == 2
    line = one_error_line(capsys)
    assert str(target) in line
    expected = {"absent": "does not exist", "empty": "no config.json", "other_model": "'llama'",
                "no_weights": "no model weights", "bad_json": "unreadable config"}[case]
    assert expected in line


@pytest.mark.parametrize("dropped", ["model.layers.0.self_attn.q_proj.weight", "lm_head.weight", "stab"])
def test_a_folder_missing_a_tensor_of_the_model_is_refused(dropped, folder, clip, tmp_path):
    """A weight file without one of the model's tensors (an LLM layer's, the output layer's, a STAB tensor in
    its released name) is a one-line error naming the folder and the tensor, not a model answering with that
    tensor at its random initial value."""
    from safetensors.torch import load_file, save_file

    partial = tmp_path / "partial"
    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).save_pretrained(partial)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(folder / name, partial / name)
    weights = partial / "model.safetensors"
    tensors = load_file(weights)
    name = "model.video_tower.dec.attn.in_proj_weight" if dropped == "stab" else dropped   # released name
    del tensors[name]
    save_file(tensors, weights, metadata={"format": "pt"})
    result = run_cli("--model", str(partial), "--video", str(clip), "--question", QUESTION, "--device", "cpu")
    assert result.returncode == 2 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert str(partial) in line and "1 of the model's tensors are not in its weight files" in line
    if dropped != "stab":
        assert dropped in line


def test_bad_frame_count(folder, clip, capsys):
    assert main(["--model", str(folder), "--video", str(clip), "--question", QUESTION, "--num-frames", "6"]) == 1
    assert "multiple of frames_per_chunk" in one_error_line(capsys)
    assert main(["--model", str(folder), "--video", str(clip), "--question", QUESTION, "--max-frames", "16"]) == 1
    assert "--max-frames bounds the frames sampled by rate: give --fps too" in one_error_line(capsys)


def test_a_prompt_past_the_model_context_is_refused_in_one_line_by_infer_and_eval(folder, clip, tmp_path, capsys):
    """One guard: `infer` refuses a prompt longer than max_position_embeddings before generating (exit 1, both
    lengths named), caps the answer to the room left, and `eval qa` records the refusal as that question's error."""
    from videopanda.data.processor import VideoPandaProcessor
    from videopanda.eval.cli import main as eval_main
    from videopanda.eval.records import read_jsonl
    from videopanda.serve.infer import video_prompt

    processor = VideoPandaProcessor.from_pretrained(folder)
    prompt = processor(text=video_prompt(processor, QUESTION), videos=read_video(clip, num_frames=8))
    tokens = prompt["input_ids"].shape[1]
    small = shutil.copytree(folder, tmp_path / "small")
    config = json.loads((small / "config.json").read_text())
    (small / "config.json").write_text(json.dumps({**config, "max_position_embeddings": tokens - 1}))

    result = run_cli("--model", str(small), "--video", str(clip), "--question", QUESTION, "--device", "cpu")
    assert result.returncode == 1 and result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    stem = (f"videopanda infer: error: the prompt is {tokens} tokens (the video's included), over the model's "
            f"context of {tokens - 1} tokens; 8 frames were sampled, ")
    assert line.startswith(stem) and line.endswith(")"), line
    fit = int(line.removeprefix(stem).split()[0])
    assert fit % 4 == 0 and 0 < fit < 8 and line.endswith(f"{fit} would fit (--num-frames {fit}, or --max-frames "
                                                          f"{fit} with --fps)")
    fewer = run_cli("--model", str(small), "--video", str(clip), "--question", QUESTION, "--device", "cpu",
                    "--num-frames", str(fit), "--max-new-tokens", "1")
    assert fewer.returncode == 0 and fewer.stdout.strip(), fewer.stderr
    # By rate: 3 fps of the 3 s clip is 9 frames, 8 in whole chunks; the hint's bound makes it fit.
    by_rate = ("--model", str(small), "--video", str(clip), "--question", QUESTION, "--device", "cpu", "--fps", "3")
    refused = run_cli(*by_rate)
    assert refused.returncode == 1 and "8 frames were sampled" in refused.stderr, refused.stderr
    assert refused.stderr.strip().endswith(f"or --max-frames {fit} with --fps)"), refused.stderr
    bounded = run_cli(*by_rate, "--max-frames", str(fit), "--max-new-tokens", "1")
    assert bounded.returncode == 0 and bounded.stdout.strip(), bounded.stderr

    data = tmp_path / "data" / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    (data / "videos").mkdir(parents=True)
    shutil.copy(clip, data / "videos" / "a.mp4")
    (data / "test_q.json").write_text(json.dumps([{"video_name": "a", "question": QUESTION, "question_id": 0}]))
    (data / "test_a.json").write_text(json.dumps([{"answer": "red", "question_id": 0}]))
    out = tmp_path / "pred"
    eval_main(["qa", "--model", str(small), "--dataset", "msvd", "--data-root", str(tmp_path / "data"), "--output-dir",
               str(out), "--device", "cpu", "--max-new-tokens", "3", "--no-progress"])
    [row] = read_jsonl(out / "chunk-0-of-1.jsonl")
    assert row["pred"] is None and row["error"] == "ContextLengthError: " + line.removeprefix("videopanda infer: error: ")

    (small / "config.json").write_text(json.dumps({**config, "max_position_embeddings": tokens + 2}))
    args = ["--video", str(clip), "--question", QUESTION, "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu"]
    assert main(["--model", str(small), *args]) == 0
    capped = capsys.readouterr().out
    assert main(["--model", str(folder), *args[:-4], "--max-new-tokens", "2", "--device", "cpu"]) == 0
    assert capped == capsys.readouterr().out


def test_generate_without_arguments_answers_like_infer_on_a_saved_folder(folder, clip, tmp_path):
    """A folder saved by the project carries generation_config.json with the project's settings, so
    `model.generate(**inputs)` needs no arguments (not transformers' default of 20 new tokens) and answers what
    `videopanda infer` prints without --max-new-tokens: both take the limit from that one file (set to 30
    here to keep the test short)."""
    from videopanda.data.processor import VideoPandaProcessor
    from videopanda.serve.infer import video_prompt

    saved = tmp_path / "saved"
    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).save_pretrained(saved)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(folder / name, saved / name)
    settings = json.loads((saved / "generation_config.json").read_text())
    config = json.loads((saved / "config.json").read_text())
    assert {k: settings.get(k) for k in ("do_sample", "num_beams", "use_cache", "max_new_tokens", "eos_token_id",
                                         "pad_token_id")} == {"do_sample": False, "num_beams": 1, "use_cache": True,
                                                              "max_new_tokens": 1024, "eos_token_id": config["eos_token_id"],
                                                              "pad_token_id": config["pad_token_id"]}
    (saved / "generation_config.json").write_text(json.dumps({**settings, "max_new_tokens": 30}))

    model = AutoModelForCausalLM.from_pretrained(saved).eval()
    processor = VideoPandaProcessor.from_pretrained(saved)
    inputs = processor(text=video_prompt(processor, QUESTION), videos=read_video(clip, num_frames=8))
    with torch.inference_mode():
        new = model.generate(**inputs)[0, inputs["input_ids"].shape[1]:]
    assert len(new) == 30 and processor.tokenizer.eos_token_id not in new.tolist()
    result = run_cli("--model", str(saved), "--video", str(clip), "--question", QUESTION, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == processor.tokenizer.decode(new, skip_special_tokens=True).strip()


COUNTING_RUN = '''
import collections, json, os, sys
from pathlib import Path

import safetensors

folder = Path(sys.argv[1]).resolve()
opened = collections.Counter()


def count_open(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path = Path(os.fsdecode(args[0]))
        if path.parent.resolve() == folder:
            opened[path.name] += 1


sys.addaudithook(count_open)
safe_open = safetensors.safe_open


def counted_safe_open(filename, *args, **kwargs):
    opened["safe_open " + Path(filename).name] += 1
    return safe_open(filename, *args, **kwargs)


safetensors.safe_open = counted_safe_open  # before anything imports it
modules = set()


def record_module(frame, event, arg):
    if (event == "call" and frame.f_code.co_name != "<module>"
            and frame.f_globals.get("__name__", "").startswith("videopanda")):
        modules.add(frame.f_globals["__name__"])


from videopanda.cli import main

sys.setprofile(record_module)
code = main(["infer", "--model", str(folder), *sys.argv[2:]])
sys.setprofile(None)
print(json.dumps({"code": code, "opened": opened, "modules": sorted(modules)}), file=sys.stderr)
'''


def test_infer_reads_the_config_and_the_weight_headers_once_through_few_modules(folder, clip, tmp_path):
    """`videopanda infer` on a saved folder (config.json, generation_config.json, one model.safetensors), run in
    its own process: every Python `open` of a file in the folder is counted by an audit hook, and every
    `safetensors.safe_open` of a weight file by a pass-through wrapper installed before anything imports
    safetensors (the library opens files in Rust, where no audit event fires). config.json is opened once
    (the folder's reader; the model and generation settings are built from what it read), model.safetensors
    twice: its header read once by the reader, and the load itself. The package modules whose functions run
    between the command and the answer are recorded with `sys.setprofile`: the command's own (cli, infer, the
    folder reader, the command parser) and the data path's (`videopanda.data`), nothing else outside
    `videopanda.model` (module bodies run by imports are not counted)."""
    saved = tmp_path / "saved"
    AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).save_pretrained(saved)
    for name in ("tokenizer.model", "tokenizer_config.json"):
        shutil.copy(folder / name, saved / name)
    script = tmp_path / "counting_run.py"
    script.write_text(COUNTING_RUN)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    result = subprocess.run([sys.executable, str(script), str(saved), "--video", str(clip), "--question", QUESTION,
                             "--max-new-tokens", str(NEW_TOKENS), "--device", "cpu"], capture_output=True,
                            text=True, env=env, timeout=300)
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["code"] == 0 and result.stdout.strip(), result.stderr
    assert report["opened"]["config.json"] == 1, report["opened"]
    assert report["opened"]["safe_open model.safetensors"] == 2, report["opened"]
    command = [m for m in report["modules"] if not m.startswith(("videopanda.model.", "videopanda.data."))]
    assert command == ["videopanda.argparsing", "videopanda.cli", "videopanda.log", "videopanda.serve.infer",
                       "videopanda.serve.model_folder"], report["modules"]
