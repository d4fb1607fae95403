"""`videopanda bench data`: the data path of one video, decode + preprocess 8 frames, in videos/s per worker.

Each worker is a separate process (spawned, one intra-op thread, like a DataLoader worker) that runs
`videopanda.data.video.read_video` and `videopanda.data.frames.preprocess_video` (student 448 and
teacher 224 tensors, as training makes them; `--student-only`: the student alone, as inference and
evaluation make it) on its share of the videos: one untimed warm-up video, then every video of its
share `repeats` times, timed one by one with `time.perf_counter`. Reported: per worker videos/s
(timed videos / busy seconds), their mean, the aggregate (the sum over workers) and the median
decode and preprocess milliseconds.

`--synthetic N` first writes N mp4s of a realistic size (default 640x360, 30 fps, 10 s, H.264 through
`videopanda.data.synth.encode_mp4`) with moving content into a temporary folder.

`--frame-cache DIR` reads the videos through a `videopanda.data.frame_cache.FrameCache` in a fresh
temporary folder under DIR (so DIR's file system is what is measured, and the first pass is cold
whatever DIR already holds; the folder is removed afterwards): the first pass decodes and writes every
entry (cold), the later passes read them (warm). Reported then: the median read and whole-sample (read +
preprocess) milliseconds of each, the mean entry size, and videos/s over the warm passes only.
"""
from __future__ import annotations

import concurrent.futures
import multiprocessing
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from videopanda.log import get_logger

logger = get_logger(__name__)


@dataclass
class DataBenchConfig:
    videos: list[str] = field(default_factory=list)
    synthetic: int = 0
    width: int = 640
    height: int = 360
    fps: int = 30
    seconds: float = 10.0
    workers: int = 1
    repeats: int = 3
    num_frames: int = 8
    teacher: bool = True
    frame_cache: str | None = None
    command: str = ""

    def __post_init__(self) -> None:
        if bool(self.videos) == bool(self.synthetic):
            raise ValueError("give either --video FILE... or --synthetic N (not both)")
        if self.workers < 1 or self.repeats < 1:
            raise ValueError(f"--workers and --repeats must be positive, got {self.workers} and {self.repeats}")
        if self.synthetic and (self.width % 2 or self.height % 2):
            raise ValueError(f"synthetic videos need an even size (yuv420p), got {self.width}x{self.height}")
        if self.frame_cache is not None and self.repeats < 2:
            raise ValueError(f"--frame-cache needs --repeats 2 or more (a cold pass, then warm ones), got {self.repeats}")


