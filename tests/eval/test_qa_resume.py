"""Resumable inference: a run killed half-way and restarted ends with every question answered once.

The loop under test is the real `run_qa` in a real subprocess that is SIGKILLed mid-run. The answers
come from a cheap predictor passed through run_qa's documented `answer_fn` parameter (the CLI passes
the model-backed `ModelAnswerer` there): it reads the real video file and answers from its bytes, and
fails on a question whose video does not exist, which must become an error row.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from videopanda.eval.datasets import load_questions
from videopanda.eval.merge import merge_predictions
from videopanda.eval.qa import chunk_file, run_qa, shard
from videopanda.eval.records import JsonlAppender, read_jsonl

DRIVER = textwrap.dedent("""
    import sys, time
    from videopanda.eval.datasets import load_questions
    from videopanda.eval.qa import chunk_file, run_qa, shard
    from videopanda.log import setup_logging

    setup_logging()
    data_root, out_dir, asked_log, k, i, batch, delay = sys.argv[1:8]

    def answer(batch_items):
        with open(asked_log, "a") as log:
            log.write("".join(f"{item.id}\\n" for item in batch_items))
        time.sleep(float(delay))
        results = []
        for item in batch_items:
            if item.video_path is None:
                results.append(FileNotFoundError(f"no video file for {item.video}"))
            else:
                results.append(f"{len(item.video_path.read_bytes())} {item.question.split()[-1]}")
        return results

    items = shard(load_questions(data_root, "msvd"), int(k), int(i))
    run_qa(items, answer, chunk_file(out_dir, int(k), int(i)), batch_size=int(batch), progress=False)
""")


def expected_pred(item):
    return f"{len(item.video_path.read_bytes())} {item.question.split()[-1]}"


def _run(tmp_path, data_root, k, i, batch, delay):
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(driver), str(data_root), str(tmp_path / "pred"),
                             str(tmp_path / "asked.log"), str(k), str(i), str(batch), str(delay)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_run_resumes_and_every_question_is_answered_once(msvd_root, tmp_path):
    data_root, expected = msvd_root
    out_file = chunk_file(tmp_path / "pred", 1, 0)
    proc = _run(tmp_path, data_root, 1, 0, batch=2, delay=0.15)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if out_file.exists() and len(out_file.read_text().splitlines()) >= 4:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written_at_kill = {str(r["id"]) for r in read_jsonl(out_file)}
    assert 4 <= len(written_at_kill) < len(expected), "the kill must land half-way"

    proc = _run(tmp_path, data_root, 1, 0, batch=2, delay=0.0)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "already answered" in err

    asked = (tmp_path / "asked.log").read_text().split()
    asked_twice = {q for q in asked if asked.count(q) > 1}
    assert not asked_twice & written_at_kill, "questions already on disk must not be answered again"

    items = load_questions(data_root, "msvd")
    report = merge_predictions(tmp_path / "pred", items)
    assert not report.complete and report.failed == ["q005"] and not (report.missing or report.duplicated)
    rows = {str(r["id"]): r for r in read_jsonl(out_file)}
    assert len(read_jsonl(out_file)) == len(items)
    for item in items:
        row = rows[item.key]
        assert (row["question"], row["answer"], row["type"]) == (item.question, item.answer, item.type)
        if item.video_path is None:
            assert row["pred"] is None and "no video file" in row["error"]
        else:
            assert row["pred"] == expected_pred(item)


def test_sharded_runs_then_merge(msvd_root, tmp_path):
    data_root, _ = msvd_root
    items = load_questions(data_root, "msvd")
    for i in range(3):
        run_qa(shard(items, 3, i), lambda batch: [f"a {x.id}" for x in batch], chunk_file(tmp_path, 3, i),
               batch_size=4, progress=False)
    report = merge_predictions(tmp_path, items)
    assert report.complete and [r["pred"] for r in report.records] == [f"a {x.id}" for x in items]


def _cut_last_write(out):
    with open(out, "a") as f:
        f.write('{"id": "q002", "question": "what col')     # a write cut short by a kill


def _strip_final_newline(out):
    out.write_bytes(out.read_bytes().rstrip(b"\n"))       # a file written by another tool, or edited


@pytest.mark.parametrize("damage", [_cut_last_write, _strip_final_newline])
def test_a_resume_after_a_damaged_last_line_asks_nothing_twice(msvd_root, tmp_path, damage):
    """An unparsable last line is an interrupted write: dropped and redone. A valid last line without its
    newline is a record: kept, and the next record starts on a line of its own."""
    data_root, _ = msvd_root
    items = load_questions(data_root, "msvd")[:4]
    out = tmp_path / "preds.jsonl"
    calls = []

    def answer(batch):
        calls.extend(item.id for item in batch)
        return [f"answer {item.id}" for item in batch]

    run_qa(items[:2], answer, out, progress=False)
    damage(out)
    assert [r["id"] for r in read_jsonl(out)] == ["q000", "q001"]
    run_qa(items, answer, out, batch_size=3, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q000", "q001", "q002", "q003"]
    assert calls == ["q000", "q001", "q002", "q003"]
    assert out.read_text().endswith("}\n")


def test_retry_errors_reanswers_only_error_rows(msvd_root, tmp_path):
    data_root, _ = msvd_root
    items = load_questions(data_root, "msvd")[:6]
    out = tmp_path / "preds.jsonl"
    run_qa(items, lambda batch: [RuntimeError("flaky") if i.id == "q001" else "ok" for i in batch], out, progress=False)
    asked = []

    def answer(batch):
        asked.extend(i.id for i in batch)
        return ["fixed"] * len(batch)

    run_qa(items, answer, out, progress=False)
    assert asked == []
    run_qa(items, answer, out, retry_errors=True, progress=False)
    assert asked == ["q001"]
    rows = {r["id"]: r for r in read_jsonl(out)}
    assert len(read_jsonl(out)) == 6 and rows["q001"]["pred"] == "fixed" and "error" not in rows["q001"]


def test_appender_rejects_damaged_middle_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": 1}\nnot json\n{"id": 2}\n')
    try:
        JsonlAppender(path)
    except Exception as error:
        assert "line 2" in str(error) and str(path) in str(error)
    else:
        raise AssertionError("a damaged middle line must be an error")
