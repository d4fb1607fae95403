import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers.media import CORPUS, frame_index, make_frames, write_random_bytes, write_video

from videopanda.data.video import VideoReadError, _read_pyav, decoded_seconds, probe_video, read_video, sample_indices

BROKEN = {name: kind for name, kind in CORPUS.items() if kind}


def EIGHT(total: int, fps: float) -> list[int]:
    """The original's rule for 8 frames, as `read_video` hands it to a backend."""
    return sample_indices(total, fps, 8)


def indices_of(frames: torch.Tensor) -> list[int]:
    return [frame_index(f) for f in frames.numpy()]


# --- the original's sampling rule (docs/DESIGN.md, "Choices where the paper is silent": Data), on numbers ---

def test_dense_grid_picks_num_frames_grid_points_with_integer_linspace():
    # 100 frames at 5 fps: the 1 fps grid is 0, 5, ..., 95 (20 points); linspace over 20 positions.
    grid = list(range(0, 100, 5))
    expected = [grid[int(p)] for p in np.linspace(0, 19, 8)]
    assert sample_indices(100, 5.0, 8) == expected == [0, 10, 25, 40, 50, 65, 80, 95]


def test_grid_with_exactly_num_frames_points_is_the_grid():
    assert sample_indices(80, 10.0, 8) == list(range(0, 80, 10))


# (frames, fps) -> indices, worked out by hand from that rule. Sparse grid (fewer than 8 points):
# k = min(8, n), s = max(1, (n - 1) // (k - 1)), frames 0, s, ..., (k - 1) * s.
SAMPLING_TABLE = [
    # 45 at 30 fps: grid 0, 30 is sparse; s = 44 // 7 = 6 -> stops at 42, not at the last frame 44.
    (45, 30.0, [0, 6, 12, 18, 24, 30, 36, 42]),
    # 9 at 30 fps: grid 0; s = 8 // 7 = 1 -> the first 8 frames.
    (9, 30.0, [0, 1, 2, 3, 4, 5, 6, 7]),
    # 100 at 29.97 fps: stride round(29.97) = 30, grid 0, 30, 60, 90 is sparse; s = 99 // 7 = 14.
    (100, 29.97, [0, 14, 28, 42, 56, 70, 84, 98]),
    # 1 frame: k = 1, that frame.
    (1, 30.0, [0]),
    # 7 frames: k = 7, s = 6 // 6 = 1 -> all of them.
    (7, 30.0, [0, 1, 2, 3, 4, 5, 6]),
    # 240 at 30 fps: grid 0, 30, ..., 210 has exactly 8 points -> the grid.
    (240, 30.0, [0, 30, 60, 90, 120, 150, 180, 210]),
    # 15 at 1 fps: stride 1, 15 grid points; positions linspace(0, 14, 8) = 0, 2, ..., 14.
    (15, 1.0, [0, 2, 4, 6, 8, 10, 12, 14]),
    # 12 at 10 fps: grid 0, 10 is sparse; s = 11 // 7 = 1.
    (12, 10.0, [0, 1, 2, 3, 4, 5, 6, 7]),
    # 60 at 10 fps: grid 0, 10, ..., 50 (6 points); s = 59 // 7 = 8 -> 0..56.
    (60, 10.0, [0, 8, 16, 24, 32, 40, 48, 56]),
    # 250 at 30 fps: grid 0, 30, ..., 240 (9 points); positions linspace(0, 8, 8) = 0, 1.14, 2.29, 3.43,
    # 4.57, 5.71, 6.86, 8 -> 0, 1, 2, 3, 4, 5, 6, 8.
    (250, 30.0, [0, 30, 60, 90, 120, 150, 180, 240]),
]


@pytest.mark.parametrize("total, fps, expected", SAMPLING_TABLE)
def test_sampling_table(total, fps, expected):
    assert sample_indices(total, fps, 8) == expected


@pytest.mark.parametrize("total", [1, 3, 7])
def test_clips_shorter_than_num_frames_return_every_frame(total):
    assert sample_indices(total, 25.0, 8) == list(range(total))


@pytest.mark.parametrize("fps", [0.25, 0.49, 0.0, float("nan"), -3.0])
def test_slow_or_unknown_frame_rate_uses_stride_one(fps):
    assert sample_indices(20, fps, 8) == [int(x) for x in np.linspace(0, 19, 8)]


def test_python_rounding_of_the_stride():
    # 2.5 fps rounds to a stride of 2 (Python's round), 29.97 to 30.
    assert sample_indices(40, 2.5, 8) == [int(x) * 2 for x in np.linspace(0, 19, 8)]
    assert sample_indices(300, 29.97, 8) == [int(x) * 30 for x in np.linspace(0, 9, 8)]


