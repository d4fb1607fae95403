"""An adversarial user against the evaluation: no number with exit 0 that the data does not support, no
question answered twice or lost, every error one line. Real processes, real files, real HTTP on 127.0.0.1."""
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.judge_server import Action, JudgeServer, reply, status
from helpers.media import make_frames, write_video

from videopanda.eval.datasets import DatasetError, load_questions
from videopanda.eval.merge import merge_predictions
from videopanda.eval.qa import chunk_file, run_qa, video_key
from videopanda.eval.records import read_jsonl

from .conftest import write_qa_dataset

VIDEOPANDA = Path(sys.executable).parent / "videopanda"
FINGERPRINT = {"model": {"id": "0123456789abcdef"}, "dataset": "msvd"}
KEY = "sk-integrity-KEY-77aa"


def videopanda(*args, cwd=None):
    """`.venv/bin/videopanda ARGS` in a real process -> (exit code, stdout, stderr)."""
    result = subprocess.run([str(VIDEOPANDA), *map(str, args)], capture_output=True, text=True, timeout=300,
                            cwd=cwd, env={**os.environ, "OPENAI_API_KEY": KEY})
    return result.returncode, result.stdout, result.stderr


def one_error_line(stderr):
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, stderr
    return errors[0]


# ------------------------------------------------------------------------------ --num-chunks changed

DRIVER = textwrap.dedent("""
    import sys, time
    from videopanda.eval.datasets import load_questions
    from videopanda.eval.qa import chunk_file, run_qa, shard
    from videopanda.log import setup_logging

    setup_logging()
    data_root, out_dir, asked_log, k, i, delay, retry = sys.argv[1:8]

    def answer(batch):
        with open(asked_log, "a") as log:
            log.write("".join(f"{item.id}\\n" for item in batch))
        time.sleep(float(delay))
        if retry == "1":   # the retry finds what the first runs could not read
            return [f"recovered {item.id}" for item in batch]
        return [FileNotFoundError(f"no video {item.video}") if item.video_path is None else f"answer {item.id}"
                for item in batch]

    items = shard(load_questions(data_root, "msvd"), int(k), int(i))
    run_qa(items, answer, chunk_file(out_dir, int(k), int(i)), progress=False, retry_errors=retry == "1",
           fingerprint={"model": {"id": "0123456789abcdef"}, "dataset": "msvd"})
""")


