"""Guards on the evaluation's inputs: outputs that would overwrite inputs, damaged or foreign prediction
files, byte-order marks, question types, conflicting chunks, judge errors and the report's marks.
Real files, the real commands (`videopanda eval ...` through `main`), real HTTP on 127.0.0.1."""
import hashlib
import itertools
import json
import logging
import math
import re
from fractions import Fraction

import pytest
from helpers.judge_server import JudgeServer, reply, status

from videopanda.data.dataset import load_samples
from videopanda.eval.cli import main
from videopanda.eval.datasets import load_questions
from videopanda.eval.intervals import exact_mcnemar
from videopanda.eval.mc import load_mc
from videopanda.eval.qa import chunk_file, run_qa

from .conftest import write_qa_dataset
from .test_compare import RIGHT_A, RIGHT_B, judge, write_merged
from .test_datasets_merge import _merge, _write_chunks
from .test_exact_benchmark_report import write_benchmark

BOM = b"\xef\xbb\xbf"
VALID = '{"pred": "yes", "score": 5}'


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def exact_judge(pred_file, out, *extra):
    return main(["judge", "--pred-file", str(pred_file), "--output-dir", str(out), "--judge", "exact",
                 "--no-progress", *extra])


def results_of(folder):
    return json.loads((folder / "results.json").read_text())


def answer_right(batch):
    return [item.answer for item in batch]


def test_outputs_that_are_inputs_are_refused(msvd_root, tmp_path, caplog):
    """compare / judge-agreement --output inside a compared folder, and merge --output onto a file that is
    not an earlier merge, are refused in one line naming the output, leaving the file as it was; a merge
    onto its own earlier output still works."""
    a, b = judge(tmp_path, "a", right=RIGHT_A), judge(tmp_path, "b", right=RIGHT_B)
    assert exact_judge(tmp_path / "a.jsonl", tmp_path / "a2", "--dataset", "msvd") == 0   # same predictions as a
    for command, other, target in (("compare", b, a / "verdicts.jsonl"),
                                   ("judge-agreement", tmp_path / "a2", tmp_path / "a2" / "verdicts.jsonl")):
        before = digest(target)
        caplog.clear()
        assert main([command, str(a), str(other), "--output", str(target)]) != 0
        [line] = error_lines(caplog)
        assert str(target) in line and "\n" not in line
        assert digest(target) == before

    data_root, _ = msvd_root
    _write_chunks(tmp_path / "pred", load_questions(data_root, "msvd"), 2)
    answers = data_root / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA" / "test_a.json"
    before = digest(answers)
    caplog.clear()
    assert _merge(data_root, tmp_path / "pred", answers, "--allow-incomplete") != 0
    [line] = error_lines(caplog)
    assert str(answers) in line and digest(answers) == before
    merged = tmp_path / "merge.jsonl"
    assert _merge(data_root, tmp_path / "pred", merged, "--allow-incomplete") == 0
    assert _merge(data_root, tmp_path / "pred", merged, "--allow-incomplete") == 0   # onto its own output


@pytest.mark.parametrize("last", [
    str({"id": "q3", "question": "what is 3", "answer": "ans3", "pred": "else"}),        # a Python dict
    json.dumps({"id": "q3", "question": "what is 3", "answer": "ans3", "pred": "ans3"})[:-5],  # cut off
])
def test_damaged_last_line_of_a_merge_is_refused(msvd_root, tmp_path, caplog, last):
    """A merged file whose last line (no newline after it) does not parse is refused in one line naming the
    file and the line, without results.json; a chunk file cut off mid-line still merges (that question is
    missing)."""
    rows = [{"id": f"q{i}", "question": f"what is {i}", "answer": f"ans{i}", "pred": f"ans{i}"} for i in range(3)]
    pred_file = tmp_path / "merge.jsonl"
    pred_file.write_text("".join(json.dumps(r) + "\n" for r in rows) + last)
    assert exact_judge(pred_file, tmp_path / "judge") != 0
    [line] = error_lines(caplog)
    assert str(pred_file) in line and "line 4" in line
    assert not (tmp_path / "judge" / "results.json").exists()

    data_root, _ = msvd_root
    chunk = chunk_file(tmp_path / "pred", 1, 0)
    run_qa(load_questions(data_root, "msvd"), answer_right, chunk, progress=False)
    chunk.write_bytes(chunk.read_bytes()[:-10])                  # an append interrupted in the last line
    assert _merge(data_root, tmp_path / "pred", tmp_path / "m.jsonl", "--allow-incomplete") == 0
    merged = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert merged[-1]["pred"] is None and merged[-1]["error"].startswith("missing")
    assert all(r["pred"] is not None for r in merged[:-1])


