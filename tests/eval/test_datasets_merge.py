"""Question/answer pairing, video lookup, sharding and the completeness check of merge."""
import json

import pytest

from videopanda.eval.cli import main
from videopanda.eval.datasets import DatasetError, load_benchmark, load_questions
from videopanda.eval.qa import prediction_record, shard

from .conftest import write_qa_dataset


def test_pairs_by_question_id_not_position(msvd_root):
    data_root, expected = msvd_root
    items = load_questions(data_root, "msvd")
    assert [(i.id, i.question, i.answer) for i in items] == [(e["id"], e["question"], e["answer"]) for e in expected]
    assert items[0].video_path.name == "clip0.mp4"
    assert items[5].video_path is None            # the question whose video has no file
    assert {i.type for i in items} == {"colour", "count"}


def test_activitynet_prefix_and_extensions(tmp_path):
    write_qa_dataset(tmp_path, folder="Activitynet_Zero_Shot_QA", n=4, missing_video=None, prefix="v_", ext=".mkv")
    items = load_questions(tmp_path, "activitynet")
    assert [i.video_path.name for i in items] == ["v_clip0.mkv", "v_clip0.mkv", "v_clip1.mkv", "v_clip1.mkv"]


@pytest.mark.parametrize("broken,message", [
    ("dup_q", "appears more than once"), ("dup_a", "appears more than once"), ("no_answer", "no answer for 1"),
    ("no_field", "has no 'question' field"),
])
def test_bad_question_files_fail_naming_the_file(tmp_path, broken, message):
    write_qa_dataset(tmp_path, n=4)
    root = tmp_path / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    q, a = json.loads((root / "test_q.json").read_text()), json.loads((root / "test_a.json").read_text())
    if broken == "dup_q":
        q.append(dict(q[0]))
    elif broken == "dup_a":
        a.append(dict(a[0]))
    elif broken == "no_answer":
        a = [x for x in a if x["question_id"] != "q002"]
    else:
        del q[1]["question"]
    (root / "test_q.json").write_text(json.dumps(q))
    (root / "test_a.json").write_text(json.dumps(a))
    with pytest.raises(DatasetError, match=message) as info:
        load_questions(tmp_path, "msvd")
    assert "test_" in str(info.value)


def test_benchmark_items(tmp_path):
    root = tmp_path / "eval" / "Video_ChatGPT_Benchmark"
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "v_a.mp4").write_bytes(b"x")
    (root / "generic_qa.json").write_text(json.dumps([{"video_name": "v_a", "Q": "what?", "A": "a cat"}]))
    (root / "temporal_qa.json").write_text(json.dumps([{"video_name": "v_a", "Q": "then?", "A": "it sat"}]))
    (root / "consistency_qa.json").write_text(json.dumps([{"video_name": "v_b", "Q1": "who?", "Q2": "which animal?", "A": "a cat"}]))
    items = load_benchmark(tmp_path)
    assert [i.id for i in items] == ["generic/0", "temporal/0", "consistency/0/q1", "consistency/0/q2"]
    assert [i.question for i in items[2:]] == ["who?", "which animal?"]
    assert items[0].video_path.name == "v_a.mp4" and items[2].video_path is None


def test_shards_cover_everything_once(msvd_root):
    items = load_questions(msvd_root[0], "msvd")
    for k in (1, 3, 5, 13):
        parts = [shard(items, k, i) for i in range(k)]
        assert [x.id for part in parts for x in part] == [x.id for x in items]
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def _write_chunks(pred_dir, items, chunks, drop=(), duplicate=(), error=()):
    pred_dir.mkdir(parents=True, exist_ok=True)
    for k in range(chunks):
        with open(pred_dir / f"chunk-{k}-of-{chunks}.jsonl", "w") as f:
            for item in shard(items, chunks, k):
                if item.id in drop:
                    continue
                result = RuntimeError("cannot decode") if item.id in error else f"pred {item.id}"
                for _ in range(2 if item.id in duplicate else 1):
                    f.write(json.dumps(prediction_record(item, result)) + "\n")


def _merge(data_root, pred_dir, out, *extra):
    return main(["merge", "--pred-dir", str(pred_dir), "--dataset", "msvd", "--data-root", str(data_root),
                 "--output", str(out), *extra])