def test_window_in_seconds():
    # frames floor(3 * 5) = 15 .. ceil(9.5 * 5) - 1 = 47 (n = 33); grid 15, 20, ..., 45 has 7 points < 8:
    # s = 32 // 7 = 4 from the window's first frame.
    assert sample_indices(100, 5.0, 8, start=3, end=9.5) == [15, 19, 23, 27, 31, 35, 39, 43]
    # frames 30 .. 34 (n = 5 < 8): all of them.
    assert sample_indices(100, 5.0, 8, start=6, end=7) == [30, 31, 32, 33, 34]
    assert sample_indices(100, 5.0, 8, start=10) == [50 + 5 * int(x) for x in np.linspace(0, 9, 8)]


def test_num_frames_is_configurable():
    picks = sample_indices(1000, 10.0, 16)
    assert len(picks) == 16 and all(p % 10 == 0 for p in picks) and picks[0] == 0 and picks[-1] == 990


def test_bad_windows_are_refused():
    with pytest.raises(ValueError, match="no frames between"):
        sample_indices(100, 5.0, 8, start=30)
    with pytest.raises(ValueError, match="frame rate is unknown"):
        sample_indices(100, 0.0, 8, start=1)


# --- real files ---

@pytest.mark.parametrize("name, shape", [("wide.mp4", (48, 64)), ("portrait.mp4", (64, 48))])
def test_aspect_ratio_is_kept(media_dir, name, shape):
    frames = read_video(media_dir / name)
    assert frames.dtype == torch.uint8 and tuple(frames.shape) == (8, *shape, 3)
    assert indices_of(frames) == [0, 1, 2, 3, 4, 5, 6, 7]  # 12 frames at 10 fps: sparse grid, s = 11 // 7 = 1


def test_one_and_three_frame_clips(media_dir):
    assert indices_of(read_video(media_dir / "one_frame.mp4")) == [0]
    assert indices_of(read_video(media_dir / "three_frames.mp4")) == [0, 1, 2]


def test_slow_gif_below_half_a_frame_per_second(media_dir):
    frames = read_video(media_dir / "slow.gif")  # 5 frames at 0.25 fps: decord refuses GIFs, PyAV reads it
    assert tuple(frames.shape) == (5, 48, 64, 3)
    assert indices_of(frames) == [0, 1, 2, 3, 4]


def test_long_clip_follows_the_one_fps_grid(media_dir):
    assert indices_of(read_video(media_dir / "long.mp4")) == [0, 10, 25, 40, 50, 65, 80, 95]
    assert indices_of(read_video(media_dir / "long.mp4", start=10, end=20)) == [50 + 5 * int(x) for x in np.linspace(0, 9, 8)]
    assert len(read_video(media_dir / "long.mp4", num_frames=4)) == 4


def test_pixels_survive_decoding(media_dir):
    decoded = read_video(media_dir / "long.mp4").numpy().astype(int)
    source = make_frames(100, seed=5)[[0, 10, 25, 40, 50, 65, 80, 95]].astype(int)
    assert np.abs(decoded - source).mean() < 3


def test_pyav_fallback_samples_the_same_frames_as_decord(media_dir):
    for name in ("long.mp4", "wide.mp4", "clip.avi"):
        via_pyav = torch.from_numpy(np.stack(_read_pyav(media_dir / name, EIGHT)[0]))
        assert indices_of(via_pyav) == indices_of(read_video(media_dir / name)), name


def test_short_clip_is_sampled_at_an_even_stride_by_both_decoders(tmp_path):
    # 45 frames at 30 fps (1.5 s): the 1 fps grid (0, 30) is sparse -> stride 44 // 7 = 6, ending at 42.
    path = write_video(tmp_path / "short.mp4", make_frames(45), fps=30)
    expected = [0, 6, 12, 18, 24, 30, 36, 42]
    assert indices_of(read_video(path)) == expected
    assert indices_of(torch.from_numpy(np.stack(_read_pyav(path, EIGHT)[0]))) == expected


def test_gif_frame_rate_and_window(tmp_path):
    path = write_video(tmp_path / "g.gif", make_frames(40), fps=5)
    assert indices_of(read_video(path)) == [5 * int(x) for x in np.linspace(0, 7, 8)]
    # window 2-4 s = frames 10..19; its grid (10, 15) is sparse -> s = 9 // 7 = 1 from frame 10.
    assert indices_of(read_video(path, start=2, end=4)) == list(range(10, 18))


def _read_in_child(path, results):
    results.put(indices_of(read_video(path)))