def synthetic_frames(width: int, height: int, num_frames: int, seed: int) -> np.ndarray:
    """uint8 (num_frames, height, width, 3): a drifting colour gradient, a moving block and mild noise,
    so that the encoder has motion and texture to code (a plausible bitrate, not a static image)."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
    block = max(8, min(width, height) // 5)
    frames = np.empty((num_frames, height, width, 3), dtype=np.uint8)
    for i in range(num_frames):
        t = i / max(1, num_frames - 1)
        image = np.stack([127 + 100 * np.sin(2 * np.pi * (xs + 0.5 * ys + t) + phase[c]) for c in range(3)], axis=-1)
        image = image + rng.normal(0, 6, size=image.shape).astype(np.float32)
        x0 = int(t * (width - block))
        y0 = int((0.5 + 0.4 * np.sin(2 * np.pi * t)) * (height - block))
        image[y0:y0 + block, x0:x0 + block] = (240, 240, 40)
        frames[i] = image.clip(0, 255).astype(np.uint8)
    return frames


def write_synthetic_videos(folder: Path, count: int, width: int, height: int, fps: int, seconds: float) -> list[Path]:
    from tqdm import tqdm

    from videopanda.data.synth import encode_mp4

    num_frames = max(1, round(fps * seconds))
    paths = []
    for i in tqdm(range(count), desc="writing synthetic videos", unit="video"):
        frames = synthetic_frames(width, height, num_frames, seed=i)
        paths.append(encode_mp4(frames, fps, folder / f"synthetic_{i:03d}.mp4"))
    return paths


def _worker(paths: list[str], num_frames: int, repeats: int, teacher: bool, cache_folder: str | None = None) -> dict:
    """Runs in a spawned process: decode (through a frame cache in `cache_folder` when given) + preprocess
    `paths` `repeats` times, timing each video; the first len(paths) timings are the first pass."""
    import torch

    from videopanda.data.frames import FrameConfig, preprocess_video
    from videopanda.data.video import read_video

    torch.set_num_threads(1)
    config = FrameConfig(num_frames=num_frames)
    preprocess_video(read_video(paths[0], num_frames=num_frames), config, teacher=teacher)
    read = read_video
    if cache_folder is not None:
        from videopanda.data.frame_cache import FrameCache

        read = FrameCache(cache_folder).read
    decode_ms, preprocess_ms = [], []
    for _ in range(repeats):
        for path in paths:
            t0 = time.perf_counter()
            frames = read(path, num_frames=num_frames)
            t1 = time.perf_counter()
            preprocess_video(frames, config, teacher=teacher)
            t2 = time.perf_counter()
            decode_ms.append((t1 - t0) * 1e3)
            preprocess_ms.append((t2 - t1) * 1e3)
    busy_s = (sum(decode_ms) + sum(preprocess_ms)) / 1e3
    return {"videos": len(decode_ms), "busy_s": busy_s, "videos_per_s": len(decode_ms) / busy_s,
            "decode_ms": decode_ms, "preprocess_ms": preprocess_ms}


def _run_workers(paths: list[Path], config: DataBenchConfig, cache_folder: str | None = None) -> tuple[list[dict], float]:
    shares = [[str(p) for p in paths[w::config.workers]] for w in range(config.workers)]
    shares = [share for share in shares if share]
    if len(shares) < config.workers:
        logger.warning("only %d videos for %d workers: running %d workers", len(paths), config.workers, len(shares))
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=len(shares), mp_context=context) as pool:
        t0 = time.perf_counter()
        n = len(shares)
        results = list(pool.map(_worker, shares, [config.num_frames] * n, [config.repeats] * n, [config.teacher] * n,
                                [cache_folder] * n))
        wall_s = time.perf_counter() - t0
    return results, wall_s


def run_data_bench(config: DataBenchConfig) -> dict:
    """Measure the data path; returns the JSON report."""
    import torch

    from videopanda.bench.timing import environment

    with tempfile.TemporaryDirectory(prefix="videopanda-bench-data-") as tmp:
        if config.synthetic:
            paths = write_synthetic_videos(Path(tmp), config.synthetic, config.width, config.height, config.fps,
                                           config.seconds)
            source = {"synthetic": config.synthetic, "width": config.width, "height": config.height,
                      "fps": config.fps, "seconds": config.seconds}
        else:
            paths = [Path(p) for p in config.videos]
            missing = [str(p) for p in paths if not p.is_file()]
            if missing:
                raise FileNotFoundError(f"bench data: video file(s) not found: {', '.join(missing)}")
            source = {"videos": [str(p) for p in paths]}
        source["mean_file_mb"] = statistics.fmean(p.stat().st_size for p in paths) / 2**20
        if config.frame_cache is None:
            results, wall_s = _run_workers(paths, config)
            cache = {}
        else:
            results, wall_s, cache = _run_cached(paths, config)
    decode = [t for r in results for t in r["decode_ms"]]
    preprocess = [t for r in results for t in r["preprocess_ms"]]
    per_worker = [r["videos_per_s"] for r in results]
    return {
        **environment(torch.device("cpu"), threads=1),
        **source,
        "num_frames": config.num_frames,
        "teacher": config.teacher,
        "workers": len(results),
        "repeats": config.repeats,
        "videos_timed": sum(r["videos"] for r in results),
        "videos_per_s_per_worker": statistics.fmean(per_worker),
        "videos_per_s_each_worker": per_worker,
        "aggregate_videos_per_s": sum(per_worker),
        "wall_s": wall_s,
        "decode_ms_median": statistics.median(decode),
        "preprocess_ms_median": statistics.median(preprocess),
        **cache,
        "command": config.command,
    }


def _run_cached(paths: list[Path], config: DataBenchConfig) -> tuple[list[dict], float, dict]:
    """The workers reading through a frame cache in a fresh folder under `config.frame_cache`: the timings split
    into the cold first pass and the warm later ones; the results' videos/s are the warm passes'."""
    from videopanda.io import make_dirs

    parent = make_dirs(Path(config.frame_cache).expanduser().absolute())
    with tempfile.TemporaryDirectory(prefix="videopanda-bench-cache-", dir=parent) as folder:
        results, wall_s = _run_workers(paths, config, cache_folder=folder)
        entries = [p.stat().st_size for p in Path(folder).rglob("*.npy")]
    cold_read, warm_read, cold_sample, warm_sample = [], [], [], []
    for result in results:
        first = len(result["decode_ms"]) // config.repeats
        samples = [d + p for d, p in zip(result["decode_ms"], result["preprocess_ms"])]
        cold_read += result["decode_ms"][:first]
        warm_read += result["decode_ms"][first:]
        cold_sample += samples[:first]
        warm_sample += samples[first:]
        result["videos_per_s"] = (len(samples) - first) / (sum(samples[first:]) / 1e3)
    cache = {"frame_cache": str(parent), "cache_entries": len(entries),
             "cache_entry_mb_mean": statistics.fmean(entries) / 2**20 if entries else 0.0,
             "read_cold_ms_median": statistics.median(cold_read), "read_warm_ms_median": statistics.median(warm_read),
             "sample_cold_ms_median": statistics.median(cold_sample),
             "sample_warm_ms_median": statistics.median(warm_sample)}
    return results, wall_s, cache


def format_report(report: dict) -> str:
    what = (f"{report['synthetic']} synthetic {report['width']}x{report['height']} {report['fps']} fps "
            f"{report['seconds']:g} s videos" if "synthetic" in report else f"{len(report['videos'])} videos")
    warm = " (warm passes)" if "frame_cache" in report else ""
    lines = [
        f"data path: {what} (mean {report['mean_file_mb']:.2f} MB), {report['num_frames']} frames, "
        f"{report['workers']} worker(s) x 1 thread, {report['videos_timed']} timed videos, CPU {report['cpu']}",
        f"  videos/s per worker   {report['videos_per_s_per_worker']:.2f}{warm}",
        f"  videos/s all workers  {report['aggregate_videos_per_s']:.2f}{warm}",
        f"  decode median         {report['decode_ms_median']:.1f} ms" + (" (cold and warm reads)" if warm else ""),
        f"  preprocess median     {report['preprocess_ms_median']:.1f} ms",
    ]
    if warm:
        lines += [
            f"  frame cache           {report['frame_cache']}: {report['cache_entries']} entries of "
            f"{report['cache_entry_mb_mean']:.2f} MB",
            f"  read cold / warm      {report['read_cold_ms_median']:.2f} / {report['read_warm_ms_median']:.2f} ms "
            "(decode + write / load)",
            f"  sample cold / warm    {report['sample_cold_ms_median']:.1f} / {report['sample_warm_ms_median']:.1f} ms "
            "(read + preprocess)",
        ]
    return "\n".join(lines)
