"""lmms-eval itself runs the `videopanda` plugin (its entry point, the shipped task YAMLs) on a tiny random
model over synthetic clips, in lmms-eval's own environment (.venv-lmms, `scripts/setup_lmms_eval.sh`).

The generation task's replies are `videopanda eval qa`'s greedy answers for the same questions, and its
exact_match is the one those answers earn; the multiple-choice task's per-choice values are the
negative log-likelihoods `ModelAnswerer.continuation_logprobs` gives, and its accuracy follows from them.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers.media import make_frames, write_video

from videopanda.eval.cli import main as eval_main
from videopanda.eval.qa import chunk_file

REPO = Path(__file__).resolve().parents[2]
LMMS_VENV = Path(os.environ.get("LMMS_VENV", REPO / ".venv-lmms"))
LMMS_EVAL = LMMS_VENV / "bin" / "lmms-eval"
COLOURS = ["red", "green", "blue", "yellow"]
QUESTIONS = [("wide", "what colour is the square"), ("tall", "how many shapes"), ("wide", "which shape moves left"),
             ("short", "did the circle turn red")]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not LMMS_EVAL.is_file(), reason=f"lmms-eval's environment is not set up ({LMMS_EVAL} is "
                                                       f"missing): run scripts/setup_lmms_eval.sh (.ci/run does)"),
]


def write_set(data_root: Path, folder: str, answers: list[str]) -> Path:
    """A zero-shot QA set in the project's layout over three synthetic clips of different shapes."""
    root = data_root / "eval" / "GPT_Zero_Shot_QA" / folder
    (root / "videos").mkdir(parents=True, exist_ok=True)
    write_video(root / "videos" / "wide.mp4", make_frames(12, height=32, width=64, seed=1))
    write_video(root / "videos" / "tall.mp4", make_frames(20, height=64, width=32, seed=2))
    write_video(root / "videos" / "short.mp4", make_frames(5, height=48, width=48, seed=3), fps=2)
    (root / "test_q.json").write_text(json.dumps(
        [{"video_name": video, "question": question, "question_id": f"q{i}"}
         for i, (video, question) in enumerate(QUESTIONS)]))
    write_answers(root, answers)
    return root


def write_answers(root: Path, answers: list[str]) -> None:
    (root / "test_a.json").write_text(json.dumps(
        [{"answer": answer, "type": "colour", "question_id": f"q{i}"} for i, answer in reversed(list(enumerate(answers)))]))