def test_byte_order_marks_are_read(tmp_path):
    """A UTF-8 byte-order mark does not stop a QA dataset, a merged predictions file, NExT-QA's val.csv or a
    training data JSON from being read."""
    data_root = tmp_path / "data"
    write_qa_dataset(data_root, n=4, missing_video=None)
    questions = data_root / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA" / "test_q.json"
    questions.write_bytes(BOM + questions.read_bytes())
    assert [item.id for item in load_questions(data_root, "msvd")] == ["q000", "q001", "q002", "q003"]

    rows = [{"id": f"q{i}", "question": f"what is {i}", "answer": f"ans{i}", "pred": f"ans{i}"} for i in range(3)]
    pred_file = tmp_path / "bom.jsonl"
    pred_file.write_bytes(BOM + "".join(json.dumps(r) + "\n" for r in rows).encode())
    assert exact_judge(pred_file, tmp_path / "judge") == 0
    assert (results_of(tmp_path / "judge")["num_items"], results_of(tmp_path / "judge")["accuracy"]) == (3, 100.0)

    nextqa = data_root / "eval" / "NExTQA"
    nextqa.mkdir(parents=True)
    header = b"video,frame_count,width,height,question,answer,qid,type,a0,a1,a2,a3,a4\r\n"
    row = b"4010069381,100,640,480,what does the man do,0,1,CW,runs,sits,eats,jumps,sleeps\r\n"
    (nextqa / "val.csv").write_bytes(BOM + header + row)
    assert [(item.id, item.answer) for item in load_mc(data_root, "nextqa")] == [("4010069381_1", "A")]

    samples = [{"id": "s0", "video": "valley/a.mp4",
                "conversations": [{"from": "human", "value": "<video>\nwhat?"}, {"from": "gpt", "value": "a cat"}]}]
    data_json = tmp_path / "train.json"
    data_json.write_bytes(BOM + json.dumps(samples).encode())
    assert load_samples(data_json) == samples


def test_integer_types_count_failed_items_per_type(tmp_path):
    """Integer question types (ActivityNet style) with `pred: null` rows: per_type counts every item of a
    type, the failed ones included."""
    rows = [{"id": f"v_{i}", "question": f"q {i}", "answer": "yes", "pred": "yes", "type": i % 2} for i in range(4)]
    rows += [{"id": f"v_{i}", "question": f"q {i}", "answer": "yes", "pred": None, "error": "video not found",
              "type": i % 2} for i in (4, 5)]
    pred_file = tmp_path / "merge.jsonl"
    pred_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert exact_judge(pred_file, tmp_path / "judge", "--allow-incomplete") == 0
    results = results_of(tmp_path / "judge")
    per_type = results["per_type"]
    assert sorted(per_type) == ["0", "1"]
    assert [per_type[t]["num_items"] for t in ("0", "1")] == [3, 3]
    assert per_type["0"]["accuracy"] == pytest.approx(200 / 3)
    assert sum(m["num_items"] for m in per_type.values()) == results["num_items"] == 6


def test_relabelled_types_reach_the_merge_and_the_reused_verdicts(tmp_path):
    """After test_a.json relabels the question types, a re-merge carries the new labels and a re-judge
    (its verdicts reused) reports per_type under them."""
    data_root = tmp_path / "data"
    write_qa_dataset(data_root, n=6, missing_video=None)
    run_qa(load_questions(data_root, "msvd"), answer_right, chunk_file(tmp_path / "pred", 1, 0), progress=False)
    merged, out = tmp_path / "merge.jsonl", tmp_path / "judge"
    assert _merge(data_root, tmp_path / "pred", merged) == 0
    assert exact_judge(merged, out) == 0
    assert sorted(results_of(out)["per_type"]) == ["colour", "count"]
    verdicts = (out / "verdicts.jsonl").read_text()

    answers = data_root / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA" / "test_a.json"
    relabel = {"colour": "hue", "count": "number"}
    answers.write_text(json.dumps([{**a, "type": relabel[a["type"]]} for a in json.loads(answers.read_text())]))
    assert _merge(data_root, tmp_path / "pred", merged) == 0
    assert {json.loads(line)["type"] for line in merged.read_text().splitlines()} == {"hue", "number"}
    assert exact_judge(merged, out) == 0
    assert (out / "verdicts.jsonl").read_text() == verdicts          # nothing judged again
    per_type = results_of(out)["per_type"]
    assert sorted(per_type) == ["hue", "number"]
    assert per_type["number"]["num_items"] == 2 and per_type["hue"]["num_items"] == 4


