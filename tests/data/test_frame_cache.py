"""The decoded-frame cache on real files: bit-identical frames, entries that are really read back, keys that
follow the video file, corrupt entries, unreadable videos, and two processes filling one cache at once."""
import logging
import multiprocessing
import os
import re

import numpy as np
import pytest
import torch
from helpers.media import CORPUS, make_frames, write_video

from videopanda.data import synth
from videopanda.data.frame_cache import RESIZED_SUFFIX, FrameCache
from videopanda.data.frames import FrameConfig, preprocess_video, resize_frames
from videopanda.data.video import VideoReadError, read_video

USABLE = sorted(name for name, kind in CORPUS.items() if kind is None)
BROKEN = sorted(name for name, kind in CORPUS.items() if kind is not None)
ENTRY = re.compile(r"^[0-9a-f]{64}\.npy$")


def entries(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file())


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype == torch.uint8 and a.shape == b.shape and a.is_contiguous() and b.is_contiguous()
    assert torch.equal(a, b)


@pytest.fixture
def quickstart_clip(tmp_path):
    """A clip as the quickstart's data generator makes it (its scene, renderer and encoder)."""
    scene, _, _ = synth.make_scene(0, "train", 3)
    return synth.encode_mp4(synth.render(scene), scene.fps, tmp_path / "synth.mp4")


@pytest.mark.parametrize("num_frames", [8, 4, 1])
def test_frames_from_the_cache_are_read_videos_bit_for_bit(tmp_path, media_dir, quickstart_clip, num_frames):
    paths = [media_dir / name for name in USABLE] + [quickstart_clip]
    decoded = [read_video(p, num_frames) for p in paths]
    first = FrameCache(tmp_path / "cache")
    for path, frames in zip(paths, decoded):
        assert_same(first.read(path, num_frames), frames)
    assert (first.hits, first.misses) == (0, len(paths))
    stored = entries(tmp_path / "cache")
    assert len(stored) == len(paths) and all(ENTRY.match(p.name) and p.parent.name == p.name[:2] for p in stored)
    second = FrameCache(tmp_path / "cache")
    for path, frames in zip(paths, decoded):
        assert_same(second.read(path, num_frames), frames)
        assert_same(second.read(path, num_frames), frames)
    assert (second.hits, second.misses) == (2 * len(paths), 0)
    assert entries(tmp_path / "cache") == stored


def test_a_window_and_the_frame_count_are_part_of_the_key(tmp_path, media_dir):
    cache = FrameCache(tmp_path / "cache")
    long = media_dir / "long.mp4"
    for args in [(8, None, None), (8, 4.0, 12.5), (8, 4.0, None), (6, None, None)]:
        assert_same(cache.read(long, *args), read_video(long, *args))
    assert len(entries(tmp_path / "cache")) == 4
    with pytest.raises(VideoReadError, match="no frames between"):
        cache.read(long, 8, 30.0, 40.0)
    assert len(entries(tmp_path / "cache")) == 4


def test_the_cache_is_read_back_and_follows_the_video_file(tmp_path):
    """A planted entry is what a new cache returns (so it reads rather than decodes); rewriting or touching the
    video gives it a new key, so it is decoded again."""
    video = write_video(tmp_path / "clip.mp4", make_frames(12, seed=1), fps=10)
    FrameCache(tmp_path / "cache").read(video)
    (entry,) = entries(tmp_path / "cache")
    real = np.load(entry)
    planted = (255 - real).astype(np.uint8)
    np.save(entry, planted)
    cache = FrameCache(tmp_path / "cache")
    assert cache.entry(video) == entry
    assert np.array_equal(cache.read(video).numpy(), planted) and cache.hits == 1

    write_video(video, make_frames(20, seed=2), fps=10)
    assert cache.entry(video) != entry
    assert_same(cache.read(video), read_video(video))
    assert cache.misses == 1 and len(entries(tmp_path / "cache")) == 2

    info = video.stat()
    os.utime(video, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))  # same bytes, newer time
    fresh = cache.entry(video)
    assert fresh not in entries(tmp_path / "cache")
    assert_same(cache.read(video), read_video(video))
    assert fresh in entries(tmp_path / "cache")


