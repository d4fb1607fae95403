"""Tiny real folders for training tests: a Llama folder with a tokenizer trained in the test, a LanguageBind
teacher folder, and a DATA_ROOT in the original training layout with real mp4s and text-only samples."""
import json
import logging
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

# Frames: 4 frames in one chunk, student 112 px (8x8 patches -> 4x4 LSD grid), teacher 56 px (4x4 patches).
MODEL_CONFIG = ["num_frames=4", "frames_per_chunk=4", "image_size=112", "teacher_image_size=56"]
STAB = ["width=32", "num_heads=4", "padding_window=8"]
TEACHER = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3, image_size=56,
               patch_size=14, num_frames=8, hidden_act="gelu")
WORDS = "red green blue yellow circle square triangle moves left right up down".split()


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory, tiny_tokenizer_dir):
    """A plain 2-layer Llama (hidden 64) folder with the tokenizer: the prealign starting point."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("llama")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.unk_token_id, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory):
    from videopanda.train.teacher import LanguageBindVideoTower, TeacherConfig, init_teacher_weights

    tower = init_teacher_weights(LanguageBindVideoTower(TeacherConfig(**TEACHER)), seed=1, std=0.2)
    return tower.save_pretrained(tmp_path_factory.mktemp("LanguageBind_Video_merge"))


def _conversation(i: int, video: bool) -> list[dict]:
    question = f"what colour is the {WORDS[3 + i % 4]}?"
    answer = " ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(6 + i % 5))
    return [{"from": "human", "value": ("<video>\n" if video else "") + question}, {"from": "gpt", "value": answer}]


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """DATA_ROOT/train/train_json/{valley_.json, videochatgpt_tune_.json} with mp4s under DATA_ROOT/train/valley.

    24 samples: 16 with a video (aspect ratios vary: letterboxed frames), 8 text-only."""
    from helpers.media import make_frames, write_video

    root = tmp_path_factory.mktemp("DATA_ROOT")
    videos = root / "train" / "valley"
    videos.mkdir(parents=True)
    (root / "train" / "train_json").mkdir()
    samples = []
    for i in range(24):
        sample = {"id": f"s{i}", "conversations": _conversation(i, video=i % 3 != 2)}
        if i % 3 != 2:
            height, width = ((48, 64), (64, 48), (48, 48))[i % 3 if i % 3 < 2 else 2]
            write_video(videos / f"v{i}.mp4", make_frames(6 + i % 4, height=height, width=width, seed=i), fps=4)
            sample["video"] = f"valley/v{i}.mp4"
        samples.append(sample)
    for name in ("valley_.json", "videochatgpt_tune_.json"):
        (root / "train" / "train_json" / name).write_text(json.dumps(samples))
    return root


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def tiny_args(llama_dir, teacher_dir, data_root):
    """`videopanda train` arguments for the tiny setting (CPU, no workers, no DeepSpeed unless `extra` names a
    config, global batch 8 = 2 x 2 ranks x 2 accumulation steps) on top of the default experiment, with the tiny
    visual part's configuration (the fresh one of prealign; later stages check it against their starting
    folder). `extra`: more `key.path=value` overrides; `{stage}` in them is the stage being run."""

    def make(stage: str, model: Path, output: Path, *extra: str) -> list[str]:
        own = {"init": model, "output_dir": output, "first_half": "false", "global_batch_size": 8,
               "per_device_batch_size": 2}
        args = ["--stage", stage, *(f"stages.{stage}.{key}={value}" for key, value in own.items()),
                f"model.teacher={teacher_dir}", f"data.root={data_root}", "runtime.num_workers=0",
                "runtime.device=cpu", "runtime.report_to=none", "training.gradient_checkpointing=false",
                "training.deepspeed=null", *(f"model.config.{pair}" for pair in MODEL_CONFIG),
                *(f"model.stab.{pair}" for pair in STAB)]
        return args + [item.replace("{stage}", stage) for item in extra]

    return make


def torchrun_command(args: list[str], nproc: int = 2) -> list[str]:
    return [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()),
            "-m", "videopanda.train", *args]


def run_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}


def torchrun(args: list[str], nproc: int = 2, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run one stage under torchrun; fails the test with the log tail when it does not exit 0."""
    done = subprocess.run(torchrun_command(args, nproc), env=run_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        pytest.fail(f"torchrun exited {done.returncode}:\n{(done.stdout + done.stderr)[-6000:]}")
    return done


def read_loss_log(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "loss_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def trainkit():
    """The helpers above for test modules (conftest modules are not importable under importlib mode)."""
    return types.SimpleNamespace(torchrun=torchrun, command=torchrun_command, env=run_env, repo=REPO,
                                 read_loss_log=read_loss_log, free_port=free_port, python=PYTHON)
