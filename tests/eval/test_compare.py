"""`eval compare` over result folders written by the real commands, with McNemar p-values by hand."""
import json

import pytest

from videopanda.eval.cli import main
from videopanda.eval.mc import load_mc
from videopanda.eval.qa import chunk_file, run_qa

from .test_faults import one_error_line, videopanda
from .test_mc import scripted, write_mvbench

# right in A: q0, q1; right in B: q0, q2..q7; q8, q9 wrong in both -> b = 1, c = 6
RIGHT_A, RIGHT_B = {0, 1}, {0, 2, 3, 4, 5, 6, 7}


def write_merged(path, right, answers=None, failed=(), extra=0):
    """A merged prediction file over q0..q10 (plus `extra` more): "red" is the right answer; even ids are
    of type count, odd ids of type colour; ids in `failed` have no prediction."""
    rows = []
    for i in range(11 + extra):
        answer = (answers or {}).get(i, "red")
        pred = None if i in failed else ("red" if i in right or i == 10 else "blue")
        rows.append({"id": f"q{i}", "question": f"what colour is shape {i}", "answer": answer, "pred": pred,
                     "type": "count" if i % 2 == 0 else "colour", **({"error": "no video"} if pred is None else {})})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def judge(tmp_path, name, dataset="msvd", **rows):
    out = tmp_path / name
    pred_file = write_merged(tmp_path / f"{name}.jsonl", **rows)
    assert main(["judge", "--pred-file", str(pred_file), "--output-dir", str(out), "--judge", "exact",
                 "--dataset", dataset, "--no-progress", "--allow-incomplete"]) == 0
    return out