def test_a_clip_regenerated_in_place_is_decoded_again(tmp_path):
    """`videopanda synth` writes a clip to a new file renamed over the old one: even with the old modification
    time put back, the new file is another entry, so a regenerated data folder never serves old frames."""
    video = synth.encode_mp4(make_frames(16, seed=1), 8, tmp_path / "clip.mp4")
    cache = FrameCache(tmp_path / "cache")
    old = cache.read(video)
    before = video.stat()
    synth.encode_mp4(make_frames(16, seed=2), 8, video)
    os.utime(video, ns=(before.st_atime_ns, before.st_mtime_ns))
    new = cache.read(video)
    assert_same(new, read_video(video))
    assert not torch.equal(new, old)
    assert cache.misses == 2 and len(entries(tmp_path / "cache")) == 2


def test_a_clip_reached_through_a_symlink_is_the_same_entry(tmp_path, media_dir):
    (tmp_path / "linked").symlink_to(media_dir, target_is_directory=True)
    cache = FrameCache(tmp_path / "cache")
    assert cache.entry(tmp_path / "linked" / "wide.mp4") == cache.entry(media_dir / "wide.mp4")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "float32", "three_dims", "too_many_frames"])
def test_an_unreadable_entry_is_decoded_again_with_one_warning(tmp_path, media_dir, caplog, damage):
    video = media_dir / "wide.mp4"
    expected = read_video(video, 4)
    cache = FrameCache(tmp_path / "cache")
    cache.read(video, 4)
    entry = cache.entry(video, 4)

    def spoil():
        good = np.load(entry)
        if damage == "truncated":
            entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
        elif damage == "garbage":
            entry.write_bytes(b"not an array at all")
        elif damage == "float32":
            np.save(entry, good.astype(np.float32))
        elif damage == "three_dims":
            np.save(entry, good[0])
        else:
            np.save(entry, np.concatenate([good, good]))

    caplog.set_level(logging.WARNING, logger="videopanda")
    for _ in range(2):
        spoil()
        assert_same(cache.read(video, 4), expected)
        assert_same(torch.from_numpy(np.load(entry)), expected)  # rewritten
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(entry) in warnings[0].getMessage()
    assert cache.rewrites == 2 and entries(tmp_path / "cache") == [entry]


@pytest.mark.parametrize("name", BROKEN)
def test_an_unreadable_video_raises_every_time_and_leaves_no_entry(tmp_path, media_dir, name):
    cache = FrameCache(tmp_path / "cache")
    for _ in range(2):
        with pytest.raises(VideoReadError) as error:
            cache.read(media_dir / name)
        assert str(media_dir / name) in str(error.value) and error.value.kind == CORPUS[name]
    assert entries(tmp_path / "cache") == [] and cache.misses == 0


def test_a_cache_folder_that_cannot_be_made_is_an_error_naming_it(tmp_path):
    from videopanda.io import OutputError

    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match=re.escape(str(tmp_path / "file" / "cache"))):
        FrameCache(tmp_path / "file" / "cache")


