"""The README's main command, end to end on a few dozen clips, from an installed package: a wheel built from
this checkout and installed with `pip install --target` (first on PYTHONPATH) runs `videopanda quickstart` in
a folder outside the checkout. It generates the data and the base models, trains the three stages through the
installed launchers (torchrun, DeepSpeed) and evaluates, all in that folder; every stage log starts with the
command that ran it; every accuracy carries its Wilson interval and count, and without learning curves the
finetune stage keeps only its last checkpoint. Then `bash scripts/quickstart.sh` refuses that data folder to
a run of another seed."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.by_hand import wilson

REPO = Path(__file__).resolve().parents[1]
NUM_TEST = 8
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "videopanda_command.py", "videopanda", "configs", "scripts")


def _install(tmp_path: Path) -> Path:
    """Build a wheel from a copy of the checkout (the build leaves nothing in the checkout) and install it
    into a folder of its own; returns that folder."""
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip"]
    _check([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"), str(source)])
    (wheel,) = (tmp_path / "wheel").glob("videopanda-*.whl")
    _check([*pip, "install", "--no-deps", "-q", "--target", str(tmp_path / "site"), str(wheel)])
    return tmp_path / "site"


def _check(command: list[str]) -> None:
    done = subprocess.run(command, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def _installed_env(site: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}
    for name in ("PYTHON", "VIDEOPANDA_CONFIG_DIR", "VIDEOPANDA_LAUNCHER_DIR"):
        env.pop(name, None)
    return env


@pytest.mark.slow
def test_quickstart_runs_end_to_end_from_an_installed_package(tmp_path):
    site = _install(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = _installed_env(site)
    where = subprocess.run([sys.executable, "-c", "import importlib.util as u\n"
                            "for name in ('videopanda', 'videopanda_command'): print(u.find_spec(name).origin)"],
                           cwd=work, env=env, capture_output=True, text=True, timeout=60)
    origins = [Path(line) for line in where.stdout.split()]
    if len(origins) != 2 or not all(origin.is_relative_to(site) for origin in origins):
        pytest.fail(f"the installed copy in {site} is not the one imported: {where.stdout}{where.stderr}")

    done = subprocess.run([sys.executable, "-m", "videopanda_command", "quickstart", "--num-train", "32",
                           "--num-test", str(NUM_TEST), "--out", "out", "--data", "data"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"videopanda from {site / 'videopanda'}, configs from {site / 'share/videopanda/configs'}" in done.stderr

    out, data = work / "out", work / "data"
    summary = json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == ["prealign", "pretrain", "finetune"]
    assert summary["resumed"] is False  # a fresh folder: its time is the whole job's
    assert all(s["steps"] >= 1 for s in summary["stages"])
    ev = summary["eval"]
    assert ev["num_yes"] + ev["num_no"] == NUM_TEST and ev["num_failed"] == 0
    assert set(ev["per_type"]) == {"appearance", "motion", "counting", "temporal"}
    assert (ev["num_items"], ev["accuracy_ci95"]) == (NUM_TEST, pytest.approx(wilson(ev["num_yes"], NUM_TEST)))
    for question_type, right in ev["per_type_num_yes"].items():
        assert ev["per_type_ci95"][question_type] == pytest.approx(wilson(right, NUM_TEST // 4))
    # learning curves are off by default: no curve, and the finetune stage keeps only its last step
    assert "curve" not in summary and not (out / "curve").exists() and not (out / "learning_curves.png").exists()
    assert [p.name for p in (out / "finetune").glob("checkpoint-*")] == [f"checkpoint-{summary['stages'][2]['steps']}"]
    assert (out / "loss_curves.png").stat().st_size > 0
    assert (data / "models" / "base").is_dir() and (data / "models" / "teacher").is_dir()
    for stage in ("prealign", "pretrain", "finetune"):
        first = (out / "logs" / f"{stage}.log").read_text().splitlines()[0]
        assert first.startswith("$ ") and f"{site}/share/videopanda/scripts/videopanda/{stage}.sh" in first, first
        assert "EXPERIMENT=quickstart " in first and f"run_dir={out.resolve()}" in first, first
    for step in ("synth", "models", "eval_qa_0"):
        assert (out / "logs" / f"{step}.log").read_text().startswith("$ "), step
    assert "quickstart-models --data data" in (out / "logs" / "models.log").read_text().splitlines()[0]
    cached = [p for p in (data / "frame_cache").rglob("*") if p.is_file()]  # each clip decoded and resized once
    assert sorted(p.suffix for p in cached) == [".npy"] * 32 + [".resized"] * 32

    logs = {p: p.read_bytes() for p in (out / "logs").iterdir()}
    again = subprocess.run([sys.executable, "-m", "videopanda_command", "quickstart", "--num-train", "32",
                            "--num-test", str(NUM_TEST), "--out", "out", "--data", "data"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already holds a finished run" in again.stderr
    assert json.loads((out / "summary.json").read_text()) == summary  # the first call's time, not the check's
    assert {p: p.read_bytes() for p in (out / "logs").iterdir()} == logs

    before = {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()}
    other = subprocess.run(["bash", str(REPO / "scripts" / "quickstart.sh"), "--seed", "1", "--num-train", "32",
                            "--num-test", str(NUM_TEST), "--out", str(tmp_path / "seed1"), "--data", str(data)],
                           cwd=REPO, env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                           timeout=900)
    assert other.returncode == 1, other.stderr[-3000:]
    assert f"{data} holds the synthetic data of seed 0, not of seed 1" in other.stderr
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*") if p.is_file()} == before
