"""`eval judge-agreement` over two real judge runs (two local servers standing for two judge snapshots)."""
import json

import numpy as np
import pytest
from helpers.judge_server import JudgeServer, reply

from videopanda.eval.agreement import cohens_kappa, pearson
from videopanda.eval.cli import main

KEY = "sk-agree-7c1e"
# item -> (verdict, score) of judge A and of judge B
A = [("yes", 5), ("yes", 4), ("yes", 4), ("yes", 3), ("yes", 4), ("yes", 3), ("no", 1), ("no", 2), ("no", 0), ("no", 1)]
B = [("yes", 5), ("yes", 4), ("yes", 4), ("yes", 3), ("no", 2), ("no", 1), ("yes", 3), ("yes", 3), ("no", 0), ("no", 1)]


def script(verdicts, model):
    return {f"item-{i}": [reply(json.dumps({"pred": p, "score": s}), model=model)] for i, (p, s) in enumerate(verdicts)}


def write_predictions(path, changed=None):
    rows = [{"id": f"item-{i}", "question": f"what happens in item-{i}?", "answer": "a dog runs",
             "pred": "a cat sits" if i == changed else f"pred {i}"} for i in range(11)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def judge(pred_file, out, server):
    return main(["judge", "--pred-file", str(pred_file), "--output-dir", str(out), "--api-base", server.url,
                 "--model", "judge", "--no-progress", "--max-retries", "0", "--allow-incomplete"])


@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    pred_file = write_predictions(tmp_path / "merge.jsonl")
    never = reply("I would rather not say.")
    with JudgeServer(script(A, "judge-a-0613"), default=reply('{"pred": "yes", "score": 5}', model="judge-a-0613")) as a:
        assert judge(pred_file, tmp_path / "a", a) == 0
    with JudgeServer(script(B, "judge-b-1106"), default=never) as b:   # item-10 never gets a verdict from B
        assert judge(pred_file, tmp_path / "b", b) == 0
    return tmp_path


def test_agreement_numbers_are_exact(two_runs, capsys):
    out = two_runs / "agreement.json"
    assert main(["judge-agreement", str(two_runs / "a"), str(two_runs / "b"), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["num_paired"] == 10 and report["only_in_a"] == ["item-10"] and report["only_in_b"] == []
    assert report["a"]["judge_model"] == "judge-a-0613" and report["b"]["judge_model"] == "judge-b-1106"
    # verdicts agree on items 0-3 (yes) and 8-9 (no): p_o = 6/10; both say yes 6 times in 10:
    # p_e = 0.6 * 0.6 + 0.4 * 0.4 = 0.52; kappa = (0.6 - 0.52) / (1 - 0.52) = 1/6
    assert report["same_verdict_pct"] == pytest.approx(60.0)
    assert report["cohens_kappa"] == pytest.approx(1 / 6)
    assert report["accuracy_a"] == pytest.approx(60.0) and report["accuracy_b"] == pytest.approx(60.0)
    assert report["accuracy_diff"] == pytest.approx(0.0)
    # Wilson 6/10 by hand: centre (0.6 + z^2/20) / (1 + z^2/10) = 0.57225, half 0.25958
    assert report["accuracy_a_ci95"] == pytest.approx([31.267, 83.182], abs=0.01) == report["accuracy_b_ci95"]
    low, high = report["cohens_kappa_ci95"]          # bootstrap over the 10 paired items
    assert -1 <= low < 1 / 6 < high <= 1
    # scores equal on items 0-3, 8, 9; |differences| 2, 2, 2, 1 on items 4-7
    assert report["same_score_pct"] == pytest.approx(60.0)
    assert report["mean_abs_score_diff"] == pytest.approx(0.7)
    assert report["score_a"] == pytest.approx(2.7) and report["score_b"] == pytest.approx(2.6)
    scores_a, scores_b = [s for _, s in A], [s for _, s in B]
    assert report["score_pearson"] == pytest.approx(np.corrcoef(scores_a, scores_b)[0, 1])
    assert [d["id"] for d in report["disagreements"]] == ["item-4", "item-5", "item-6", "item-7"]
    assert report["disagreements"][0] == {"id": "item-4", "verdict_a": "yes", "verdict_b": "no",
                                          "score_a": 4, "score_b": 2}
    printed = capsys.readouterr().out
    assert f"Cohen's kappa 0.167 [{low:.3f}, {high:.3f}] (n=10)" in printed and "item-6: A no/1  B yes/3" in printed


def test_runs_over_different_predictions_are_refused(two_runs, monkeypatch, caplog):
    pred_file = write_predictions(two_runs / "merge-edited.jsonl", changed=3)
    with JudgeServer(script(B, "judge-b-1106")) as b:
        assert judge(pred_file, two_runs / "c", b) == 0
    assert main(["judge-agreement", str(two_runs / "a"), str(two_runs / "c")]) == 1
    [message] = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert message.startswith("item item-3: ") and "judged different predictions" in message


def test_a_folder_without_verdicts_is_one_line(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    assert main(["judge-agreement", str(tmp_path / "empty"), str(tmp_path / "empty")]) == 1
    assert f"{tmp_path / 'empty' / 'verdicts.jsonl'}: no such file" in caplog.text


def test_kappa_and_correlation_edge_cases():
    assert cohens_kappa(["yes"] * 4, ["yes"] * 4) is None          # one label everywhere: undefined
    assert cohens_kappa(["yes", "no"], ["no", "yes"]) == pytest.approx(-1.0)
    assert cohens_kappa(["yes", "no", "yes"], ["yes", "no", "yes"]) == pytest.approx(1.0)
    assert pearson([1, 1, 1], [0, 2, 4]) is None
    assert pearson([0, 1, 2], [4, 2, 0]) == pytest.approx(-1.0)