def test_compare_two_judge_folders(tmp_path, capsys):
    a = judge(tmp_path, "a", right=RIGHT_A, failed={10})     # q10: no prediction in A, right in B
    b = judge(tmp_path, "b", right=RIGHT_B)
    capsys.readouterr()
    out = tmp_path / "compare.json"
    assert main(["compare", str(a), str(b), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    part = report["parts"]["qa"]
    overall = part["overall"]
    # p = 2 * (C(7,0) + C(7,1)) / 2^7 = 0.125
    assert (overall["n"], overall["right_only_a"], overall["right_only_b"]) == (10, 1, 6)
    assert overall["mcnemar_p"] == pytest.approx(0.125)
    assert (overall["accuracy_a"], overall["accuracy_b"], overall["accuracy_diff"]) == pytest.approx((20.0, 70.0, 50.0))
    # Wilson 2/10 and 7/10 by hand: [5.67, 50.98] and [39.68, 89.22]
    assert overall["accuracy_a_ci95"] == pytest.approx([5.668, 50.983], abs=0.01)
    assert overall["accuracy_b_ci95"] == pytest.approx([39.677, 89.221], abs=0.01)
    # exact judge: score 5 when right, else 0, so B - A = 5 * 0.5
    assert overall["score_diff"] == pytest.approx(2.5)
    # with 7 discordant items of 10 the interval of the score difference reaches 0, as McNemar's p does not
    # reach 0.05
    assert overall["score_diff_ci95"][0] <= 0 < 2.5 < overall["score_diff_ci95"][1] <= 5
    # count (even ids): A right q0, B right q0 q2 q4 q6: b = 0, c = 3, p = 2 / 8
    # colour (odd ids): A right q1, B right q3 q5 q7: b = 1, c = 3, p = 2 * (1 + 4) / 16
    count, colour = part["per_group"]["type"]["count"], part["per_group"]["type"]["colour"]
    assert (count["n"], count["right_only_a"], count["right_only_b"]) == (5, 0, 3)
    assert count["mcnemar_p"] == pytest.approx(0.25) and colour["mcnemar_p"] == pytest.approx(0.625)
    assert [row["id"] for row in part["differing"]] == ["q1", "q2", "q3", "q4", "q5", "q6", "q7"]
    assert part["differing"][0] == {"id": "q1", "a": {"correct": True, "score": 5.0}, "b": {"correct": False, "score": 0.0}}
    assert part["left_out"] == [{"id": "q10", "a": "no prediction", "b": None}]
    printed = capsys.readouterr().out
    assert "over 10 items; 1 left out (A: 1 no prediction)" in printed
    assert "exact McNemar p=0.125" in printed and "accuracy A 20.0 [5.7, 51.0] B 70.0 [39.7, 89.2]" in printed
    assert "7 items differ: q1, q2, q3, q4, q5, q6, q7" in printed


@pytest.mark.parametrize("other, message", [
    (dict(right=RIGHT_B, extra=1), "different item sets: 0 only in A (-), 1 only in B (q11)"),
    (dict(right=RIGHT_B, dataset="msrvtt"), "datasets msvd and msrvtt"),
    (dict(right=RIGHT_B, answers={3: "green"}), "the same item ids with other questions or references"),
])
def test_mismatched_judge_folders_are_refused_in_one_line(tmp_path, caplog, other, message):
    a, b = judge(tmp_path, "a", right=RIGHT_A), judge(tmp_path, "b", **other)
    caplog.clear()
    assert main(["compare", str(a), str(b)]) == 2
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith(f"{a} and {b} are not comparable: ") and message in line


def test_a_folder_judged_again_over_other_predictions_is_refused(tmp_path, caplog):
    # A's folder judged A, then predictions with q1 wrong, then A again: q1's last verdict line is the
    # middle run's, not the one results.json counts
    a = judge(tmp_path, "a", right=RIGHT_A)
    judge(tmp_path, "a", right=RIGHT_A - {1})
    judge(tmp_path, "a", right=RIGHT_A)
    b = judge(tmp_path, "b", right=RIGHT_B)
    caplog.clear()
    assert main(["compare", str(a), str(b)]) == 2
    [line] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith(f"{a}: its verdicts.jsonl does not match its results.json")


def mc_run(tmp_path, name, answer):
    write_mvbench(tmp_path / "data") if not (tmp_path / "data").exists() else None
    items = load_mc(tmp_path / "data", "mvbench")
    out = tmp_path / name
    run_qa(items, answer, chunk_file(out / "predictions", 1, 0), progress=False)
    assert main(["mc", "--benchmark", "mvbench", "--data-root", str(tmp_path / "data"), "--output-dir", str(out),
                 "--stage", "score", "--allow-incomplete"]) == 0
    return out


def test_compare_two_mc_folders_and_refuse_other_kinds(tmp_path):
    def all_right(batch):
        return [FileNotFoundError("no video") if item.video_path is None else item.answer for item in batch]

    a, b = mc_run(tmp_path, "a", scripted), mc_run(tmp_path, "b", all_right)
    out = tmp_path / "compare.json"
    assert main(["compare", str(a), str(b), "--output", str(out)]) == 0
    part = json.loads(out.read_text())["parts"]["mc"]
    # moving_direction/2 has no video in either run: left out; of the 8 others A has 5 right, B all 8:
    # b = 0, c = 3, p = 2 / 2^3
    overall = part["overall"]
    assert (overall["n"], overall["right_only_a"], overall["right_only_b"]) == (8, 0, 3)
    assert overall["mcnemar_p"] == pytest.approx(0.25) and overall["accuracy_b_ci95"][1] == 100.0
    assert part["coverage"] == "over 8 items; 1 left out (A: 1 no prediction; B: 1 no prediction)"
    assert part["per_group"]["task"]["Action Sequence"]["right_only_b"] == 1
    assert sorted(row["id"] for row in part["differing"]) == ["action_count/2", "action_sequence/0",
                                                             "moving_direction/1"]
    qa = judge(tmp_path, "qa", right=RIGHT_A)
    code, stderr = videopanda("eval", "compare", a, qa)
    assert code == 2
    line = one_error_line(stderr)
    assert f"{a} and {qa} are not comparable: results of `eval mc` and `eval judge`" in line


def test_compare_two_benchmark_folders_pairs_scores_per_aspect(tmp_path, capsys):
    from videopanda.eval.datasets import load_questions

    from .test_exact_benchmark_report import write_benchmark

    data_root = tmp_path / "data"
    write_benchmark(data_root)
    items = load_questions(data_root, "videochatgpt")
    runs = {}
    for name, right in (("a", set()), ("b", {"generic/0", "generic/2", "temporal/0"})):
        def answer(batch, right=right):
            return [FileNotFoundError("no video") if i.video_path is None else i.answer if i.id in right else "no idea"
                    for i in batch]

        runs[name] = tmp_path / name
        run_qa(items, answer, chunk_file(runs[name] / "predictions", 1, 0), progress=False)
        assert main(["benchmark", "--data-root", str(data_root), "--output-dir", str(runs[name]), "--stage", "judge",
                     "--judge", "exact", "--no-progress", "--allow-incomplete"]) == 0
    capsys.readouterr()
    out = tmp_path / "compare.json"
    assert main(["compare", str(runs["a"]), str(runs["b"] / "judge"), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["kind"] == "benchmark" and list(report["parts"]) == ["correctness", "detail", "context",
                                                                      "temporal", "consistency"]
    correctness = report["parts"]["correctness"]
    # generic/1 has no video in either run: left out; the exact judge scores 5 for B on generic/0 and /2
    assert correctness["coverage"] == "over 2 items; 1 left out (A: 1 no prediction; B: 1 no prediction)"
    assert correctness["overall"]["score_diff"] == 5.0 and correctness["overall"]["score_diff_ci95"] == [5.0, 5.0]
    assert "accuracy_a" not in correctness["overall"]               # scores only: no McNemar test
    assert [row["id"] for row in report["parts"]["temporal"]["differing"]] == ["temporal/0"]
    assert report["parts"]["consistency"]["differing"] == []
    assert "correctness: over 2 items" in capsys.readouterr().out


def test_the_quickstart_pairs_seeds_one_by_one_and_pooled(tmp_path):
    """The quickstart's `--seeds ... --compare` table: `eval compare` per seed, and once over the questions of
    all seeds, whose ids coincide (q0..q10 in both) but stay distinct."""
    from videopanda.quickstart.run import comparison_table, paired_comparisons

    # seed 0: b = 1 (q1), c = 6 (q2..q7); seed 1: b = 0, c = 2 (q1, q2)
    folders = {0: (judge(tmp_path, "a0", right=RIGHT_A), judge(tmp_path, "b0", right=RIGHT_B)),
               1: (judge(tmp_path, "a1", right={0}), judge(tmp_path, "b1", right={0, 1, 2}))}
    comparisons = paired_comparisons(folders)
    seed0, seed1 = (comparisons["per_seed"][s]["parts"]["qa"]["overall"] for s in (0, 1))
    pooled = comparisons["pooled"]["parts"]["qa"]["overall"]
    assert (seed0["n"], seed0["right_only_a"], seed0["right_only_b"]) == (11, 1, 6)
    assert (seed1["right_only_a"], seed1["right_only_b"]) == (0, 2)
    assert (pooled["n"], pooled["right_only_a"], pooled["right_only_b"]) == (22, 1, 8)
    # p = 2 * 2^-7 (1 + 7) = 0.125; 2 * 2^-2 = 0.5; pooled 2 * 2^-9 (1 + 9) = 0.0390625
    assert (seed0["mcnemar_p"], seed1["mcnemar_p"], pooled["mcnemar_p"]) == pytest.approx((0.125, 0.5, 0.0390625))
    assert pooled["accuracy_a"] == pytest.approx(100 * 5 / 22) and pooled["accuracy_b"] == pytest.approx(100 * 12 / 22)
    assert [row["id"] for row in comparisons["pooled"]["parts"]["qa"]["differing"]][:2] == ["seed0/q1", "seed0/q2"]
    lines = comparison_table("full model", "no-lste", comparisons).splitlines()
    assert lines[0].startswith("Paired comparison, B = no-lste against A = full model")
    assert lines[2] == "| seed | questions | colour | count | overall |"
    # colour (odd ids) in seed 0: A right q1, B q3 q5 q7 -> b = 1, c = 3, p = 2 * (1 + 4) / 16
    assert lines[4] == "| 0 | 11 | +40.0 (1 / 3, p=0.625) | +50.0 (0 / 3, p=0.25) | +45.5 (1 / 6, p=0.125) |"
    assert lines[6].startswith("| pooled (0, 1) | 22 | ") and lines[6].endswith(" | +31.8 (1 / 8, p=0.0391) |")


def test_runs_of_other_kinds_are_not_pooled(tmp_path):
    from videopanda.eval.compare import CompareError, pool_runs, read_run

    qa = read_run(judge(tmp_path, "qa", right=RIGHT_A))
    other = read_run(judge(tmp_path, "other", right=RIGHT_A, dataset="msrvtt"))
    with pytest.raises(CompareError, match="cannot be pooled: results of qa over msvd and qa over msrvtt"):
        pool_runs({"seed0": qa, "seed1": other})
