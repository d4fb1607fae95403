"""A process that fills a frame cache, for the tests of several processes writing one cache at once."""
from __future__ import annotations


def fill(folder: str, paths: list[str], num_frames: int, barrier, rounds: int = 2) -> None:
    """Wait at `barrier` (so every process starts together), then read every clip of `paths` through
    `FrameCache(folder)` `rounds` times in the same order; exits non-zero on any error."""
    from videopanda.data.frame_cache import FrameCache

    cache = FrameCache(folder)
    barrier.wait(timeout=120)
    for _ in range(rounds):
        for path in paths:
            cache.read(path, num_frames)
