"""`videopanda infer` end to end on an mp4 through a tiny folder in the released layout, and its error paths."""
import json
import os
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
from videopanda.infer import main

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


def test_bad_frame_count(folder, clip, capsys):
    assert main(["--model", str(folder), "--video", str(clip), "--question", QUESTION, "--num-frames", "6"]) == 1
    assert "multiple of frames_per_chunk" in one_error_line(capsys)
