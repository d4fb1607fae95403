"""`videopanda data check`: find every sample that training would have to skip, before training.

Each sample is checked the way `VideoInstructDataset` uses it: the conversation structure
(`conversation_rounds`), then its video with the same reader, sampler and frame preprocessing
(`read_video` + `preprocess_video` at the configured number of frames). Text-only samples need only
a valid conversation. Token-level checks need the tokenizer and stay with the dataset.

Each distinct video file is decoded once, in `workers` processes (0 = in this process). A decoder
that crashes its worker process (a segfault in native code) marks the files still in flight; those
are then re-checked one per fresh process, so the culprit is named and the others still counted.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from videopanda.data.conversation import ConversationFormatError, conversation_rounds
from videopanda.data.dataset import sample_id, video_of
from videopanda.data.frames import FrameConfig, preprocess_video
from videopanda.data.video import VideoReadError, read_video
from videopanda.log import get_logger

logger = get_logger(__name__)

CRASH_REASON = "decoder crashed (the checking process died)"


@dataclass
class CheckResult:
    """report: {"ok": N, "bad": [{"id", "video", "reason"}]} in sample order; clean: the usable samples as read."""

    report: dict
    clean: list = field(repr=False)


def check_video(path: str, frame_config: FrameConfig) -> str | None:
    """None when the video decodes and preprocesses like in training, else the reason it does not."""
    try:
        frames = read_video(path, frame_config.num_frames)
        preprocess_video(frames, frame_config)
    except VideoReadError as exc:
        return exc.reason
    except Exception as exc:  # noqa: BLE001 - anything that would stop a training step is a finding
        return f"{type(exc).__name__}: {exc}"
    return None


def check_samples(samples: list, video_folder: str | Path, frame_config: FrameConfig | None = None,
                  workers: int = 0, progress: bool = True) -> CheckResult:
    """Check `samples` (as `load_samples` returns them); videos are relative to video_folder."""
    frame_config = frame_config or FrameConfig()
    folder = Path(video_folder)
    problems: dict[int, str] = {}
    videos: dict[int, str] = {}
    for index, sample in enumerate(samples):
        reason = _sample_problem(sample, index, frame_config.num_frames)
        if reason:
            problems[index] = reason
        elif video_of(sample) is not None:
            videos[index] = str(folder / video_of(sample))
    verdicts = _check_videos(sorted(set(videos.values())), frame_config, workers, progress)
    for index, path in videos.items():
        if verdicts[path]:
            problems[index] = verdicts[path]
    bad = [{"id": sample_id(samples[i], i), "video": video_of(samples[i]), "reason": problems[i]} for i in sorted(problems)]
    clean = [s for i, s in enumerate(samples) if i not in problems]
    return CheckResult({"ok": len(clean), "bad": bad}, clean)


def _sample_problem(sample, index: int, num_frames: int) -> str | None:
    if not isinstance(sample, dict):
        return f"not a JSON object: {type(sample).__name__}"
    video = video_of(sample)
    if video is not None and (not isinstance(video, str) or not video):
        return f"'video' must be a non-empty string path, got {video!r}"
    try:
        conversation_rounds(sample.get("conversations"), num_frames, has_video=video is not None,
                            sample_id=sample_id(sample, index))
    except ConversationFormatError as exc:
        return f"bad conversation: {exc.reason}"
    return None


def _check_videos(paths: list[str], frame_config: FrameConfig, workers: int, progress: bool) -> dict[str, str | None]:
    bar = tqdm(total=len(paths), desc="checking videos", unit="video", disable=not progress)
    verdicts: dict[str, str | None] = {}
    if workers <= 0:
        for path in paths:
            verdicts[path] = check_video(path, frame_config)
            bar.update()
    else:
        crashed = _check_in_pool(paths, frame_config, workers, verdicts, bar)
        for path in crashed:
            # One fresh process per suspect, so a crash is pinned on the file that causes it.
            if _check_in_pool([path], frame_config, 1, verdicts, bar):
                verdicts[path] = CRASH_REASON
                bar.update()
    bar.close()
    return verdicts


def _check_in_pool(paths: list[str], frame_config: FrameConfig, workers: int, verdicts: dict, bar) -> list[str]:
    """Check paths in a process pool, filling verdicts; returns the paths lost to a crashed worker."""
    lost: list[str] = []
    with ProcessPoolExecutor(max_workers=min(workers, max(1, len(paths))), initializer=_init_worker) as pool:
        futures = {pool.submit(check_video, path, frame_config): path for path in paths}
        for future in as_completed(futures):
            path = futures[future]
            try:
                verdicts[path] = future.result()
            except BrokenProcessPool:
                lost.append(path)
                continue
            bar.update()
    return sorted(lost)


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
