"""`eval report` names the frame sampling behind every model's numbers, from the predictions' fingerprint."""
from __future__ import annotations

import json

from videopanda.eval.cli import main


def write_results(folder, dataset: str, frames: dict | None) -> None:
    folder.mkdir(parents=True)
    results = {"dataset": dataset, "accuracy": 50.0, "score": 3.0, "num_items": 4, "complete": True,
               "judge": "exact", "judge_model": "exact-match"}
    if frames is not None:
        results["prediction_fingerprint"] = {"frames": frames}
    (folder / "results.json").write_text(json.dumps(results))


def test_the_report_names_each_models_frame_sampling(tmp_path, capsys):
    eight = {"num_frames": 8, "frames_per_chunk": 4, "image_size": 448, "teacher_image_size": 224, "patch_size": 14}
    by_rate = {**{k: v for k, v in eight.items() if k != "num_frames"},
               "sampling": {"fps": 1.0, "min_frames": 4, "max_frames": 32}}
    write_results(tmp_path / "a" / "msvd", "msvd", eight)
    write_results(tmp_path / "a" / "tgif", "tgif", {**eight, "num_frames": 16})
    write_results(tmp_path / "b" / "msvd", "msvd", by_rate)
    write_results(tmp_path / "c" / "msvd", "msvd", None)
    assert main(["report", "--results", str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c"),
                 "--names", "a", "b", "c", "--output-dir", str(tmp_path / "report")]) == 0
    rows = {line.split(" | ")[0].strip("| "): line for line in (tmp_path / "report" / "report.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| Model")}
    assert rows["a"].endswith("| exact | 8 frames, 16 frames |")
    assert rows["b"].endswith("| exact | 1 fps (4-32 frames) |")
    assert rows["c"].endswith("| exact | - |")
