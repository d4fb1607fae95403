import json
import random
from pathlib import Path

import pytest

COLOURS = ["red", "green", "blue", "yellow"]


def write_qa_dataset(data_root: Path, folder: str = "MSVD_Zero_Shot_QA", n: int = 12, missing_video: int | None = 5,
                     prefix: str = "", ext: str = ".mp4") -> list[dict]:
    """A zero-shot QA set on disk: n questions over n/2 video files (small byte files with distinct
    content), answers listed in shuffled order. Question `missing_video` names a video with no file.
    Returns the expected (question, answer) pairs, with ids."""
    root = data_root / "eval" / "GPT_Zero_Shot_QA" / folder
    (root / "videos").mkdir(parents=True)
    questions, answers, expected = [], [], []
    for i in range(n):
        video = f"clip{i // 2}"
        if i == missing_video:
            video = "clip_not_there"
        else:
            (root / "videos" / f"{prefix}{video}{ext}").write_bytes(bytes([i // 2]) * (100 + i // 2))
        qid = f"q{i:03d}"
        colour = COLOURS[i % len(COLOURS)]
        questions.append({"video_name": video, "question": f"what colour is shape {i}", "question_id": qid})
        answers.append({"answer": colour, "type": "colour" if i % 3 else "count", "question_id": qid})
        expected.append({"id": qid, "question": questions[-1]["question"], "answer": colour, "video": video})
    random.Random(0).shuffle(answers)
    (root / "test_q.json").write_text(json.dumps(questions))
    (root / "test_a.json").write_text(json.dumps(answers))
    return expected


@pytest.fixture
def msvd_root(tmp_path):
    data_root = tmp_path / "data"
    expected = write_qa_dataset(data_root)
    return data_root, expected


def save_tiny_model(tokenizer_dir: Path, folder: Path, seed: int = 0) -> Path:
    """A tiny random Video-Panda folder (weights from `seed`) with the test tokenizer."""
    import shutil

    import torch
    from transformers import AutoTokenizer

    from videopanda.model.videopanda import VideoPandaConfig, VideoPandaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = VideoPandaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, video_hidden_size=64, mm_hidden_size=64, image_size=56,
                              teacher_image_size=28, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    VideoPandaForCausalLM(config).save_pretrained(folder)
    for path in tokenizer_dir.iterdir():
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def model_dir(tiny_tokenizer_dir, tmp_path_factory):
    return save_tiny_model(tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny_panda"), seed=0)


@pytest.fixture(scope="session")
def other_model_dir(tiny_tokenizer_dir, tmp_path_factory):
    """Same config, same file names and sizes as `model_dir`, other weights (another checkpoint of a run)."""
    return save_tiny_model(tiny_tokenizer_dir, tmp_path_factory.mktemp("tiny_panda_other"), seed=1)
