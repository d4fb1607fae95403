"""Offline exact-match judge, the Video-ChatGPT benchmark judge stage, and the reports."""
import json

import pytest

from helpers.judge_server import JudgeServer, reply
from videopanda.eval.cli import main
from videopanda.eval.datasets import load_questions
from videopanda.eval.judge import EXACT_LABEL, compute_metrics
from videopanda.eval.qa import chunk_file, run_qa

KEY = "sk-bench-KEY-77aa"


def test_metric_arithmetic():
    verdicts = [{"verdict": "yes", "score": 5}, {"verdict": "no", "score": 1}, {"verdict": "yes", "score": 4},
                {"verdict": "no", "score": 0}, {"verdict": "no", "score": 2}]
    m = compute_metrics(verdicts)
    assert (m["num_yes"], m["num_no"], m["num_judged"]) == (2, 3, 5)
    assert m["accuracy"] == pytest.approx(40.0) and m["score"] == pytest.approx(12 / 5)
    # Wilson interval of 2/5 by hand (z = 1.95996): centre 0.4 + ... -> [11.76, 76.93] percent
    assert m["accuracy_ci95"] == pytest.approx([11.762, 76.928], abs=0.01)
    assert 0 <= m["score_ci95"][0] < 12 / 5 < m["score_ci95"][1] <= 5
    assert compute_metrics([]) == {"accuracy": None, "accuracy_ci95": None, "score": None, "score_ci95": None,
                                   "num_yes": 0, "num_no": 0, "num_judged": 0, "num_items": 0}
    assert compute_metrics([{"verdict": None, "score": 3}, {"verdict": None, "score": 4}], accuracy=False)["score"] == 3.5
    # items without a verdict stay in the denominator, as wrong with score 0
    m = compute_metrics(verdicts, num_failed=3)
    assert m["num_items"] == 8 and m["accuracy"] == pytest.approx(100 * 2 / 8) and m["score"] == pytest.approx(12 / 8)
    m = compute_metrics([], num_failed=4)
    assert m["accuracy"] == 0.0 and m["score"] == 0.0 and m["num_items"] == 4
    # 0/4: [0, z^2 / (4 + z^2)] = [0, 48.99]; every score 0, so every resample's mean is 0
    assert m["accuracy_ci95"] == pytest.approx([0.0, 48.99], abs=0.01) and m["score_ci95"] == [0.0, 0.0]


