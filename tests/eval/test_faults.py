"""Faults outside the numbers: a full disk under every eval writer (one line naming the file, no
temporary file left, a prediction file that a resume can still read), the report's coverage of every
dataset and its plots, and the benchmark launcher on a data root without the benchmark."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.full_disk import full_disk

from videopanda.eval.cli import main
from videopanda.eval.datasets import load_questions
from videopanda.eval.merge import merge_predictions
from videopanda.eval.qa import chunk_file, run_qa
from videopanda.eval.records import read_jsonl
from videopanda.io import OutputError

REPO = Path(__file__).resolve().parents[2]


def videopanda(*args, env=None, timeout=300):
    """`python -m videopanda ARGS` in a real process -> (exit code, stderr)."""
    result = subprocess.run([sys.executable, "-m", "videopanda", *map(str, args)], capture_output=True, text=True,
                            cwd=REPO, timeout=timeout, env={**os.environ, **(env or {})})
    return result.returncode, result.stderr


def one_error_line(stderr):
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if " ERROR " in line]
    assert len(errors) == 1, stderr
    return errors[0]


def no_temporary_files(folder):
    return [p.name for p in Path(folder).rglob("*") if ".tmp" in p.name]


def answer_all(batch):
    return [FileNotFoundError("no video") if item.video_path is None else f"answer {item.id}" for item in batch]


def test_merge_on_a_full_disk(msvd_root, tmp_path):
    data_root, _ = msvd_root
    run_qa(load_questions(data_root, "msvd"), answer_all, chunk_file(tmp_path / "pred", 1, 0), progress=False)
    with full_disk(tmp_path / "full", size_kb=64, fill=True) as full:
        code, stderr = videopanda("eval", "merge", "--pred-dir", tmp_path / "pred", "--dataset", "msvd",
                                  "--data-root", data_root, "--output", full / "merge.jsonl", "--allow-incomplete")
        assert code == 2  # the merge writes its sidecar first, so that is the file the full disk refuses
        assert one_error_line(stderr).endswith(f"{full / 'merge.run.json'}: no space left on device")
        assert no_temporary_files(full) == [] and not (full / "merge.jsonl").exists()
        assert not (full / "merge.run.json").exists()


def test_an_append_on_a_full_disk_leaves_a_file_a_resume_can_read(msvd_root, tmp_path):
    data_root, _ = msvd_root
    items = load_questions(data_root, "msvd")
    with full_disk(tmp_path / "small", size_kb=64) as small:
        out = chunk_file(small, 1, 0)
        filler = small / "filler"
        asked = []

        def answer(batch):
            asked.extend(item.id for item in batch)
            if len(asked) == 5:    # the disk fills up while the run goes on
                with open(filler, "wb", buffering=0) as handle:
                    try:
                        while True:
                            handle.write(b"\0" * 1024)
                    except OSError:
                        pass
            return ["a long answer " * 40 for _ in batch]

        with pytest.raises(OutputError) as info:
            run_qa(items, answer, out, progress=False)
        assert str(info.value) == f"{out}: no space left on device"
        kept = read_jsonl(out)
        assert out.read_bytes().endswith(b"\n") and len(kept) == len(out.read_bytes().splitlines())
        assert 4 <= len(kept) < len(items)

        filler.unlink()
        asked.clear()
        run_qa(items, lambda batch: [f"answer {item.id}" for item in batch], out, progress=False)
        report = merge_predictions(small, items)
        assert report.complete and len(read_jsonl(out)) == len(items)


def test_judge_and_report_on_a_full_disk(msvd_root, tmp_path):
    data_root, _ = msvd_root
    run_qa(load_questions(data_root, "msvd"), answer_all, chunk_file(tmp_path / "pred", 1, 0), progress=False)
    merged = tmp_path / "merge.jsonl"
    assert main(["merge", "--pred-dir", str(tmp_path / "pred"), "--dataset", "msvd", "--data-root", str(data_root),
                 "--output", str(merged), "--allow-incomplete"]) == 0
    assert main(["judge", "--pred-file", str(merged), "--output-dir", str(tmp_path / "runs" / "m" / "msvd"),
                 "--judge", "exact", "--allow-incomplete", "--no-progress"]) == 0
    with full_disk(tmp_path / "full", size_kb=64, fill=True) as full:
        code, stderr = videopanda("eval", "judge", "--pred-file", merged, "--output-dir", full / "judge",
                                  "--judge", "exact", "--allow-incomplete", "--no-progress")
        assert code == 2 and "no space left on device" in one_error_line(stderr)
        assert str(full / "judge") in one_error_line(stderr)
        code, stderr = videopanda("eval", "report", "--results", tmp_path / "runs" / "m", "--output-dir",
                                  full / "report", "--plot")
        assert code == 2 and "no space left on device" in one_error_line(stderr)
        assert no_temporary_files(full) == []


@pytest.mark.slow
def test_qa_on_a_full_disk(model_dir, tmp_path):
    root = tmp_path / "data" / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    (root / "videos").mkdir(parents=True)
    (root / "test_q.json").write_text(json.dumps([{"video_name": "a", "question": "what?", "question_id": 1}]))
    (root / "test_a.json").write_text(json.dumps([{"answer": "red", "question_id": 1}]))
    with full_disk(tmp_path / "full", size_kb=64, fill=True) as full:
        code, stderr = videopanda("eval", "qa", "--model", model_dir, "--dataset", "msvd", "--data-root",
                                  tmp_path / "data", "--output-dir", full / "pred", "--device", "cpu",
                                  "--no-progress")
        assert code == 2 and "no space left on device" in one_error_line(stderr)
        assert str(full / "pred") in one_error_line(stderr)
        assert no_temporary_files(full) == []


def test_a_question_file_that_is_not_utf8_is_one_line(msvd_root, tmp_path):
    data_root, _ = msvd_root
    questions = data_root / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA" / "test_q.json"
    questions.write_bytes(questions.read_bytes().replace(b"shape 1", b"shape \xe9"))
    code, stderr = videopanda("eval", "merge", "--pred-dir", tmp_path / "pred", "--dataset", "msvd",
                              "--data-root", data_root, "--output", tmp_path / "merge.jsonl")
    assert code == 1
    assert one_error_line(stderr).split(" ERROR videopanda.eval.cli: ")[1].startswith(
        f"{questions}: cannot be read as JSON ('utf-8' codec can't decode byte 0xe9")
    assert not (tmp_path / "merge.jsonl").exists()


def write_results(path, **fields):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"judge": "gpt", "judge_model": "judge-0613", "complete": True, **fields}))


def test_report_has_every_dataset_and_plots_what_there_is(tmp_path, caplog):
    run = tmp_path / "runs" / "tiny"
    write_results(run / "msvd" / "judge" / "results.json", dataset="msvd", accuracy=64.7, score=3.8)
    write_results(run / "synth" / "judge" / "results.json", dataset="synth", accuracy=80.8, score=4.1,
                  complete=False, coverage="100 questions: 98 judged, 2 failed (2 without a prediction, 0 without a verdict)")
    write_results(run / "mystery" / "results.json", accuracy=12.0, score=1.0)
    out = tmp_path / "report"
    assert main(["report", "--results", str(run), "--output-dir", str(out), "--plot"]) == 0
    markdown = (out / "report.md").read_text()
    assert "| Model | MSVD-QA | MSRVTT-QA | TGIF-QA | ActivityNet-QA | Synthetic QA | Judge | Frames |" in markdown
    assert "| tiny | 64.7 / 3.8 | - | - | - | 80.8 / 4.1* | judge-0613 |" in markdown
    assert "tiny Synthetic QA: 100 questions: 98 judged, 2 failed" in markdown
    assert str(run / "mystery" / "results.json") in markdown and "cannot tell which dataset" in caplog.text
    assert (out / "qa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "benchmark.png").exists()

    caplog.clear()
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    assert main(["report", "--results", str(empty), "--output-dir", str(tmp_path / "report2"), "--plot"]) == 1
    assert "nothing to plot" in caplog.text


def test_report_over_links_to_its_parent_finishes(tmp_path):
    """Two links to the parent folder (a cycle for a walk that follows links without a guard): `eval report`
    ends, with every results file and stopped judge folder once; the links are not followed, so another
    model's folder beside this one is not read as this model's."""
    run = tmp_path / "runs" / "tiny"
    write_results(run / "msvd" / "judge" / "results.json", dataset="msvd", accuracy=64.7, score=3.8)
    write_results(tmp_path / "runs" / "other" / "msrvtt" / "results.json", dataset="msrvtt", accuracy=1.0, score=1.0)
    (run / "tgif" / "judge").mkdir(parents=True)
    (run / "tgif" / "judge" / "verdicts.jsonl").write_text("")
    for name in ("up", "up_again"):
        (run / name).symlink_to("..", target_is_directory=True)
    code, stderr = videopanda("eval", "report", "--results", run, "--output-dir", tmp_path / "report", timeout=90)
    assert code == 0, stderr
    assert f"{run / 'up'}: not followed" in stderr and f"{run / 'up_again'}: not followed" in stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())["models"]["tiny"]
    assert list(report["qa"]) == ["msvd"] and report["qa"]["msvd"]["file"] == str(run / "msvd" / "judge" / "results.json")
    assert report["unfinished"] == [str(run / "tgif" / "judge")] and report["unknown"] == []


def test_report_counts_a_results_file_reached_twice_once(tmp_path):
    """A linked folder and a linked results.json lead to a results file found through its own path too:
    it is counted once, under that path (not "two results for msvd")."""
    run = tmp_path / "runs" / "tiny"
    write_results(run / "msvd" / "judge" / "results.json", dataset="msvd", accuracy=64.7, score=3.8)
    (run / "a_link").symlink_to("msvd", target_is_directory=True)
    (run / "b_copy").mkdir()
    (run / "b_copy" / "results.json").symlink_to(run / "msvd" / "judge" / "results.json")
    code, stderr = videopanda("eval", "report", "--results", run, "--output-dir", tmp_path / "report")
    assert code == 0, stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())["models"]["tiny"]
    assert report["qa"]["msvd"]["file"] == str(run / "msvd" / "judge" / "results.json")
    assert report["unknown"] == [] and report["unfinished"] == []
    assert "| tiny | 64.7 / 3.8 | - | - | - | judge-0613 |" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.parametrize("fields,dataset,message", [
    ('"accuracy": NaN, "score": 3.8', "msvd", "accuracy is nan"),
    ('"accuracy": 64.7, "score": -1e999', "msvd", "score is -inf"),
    ('"scores": {"correctness": 3.1, "temporal": Infinity}, "average": null', "videochatgpt", "scores.temporal is inf"),
])
def test_report_refuses_a_results_file_holding_nan_or_infinity(tmp_path, fields, dataset, message):
    """json reads NaN, Infinity and 1e999 without complaint; the report refuses the file in one line naming
    it and leaves the report it wrote before as it was."""
    run = tmp_path / "runs" / "tiny"
    write_results(run / "other" / "results.json", dataset="msrvtt", accuracy=50.0, score=3.0)
    bad = run / dataset / "judge" / "results.json"
    bad.parent.mkdir(parents=True)
    bad.write_text(f'{{"dataset": "{dataset}", "judge": "gpt", "judge_model": "judge-0613", {fields}}}')
    out = tmp_path / "report"
    out.mkdir()
    (out / "report.md").write_text("the earlier report\n")
    code, stderr = videopanda("eval", "report", "--results", run, "--output-dir", out)
    assert code == 1
    assert one_error_line(stderr).endswith(f"ERROR videopanda.eval.cli: {bad}: {message}, not a finite number")
    assert (out / "report.md").read_text() == "the earlier report\n" and not (out / "report.json").exists()


def test_benchmark_launcher_without_benchmark_files(msvd_root, tmp_path):
    data_root, _ = msvd_root
    env = {**os.environ, "GPUS": "cpu,cpu", "JUDGE": "exact", "VIDEOPANDA": str(Path(sys.executable).parent / "videopanda")}
    result = subprocess.run(["bash", str(REPO / "scripts/videopanda/eval/benchmark.sh"), str(tmp_path / "no-model"),
                             str(data_root), str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "rerun" not in result.stderr
    missing = data_root / "eval" / "Video_ChatGPT_Benchmark" / "generic_qa.json"
    assert result.stderr.strip().splitlines() == [
        f"{missing} not found: {data_root} has no Video-ChatGPT benchmark "
        "(generic_qa.json, temporal_qa.json, consistency_qa.json, videos/)"]
    assert not (tmp_path / "out").exists()
