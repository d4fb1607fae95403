"""`videopanda eval qa` with a real (tiny, random) Video-Panda folder: batched generation gives the
same answers as batch size 1, and an unreadable video becomes an error row."""
import json

import pytest
from helpers.judge_server import closed_url
from helpers.media import make_frames, write_text_file, write_video

from videopanda.eval.cli import main
from videopanda.eval.qa import chunk_file


def test_batched_equals_batch_size_one(model_dir, tmp_path):
    # different aspect ratios and lengths -> different visual token counts per sample (real left padding)
    _, questions = clip_dataset(tmp_path, [("wide", "what colour is the square"), ("tall", "how many shapes"),
                                           ("broken", "what moves"), ("short", "describe the video first then the shape"),
                                           ("wide", "which shape moves left"), ("tall", "did the circle turn red")])

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
    """scripts/videopanda/eval/msvd.sh end to end: two CPU chunk processes, merge, offline judge; then the
    launchers stop at a failing judge, at an unanswered question, and all.sh at a missing benchmark."""
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

    def launch(script, extra_env=None):
        return subprocess.run(["bash", str(repo / "scripts/videopanda/eval" / script), str(model_dir),
                               str(tmp_path / "data"), str(tmp_path / "out")], env={**env, **(extra_env or {})},
                              capture_output=True, text=True, timeout=300)

    result = launch("msvd.sh")
    assert result.returncode == 0, result.stderr[-3000:]
    predictions = tmp_path / "out" / "msvd" / "predictions"
    assert sorted(p.name for p in predictions.iterdir()) == [
        "chunk-0-of-2.jsonl", "chunk-0-of-2.run.json", "chunk-1-of-2.jsonl", "chunk-1-of-2.run.json"]
    results_file = tmp_path / "out" / "msvd" / "judge" / "results.json"
    results = json.loads(results_file.read_text())
    assert results["num_yes"] + results["num_no"] == 3 and results["dataset"] == "msvd"
    assert results["complete"] is True and results["coverage"] == "3 questions: 3 judged"
    assert "not comparable" in results["judge"]
    chunk = json.loads((predictions / "chunk-0-of-2.run.json").read_text())
    assert results["prediction_fingerprint"] == chunk["fingerprint"]
    assert chunk["fingerprint"]["generation"] == {"max_new_tokens": 4, "greedy": True}

    # a judge that cannot be reached: the launcher fails, and no results.json claims anything
    result = launch("msvd.sh", {"JUDGE": "gpt", "OPENAI_API_KEY": "k",
                                "API_BASE": closed_url()})
    assert result.returncode == 1 and "cannot reach the judge" in result.stderr
    assert not results_file.exists()

    # a question whose video cannot be read: the merge stops the launcher before the judge
    (root / "test_q.json").write_text(json.dumps(
        [{"video_name": "a", "question": f"question {i}", "question_id": i} for i in range(3)]
        + [{"video_name": "gone", "question": "question 3", "question_id": 3}]))
    (root / "test_a.json").write_text(json.dumps([{"answer": "red", "question_id": i} for i in range(4)]))
    result = launch("msvd.sh")
    assert result.returncode == 1 and "INCOMPLETE" in result.stdout, result.stderr[-3000:]
    assert not results_file.exists(), "the judge (exact) would have written results.json"
    result = launch("msvd.sh", {"ALLOW_INCOMPLETE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(results_file.read_text())
    assert results["num_items"] == 4 and results["failed_ids"]["inference"] == [3]
    assert results["accuracy"] == pytest.approx(100 * results["num_yes"] / 4)

    # all.sh on a data root without the Video-ChatGPT benchmark: one line naming the missing file, nothing run
    result = launch("all.sh")
    assert result.returncode == 1 and "rerun" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "generic_qa.json not found" in result.stderr


def clip_dataset(tmp_path, questions=None):
    """Clips of 1.2 s (12 frames at 10 fps), 2 s and 1.5 s (3 frames at 2 fps), a broken file, and questions on them
    ((video, question) pairs)."""
    root = tmp_path / "data" / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    (root / "videos").mkdir(parents=True)
    write_video(root / "videos" / "wide.mp4", make_frames(12, height=32, width=64, seed=1))
    write_video(root / "videos" / "tall.mp4", make_frames(20, height=64, width=32, seed=2))
    write_video(root / "videos" / "short.gif", make_frames(3, height=48, width=48, seed=3), fps=2)
    write_text_file(root / "videos" / "broken.mp4")
    questions = questions or [("wide", "what colour is the square"), ("tall", "how many shapes"),
                              ("broken", "what moves"), ("short", "describe the video first then the shape"),
                              ("tall", "did the circle turn red")]
    (root / "test_q.json").write_text(json.dumps(
        [{"video_name": v, "question": q, "question_id": i} for i, (v, q) in enumerate(questions)]))
    (root / "test_a.json").write_text(json.dumps(
        [{"answer": "red", "type": "t", "question_id": i} for i in range(len(questions))]))
    return root, questions


@pytest.mark.parametrize("option, sampling", [
    (["--num-frames", "16"], {"num_frames": 16}),
    (["--fps", "6"], {"fps": 6.0}),
])
def test_frames_sampled_by_count_or_rate_answer_as_infer_does_and_are_fingerprinted(model_dir, tmp_path, option,
                                                                                     sampling):
    """eval qa with --num-frames 16 or --fps 6 answers each question as `infer.answer` does on the video file
    sampled that way, in batches of 1 and of 3 alike (at 6 frames a second the clips give 8, 12 and 4 frames:
    one batch holds several counts), and the sidecar's fingerprint records the sampling."""
    from videopanda.serve.infer import answer, with_sampling
    from videopanda.serve.model_folder import load_model

    root, questions = clip_dataset(tmp_path)
    preds = {}
    for batch in (1, 3):
        out = tmp_path / f"bs{batch}"
        assert main(["qa", "--model", str(model_dir), "--dataset", "msvd", "--data-root", str(tmp_path / "data"),
                     "--output-dir", str(out), "--batch-size", str(batch), "--device", "cpu",
                     "--max-new-tokens", "6", "--no-progress", *option]) == 0
        preds[batch] = {r["id"]: r for r in map(json.loads, chunk_file(out, 1, 0).read_text().splitlines())}
    assert preds[1] == preds[3]
    assert preds[1][2]["pred"] is None and "broken.mp4" in preds[1][2]["error"]

    model, processor = load_model(model_dir, "cpu", None)
    processor = with_sampling(processor, **sampling)
    videos = {path.stem: path for path in (root / "videos").iterdir()}
    for index, (video, question) in enumerate(questions):
        if video != "broken":
            assert preds[1][index]["pred"] == answer(model, processor, videos[video], question, 6), index

    frames = json.loads((tmp_path / "bs1" / "chunk-0-of-1.run.json").read_text())["fingerprint"]["frames"]
    if "fps" in sampling:
        assert "num_frames" not in frames and frames["sampling"] == {"fps": 6.0, "min_frames": 4, "max_frames": 32}
    else:
        assert frames["num_frames"] == 16 and "sampling" not in frames


@pytest.mark.parametrize("option, sampling", [([], {"fps": 6.0}), (["--num-frames", "8"], {"num_frames": 8})])
def test_a_folder_whose_processor_samples_by_rate_is_answered_and_fingerprinted_as_it_samples(model_dir, tmp_path,
                                                                                            option, sampling):
    """A folder whose saved video processor samples 6 frames a second: without an option `eval qa` samples as
    saved and its fingerprint (as `expected_fingerprint` says before loading anything) records the rate;
    `--num-frames 8` samples 8 frames by count there, and the fingerprint says so. The answers are
    `infer.answer`'s with a processor built here for that sampling."""
    import shutil

    from videopanda.data.processor import VideoPandaProcessor, VideoPandaVideoProcessor
    from videopanda.eval.qa import ModelAnswererConfig, expected_fingerprint
    from videopanda.serve.infer import answer
    from videopanda.serve.model_folder import load_model

    folder = shutil.copytree(model_dir, tmp_path / "by_rate")
    saved = VideoPandaProcessor.from_pretrained(folder)
    saved.video_processor.fps = 6.0
    saved.save_pretrained(folder)
    root, questions = clip_dataset(tmp_path)
    out = tmp_path / "pred"
    assert main(["qa", "--model", str(folder), "--dataset", "msvd", "--data-root", str(tmp_path / "data"),
                 "--output-dir", str(out), "--device", "cpu", "--max-new-tokens", "6", "--no-progress", *option]) == 0
    preds = {r["id"]: r for r in map(json.loads, chunk_file(out, 1, 0).read_text().splitlines())}

    frames = json.loads((out / "chunk-0-of-1.run.json").read_text())["fingerprint"]["frames"]
    if "fps" in sampling:
        assert "num_frames" not in frames and frames["sampling"] == {"fps": 6.0, "min_frames": 4, "max_frames": 32}
    else:
        assert frames["num_frames"] == 8 and "sampling" not in frames
    config = ModelAnswererConfig(model=str(folder), device="cpu", max_new_tokens=6, num_frames=sampling.get("num_frames"))
    assert expected_fingerprint(config)["frames"] == frames

    model, processor = load_model(folder, "cpu", None)
    video = VideoPandaVideoProcessor.from_model_config(model.config, **sampling)
    reference = VideoPandaProcessor(video, processor.tokenizer)
    videos = {path.stem: path for path in (root / "videos").iterdir()}
    for index, (name, question) in enumerate(questions):
        if name != "broken":
            assert preds[index]["pred"] == answer(model, reference, videos[name], question, 6), index


@pytest.mark.parametrize("option, message", [
    (["--num-frames", "6"], "multiple of frames_per_chunk"),
    (["--fps", "0"], "argument --fps: must be above 0, got 0"),
    (["--fps", "1", "--num-frames", "8"], "argument --num-frames: not allowed with argument --fps"),
    (["--fps", "1", "--max-frames", "6"], "max_frames (6) must be a positive multiple of the chunk length (4)"),
])
def test_a_bad_sampling_is_one_line_before_anything_is_written(model_dir, tmp_path, option, message):
    """A usage error (argparse's usage, then one line) or a sampling the video processor refuses (one logged
    line): exit 2 either way, and no prediction folder."""
    from .test_faults import one_error_line, videopanda

    clip_dataset(tmp_path)
    code, err = videopanda("eval", "qa", "--model", model_dir, "--dataset", "msvd", "--data-root", tmp_path / "data",
                           "--output-dir", tmp_path / "pred", "--device", "cpu", "--no-progress", *option)
    assert code == 2 and "Traceback" not in err
    line = err.strip().splitlines()[-1] if "usage:" in err else one_error_line(err)
    assert message in line, err
    assert not (tmp_path / "pred").exists()