def test_a_process_forked_after_reading_reads_too(tmp_path):
    """A DataLoader worker is forked from a process that has already decoded: PyAV (a GIF, which decord refuses)
    must not hand the child conversion state it cannot use (PyAV 18.1.1 hung there, in the first frame's RGB
    conversion). The child gets 60 s, against well under one."""
    import multiprocessing

    path = write_video(tmp_path / "g.gif", make_frames(40), fps=5)
    expected = indices_of(read_video(path))
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_read_in_child, args=(path, results))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
        child.join()
        pytest.fail("the forked process did not finish reading the video within 60 s")
    assert child.exitcode == 0 and results.get(timeout=5) == expected


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_raise_a_clear_error(media_dir, name):
    with pytest.raises(VideoReadError) as info:
        read_video(media_dir / name)
    error = info.value
    assert error.kind == BROKEN[name]
    assert str(media_dir / name) in str(error) and error.reason in str(error)
    assert {"missing": "not found", "empty": "empty", "unreadable": "cannot decode"}[error.kind] in error.reason


def test_window_outside_the_clip_is_a_read_error_naming_the_file(media_dir):
    with pytest.raises(VideoReadError, match="long.mp4.*no frames between"):
        read_video(media_dir / "long.mp4", start=100)


def test_a_folder_is_not_a_video(media_dir):
    with pytest.raises(VideoReadError, match="not a regular file"):
        read_video(media_dir)


@pytest.mark.parametrize("name", sorted(n for n, kind in CORPUS.items() if kind is None))
def test_every_good_corpus_file_reads(media_dir, name):
    frames = read_video(media_dir / name)
    assert frames.dtype == torch.uint8 and 1 <= len(frames) <= 8 and frames.shape[-1] == 3
    assert indices_of(frames) == sorted(set(indices_of(frames)))  # distinct, in time order


def test_num_frames_must_be_positive(media_dir):
    with pytest.raises(ValueError, match="num_frames"):
        read_video(media_dir / "wide.mp4", num_frames=0)


# --- decoder noise, headers, clips without a duration ---

@pytest.mark.parametrize("name", sorted(n for n, kind in BROKEN.items() if kind == "unreadable"))
def test_an_unreadable_file_writes_nothing_to_stderr_and_names_its_path_once(media_dir, name, capfd):
    path = media_dir / name
    with pytest.raises(VideoReadError) as info:
        read_video(path)
    assert capfd.readouterr().err == ""  # decord's own "ERROR opening: ..." line is not let through
    assert str(info.value).count(str(path)) == 1 and info.value.reason


def test_infer_on_a_corrupt_file_prints_exactly_one_line_on_stderr(streaming_model_folder, tmp_path):
    video = write_random_bytes(tmp_path / "corrupt.mp4")
    done = subprocess.run([sys.executable, "-m", "videopanda", "infer", "--model", str(streaming_model_folder),
                           "--video", str(video), "--question", "what happens?", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("videopanda infer: error: ") and lines[0].count(str(video)) == 1


def test_probe_reads_the_header(media_dir, tmp_path):
    header = probe_video(media_dir / "clip.avi")
    assert (header.width, header.height, header.seconds, header.fps) == (64, 48, 1.25, 8.0)
    assert (header.codec, header.pix_fmt, header.pixels) == ("mpeg4", "yuv420p", 64 * 48)
    big = probe_video(write_video(tmp_path / "big.mp4", make_frames(1, 2048, 4096), fps=1))
    assert (big.width, big.height, big.codec) == (4096, 2048, "h264")
    with pytest.raises(VideoReadError, match="text.mp4: Invalid data"):
        probe_video(media_dir / "text.mp4")


def test_a_raw_stream_has_no_duration_and_is_measured_by_decoding(tmp_path):
    path = write_video(tmp_path / "raw.h264", make_frames(80), fps=8)  # 10 s
    header = probe_video(path)
    assert header.seconds is None and header.fps == 8.0  # the rate from the stream, not FFmpeg's 25 fps guess
    assert decoded_seconds(path) == 10.0
    # With a bound, decoding stops at the first frame ending past it: frame 32 ends at 33 / 8 s.
    assert decoded_seconds(path, limit=4) == 33 / 8
    assert decoded_seconds(path, limit=60) == 10.0


def test_decoded_seconds_follows_frame_timestamps(media_dir):
    # slow.gif: 5 frames 4 s apart; the last frame starts at 16 s and lasts one frame at the 0.25 fps rate.
    assert decoded_seconds(media_dir / "slow.gif") == 20.0
    assert decoded_seconds(media_dir / "slow.gif", limit=5) == 8.0
    with pytest.raises(VideoReadError, match="random.mp4"):
        decoded_seconds(media_dir / "random.mp4")