def test_exact_judge_end_to_end(msvd_root, tmp_path, capsys):
    data_root, expected = msvd_root
    items = load_questions(data_root, "msvd")
    # q000 exact, q001 punctuation/case/article variant, q002 wrong, q005 has no video -> error row
    answers = {"q000": "red", "q001": "The Green!", "q002": "purple"}

    def answer(batch):
        return [FileNotFoundError("no video") if i.video_path is None else answers.get(i.id, f"an {i.answer}.")
                for i in batch]

    run_qa(items, answer, chunk_file(tmp_path / "pred", 1, 0), progress=False)
    merged = tmp_path / "merge.jsonl"
    merge = ["merge", "--pred-dir", str(tmp_path / "pred"), "--dataset", "msvd", "--data-root", str(data_root),
             "--output", str(merged)]
    assert main(merge) == 1
    assert main([*merge, "--allow-incomplete"]) == 0
    judge = ["judge", "--pred-file", str(merged), "--output-dir", str(tmp_path / "judge"), "--judge", "exact",
             "--no-progress"]
    assert main(judge) == 1                      # a question without an answer: incomplete
    results = json.loads((tmp_path / "judge" / "results.json").read_text())
    assert main([*judge, "--allow-incomplete"]) == 0
    assert json.loads((tmp_path / "judge" / "results.json").read_text()) == results
    assert results["judge"] == EXACT_LABEL and results["judge_model"] == "exact-match"
    assert results["dataset"] == "msvd"          # recorded by the merge
    assert (results["num_yes"], results["num_no"], results["num_failed_inference"]) == (10, 1, 1)
    # over all 12 questions: the question without an answer counts as wrong, score 0
    assert results["accuracy"] == pytest.approx(1000 / 12) and results["score"] == pytest.approx(50 / 12)
    assert results["complete"] is False and results["failed_ids"] == {"inference": ["q005"], "judge": []}
    assert results["coverage"] == "12 questions: 11 judged, 1 failed (1 without a prediction, 0 without a verdict)"
    # types: "count" for i % 3 == 0 -> q000, q003, q006, q009 (all match); the rest "colour" with q002 wrong, q005 failed
    assert results["per_type"]["count"]["accuracy"] == 100.0
    colour = results["per_type"]["colour"]
    assert (colour["num_yes"], colour["num_no"], colour["num_items"]) == (6, 1, 8)
    assert colour["accuracy"] == pytest.approx(75.0)
    printed = capsys.readouterr().out
    assert "not comparable" in printed and "accuracy 83.33 [55.20, 95.30]" in printed
    assert "12 questions: 11 judged, 1 failed" in printed
    # Wilson 95% intervals by hand (z = 1.95996): 10/12 -> [55.20, 95.30]; 4/4 -> [1 / (1 + z^2 / 4), 1] = [51.01, 100]
    assert results["accuracy_ci95"] == pytest.approx([55.196, 95.302], abs=0.01)
    assert results["per_type"]["count"]["accuracy_ci95"] == pytest.approx([51.011, 100.0], abs=0.01)
    assert results["per_type"]["count"]["score_ci95"] == [5.0, 5.0]
    report_dir = tmp_path / "report"
    (tmp_path / "model" / "msvd").mkdir(parents=True)
    (tmp_path / "judge").rename(tmp_path / "model" / "msvd" / "judge")
    assert main(["report", "--results", str(tmp_path / "model"), "--output-dir", str(report_dir)]) == 0
    lo, hi = results["score_ci95"]
    assert f"| model | 83.3 [55.2, 95.3] / 4.17 [{lo:.2f}, {hi:.2f}] (n=12)* |" in (report_dir / "report.md").read_text()


def write_benchmark(data_root):
    root = data_root / "eval" / "Video_ChatGPT_Benchmark"
    (root / "videos").mkdir(parents=True)
    for v in ("v_a", "v_b"):
        (root / "videos" / f"{v}.mp4").write_bytes(b"video " + v.encode())
    (root / "generic_qa.json").write_text(json.dumps([
        {"video_name": "v_a", "Q": "What is in the video?", "A": "A cat sleeps."},
        {"video_name": "v_missing", "Q": "What colour is the car?", "A": "Red."},
        {"video_name": "v_b", "Q": "Where is it?", "A": "In a park."}]))
    (root / "temporal_qa.json").write_text(json.dumps([
        {"video_name": "v_a", "Q": "What happens first?", "A": "The cat yawns, then sleeps."}]))
    (root / "consistency_qa.json").write_text(json.dumps([
        {"video_name": "v_b", "Q1": "Which animal is shown?", "Q2": "What kind of pet appears?", "A": "A dog."}]))


ASPECT_SCORE = {"factual correctness": 4, "detail orientation": 3, "contextual understanding": 5,
                "temporal understanding": 2, "consistency": 1}


