"""Learning curves and the paired seed table of the quickstart, from one real run on a few dozen clips:
`videopanda quickstart --seeds 0 --compare no-distill --curve-every-epochs 3 --curve-questions 8` trains
both variants (32 clips: 2 finetune steps per epoch, 18 in all), keeps a finetune checkpoint every 3 epochs
and evaluates each on the first 8 of the 12 held-out questions; the seed table pairs the two variants."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.by_hand import mcnemar, wilson

from videopanda.train.checkpointing import checkpoint_folders, is_complete

NUM_TRAIN, NUM_TEST, CURVE_QUESTIONS = 32, 12, 8
TYPES = ["appearance", "counting", "motion", "temporal"]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    work = tmp_path_factory.mktemp("curves")
    done = subprocess.run([sys.executable, "-m", "videopanda", "quickstart", "--seeds", "0", "--compare", "no-distill",
                           "--curve-every-epochs", "3", "--curve-questions", str(CURVE_QUESTIONS), "--num-train",
                           str(NUM_TRAIN), "--num-test", str(NUM_TEST)], cwd=work, capture_output=True, text=True,
                          timeout=1700)
    assert done.returncode == 0, done.stderr[-3000:]
    return work


def _summary(work: Path, folder: str) -> dict:
    return json.loads((work / "outputs" / folder / "summary.json").read_text())


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("folder", ["quickstart-seed0", "quickstart-seed0_no-distill"])
def test_one_curve_point_per_kept_checkpoint_with_its_step_and_counts(work, folder):
    out = work / "outputs" / folder
    curve = _summary(work, folder)["curve"]
    assert (curve["every_epochs"], curve["questions"]) == (3.0, CURVE_QUESTIONS)
    assert [(p["step"], p["epoch"]) for p in curve["points"]] == [(6, 3.0), (12, 6.0), (18, 9.0)]
    assert [step for step, path in checkpoint_folders(out / "finetune") if is_complete(path)] == [6, 12, 18]
    assert [step for step, _ in checkpoint_folders(out / "pretrain")] == [1]  # the other stages save as before
    test_q = json.loads((work / "data/synth-seed0/eval/GPT_Zero_Shot_QA/Synth_Zero_Shot_QA/test_q.json").read_text())
    first = sorted(q["question_id"] for q in test_q[:CURVE_QUESTIONS])
    for point in curve["points"]:
        verdicts = [json.loads(line) for line in
                    (out / "curve" / f"step-{point['step']}" / "judge" / "verdicts.jsonl").read_text().splitlines()]
        assert sorted(v["id"] for v in verdicts) == first
        assert (point["num_items"], point["num_yes"]) == (CURVE_QUESTIONS, sum(v["verdict"] == "yes" for v in verdicts))
        assert point["per_type_num_items"] == {t: CURVE_QUESTIONS // 4 for t in TYPES}
        assert point["accuracy_ci95"] == pytest.approx(wilson(point["num_yes"], CURVE_QUESTIONS))
        for t in TYPES:
            right = sum(v["verdict"] == "yes" for v in verdicts if v["type"] == t)
            assert point["per_type_num_yes"][t] == right
            assert point["per_type_ci95"][t] == pytest.approx(wilson(right, CURVE_QUESTIONS // 4))
        assert point["elapsed_s"] > 0
    assert curve["seconds_per_point"] > 0
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    name = "no-distill" if folder.endswith("no-distill") else "full model"
    assert f"| {name} | 18 | 9 | " in (out / "results.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_summary_accuracies_carry_their_wilson_intervals_and_counts(work):
    ev = _summary(work, "quickstart-seed0")["eval"]
    results = json.loads((work / "outputs/quickstart-seed0/eval/judge/results.json").read_text())
    assert (ev["num_items"], ev["num_yes"]) == (NUM_TEST, results["num_yes"])
    assert ev["accuracy_ci95"] == pytest.approx(wilson(ev["num_yes"], NUM_TEST))
    assert ev["per_type_num_items"] == {t: NUM_TEST // 4 for t in TYPES}
    for t in TYPES:
        assert ev["per_type_num_yes"][t] == results["per_type"][t]["num_yes"]
        assert ev["per_type_ci95"][t] == pytest.approx(wilson(ev["per_type_num_yes"][t], NUM_TEST // 4))
    low, high = ev["accuracy_ci95"]
    row = f"| **overall** | **{ev['accuracy']:.1f} [{low:.1f}, {high:.1f}] ({NUM_TEST})** |"
    assert row in (work / "outputs/quickstart-seed0/results.md").read_text()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_seed_table_pairs_the_variants_with_mcnemar_on_their_outcomes(work):
    def outcomes(folder: str) -> dict[str, bool]:
        lines = (work / "outputs" / folder / "eval/judge/verdicts.jsonl").read_text().splitlines()
        return {row["id"]: row["verdict"] == "yes" for row in map(json.loads, lines)}

    full, ablated = outcomes("quickstart-seed0"), outcomes("quickstart-seed0_no-distill")
    assert len(full) == len(ablated) == NUM_TEST
    b = sum(full[i] and not ablated[i] for i in full)
    c = sum(ablated[i] and not full[i] for i in full)
    seeds = work / "outputs" / "quickstart-seeds"
    comparisons = json.loads((seeds / "compare.json").read_text())
    for report in (comparisons["per_seed"]["0"], comparisons["pooled"]):
        overall = report["parts"]["qa"]["overall"]
        assert (overall["n"], overall["right_only_a"], overall["right_only_b"]) == (NUM_TEST, b, c)
        assert overall["mcnemar_p"] == pytest.approx(mcnemar(b, c))
    table = (seeds / "table.md").read_text()
    assert f"| 0 | {NUM_TEST} | " in table and f"({b} / {c}, p={mcnemar(b, c):.3g}) |" in table
    assert "| full model | pooled (0) | " in table and "| no-distill | pooled (0) | " in table
    assert "| full model | 12 | 6 | " in table and "| no-distill | 18 | 9 | " in table  # both variants' curves
    assert (seeds / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
