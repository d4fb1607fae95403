"""The benchmark commands on tiny shapes: real runs, real files, FLOPs checked against hand counts."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch

from videopanda.bench.cli import main
from videopanda.bench.timing import MemoryMeter, count_flops
from videopanda.bench.visual import TINY_SHAPES, ROW_NAMES

ROW_KEYS = {"name", "input", "input_shape", "output_tokens", "params_m", "gflops", "gmacs", "gflops_by_part",
            "latency_ms", "latency_ms_all", "peak_mem_mb", "stab_speedup"}


def stab_flops(s=TINY_SHAPES, frames: int = 8) -> int:
    """Matmul/conv/attention FLOPs (multiply-add = 2) of STAB + projector on square frames, counted by hand
    for the algorithm videopanda/model/stab.py documents: the paper's STAB with single-query attention
    reassociated (the per-head query is mapped into token space, W_k^T q, and the value projection is
    applied to the attended mix, so keys and values are never projected) and LSTE's depthwise (3,1,1)
    convolution written as elementwise multiply-adds (which the counter, like any matmul-based count,
    does not see)."""
    d, L, n, heads = s.stab_width, s.llm_width, frames, s.stab_heads
    t = s.frames_per_chunk
    c = n // t
    g = s.student_size // s.patch_size           # patch grid side
    hidden = int(d / 1.5)
    r = (g // 2) ** 2                             # LSD windows (= tokens) per frame
    windows = n * r

    def single_query_attention(batch: int, keys: int) -> int:
        # scores and mix: per head, one D-wide query against `keys` D-wide tokens
        return 2 * batch * heads * keys * d

    macs = n * g * g * d * 3 * s.patch_size ** 2                         # patch embedding (unfold + matmul)
    macs += n * g * g * (d * hidden + hidden * d)                        # LSTE 1x1x1 convolutions
    macs += n * g * g * d * 27                                           # DPE depthwise 3x3x3
    macs += d * d + d * d + single_query_attention(c, t * g * g) + c * (d * d + d * d + 2 * d * 4 * d)  # GSTRA
    macs += windows * (d * d + d * d + d * d + d * d) + single_query_attention(windows, 4)            # LSD
    macs += d * d + d * d + single_query_attention(n, r) + n * (d * d + d * d)                         # FSRA
    macs += n * d * d                                                                       # context projection
    tokens = n * (1 + (g // 2) * (g // 2 + 1))
    macs += tokens * (d * L + L * L)                                                        # projector
    return 2 * macs


def vit_flops(s=TINY_SHAPES, frames: int = 8, layers: int | None = None, temporal_chunk: int | None = None) -> int:
    """FLOPs of a CLIP ViT over `frames` images; with `temporal_chunk`, the teacher's temporal attention too."""
    d, m, p = s.vit_width, s.vit_mlp, (s.vit_size // s.patch_size) ** 2
    seq = p + 1
    layers = s.vit_layers if layers is None else layers
    macs = frames * p * d * 3 * s.patch_size ** 2
    per_layer = frames * seq * (4 * d * d + 2 * d * m) + 2 * frames * seq * seq * d
    if temporal_chunk:
        per_layer += frames * seq * 4 * d * d + 2 * (frames // temporal_chunk) * seq * temporal_chunk ** 2 * d
    return 2 * (macs + layers * per_layer)


@pytest.fixture(autouse=True)
def keep_thread_count():
    """The in-process commands set torch's thread count; give the rest of the session its own back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def visual_report(tmp_path_factory):
    """One real `videopanda bench visual --tiny` run in its own process, as a user would start it."""
    out = tmp_path_factory.mktemp("bench") / "visual.json"
    cmd = [sys.executable, "-m", "videopanda", "bench", "visual", "--tiny", "--threads", "1", "--warmup", "0",
           "--iters", "2", "--output", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text()), result.stdout


def test_visual_report_schema_and_table(visual_report):
    report, stdout = visual_report
    assert [row["name"] for row in report["rows"]] == list(ROW_NAMES)
    for key in ("device", "dtype", "torch", "threads", "cpu", "command", "stab_speedup"):
        assert key in report, key
    assert report["device"] == "cpu" and report["dtype"] == "float32" and report["threads"] == 1
    assert report["command"].startswith("videopanda bench visual --tiny")
    for row in report["rows"]:
        assert ROW_KEYS <= set(row), row["name"]
        assert row["params_m"] > 0 and row["gflops"] > 0 and row["latency_ms"] > 0 and row["peak_mem_mb"] > 0
        assert len(row["latency_ms_all"]) == 2
        assert sorted(row["latency_ms_all"])[0] <= row["latency_ms"] <= sorted(row["latency_ms_all"])[-1]
        assert row["name"] in stdout
    stab = report["rows"][0]
    assert stab["stab_speedup"] == pytest.approx(1.0)
    assert set(report["stab_speedup"]) == {"clip-vit-l14", "languagebind-video-vit-l14"}
    for row in report["rows"][1:]:
        assert report["stab_speedup"][row["name"]] == pytest.approx(row["latency_ms"] / stab["latency_ms"])
    # 8 frames at 112: 4x4 LSD grid, 1 + 4*5 tokens a frame; CLIP 8 x (16 + 1); teacher 8 x 16.
    assert stab["output_tokens"] == 8 * 21
    assert report["rows"][1]["output_tokens"] == 8 * 17
    assert report["rows"][2]["output_tokens"] == 8 * 16


def test_visual_flops_match_hand_counts(visual_report):
    rows = {row["name"]: row for row in visual_report[0]["rows"]}
    stab = rows["video-panda-stab"]
    assert stab["gflops"] * 1e9 == pytest.approx(stab_flops(), rel=0.03)
    assert stab["gmacs"] == pytest.approx(stab["gflops"] / 2)
    s = TINY_SHAPES
    projector_tokens = 8 * 21
    assert stab["gflops_by_part"]["projector"] * 1e9 == pytest.approx(
        2 * projector_tokens * (s.stab_width * s.llm_width + s.llm_width ** 2))
    assert stab["gflops_by_part"]["stab"] + stab["gflops_by_part"]["projector"] == pytest.approx(stab["gflops"])
    # The ViTs count exactly, attention included (the CPU fused-attention kernel is registered by us).
    assert rows["clip-vit-l14"]["gflops"] * 1e9 == pytest.approx(vit_flops(), rel=1e-6)
    # The teacher runs the layers up to the second-to-last hidden state: 1 of 2 here; one chunk of 8 frames.
    assert rows["languagebind-video-vit-l14"]["gflops"] * 1e9 == pytest.approx(
        vit_flops(layers=TINY_SHAPES.vit_layers - 1, temporal_chunk=8), rel=1e-6)


def test_flop_counter_counts_cpu_fused_attention():
    q, k = torch.randn(2, 4, 10, 16), torch.randn(2, 4, 6, 16)
    flops, parts = count_flops(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, k))
    assert parts == {}
    assert flops == 2 * (2 * 2 * 4 * 10 * 6 * 16)


def test_cpu_memory_meter_sees_a_200mb_tensor():
    meter = MemoryMeter(torch.device("cpu"))
    meter.baseline()
    with meter.track():
        block = torch.ones(50 * 2**20)     # 200 MiB, pages touched
        time.sleep(0.05)
        del block
    assert 190 * 2**20 < meter.peak_bytes < 600 * 2**20


def test_data_bench_on_two_tiny_synthetic_videos(tmp_path):
    out = tmp_path / "data.json"
    rc = main(["data", "--synthetic", "2", "--size", "96x64", "--fps", "10", "--seconds", "2", "--repeats", "2",
               "--output", str(out)])
    assert rc == 0
    report = json.loads(out.read_text())
    assert report["synthetic"] == 2 and report["workers"] == 1 and report["videos_timed"] == 4
    assert report["videos_per_s_per_worker"] > 0
    assert report["aggregate_videos_per_s"] == pytest.approx(report["videos_per_s_per_worker"])
    assert report["decode_ms_median"] > 0 and report["preprocess_ms_median"] > 0
    assert report["mean_file_mb"] > 0


def test_data_bench_on_given_files_with_two_workers(tmp_path):
    from helpers.media import make_frames, write_video

    paths = [str(write_video(tmp_path / f"clip{i}.mp4", make_frames(20, 48, 64, seed=i), fps=10)) for i in range(2)]
    out = tmp_path / "data.json"
    assert main(["data", "--video", *paths, "--workers", "2", "--repeats", "1", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["videos"] == paths and report["workers"] == 2 and report["videos_timed"] == 2
    assert len(report["videos_per_s_each_worker"]) == 2



def test_data_bench_through_a_frame_cache_reports_cold_and_warm_reads(tmp_path):
    from helpers.media import make_frames, write_video

    paths = [str(write_video(tmp_path / f"clip{i}.mp4", make_frames(30, 48, 64, seed=i), fps=10)) for i in range(2)]
    out = tmp_path / "data.json"
    cache = tmp_path / "cache"
    (cache / "ab").mkdir(parents=True)
    (cache / "ab" / "unrelated.txt").write_text("kept")
    assert main(["data", "--video", *paths, "--repeats", "3", "--frame-cache", str(cache), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["frame_cache"] == str(cache) and report["cache_entries"] == 2 and report["videos_timed"] == 6
    assert report["cache_entry_mb_mean"] == pytest.approx(8 * 48 * 64 * 3 / 2**20, rel=0.01)
    assert report["read_cold_ms_median"] > report["read_warm_ms_median"] > 0
    assert report["sample_cold_ms_median"] > report["read_cold_ms_median"]
    assert sorted(p.name for p in cache.rglob("*")) == ["ab", "unrelated.txt"]  # its own folder is gone
    assert main(["data", "--video", *paths, "--repeats", "1", "--frame-cache", str(cache)]) == 1


def test_data_bench_names_a_missing_file(tmp_path, caplog):
    missing = tmp_path / "nowhere.mp4"
    package_logger = logging.getLogger("videopanda")
    package_logger.addHandler(caplog.handler)
    try:
        assert main(["data", "--video", str(missing)]) == 1
    finally:
        package_logger.removeHandler(caplog.handler)
    assert str(missing) in caplog.text


def test_ttft_smoke_on_cpu(tmp_path):
    out = tmp_path / "ttft.json"
    assert main(["ttft", "--device", "cpu", "--dtype", "float32", "--tiny", "--threads", "1", "--warmup", "0",
                 "--iters", "1", "--decode-tokens", "2", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["smoke_shape"] is True and report["layers"] == 2
    assert report["visual_tokens"] == 8 * 21
    assert report["prompt_tokens"] == 32 + 8 * 21
    for key in ("ttft_ms", "visual_ms", "prefill_ms"):
        assert report[key] > 0, key
    assert report["ttft_ms"] >= report["visual_ms"]


# --- bench quickstart ---

def write_quickstart_folder(folder, stage_times, loop_times, eval_s, total_s, timing_in_marker=True):
    """A finished quickstart folder as `videopanda quickstart` leaves it: summary.json, and per stage its
    training_complete.json (with the loop's timing) or, as older code wrote it, only the Trainer's log line."""
    stages = []
    for (name, steps), wall, loop in zip([("prealign", 10), ("pretrain", 94), ("finetune", 1692)], stage_times,
                                         loop_times):
        stages.append({"name": name, "final_loss": 0.5, "steps": steps, "elapsed_s": wall})
        (folder / name).mkdir(parents=True)
        (folder / "logs").mkdir(exist_ok=True)
        marker = {"stage": name, "global_step": steps}
        if timing_in_marker:
            marker["timing"] = {"train_runtime_s": loop, "steps": steps}
        (folder / name / "training_complete.json").write_text(json.dumps(marker))
        (folder / "logs" / f"{name}.log").write_text(
            f"{{'loss': '0.5', 'epoch': '1'}}\n{{'train_runtime': '{loop}', 'train_samples_per_second': '9'}}\n")
    summary = {"stages": stages, "eval": {"accuracy": 98.5, "elapsed_s": eval_s}, "seed": 0, "resumed": False,
               "elapsed_s": total_s}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_quickstart_bench_splits_each_stage_and_compares_two_runs(tmp_path, capsys):
    before, after = tmp_path / "before", tmp_path / "after"
    write_quickstart_folder(before, [40.0, 200.0, 1600.0], [13.0, 160.0, 1500.0], 40.0, 2400.0,
                            timing_in_marker=False)
    write_quickstart_folder(after, [30.0, 100.0, 700.0], [10.0, 80.0, 650.0], 20.0, 1000.0)
    out = tmp_path / "report.json"
    assert main(["quickstart", str(before), str(after), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    first, second = report["runs"]
    assert [s["loop_s"] for s in first["stages"]] == [13.0, 160.0, 1500.0]
    assert [s["startup_and_save_s"] for s in second["stages"]] == [20.0, 20.0, 50.0]
    assert second["stages"][2]["s_per_step"] == pytest.approx(650.0 / 1692)
    assert (first["rest_s"], second["rest_s"]) == (2400.0 - 40.0 - 1840.0, 1000.0 - 20.0 - 830.0)
    table = capsys.readouterr().out
    assert "| total | 2400.0 s | 1000.0 s (2.40x) |" in table
    assert "| finetune: loop | 1500.0 s | 650.0 s (2.31x) |" in table and "| finetune: steps | 1692 | 1692 |" in table


def test_quickstart_bench_names_a_folder_without_a_finished_run(tmp_path, caplog):
    (tmp_path / "half").mkdir()
    with caplog.at_level(logging.ERROR):
        assert main(["quickstart", str(tmp_path / "half")]) == 1
    assert str(tmp_path / "half" / "summary.json") in caplog.text
