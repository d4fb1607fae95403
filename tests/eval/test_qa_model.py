"""`videopanda eval qa` with a real (tiny, random) Video-Panda folder: batched generation gives the
same answers as batch size 1, and an unreadable video becomes an error row."""
import json
import shutil

import pytest
import torch
from helpers.media import make_frames, write_text_file, write_video
from transformers import AutoTokenizer

from videopanda.eval.cli import main
from videopanda.eval.qa import chunk_file
from videopanda.model.videopanda import VideoPandaConfig, VideoPandaForCausalLM


@pytest.fixture(scope="module")
def model_dir(tiny_tokenizer_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_panda")
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    config = VideoPandaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, video_hidden_size=64, mm_hidden_size=64, image_size=56,
                              teacher_image_size=28, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    VideoPandaForCausalLM(config).save_pretrained(folder)
    for path in tiny_tokenizer_dir.iterdir():
        shutil.copy(path, folder / path.name)
    return folder


def test_batched_equals_batch_size_one(model_dir, tmp_path):
    root = tmp_path / "data" / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    (root / "videos").mkdir(parents=True)
    # different aspect ratios and lengths -> different visual token counts per sample (real left padding)
    write_video(root / "videos" / "wide.mp4", make_frames(12, height=32, width=64, seed=1))
    write_video(root / "videos" / "tall.mp4", make_frames(20, height=64, width=32, seed=2))
    write_video(root / "videos" / "short.gif", make_frames(3, height=48, width=48, seed=3), fps=2)
    write_text_file(root / "videos" / "broken.mp4")
    questions = [("wide", "what colour is the square"), ("tall", "how many shapes"),
                 ("broken", "what moves"), ("short", "describe the video first then the shape"),
                 ("wide", "which shape moves left"), ("tall", "did the circle turn red")]
    (root / "test_q.json").write_text(json.dumps(
        [{"video_name": v, "question": q, "question_id": i} for i, (v, q) in enumerate(questions)]))
    (root / "test_a.json").write_text(json.dumps(
        [{"answer": "red", "type": "t", "question_id": i} for i in range(len(questions))]))

    preds = {}
    for batch in (1, 3):
        out = tmp_path / f"bs{batch}"
        assert main(["qa", "--model", str(model_dir), "--dataset", "msvd", "--data-root", str(tmp_path / "data"),
                     "--output-dir", str(out), "--batch-size", str(batch), "--device", "cpu",
                     "--max-new-tokens", "6", "--no-progress"]) == 0
        rows = [json.loads(line) for line in chunk_file(out, 1, 0).read_text().splitlines()]
        preds[batch] = {r["id"]: r for r in rows}
    assert preds[1] == preds[3]
    assert sorted(preds[1]) == list(range(len(questions)))
    assert preds[1][2]["pred"] is None and "broken.mp4" in preds[1][2]["error"]
    assert all(isinstance(preds[1][i]["pred"], str) for i in (0, 1, 3, 4, 5))
    assert len({preds[1][i]["pred"] for i in (0, 1, 3, 4, 5)}) > 1, "a tiny random model still answers differently"


@pytest.mark.slow
def test_qa_launcher_two_processes_merge_and_exact_judge(model_dir, tmp_path):
    """scripts/videopanda/eval/msvd.sh end to end: two CPU chunk processes, merge, offline judge."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    root = tmp_path / "data" / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    (root / "videos").mkdir(parents=True)
    write_video(root / "videos" / "a.mp4", make_frames(8, height=32, width=48, seed=4))
    (root / "test_q.json").write_text(json.dumps(
        [{"video_name": "a", "question": f"question {i}", "question_id": i} for i in range(3)]))
    (root / "test_a.json").write_text(json.dumps([{"answer": "red", "question_id": i} for i in range(3)]))
    env = {**os.environ, "GPUS": "cpu,cpu", "JUDGE": "exact", "MAX_NEW_TOKENS": "4",
           "VIDEOPANDA": str(Path(sys.executable).parent / "videopanda")}
    env.pop("OPENAI_API_KEY", None)
    result = subprocess.run(["bash", str(repo / "scripts/videopanda/eval/msvd.sh"), str(model_dir),
                             str(tmp_path / "data"), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out" / "msvd" / "predictions").iterdir()) == [
        "chunk-0-of-2.jsonl", "chunk-1-of-2.jsonl"]
    results = json.loads((tmp_path / "out" / "msvd" / "judge" / "results.json").read_text())
    assert results["num_yes"] + results["num_no"] == 3 and results["dataset"] == "msvd"
    assert "not comparable" in results["judge"]