def test_compare_refuses_runs_of_different_judges(tmp_path, monkeypatch, caplog):
    """`eval compare` of the same predictions judged by exact match and by a GPT-style judge is refused,
    naming both judges."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-guards")
    pred_file = write_merged(tmp_path / "merge.jsonl", right=RIGHT_A)
    assert exact_judge(pred_file, tmp_path / "exact", "--dataset", "msvd") == 0
    with JudgeServer() as server:       # yes/5 to everything
        assert main(["judge", "--pred-file", str(pred_file), "--output-dir", str(tmp_path / "gpt"), "--api-base",
                     server.url, "--model", "gpt-test", "--dataset", "msvd", "--no-progress"]) == 0
    caplog.clear()
    assert main(["compare", str(tmp_path / "exact"), str(tmp_path / "gpt")]) != 0
    [line] = error_lines(caplog)
    assert "exact-match" in line and "judge-test-0613" in line
    # a run of the same judge without a single verdict (every prediction failed) is still its judge's run
    nothing = judge(tmp_path, "nothing", right=RIGHT_A, failed=set(range(11)))
    assert main(["compare", str(tmp_path / "exact"), str(nothing)]) == 0


def test_judge_refuses_the_benchmark_merge(tmp_path, caplog):
    """`eval judge` on the merge.jsonl that `eval benchmark` wrote is refused, pointing at
    `eval benchmark --stage judge`."""
    data_root, bench = tmp_path / "data", tmp_path / "bench"
    write_benchmark(data_root)
    items = load_questions(data_root, "videochatgpt")
    run_qa(items, lambda b: [FileNotFoundError("no video") if i.video_path is None else i.answer for i in b],
           chunk_file(bench / "predictions", 1, 0), progress=False)
    assert main(["benchmark", "--data-root", str(data_root), "--output-dir", str(bench), "--stage", "judge",
                 "--judge", "exact", "--allow-incomplete", "--no-progress"]) == 0
    caplog.clear()
    assert exact_judge(bench / "merge.jsonl", tmp_path / "qa-judge", "--allow-incomplete") != 0
    [line] = error_lines(caplog)
    assert str(bench / "merge.jsonl") in line and "eval benchmark --stage judge" in line
    assert not (tmp_path / "qa-judge" / "results.json").exists()


def test_conflicting_chunk_answers_are_a_failed_question(tmp_path, capsys):
    """Two chunk files answering one question differently: with --allow-incomplete the merge writes it as an
    error row ("conflicting"), says so in its summary, and the judge counts it as failed."""
    data_root = tmp_path / "data"
    write_qa_dataset(data_root, n=6, missing_video=None)
    items = load_questions(data_root, "msvd")
    pred = tmp_path / "pred"
    run_qa(items[:4], answer_right, chunk_file(pred, 2, 0), progress=False)
    run_qa(items[3:], lambda b: ["something else" if i.id == "q003" else i.answer for i in b],
           chunk_file(pred, 2, 1), progress=False)
    merged = tmp_path / "merge.jsonl"
    assert _merge(data_root, pred, merged, "--allow-incomplete") == 0
    assert "1 with conflicting answers" in capsys.readouterr().out
    rows = {r["id"]: r for r in map(json.loads, merged.read_text().splitlines())}
    assert rows["q003"]["pred"] is None and rows["q003"]["error"].startswith("conflicting")
    assert all(rows[f"q00{i}"]["pred"] is not None for i in (0, 1, 2, 4, 5))
    assert exact_judge(merged, tmp_path / "judge") == 1
    results = results_of(tmp_path / "judge")
    assert results["complete"] is False and results["failed_ids"]["inference"] == ["q003"]


def test_verdicts_in_flight_when_the_run_stops_are_kept(tmp_path, monkeypatch):
    """A run-stopping HTTP 401 while other requests are in flight: the valid verdicts those requests bring
    back are appended to verdicts.jsonl."""
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-guards")
    pred_file = tmp_path / "merge.jsonl"
    pred_file.write_text("".join(json.dumps({"id": f"item-{i}", "question": f"item-{i}?", "answer": "yes",
                                             "pred": "yes"}) + "\n" for i in range(8)))
    # by arrival: the first request (alone) is answered at once, the last of the 8 gets the 401 while the
    # six between wait 1.5 s for their valid replies
    arrival = itertools.count()

    def roles(payload):
        return {0: "first", 7: "denied"}.get(next(arrival), "late")

    script = {"first": [reply(VALID)], "denied": [status(401)], "late": [reply(VALID, delay=1.5)]}
    with JudgeServer(script, key_of=roles) as server:
        assert main(["judge", "--pred-file", str(pred_file), "--output-dir", str(tmp_path / "judge"), "--api-base",
                     server.url, "--model", "gpt-test", "--workers", "8", "--no-progress"]) == 1
        [denied] = server.calls("denied")
        assert len(server.calls()) == 8
    denied_id = re.search(r"item-\d+", denied.body.decode()).group(0)
    kept = [json.loads(line)["id"] for line in (tmp_path / "judge" / "verdicts.jsonl").read_text().splitlines()]
    assert sorted(kept) == sorted(f"item-{i}" for i in range(8) if f"item-{i}" != denied_id)


def test_a_verdict_line_without_id_does_not_stop_a_rerun(tmp_path, caplog):
    """A verdicts.jsonl line without "id" (a note added by hand): the rerun warns, reuses the other verdicts
    and exits 0."""
    rows = [{"id": f"q{i}", "question": f"q {i}", "answer": "yes", "pred": "yes"} for i in range(3)]
    pred_file, out = tmp_path / "merge.jsonl", tmp_path / "judge"
    pred_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert exact_judge(pred_file, out) == 0
    with open(out / "verdicts.jsonl", "a") as handle:
        handle.write(json.dumps({"note": "rejudged by hand"}) + "\n")
    before = (out / "verdicts.jsonl").read_text()
    caplog.clear()
    assert exact_judge(pred_file, out) == 0
    assert any(r.levelno == logging.WARNING and "verdicts.jsonl" in r.getMessage() for r in caplog.records)
    assert (out / "verdicts.jsonl").read_text() == before             # the three verdicts reused
    assert results_of(out)["num_judged"] == 3


def exact_p(b, c):
    n = b + c
    return min(Fraction(1), 2 * Fraction(sum(math.comb(n, k) for k in range(min(b, c) + 1)), 2 ** n))


def test_exact_mcnemar_matches_the_rational_value():
    """exact_mcnemar equals the exact rational p-value (to 1e-9), also for many discordant items, and
    returns a probability for (10000, 10500)."""
    for b, c in ((1, 6), (2, 10), (40, 70), (700, 800), (800, 700), (300, 1000), (0, 1000), (0, 2000),
                 (3000, 3100)):
        assert exact_mcnemar(b, c) == pytest.approx(float(exact_p(b, c)), rel=1e-9, abs=0), (b, c)
    assert 0 < exact_mcnemar(10000, 10500) < 1


def test_report_marks_failed_aspects_and_knows_qa_folders_named_like_aspects(tmp_path, caplog):
    """`eval report`: each benchmark aspect that counts failed items carries `*` (the others do not), and a
    QA judge folder named like an aspect (`temporal`) with its results.json is not listed as stopped."""
    data_root, model = tmp_path / "data", tmp_path / "model"
    write_benchmark(data_root)       # one generic question has no video: correctness, detail, context fail it
    items = load_questions(data_root, "videochatgpt")
    run_qa(items, lambda b: [FileNotFoundError("no video") if i.video_path is None else i.answer for i in b],
           chunk_file(model / "bench" / "predictions", 1, 0), progress=False)
    assert main(["benchmark", "--data-root", str(data_root), "--output-dir", str(model / "bench"), "--stage",
                 "judge", "--judge", "exact", "--allow-incomplete", "--no-progress"]) == 0
    pred_file = write_merged(tmp_path / "qa.jsonl", right=RIGHT_A)
    assert exact_judge(pred_file, model / "temporal", "--dataset", "msvd") == 0
    caplog.clear()
    assert main(["report", "--results", str(model), "--output-dir", str(tmp_path / "report")]) == 0
    markdown = (tmp_path / "report" / "report.md").read_text()
    [row] = [line for line in markdown.splitlines() if line.startswith("| model |") and line.count("(n=") == 5]
    cells = [cell.strip() for cell in row.strip("|").split("|")][1:7]
    assert [cell.endswith("*") for cell in cells] == [True, True, True, False, False, True], row
    assert "stopped" not in markdown and "stopped" not in caplog.text
    assert json.loads((tmp_path / "report" / "report.json").read_text())["models"]["model"]["unfinished"] == []