def test_two_processes_filling_one_cache_at_once_leave_whole_entries(tmp_path, media_dir, quickstart_clip):
    from helpers.cache_fill import fill

    paths = [str(media_dir / name) for name in USABLE] + [str(quickstart_clip)]
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    workers = [context.Process(target=fill, args=(str(tmp_path / "cache"), paths, 8, barrier)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [w.exitcode for w in workers] == [0, 0]
    stored = entries(tmp_path / "cache")
    assert len(stored) == len(paths) and all(ENTRY.match(p.name) for p in stored)  # no temporary file left
    cache = FrameCache(tmp_path / "cache")
    for path in paths:
        assert_same(cache.read(path), read_video(path))
    assert cache.hits == len(paths)


# --- resized frames ---

QUICKSTART_FRAMES = FrameConfig(num_frames=8, frames_per_chunk=4, image_size=84, teacher_image_size=42, patch_size=14)


def preprocess_through(cache: FrameCache, path, flip: bool):
    """`preprocess_video` of the clip's cached frames, resized through the cache."""
    frames = cache.read(path, 8)
    return preprocess_video(frames, QUICKSTART_FRAMES, flip=flip, resize=cache.resizer(path, 8, flip))


@pytest.mark.parametrize("flip", [False, True])
def test_resized_frames_from_the_cache_are_pillows_bit_for_bit(tmp_path, media_dir, quickstart_clip, flip):
    paths = [media_dir / name for name in USABLE] + [quickstart_clip]
    expected = [preprocess_video(read_video(p, 8), QUICKSTART_FRAMES, flip=flip) for p in paths]
    filling = FrameCache(tmp_path / "cache")
    for path, (student, teacher) in zip(paths, expected):
        got = preprocess_through(filling, path, flip)
        assert torch.equal(got[0], student) and torch.equal(got[1], teacher)
    assert filling.resized_hits == 0
    resized = [p for p in entries(tmp_path / "cache") if p.name.endswith(RESIZED_SUFFIX)]
    assert len(resized) == len(paths)
    reading = FrameCache(tmp_path / "cache")
    for path, (student, teacher) in zip(paths, expected):
        got = preprocess_through(reading, path, flip)
        assert torch.equal(got[0], student) and torch.equal(got[1], teacher)
    assert (reading.resized_hits, reading.misses) == (len(paths), 0)


def test_resized_entries_follow_the_flip_the_sizes_and_the_resize_version(tmp_path, quickstart_clip, monkeypatch):
    """Frames resized another way are other entries: a flip, other sizes or another RESIZE_VERSION never
    read what was stored for the first."""
    from videopanda.data import frames as frames_module

    cache = FrameCache(tmp_path / "cache")
    frames = cache.read(quickstart_clip, 8).numpy()
    cache.resizer(quickstart_clip, 8, flip=False)(frames, [(84, 84), (42, 42)])
    for flip, sizes in [(True, [(84, 84), (42, 42)]), (False, [(84, 84)]), (False, [(42, 42), (84, 84)])]:
        shown = frames[:, :, ::-1] if flip else frames
        assert all(np.array_equal(a, b) for a, b in zip(cache.resizer(quickstart_clip, 8, flip)(shown, sizes),
                                                         resize_frames(shown, sizes)))
    assert cache.resized_hits == 0
    monkeypatch.setattr(frames_module, "RESIZE_VERSION", frames_module.RESIZE_VERSION + 1)
    cache.resizer(quickstart_clip, 8, flip=False)(frames, [(84, 84), (42, 42)])
    assert cache.resized_hits == 0
    assert len([p for p in entries(tmp_path / "cache") if p.name.endswith(RESIZED_SUFFIX)]) == 5


def test_an_unreadable_resized_entry_is_resized_again_with_one_warning(tmp_path, quickstart_clip, caplog):
    cache = FrameCache(tmp_path / "cache")
    expected = preprocess_through(cache, quickstart_clip, False)
    [entry] = [p for p in entries(tmp_path / "cache") if p.name.endswith(RESIZED_SUFFIX)]
    entry.write_bytes(entry.read_bytes()[:1000])
    damaged = FrameCache(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="videopanda.data.frame_cache"):
        for _ in range(2):
            got = preprocess_through(damaged, quickstart_clip, False)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert (damaged.rewrites, damaged.resized_hits) == (1, 1)
    assert [r.getMessage().count(str(entry)) for r in caplog.records] == [1]