def _driver(tmp_path, data_root, k, i, delay=0.0, retry=False):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(driver), str(data_root), str(tmp_path / "pred"),
                             str(tmp_path / "asked.log"), str(k), str(i), str(delay), "1" if retry else "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_changing_num_chunks_after_a_kill_answers_each_question_once(msvd_root, tmp_path):
    data_root, _ = msvd_root
    items = load_questions(data_root, "msvd")
    first = chunk_file(tmp_path / "pred", 2, 0)
    proc = _driver(tmp_path, data_root, 2, 0, delay=0.3)
    deadline = time.monotonic() + 60
    while not (first.exists() and len(first.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    on_disk = {str(r["id"]) for r in read_jsonl(first)}
    assert 2 <= len(on_disk) < 6

    # resumed on one GPU instead of two: only what no chunk file holds is answered
    (tmp_path / "asked.log").unlink()
    proc = _driver(tmp_path, data_root, 1, 0)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    asked = (tmp_path / "asked.log").read_text().split()
    assert sorted(asked) == sorted(item.key for item in items if item.key not in on_disk)
    report = merge_predictions(tmp_path / "pred", items, "msvd")
    assert report.failed == ["q005"] and not (report.duplicated or report.missing or report.unexpected)

    # --retry-errors on three GPUs: the error row of the first chunk file is answered again and replaced
    (tmp_path / "asked.log").unlink()
    proc = _driver(tmp_path, data_root, 3, 1, retry=True)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert (tmp_path / "asked.log").read_text().split() == ["q005"]
    report = merge_predictions(tmp_path / "pred", items, "msvd")
    assert report.complete and report.answered == len(items)
    assert report.records[5]["pred"] == "recovered q005"


# ------------------------------------------------------------------------------ merge

def _predictions(data_root, pred_dir, dataset="msvd"):
    items = load_questions(data_root, dataset)
    run_qa(items, lambda batch: [f"answer {item.id}" for item in batch], chunk_file(pred_dir, 1, 0),
           progress=False, fingerprint={**FINGERPRINT, "dataset": dataset})
    return items


def test_predictions_of_one_dataset_are_never_merged_as_another(tmp_path):
    data_root = tmp_path / "data"
    write_qa_dataset(data_root, missing_video=None)
    # the same question ids and texts under another dataset's name
    write_qa_dataset(data_root, folder="MSRVTT_Zero_Shot_QA", missing_video=None)
    _predictions(data_root, tmp_path / "pred")
    code, _, err = videopanda("eval", "merge", "--pred-dir", tmp_path / "pred", "--dataset", "msrvtt",
                              "--data-root", data_root, "--output", tmp_path / "merge.jsonl")
    assert code == 2 and not (tmp_path / "merge.jsonl").exists()
    assert one_error_line(err).endswith(f"{tmp_path / 'pred'}: holds predictions for 'msvd' (per chunk-0-of-1.run.json), "
                                        "not for --dataset 'msrvtt'")


def test_a_merged_file_in_the_prediction_folder_is_not_a_chunk(msvd_root, tmp_path):
    data_root, _ = msvd_root
    pred = tmp_path / "pred"
    _predictions(data_root, pred)
    merge = ["eval", "merge", "--pred-dir", pred, "--dataset", "msvd", "--data-root", data_root, "--allow-incomplete"]
    for _ in range(2):
        code, out, err = videopanda(*merge, "--output", pred / "merge.jsonl")
        assert code == 0, err
        assert "duplicated" not in out and "12 questions: 12 answered" in out
    sidecar = json.loads((pred / "merge.run.json").read_text())
    assert sidecar["sources"] == ["chunk-0-of-1.jsonl"] and sidecar["complete"] is True

    # the merge never overwrites one of its own inputs
    chunk = chunk_file(pred, 1, 0)
    before = chunk.read_bytes(), (pred / "chunk-0-of-1.run.json").read_bytes()
    code, _, err = videopanda(*merge, "--output", chunk)
    assert code == 1
    assert one_error_line(err).endswith(f"{chunk}: is one of the prediction files being merged; pass another --output")
    assert (chunk.read_bytes(), (pred / "chunk-0-of-1.run.json").read_bytes()) == before


def test_a_question_file_without_questions_is_an_error(tmp_path):
    root = tmp_path / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    root.mkdir(parents=True)
    (root / "test_q.json").write_text("[]")
    (root / "test_a.json").write_text("[]")
    with pytest.raises(DatasetError, match="test_q.json: no questions"):
        load_questions(tmp_path, "msvd")
    bench = tmp_path / "eval" / "Video_ChatGPT_Benchmark"
    bench.mkdir(parents=True)
    (bench / "generic_qa.json").write_text(json.dumps([{"video_name": "a", "Q": "what?", "A": "a cat"}]))
    (bench / "temporal_qa.json").write_text("[]")
    (bench / "consistency_qa.json").write_text(json.dumps([{"video_name": "a", "Q1": "a", "Q2": "b", "A": "c"}]))
    with pytest.raises(DatasetError, match="temporal_qa.json: no questions"):
        load_questions(tmp_path, "videochatgpt")


# ------------------------------------------------------------------------------ which video

def _ask_about(root, video):
    """Four questions, all about the clip `video`."""
    (root / "test_q.json").write_text(json.dumps(
        [{"video_name": video, "question": f"what colour is shape {i}", "question_id": i} for i in range(4)]))
    (root / "test_a.json").write_text(json.dumps([{"answer": "red", "question_id": i} for i in range(4)]))


@pytest.fixture
def two_clips(model_dir, tmp_path):
    """-> (data root, `eval qa` arguments, `eval merge` arguments) over two real clips a.mp4 and b.mp4,
    the questions about a."""
    root = tmp_path / "data" / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    (root / "videos").mkdir(parents=True)
    for name, seed in (("a", 1), ("b", 2)):
        write_video(root / "videos" / f"{name}.mp4", make_frames(8, height=32, width=48, seed=seed))
    _ask_about(root, "a")
    data_root, pred = tmp_path / "data", tmp_path / "pred"
    qa = ["eval", "qa", "--model", model_dir, "--dataset", "msvd", "--data-root", data_root, "--output-dir", pred,
          "--device", "cpu", "--max-new-tokens", "2", "--no-progress"]
    merge = ["eval", "merge", "--pred-dir", pred, "--dataset", "msvd", "--data-root", data_root,
             "--output", tmp_path / "merge.jsonl"]
    return data_root, qa, merge


@pytest.mark.slow
@pytest.mark.parametrize("change", ["other video_name", "clip rewritten in place"])
def test_answers_are_reused_only_for_the_same_video(two_clips, tmp_path, change):
    data_root, qa, merge = two_clips
    root = data_root / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    code, _, err = videopanda(*qa)
    assert code == 0, err
    first = read_jsonl(chunk_file(tmp_path / "pred", 1, 0))

    if change == "other video_name":
        _ask_about(root, "b")
    else:
        write_video(root / "videos" / "a.mp4", make_frames(8, height=32, width=48, seed=3))
    code, out, err = videopanda(*merge)
    assert code == 1 and not (tmp_path / "merge.jsonl").exists()
    assert "4 without an answer (0 missing, 0 error rows, 4 stale)" in out and "(stale?): 4: 0, 1, 2, 3" in out

    code, _, err = videopanda(*qa)
    assert code == 0, err
    assert "4 question(s) have only lines made for another question, answer or video" in err
    assert "done: 4 answered now, 0 from earlier runs" in err
    code, out, err = videopanda(*merge)
    assert code == 0 and "4 questions: 4 answered" in out and "INCOMPLETE" not in out, err
    items = load_questions(data_root, "msvd")
    merged = read_jsonl(tmp_path / "merge.jsonl")
    assert [(r["video"], r["video_key"]) for r in merged] == [(item.video, video_key(item)) for item in items]
    assert [r["video"] for r in first] == ["a"] * 4 and None not in {r["video_key"] for r in first}
    assert not {r["video_key"] for r in merged} & {r["video_key"] for r in first}

    code, _, err = videopanda(*qa)
    assert code == 0 and "4 of 4 questions already answered, 0 to go" in err


@pytest.mark.slow
def test_a_prediction_folder_of_the_older_format_is_refused(two_clips, tmp_path):
    data_root, qa, merge = two_clips
    code, _, err = videopanda(*qa)
    assert code == 0, err
    # the folder as the previous format left it: lines without their video, format 1 in the sidecar
    chunk, sidecar = chunk_file(tmp_path / "pred", 1, 0), tmp_path / "pred" / "chunk-0-of-1.run.json"
    chunk.write_text("".join(json.dumps({k: v for k, v in row.items() if k not in ("video", "video_key")}) + "\n"
                             for row in read_jsonl(chunk)))
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "format": "videopanda-predictions/1"}))
    before = chunk.read_bytes(), sidecar.read_bytes()
    refusal = (f"{chunk}: written in the older videopanda-predictions/1 format, whose lines do not record which "
               f"video they answer; re-run `videopanda eval qa` into a new --output-dir")
    for command in (qa, merge):
        code, _, err = videopanda(*command)
        assert code == 2 and one_error_line(err).endswith(refusal)
    assert (chunk.read_bytes(), sidecar.read_bytes()) == before and not (tmp_path / "merge.jsonl").exists()

    sidecar.unlink()    # such lines from a tool that writes no sidecar
    code, _, err = videopanda(*merge)
    assert code == 1 and not (tmp_path / "merge.jsonl").exists()
    assert one_error_line(err).endswith(f"{chunk}: a line without 'video_key' (written before prediction lines "
                                        f"recorded their video); re-run `videopanda eval qa` into a new --output-dir")


