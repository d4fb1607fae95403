"""`videopanda bench step`: a real training step of the tiny setting in this process, timed part by part, and
its one-line errors."""
import json
import math

from videopanda.bench.cli import main

PARTS = ("data", "forward", "backward", "optimizer")


def test_bench_step_times_each_part_of_real_steps_and_writes_nothing_of_the_stage(tiny_args, llama_dir, tmp_path,
                                                                                   capsys):
    """Prealign from the tiny Llama (the visual parts and the distillation head train, the LLM is frozen): three
    timed steps after one untimed, each part timed, the parts adding up to the step, the loss finite; the
    stage's own output folder is never created."""
    output = tmp_path / "prealign"
    report_path = tmp_path / "step.json"
    code = main(["step", *tiny_args("prealign", llama_dir, output), "--steps", "3", "--warmup", "1",
                 "--output", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    assert not output.exists()
    assert report["stage"] == "prealign" and report["per_device_batch_size"] == 2
    assert len(report["steps"]) == 3 and len(report["warmup_s"]) == 1
    for step in report["steps"]:
        assert all(step[part] > 0 for part in PARTS)
        assert math.isclose(sum(step[part] for part in PARTS), step["total"], rel_tol=1e-9)
        assert math.isfinite(step["loss"]) and step["sequence_length"] > 0
    assert report["median_s"]["total"] > 0 and report["samples_per_s"] == 2 / report["median_s"]["total"]
    assert report["environment"]["threads"] == 1 and report["trainable_params"] > 0
    table = capsys.readouterr().out
    assert "prealign step of" in table and all(part in table for part in PARTS)


def test_bench_step_on_a_missing_data_folder_fails_in_one_line(tiny_args, llama_dir, tmp_path, caplog):
    missing = tmp_path / "no-such-data"
    code = main(["step", *tiny_args("prealign", llama_dir, tmp_path / "out"), f"data.root={missing}"])
    assert code == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(missing) in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "out").exists()


def test_bench_step_refuses_no_timed_steps(tiny_args, llama_dir, tmp_path, caplog):
    assert main(["step", *tiny_args("prealign", llama_dir, tmp_path / "out"), "--steps", "0"]) == 1
    assert any("--steps must be at least 1" in r.getMessage() for r in caplog.records)