def run_lmms_eval(tmp_path: Path, data_root: Path, model_dir: Path, tasks: str, include_path: Path, *extra: str):
    """lmms-eval's CLI in its own venv -> (stdout, the results.json, the samples of each task by doc_id)."""
    out = tmp_path / f"out-{tasks}"
    env = {**os.environ, "VIDEOPANDA_DATA_ROOT": str(data_root), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(
        [str(LMMS_EVAL), "--model", "videopanda", "--model_args", f"pretrained={model_dir}", "--device", "cpu",
         "--tasks", tasks, "--include_path", str(include_path), "--output_path", str(out), "--log_samples", *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    # lmms-eval exits 0 after an error too: the results file is the proof of a finished run
    results_files = list(out.rglob("*_results.json"))
    assert proc.returncode == 0 and len(results_files) == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    (results_file,) = results_files
    samples = {}
    for task in tasks.split(","):
        (samples_file,) = out.rglob(f"*_samples_{task}.jsonl")
        rows = [json.loads(line) for line in samples_file.read_text().splitlines()]
        samples[task] = {row["doc_id"]: row for row in rows}
    return proc.stdout, json.loads(results_file.read_text()), samples


def test_generation_task_gives_eval_qa_answers_and_a_results_table(model_dir, tmp_path):
    from videopanda.eval.judge import normalize_answer
    from videopanda.lmms_eval_plugin import TASKS_DIR

    data_root = tmp_path / "data"
    root = write_set(data_root, "MSVD_Zero_Shot_QA", ["red"] * len(QUESTIONS))
    pred_dir = tmp_path / "qa"
    assert eval_main(["qa", "--model", str(model_dir), "--dataset", "msvd", "--data-root", str(data_root),
                      "--output-dir", str(pred_dir), "--device", "cpu", "--max-new-tokens", "6", "--no-progress"]) == 0
    preds = {row["id"]: row["pred"] for row in map(json.loads, chunk_file(pred_dir, 1, 0).read_text().splitlines())}
    # two answers are the model's own replies, two are not: exact_match must come out at one half
    answers = [preds["q0"], "red", preds["q2"], "yellow"]
    write_answers(root, answers)
    expected = sum(normalize_answer(preds[f"q{i}"]) == normalize_answer(a) for i, a in enumerate(answers)) / len(answers)
    assert expected == 0.5

    stdout, results, samples = run_lmms_eval(tmp_path, data_root, model_dir, "videopanda_msvd_qa", TASKS_DIR,
                                             "--gen_kwargs", "max_new_tokens=6", "--batch_size", "3")
    replies = {doc_id: row["filtered_resps"] for doc_id, row in samples["videopanda_msvd_qa"].items()}
    assert replies == {i: preds[f"q{i}"] for i in range(len(QUESTIONS))}
    assert results["results"]["videopanda_msvd_qa"]["exact_match,none"] == pytest.approx(expected)
    table_row = next(line for line in stdout.splitlines() if line.startswith("|videopanda_msvd_qa"))
    assert "exact_match" in table_row and "0.5" in table_row


def test_multiple_choice_task_ranks_by_the_plugins_log_likelihoods(model_dir, tmp_path):
    from videopanda.data.video import read_video
    from videopanda.eval.qa import ModelAnswerer, ModelAnswererConfig
    from videopanda.serve.infer import video_prompt

    data_root = tmp_path / "data"
    root = write_set(data_root, "TGIF_Zero_Shot_QA", ["red"] * len(QUESTIONS))
    answerer = ModelAnswerer(ModelAnswererConfig(model=str(model_dir), device="cpu"))
    logprobs = []
    for video, question in QUESTIONS:
        frames = read_video(root / "videos" / f"{video}.mp4", num_frames=answerer.sampling["num_frames"])
        scores = answerer.continuation_logprobs(video_prompt(answerer.processor, question), frames,
                                                [f" {c}" for c in COLOURS])
        logprobs.append([logprob for logprob, _ in scores])
    best = [max(range(len(COLOURS)), key=row.__getitem__) for row in logprobs]
    # the gold answer is the model's favourite for the first two questions and another colour for the rest
    answers = [COLOURS[b if i < 2 else (b + 1) % len(COLOURS)] for i, b in enumerate(best)]
    write_answers(root, answers)

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    module = "videopanda.lmms_eval_plugin.qa_task"
    (tasks / "colour_choice.yaml").write_text("\n".join([
        f"class: !function {module}.ZeroShotQATask", "task: colour_choice", "dataset_path: GPT_Zero_Shot_QA",
        "dataset_name: tgif", "test_split: test", "output_type: multiple_choice",
        f"doc_to_visual: !function {module}.doc_to_visual", f"doc_to_text: !function {module}.doc_to_text",
        f"doc_to_target: !function {module}.doc_to_target", f"doc_to_choice: {json.dumps(COLOURS)}",
        "metric_list:", "  - metric: acc", "    aggregation: mean", "    higher_is_better: true", ""]))
    _, results, samples = run_lmms_eval(tmp_path, data_root, model_dir, "colour_choice", tasks)

    assert results["results"]["colour_choice"]["acc,none"] == pytest.approx(0.5)
    for doc_id, row in samples["colour_choice"].items():
        values = [float(nll) for nll, _ in row["filtered_resps"]]   # the samples file writes them as strings
        assert values == pytest.approx([-lp for lp in logprobs[doc_id]], abs=1e-4)
