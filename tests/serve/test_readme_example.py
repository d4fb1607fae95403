"""The README's Python inference example, run verbatim in its own process, answers as `videopanda infer` does."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from helpers.media import make_frames, write_video
from helpers.released import build_released_folder
from transformers import AutoModelForCausalLM, AutoProcessor

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_python_example() -> str:
    """The one ```python block of the README's Inference section."""
    section = README.read_text().split("## Inference", 1)[1].split("\n## ", 1)[0]
    [block] = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return block


def test_the_readme_example_runs_verbatim_and_answers_as_infer(tmp_path, tiny_tokenizer_dir):
    code = readme_python_example()
    folder_name = re.search(r'from_pretrained\("([^"]+)"\)', code).group(1)
    video_name = re.search(r'"path": "([^"]+)"', code).group(1)
    released = tmp_path / "released"
    build_released_folder(released, tiny_tokenizer_dir, seed=11)
    folder = tmp_path / folder_name  # where the example looks, relative to its working directory
    AutoModelForCausalLM.from_pretrained(released, dtype=torch.float32).save_pretrained(folder)
    AutoProcessor.from_pretrained(released).save_pretrained(folder)
    settings = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**settings, "max_new_tokens": 7}))
    write_video(tmp_path / video_name, make_frames(24, height=48, width=64), fps=8)

    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    example = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                             timeout=300)
    assert example.returncode == 0, example.stderr
    question = re.search(r'"text": "([^"]+)"', code).group(1)
    infer = subprocess.run([sys.executable, "-m", "videopanda", "infer", "--model", folder_name, "--video", video_name,
                            "--question", question, "--device", "cpu"], cwd=tmp_path, capture_output=True, text=True,
                           env=env, timeout=300)
    assert infer.returncode == 0, infer.stderr
    assert example.stdout.strip() == infer.stdout.strip()
    assert infer.stdout.strip()