# ------------------------------------------------------------------------------ models

@pytest.mark.slow
def test_a_single_changed_weight_is_another_model(model_dir, msvd_root, tmp_path):
    from safetensors.torch import load_file, save_file

    from videopanda.eval.provenance import model_identity

    edited = shutil.copytree(model_dir, tmp_path / "edited")
    weights = load_file(edited / "model.safetensors")
    name = max(weights, key=lambda key: weights[key].numel())
    weights[name].view(-1)[weights[name].numel() // 2] += 1.0     # one value in the middle of the largest tensor
    save_file(weights, edited / "model.safetensors", metadata={"format": "pt"})
    assert (edited / "model.safetensors").stat().st_size == (model_dir / "model.safetensors").stat().st_size
    assert model_identity(edited) != model_identity(model_dir)

    data_root, _ = msvd_root
    qa = ["eval", "qa", "--dataset", "msvd", "--data-root", data_root, "--output-dir", tmp_path / "pred",
          "--device", "cpu", "--max-new-tokens", "2", "--no-progress"]
    code, _, err = videopanda(*qa, "--model", model_dir)
    assert code == 0, err
    before = chunk_file(tmp_path / "pred", 1, 0).read_bytes()
    code, _, err = videopanda(*qa, "--model", edited)
    assert code == 2 and f"model {model_dir.resolve()} -> {edited.resolve()}" in one_error_line(err)
    assert chunk_file(tmp_path / "pred", 1, 0).read_bytes() == before


@pytest.mark.parametrize("flag", ["--num-frames", "--batch-size", "--max-new-tokens"])
def test_zero_is_a_usage_error_not_a_default(model_dir, msvd_root, tmp_path, flag):
    data_root, _ = msvd_root
    code, _, err = videopanda("eval", "qa", "--model", model_dir, "--dataset", "msvd", "--data-root", data_root,
                              "--output-dir", tmp_path / "pred", "--device", "cpu", "--no-progress", flag, "0")
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(f"argument {flag}: must be at least 1, got 0")
    assert not (tmp_path / "pred").exists()


# ------------------------------------------------------------------------------ judge

def _rows(path, n=6, **changes):
    rows = [{"id": f"item-{i}", "question": f"what happens in item-{i}?", "answer": "a dog runs",
             "pred": f"pred of item-{i}", **changes} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _judge(pred_file, out, url, *extra):
    return videopanda("eval", "judge", "--pred-file", pred_file, "--output-dir", out, "--api-base", url,
                      "--model", "gpt-test", "--dataset", "msvd", "--no-progress", *extra)


def test_a_reply_with_conflicting_verdicts_is_asked_again(tmp_path):
    pred_file, out = _rows(tmp_path / "merge.jsonl"), tmp_path / "judge"
    conflicting = reply('The format is {"pred": "yes", "score": 5}. My verdict: {"pred": "no", "score": 1}')
    with JudgeServer({"item-1": [conflicting, reply('{"pred": "no", "score": 1}')], "item-2": [conflicting]},
                     default=reply('{"pred": "yes", "score": 4}')) as server:
        code, out_text, err = _judge(pred_file, out, server.url, "--max-retries", "2")
        assert len(server.calls("item-1")) == 2 and len(server.calls("item-2")) == 3
    assert code == 1 and "incomplete" in one_error_line(err)
    verdicts = {r["id"]: (r["verdict"], r["score"]) for r in read_jsonl(out / "verdicts.jsonl")}
    assert verdicts["item-1"] == ("no", 1) and "item-2" not in verdicts
    failed = read_jsonl(out / "failed.jsonl")
    assert [r["id"] for r in failed] == ["item-2"] and "conflicting verdicts" in failed[0]["error"]
    results = json.loads((out / "results.json").read_text())
    assert (results["num_yes"], results["num_no"], results["num_items"]) == (4, 1, 6)


def test_a_last_prediction_without_a_newline_is_judged(tmp_path):
    """A file written with "\\n".join keeps its last row: only an unparsable last line is an interrupted write."""
    rows = [{"id": f"item-{i}", "question": f"what happens in item-{i}?", "answer": "a dog runs",
             "pred": "a cat sits" if i == 11 else "a dog runs"} for i in range(12)]
    pred_file = tmp_path / "preds.jsonl"
    pred_file.write_text("\n".join(json.dumps(r) for r in rows))
    before = pred_file.read_bytes()
    code, _, err = videopanda("eval", "judge", "--pred-file", pred_file, "--output-dir", tmp_path / "judge",
                              "--judge", "exact", "--no-progress")
    assert code == 0, err
    results = json.loads((tmp_path / "judge" / "results.json").read_text())
    assert (results["num_items"], round(results["accuracy"], 2)) == (12, 91.67)
    verdicts = {r["id"]: r["verdict"] for r in read_jsonl(tmp_path / "judge" / "verdicts.jsonl")}
    assert len(verdicts) == 12 and verdicts["item-11"] == "no"
    assert pred_file.read_bytes() == before


def test_a_key_without_quota_stops_the_run(tmp_path):
    pred_file = _rows(tmp_path / "merge.jsonl", n=30)
    body = {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                      "param": None, "code": "insufficient_quota"}}
    with JudgeServer(default=Action(status=429, body=json.dumps(body).encode())) as server:
        code, _, err = _judge(pred_file, tmp_path / "judge", server.url, "--workers", "3")
        assert len(server.calls()) <= 3
    assert code == 1
    assert "HTTP 429 insufficient_quota from the judge" in one_error_line(err) and KEY not in err
    assert not (tmp_path / "judge" / "results.json").exists()


@pytest.mark.parametrize("problem", ["no question", "no id", "empty"])
def test_prediction_files_the_judge_cannot_use(tmp_path, problem):
    pred_file = tmp_path / "preds.jsonl"
    if problem == "empty":
        pred_file.write_text("")
    else:
        _rows(pred_file)
        rows = read_jsonl(pred_file)
        del rows[2]["question" if problem == "no question" else "id"]
        pred_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, _, err = videopanda("eval", "judge", "--pred-file", pred_file, "--output-dir", tmp_path / "judge",
                              "--judge", "exact", "--no-progress")
    assert code == 1
    assert one_error_line(err).endswith({"no question": f"{pred_file}: prediction 3 has no 'question' field",
                                         "no id": f"{pred_file}: prediction 3 has no 'id' field",
                                         "empty": f"{pred_file}: no predictions"}[problem])
    assert not (tmp_path / "judge" / "results.json").exists()


# ------------------------------------------------------------------------------ report

def _benchmark_root(data_root):
    root = data_root / "eval" / "Video_ChatGPT_Benchmark"
    (root / "videos").mkdir(parents=True)
    (root / "generic_qa.json").write_text(json.dumps([{"video_name": "a", "Q": f"what is item-{i}?", "A": "a cat"}
                                                      for i in range(2)]))
    (root / "temporal_qa.json").write_text(json.dumps([{"video_name": "a", "Q": "then item-9?", "A": "it sat"}]))
    (root / "consistency_qa.json").write_text(json.dumps([{"video_name": "a", "Q1": "who?", "Q2": "which animal?",
                                                           "A": "a cat"}]))


@pytest.mark.slow
def test_report_lists_judge_runs_that_stopped(msvd_root, tmp_path):
    data_root, _ = msvd_root
    run = tmp_path / "runs" / "tiny"
    _predictions(data_root, run / "msvd" / "predictions")
    merged = run / "msvd" / "merge.jsonl"
    code, _, err = videopanda("eval", "merge", "--pred-dir", run / "msvd" / "predictions", "--dataset", "msvd",
                              "--data-root", data_root, "--output", merged)
    assert code == 0, err
    # the QA judge killed half-way
    with JudgeServer(default=reply('{"pred": "yes", "score": 4}', delay=0.3)) as server:
        proc = subprocess.Popen([str(VIDEOPANDA), "eval", "judge", "--pred-file", str(merged), "--output-dir",
                                 str(run / "msvd" / "judge"), "--api-base", server.url, "--workers", "2",
                                 "--no-progress"], env={**os.environ, "OPENAI_API_KEY": KEY},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        verdicts = run / "msvd" / "judge" / "verdicts.jsonl"
        deadline = time.monotonic() + 60
        while not (verdicts.exists() and verdicts.read_text().count("\n") >= 2):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # the benchmark judge stopped at its last aspect (the key is rejected for the consistency prompts)
    _benchmark_root(data_root)
    bench = run / "benchmark"
    run_qa(load_questions(data_root, "videochatgpt"), lambda batch: [f"pred {item.id}" for item in batch],
           chunk_file(bench / "predictions", 1, 0), progress=False)
    with JudgeServer({"Question 2": [status(401)]}, default=reply('{"score": 3}'), key_pattern="Question 2") as server:
        code, _, err = videopanda("eval", "benchmark", "--stage", "judge", "--data-root", data_root,
                                  "--output-dir", bench, "--api-base", server.url, "--no-progress")
    assert code == 1 and "HTTP 401" in one_error_line(err)
    assert (bench / "judge" / "temporal" / "results.json").exists() and not (bench / "judge" / "results.json").exists()

    code, out, err = videopanda("eval", "report", "--results", run, "--output-dir", tmp_path / "report")
    assert code == 0, err
    assert "| tiny | - | - | - | - | - |" in out and "Video-ChatGPT benchmark" not in out
    assert ("Not in the tables (the judge stopped before writing results.json; rerun it): "
            f"{bench / 'judge'}, {run / 'msvd' / 'judge'}") in out
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["models"]["tiny"]["unfinished"] == [str(bench / "judge"), str(run / "msvd" / "judge")]


@pytest.mark.parametrize("results", [{"dataset": "msvd", "accuracy": "64.7", "score": 3.8},
                                     {"dataset": "videochatgpt", "average": 2.5}])
def test_report_of_a_results_file_without_numbers(tmp_path, results):
    path = tmp_path / "runs" / "tiny" / "x" / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))
    code, _, err = videopanda("eval", "report", "--results", tmp_path / "runs" / "tiny", "--output-dir",
                              tmp_path / "report")
    assert code == 1 and one_error_line(err).endswith(f"{path}: not the results of `videopanda eval` (no numbers under "
                                                      f"{'scores' if 'average' in results else 'accuracy and score'})")


