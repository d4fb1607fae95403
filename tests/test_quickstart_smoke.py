"""The README's main command, end to end on a few dozen clips: `bash scripts/quickstart.sh` generates the
data, trains the three stages through the real launchers (torchrun, DeepSpeed) and evaluates; every stage
log starts with the command that ran it; a data folder of one seed is refused to a run of another."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NUM_TEST = 8


def _quickstart(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh"), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_quickstart_runs_end_to_end_on_a_small_dataset(tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    done = _quickstart("--num-train", "32", "--num-test", str(NUM_TEST), "--out", str(out), "--data", str(data))
    assert done.returncode == 0, done.stderr[-3000:]

    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["prealign", "pretrain", "finetune"]
    assert all(s["steps"] >= 1 for s in summary["stages"])
    ev = summary["eval"]
    assert ev["num_yes"] + ev["num_no"] == NUM_TEST and ev["num_failed"] == 0
    assert set(ev["per_type"]) == {"appearance", "motion", "counting", "temporal"}
    assert (out / "loss_curves.png").stat().st_size > 0
    for stage in ("prealign", "pretrain", "finetune"):
        first = (out / "logs" / f"{stage}.log").read_text().splitlines()[0]
        assert first.startswith("$ ") and f"scripts/videopanda/{stage}.sh" in first, first
        assert "EXPERIMENT=quickstart " in first and f"run_dir={out.resolve()}" in first, first
    assert (out / "logs" / "eval_qa_0.log").read_text().startswith("$ ")

    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    other = _quickstart("--seed", "1", "--num-train", "32", "--num-test", str(NUM_TEST),
                        "--out", str(tmp_path / "seed1"), "--data", str(data))
    assert other.returncode == 1
    assert f"{data} holds the synthetic data of seed 0, not of seed 1" in other.stderr
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == before