def test_merge_complete_in_dataset_order(msvd_root, tmp_path, capsys):
    data_root, expected = msvd_root
    items = load_questions(data_root, "msvd")
    _write_chunks(tmp_path / "pred", items, 3)
    assert _merge(data_root, tmp_path / "pred", tmp_path / "merge.jsonl") == 0
    rows = [json.loads(line) for line in (tmp_path / "merge.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [e["id"] for e in expected]
    assert all(r["pred"] == f"pred {r['id']}" for r in rows)
    out = capsys.readouterr().out
    assert "12 questions: 12 answered, 0 without an answer" in out and "complete" in out and "INCOMPLETE" not in out


def test_error_rows_make_the_merge_incomplete(msvd_root, tmp_path, capsys):
    """An undecodable or missing video is a question without an answer: the merge is incomplete (exit 1)
    unless --allow-incomplete, and then the error row stays in the merged file for the judge to count."""
    data_root, expected = msvd_root
    items = load_questions(data_root, "msvd")
    _write_chunks(tmp_path / "pred", items, 3, error={"q005"})
    merged = tmp_path / "merge.jsonl"
    assert _merge(data_root, tmp_path / "pred", merged) == 1
    assert not merged.exists()
    out = capsys.readouterr().out
    assert "12 questions: 11 answered, 1 without an answer (0 missing, 1 error rows, 0 stale)" in out
    assert "failed (error rows): 1: q005" in out and "INCOMPLETE" in out
    assert _merge(data_root, tmp_path / "pred", merged, "--allow-incomplete") == 0
    rows = [json.loads(line) for line in merged.read_text().splitlines()]
    assert [r["id"] for r in rows] == [e["id"] for e in expected]
    assert rows[5]["pred"] is None and "cannot decode" in rows[5]["error"]
    sidecar = json.loads((tmp_path / "merge.run.json").read_text())
    assert sidecar["complete"] is False and sidecar["failed"] == ["q005"] and sidecar["num_questions"] == 12


@pytest.mark.parametrize("problem", ["missing", "duplicated", "unexpected", "stale"])
def test_merge_incomplete_fails_and_reports(msvd_root, tmp_path, capsys, problem):
    data_root, _ = msvd_root
    items = load_questions(data_root, "msvd")
    pred = tmp_path / "pred"
    _write_chunks(pred, items, 2, drop={"q003"} if problem == "missing" else (),
                  duplicate={"q007"} if problem == "duplicated" else ())
    if problem == "unexpected":
        (pred / "extra.jsonl").write_text(json.dumps({"id": "zzz", "question": "?", "answer": "?", "video": "clip0",
                                                      "video_key": None, "pred": "x"}) + "\n")
    if problem == "stale":
        path = pred / "chunk-0-of-2.jsonl"
        lines = path.read_text().splitlines()
        row = json.loads(lines[0])
        row["answer"] = "an old answer"
        path.write_text("\n".join([json.dumps(row), *lines[1:]]) + "\n")
    out_file = tmp_path / "merge.jsonl"
    assert _merge(data_root, pred, out_file) == 1
    assert not out_file.exists()
    out = capsys.readouterr().out
    assert "INCOMPLETE" in out
    assert {"missing": "missing: 1: q003", "duplicated": "duplicated: 1: q007", "unexpected": "not in the dataset: 1: zzz",
            "stale": "differs from the dataset (stale?): 1: q000"}[problem] in out
    assert _merge(data_root, pred, out_file, "--allow-incomplete") == 0
    rows = [json.loads(line) for line in out_file.read_text().splitlines()]
    # one line per question of the dataset: a missing or stale one as an error row the judge counts as wrong
    assert [r["id"] for r in rows] == [i.id for i in items]
    unanswered = {r["id"]: r["error"] for r in rows if r["pred"] is None}
    if problem in ("missing", "stale"):
        bad = "q003" if problem == "missing" else "q000"
        assert list(unanswered) == [bad] and unanswered[bad].startswith(problem)
        assert rows[int(bad[1:])]["answer"] == items[int(bad[1:])].answer
    else:
        assert unanswered == {}
