"""Every prediction file records what produced it; other models or settings are never resumed into,
merged with, or judged as, earlier predictions. Real tiny model folders, real videos, the real CLI."""
import json
import logging
import shutil

import pytest
from helpers.media import make_frames, write_text_file, write_video

from videopanda.eval.cli import main
from videopanda.eval.qa import chunk_file


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data" / "eval" / "GPT_Zero_Shot_QA" / "MSVD_Zero_Shot_QA"
    (root / "videos").mkdir(parents=True)
    write_video(root / "videos" / "a.mp4", make_frames(8, height=32, width=48, seed=5))
    write_text_file(root / "videos" / "broken.mp4")
    videos = ["a", "a", "broken", "a"]
    (root / "test_q.json").write_text(json.dumps(
        [{"video_name": v, "question": f"what colour is shape {i}", "question_id": i} for i, v in enumerate(videos)]))
    (root / "test_a.json").write_text(json.dumps([{"answer": "red", "question_id": i} for i in range(len(videos))]))
    return tmp_path / "data"


def qa(model, data_root, out, *extra):
    return main(["qa", "--model", str(model), "--dataset", "msvd", "--data-root", str(data_root),
                 "--output-dir", str(out), "--device", "cpu", "--max-new-tokens", "3", "--no-progress", *extra])