def test_benchmark_judge_stage_five_aspects(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    data_root, out = tmp_path / "data", tmp_path / "bench"
    write_benchmark(data_root)
    items = load_questions(data_root, "videochatgpt")
    run_qa(items, lambda b: [FileNotFoundError("no video") if i.video_path is None else f"answer to {i.question}"
                             for i in b], chunk_file(out / "predictions", 1, 0), progress=False)

    def key_of(payload):
        system = payload["messages"][0]["content"]
        return next(k for k in ASPECT_SCORE if k in system)

    with JudgeServer(key_of=key_of) as server:
        for aspect, score in ASPECT_SCORE.items():
            server.set_script(aspect, [reply(f"Score: {{\"score\": {score}}}")])
        judge = ["benchmark", "--data-root", str(data_root), "--output-dir", str(out), "--stage", "judge",
                 "--api-base", server.url, "--judge-model", "gpt-test", "--timeout", "2", "--no-progress"]
        assert main(judge) == 1                      # one generic question has no video: not merged
        assert not (out / "judge").exists()
        assert main([*judge, "--allow-incomplete"]) == 0
        calls = {k: len(server.calls(k)) for k in ASPECT_SCORE}
        consistency_body = server.calls("consistency")[0].json["messages"][1]["content"]
    # 2 answered generic questions per generic aspect, 1 temporal, 1 consistency pair
    assert calls == {"factual correctness": 2, "detail orientation": 2, "contextual understanding": 2,
                     "temporal understanding": 1, "consistency": 1}
    for text in ("Which animal is shown?", "What kind of pet appears?", "answer to Which animal is shown?",
                 "answer to What kind of pet appears?", "A dog."):
        assert text in consistency_body
    results = json.loads((out / "judge" / "results.json").read_text())
    # the generic aspects cover 3 questions, one without an answer (score 0)
    assert results["scores"] == pytest.approx({"correctness": 8 / 3, "detail": 2, "context": 10 / 3, "temporal": 2,
                                               "consistency": 1})
    assert results["average"] == pytest.approx(2.2)
    assert results["num_failed_inference"]["correctness"] == 1 and results["judge_model"] == "judge-test-0613"
    assert results["complete"] is False and results["num_items"]["correctness"] == 3
    assert results["coverage"]["consistency"] == "1 pairs: 1 judged"
    assert results["scores_ci95"] == {"correctness": [0.0, 4.0], "detail": [0.0, 3.0], "context": [0.0, 5.0],
                                      "temporal": [2.0, 2.0], "consistency": [1.0, 1.0]}
    # the average resamples the three generic questions once for its three aspects: all three on the
    # question without an answer gives (0 + 0 + 0 + 2 + 1) / 5 = 0.6 (p = 1/27), none gives
    # (4 + 3 + 5 + 2 + 1) / 5 = 3.0
    assert results["average_ci95"] == [0.6, 3.0]
    printed = capsys.readouterr().out
    assert "Average" in printed and "2.20" in printed and "3 questions: 2 judged, 1 failed" in printed
    for path in out.rglob("*"):
        assert not path.is_file() or KEY not in path.read_text(errors="replace")

    report_dir = tmp_path / "report"
    model_dir = tmp_path / "runs" / "tiny-panda"
    (model_dir / "msvd" / "judge").mkdir(parents=True)
    (model_dir / "msvd" / "judge" / "results.json").write_text(json.dumps(
        {"accuracy": 64.7, "score": 3.81, "judge": "gpt", "judge_model": "gpt-3.5-turbo-0125", "num_failed": 0}))
    (model_dir / "benchmark").symlink_to(out, target_is_directory=True)
    assert main(["report", "--results", str(model_dir), "--output-dir", str(report_dir), "--plot"]) == 0
    markdown = (report_dir / "report.md").read_text()
    assert "| tiny-panda | 64.7 / 3.8 | - | - | - |" in markdown
    # bootstrap intervals over the items: correctness scores (4, 4, 0) -> a resample of three 0s (p = 1/27 >
    # 2.5%) and of three 4s are both in the 95% range; one item -> its score
    assert ("| tiny-panda | 2.67 [0.00, 4.00] (n=3)* | 2.00 [0.00, 3.00] (n=3)* | 3.33 [0.00, 5.00] (n=3)* "
            "| 2.00 [2.00, 2.00] (n=1) | 1.00 [1.00, 1.00] (n=1) | 2.20 [0.60, 3.00]* |") in markdown
    assert "tiny-panda benchmark: Correctness of information: 3 questions: 2 judged, 1 failed" in markdown
    assert "gpt-3.5-turbo-0125" in markdown and "judge-test-0613" in markdown
    assert (report_dir / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((report_dir / "report.json").read_text())["models"]["tiny-panda"]["qa"]["msvd"]["accuracy"] == 64.7