@pytest.mark.slow
def test_numbers_of_predictions_edited_since_are_not_reported(msvd_root, tmp_path):
    data_root, _ = msvd_root
    run = tmp_path / "runs" / "tiny"
    _predictions(data_root, run / "msvd" / "predictions")
    merged, judged = run / "msvd" / "merge.jsonl", run / "msvd" / "judge"
    code, _, err = videopanda("eval", "merge", "--pred-dir", run / "msvd" / "predictions", "--dataset", "msvd",
                              "--data-root", data_root, "--output", merged)
    assert code == 0, err
    judge = ["eval", "judge", "--pred-file", merged, "--output-dir", judged, "--judge", "exact", "--no-progress"]
    code, _, err = videopanda(*judge)
    assert code == 0 and (judged / "results.json").exists(), err

    merged.write_text(merged.read_text().replace('"pred": "answer q000"', '"pred": "red"'))   # a hand edit
    code, _, err = videopanda(*judge)
    assert code == 2 and "changed since merge.run.json was written" in one_error_line(err)
    assert not (judged / "results.json").exists()
    code, out, err = videopanda("eval", "report", "--results", run, "--output-dir", tmp_path / "report")
    assert code == 0 and "| tiny | - | - | - | - | - |" in out and str(judged) in out

    # the benchmark: a judge stage whose merge is now incomplete leaves no earlier results behind
    _benchmark_root(data_root)
    bench = run / "benchmark"
    run_qa(load_questions(data_root, "videochatgpt"), lambda batch: [f"pred {item.id}" for item in batch],
           chunk_file(bench / "predictions", 1, 0), progress=False)
    stage = ["eval", "benchmark", "--stage", "judge", "--data-root", data_root, "--output-dir", bench, "--judge",
             "exact", "--no-progress"]
    code, _, err = videopanda(*stage)
    assert code == 0 and (bench / "judge" / "results.json").exists(), err
    chunk = chunk_file(bench / "predictions", 1, 0)
    chunk.write_text("".join(line + "\n" for line in chunk.read_text().splitlines()[:-1]))
    code, _, err = videopanda(*stage)
    assert code == 1 and "incomplete" in one_error_line(err)
    assert not (bench / "judge" / "results.json").exists()