def errors(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_identity_sees_other_weights_of_the_same_shape(model_dir, other_model_dir, tmp_path):
    from videopanda.eval.provenance import model_identity

    files = sorted(p.name for p in model_dir.iterdir())
    assert files == sorted(p.name for p in other_model_dir.iterdir())
    assert [(model_dir / f).stat().st_size for f in files] == [(other_model_dir / f).stat().st_size for f in files]
    assert model_identity(model_dir) != model_identity(other_model_dir)
    copy = shutil.copytree(model_dir, tmp_path / "elsewhere" / "copy")
    assert model_identity(copy) == model_identity(model_dir)


@pytest.mark.parametrize("change", [
    "model", "--max-new-tokens", "--system", "--num-frames", "--num-frames 16", "--fps", "--dtype",
])
def test_rerun_with_other_settings_is_refused(model_dir, other_model_dir, data_root, tmp_path, caplog, change):
    out = tmp_path / "pred"
    assert qa(model_dir, data_root, out) == 0
    chunk = chunk_file(out, 1, 0)
    before = chunk.read_bytes()
    sidecar = json.loads((out / "chunk-0-of-1.run.json").read_text())
    assert sidecar["fingerprint"]["generation"] == {"max_new_tokens": 3, "greedy": True}
    assert sidecar["fingerprint"]["dtype"] == "float32" and sidecar["fingerprint"]["frames"]["num_frames"] == 8
    assert "sampling" not in sidecar["fingerprint"]["frames"]  # the default sampling keeps the earlier fingerprints

    caplog.clear()
    model, extra, named = {
        "model": (other_model_dir, [], f"model {model_dir} -> {other_model_dir}"),
        "--max-new-tokens": (model_dir, ["--max-new-tokens", "5"], "generation.max_new_tokens 3 -> 5"),
        "--system": (model_dir, ["--system", "human"], 'system ...ween a curious user and an artifici... -> ...ween a curious human and an artific...'),
        "--num-frames": (model_dir, ["--num-frames", "4"], "frames.num_frames 8 -> 4"),
        "--num-frames 16": (model_dir, ["--num-frames", "16"], "frames.num_frames 8 -> 16"),
        "--fps": (model_dir, ["--fps", "1"], "frames.sampling.fps null -> 1.0"),
        "--dtype": (model_dir, ["--dtype", "bfloat16"], "dtype 'float32' -> 'bfloat16'"),
    }[change]
    assert qa(model, data_root, out, *extra) == 2
    [message] = errors(caplog)
    assert named in message and str(chunk) in message and "--output-dir" in message and "\n" not in message
    assert chunk.read_bytes() == before

    caplog.clear()
    caplog.set_level(logging.INFO, logger="videopanda")
    assert qa(model_dir, data_root, out) == 0      # the same settings resume: nothing left to answer
    assert "4 of 4 questions already answered, 0 to go" in caplog.text


def test_chunks_of_other_models_are_never_merged(model_dir, other_model_dir, data_root, tmp_path, caplog):
    a, b, mixed = tmp_path / "a", tmp_path / "b", tmp_path / "mixed"
    assert qa(model_dir, data_root, a, "--num-chunks", "2", "--chunk-idx", "0") == 0
    # the second chunk of another model into the same folder is refused before any answer
    assert qa(other_model_dir, data_root, a, "--num-chunks", "2", "--chunk-idx", "1") == 2
    assert "chunk-0-of-2.jsonl: holds predictions made with other settings (model" in errors(caplog)[-1]
    assert not chunk_file(a, 2, 1).exists()

    assert qa(other_model_dir, data_root, b, "--num-chunks", "2", "--chunk-idx", "1") == 0
    shutil.copytree(a, mixed)
    for name in ("chunk-1-of-2.jsonl", "chunk-1-of-2.run.json"):
        shutil.copy(b / name, mixed / name)
    caplog.clear()
    merged = tmp_path / "merge.jsonl"
    merge = ["merge", "--pred-dir", str(mixed), "--dataset", "msvd", "--data-root", str(data_root),
             "--output", str(merged)]
    assert main([*merge, "--allow-incomplete"]) == 2
    [message] = errors(caplog)
    assert "chunk-1-of-2.jsonl: made with other settings than chunk-0-of-2.jsonl (model" in message
    assert not merged.exists()

    # a chunk without a sidecar beside one with a fingerprint: origin unknown, refused too
    (mixed / "chunk-1-of-2.run.json").unlink()
    caplog.clear()
    assert main([*merge, "--allow-incomplete"]) == 2
    assert "chunk-1-of-2.jsonl: has no fingerprint" in errors(caplog)[0]


def test_merged_file_and_results_carry_the_fingerprint(model_dir, data_root, tmp_path, caplog):
    pred, merged, judged = tmp_path / "pred", tmp_path / "merge.jsonl", tmp_path / "judge"
    assert qa(model_dir, data_root, pred, "--num-chunks", "2", "--chunk-idx", "0") == 0
    assert qa(model_dir, data_root, pred, "--num-chunks", "2", "--chunk-idx", "1") == 0
    chunk = json.loads((pred / "chunk-1-of-2.run.json").read_text())
    assert main(["merge", "--pred-dir", str(pred), "--dataset", "msvd", "--data-root", str(data_root),
                 "--output", str(merged), "--allow-incomplete"]) == 0     # broken.mp4 is an error row
    sidecar = json.loads((tmp_path / "merge.run.json").read_text())
    assert sidecar["fingerprint"] == chunk["fingerprint"] and sidecar["dataset"] == "msvd"
    assert sidecar["model_path"] == str(model_dir.resolve()) and sidecar["failed"] == ["2"]

    judge = ["judge", "--pred-file", str(merged), "--output-dir", str(judged), "--judge", "exact", "--no-progress",
             "--allow-incomplete"]
    assert main(judge) == 0
    results = json.loads((judged / "results.json").read_text())
    assert results["prediction_fingerprint"] == chunk["fingerprint"]
    assert results["prediction_fingerprint_id"] == chunk["fingerprint_id"]
    assert results["judge_model"] == "exact-match" and results["dataset"] == "msvd"
    assert results["num_items"] == 4 and results["failed_ids"]["inference"] == [2]

    # the merged file edited after the merge no longer matches its sidecar: refused, one line
    merged.write_text(merged.read_text().replace('"pred": "', '"pred": "x', 1))
    caplog.clear()
    assert main(judge) == 2
    assert errors(caplog) == [f"{merged}: changed since merge.run.json was written (rerun `videopanda eval merge`)"]


def test_predictions_of_unknown_origin_are_not_resumed(model_dir, data_root, tmp_path, caplog):
    out = tmp_path / "pred"
    out.mkdir()
    row = {"id": 0, "question": "what colour is shape 0", "answer": "red", "pred": "blue"}
    chunk_file(out, 1, 0).write_text(json.dumps(row) + "\n")
    assert qa(model_dir, data_root, out) == 2
    assert "holds predictions of unknown origin (no chunk-0-of-1.run.json)" in errors(caplog)[0]


def test_bad_model_folders_are_one_line_errors(model_dir, data_root, tmp_path, caplog):
    corrupt = shutil.copytree(model_dir, tmp_path / "corrupt")
    (corrupt / "config.json").write_text('{"model_type": "videopanda", ')
    assert qa(corrupt, data_root, tmp_path / "p1") == 2
    [message] = errors(caplog)
    assert str(corrupt / "config.json") in message and "\n" not in message

    sharded = shutil.copytree(model_dir, tmp_path / "sharded")
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": {
        "lm_head.weight": "model-00001-of-00002.safetensors",
        "model.norm.weight": "model-00002-of-00002.safetensors"}}))
    caplog.clear()
    assert qa(sharded, data_root, tmp_path / "p2") == 2
    [message] = errors(caplog)
    assert str(sharded / "model-00002-of-00002.safetensors") in message and "\n" not in message
    assert not (tmp_path / "p1").exists() and not (tmp_path / "p2").exists()
