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
    command: str = ""

    def __post_init__(self) -> None:
        if bool(self.videos) == bool(self.synthetic):
            raise ValueError("give either --video FILE... or --synthetic N (not both)")
        if self.workers < 1 or self.repeats < 1:
            raise ValueError(f"--workers and --repeats must be positive, got {self.workers} and {self.repeats}")
        if self.synthetic and (self.width % 2 or self.height % 2):
            raise ValueError(f"synthetic videos need an even size (yuv420p), got {self.width}x{self.height}")


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


def _worker(paths: list[str], num_frames: int, repeats: int, teacher: bool) -> dict:
    """Runs in a spawned process: decode + preprocess `paths` `repeats` times, timing each video."""
    import torch

    from videopanda.data.frames import FrameConfig, preprocess_video
    from videopanda.data.video import read_video

    torch.set_num_threads(1)
    config = FrameConfig(num_frames=num_frames)
    preprocess_video(read_video(paths[0], num_frames=num_frames), config, teacher=teacher)
    decode_ms, preprocess_ms = [], []
    for _ in range(repeats):
        for path in paths:
            t0 = time.perf_counter()
            frames = read_video(path, num_frames=num_frames)
            t1 = time.perf_counter()
            preprocess_video(frames, config, teacher=teacher)
            t2 = time.perf_counter()
            decode_ms.append((t1 - t0) * 1e3)
            preprocess_ms.append((t2 - t1) * 1e3)
    busy_s = (sum(decode_ms) + sum(preprocess_ms)) / 1e3
    return {"videos": len(decode_ms), "busy_s": busy_s, "videos_per_s": len(decode_ms) / busy_s,
            "decode_ms": decode_ms, "preprocess_ms": preprocess_ms}


def _run_workers(paths: list[Path], config: DataBenchConfig) -> tuple[list[dict], float]:
    shares = [[str(p) for p in paths[w::config.workers]] for w in range(config.workers)]
    shares = [share for share in shares if share]
    if len(shares) < config.workers:
        logger.warning("only %d videos for %d workers: running %d workers", len(paths), config.workers, len(shares))
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=len(shares), mp_context=context) as pool:
        t0 = time.perf_counter()
        n = len(shares)
        results = list(pool.map(_worker, shares, [config.num_frames] * n, [config.repeats] * n, [config.teacher] * n))
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
        results, wall_s = _run_workers(paths, config)
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
        "command": config.command,
    }


def format_report(report: dict) -> str:
    what = (f"{report['synthetic']} synthetic {report['width']}x{report['height']} {report['fps']} fps "
            f"{report['seconds']:g} s videos" if "synthetic" in report else f"{len(report['videos'])} videos")
    return "\n".join([
        f"data path: {what} (mean {report['mean_file_mb']:.2f} MB), {report['num_frames']} frames, "
        f"{report['workers']} worker(s) x 1 thread, {report['videos_timed']} timed videos, CPU {report['cpu']}",
        f"  videos/s per worker   {report['videos_per_s_per_worker']:.2f}",
        f"  videos/s all workers  {report['aggregate_videos_per_s']:.2f}",
        f"  decode median         {report['decode_ms_median']:.1f} ms",
        f"  preprocess median     {report['preprocess_ms_median']:.1f} ms",
    ])
