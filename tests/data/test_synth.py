"""The synthetic video-QA benchmark: layout, determinism, balance, and that every clip shows what its
questions claim (checked on the pixels the real reader decodes)."""
import json
from collections import Counter
from pathlib import Path

import av
import numpy as np
import pytest

from videopanda.data import synth
from videopanda.data.video import read_video, sample_indices

SEED, NUM_TRAIN, NUM_TEST = 3, 6, 8


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    code = synth.main(["--out", str(out), "--seed", str(SEED), "--num-train", str(NUM_TRAIN),
                       "--num-test", str(NUM_TEST), "--workers", "2"])
    assert code == 0
    return out


def _json(path: Path):
    return json.loads(path.read_text())


def _test_dir(root: Path) -> Path:
    return root / "eval" / "GPT_Zero_Shot_QA" / "Synth_Zero_Shot_QA"


def _data_files(root: Path) -> dict[str, bytes]:
    """Every dataset file (JSON and mp4) under root but the metadata."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "synth_meta.json"}


def test_layout_follows_the_training_and_zero_shot_layouts(synth_dir):
    train_json = synth_dir / "train" / "train_json"
    valley, tune = _json(train_json / "valley_.json"), _json(train_json / "videochatgpt_tune_.json")
    assert len(valley) == len(tune) == NUM_TRAIN
    for sample in valley + tune:
        assert set(sample) == {"id", "video", "conversations"}
        assert (synth_dir / "train" / sample["video"]).is_file()
        turns = sample["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<video>\n")
        assert all("<video>" not in t["value"] for t in turns[1:])
    # each conversation asks every question of its clip and nothing else (no question that names another's
    # answer, such as where the mover ends up, which names its direction): motion and counting, and the
    # temporal and the appearance question besides whenever there are two or more shapes
    for index, sample in enumerate(tune):
        scene = synth.make_scene(SEED, "train", index)[0]
        turns = sample["conversations"]
        asked = [(q["value"].removeprefix("<video>\n"), a["value"]) for q, a in zip(turns[::2], turns[1::2])]
        assert sorted(asked) == sorted((q["question"], q["answer"]) for q in synth.questions(scene))
        assert len(asked) in (2, 4) and all(len(answer.split()) == 1 for _, answer in asked)

    test_q, test_a = _json(_test_dir(synth_dir) / "test_q.json"), _json(_test_dir(synth_dir) / "test_a.json")
    assert len(test_q) == len(test_a) == NUM_TEST
    assert all(set(q) == {"video_name", "question", "question_id"} for q in test_q)
    assert all(set(a) == {"answer", "type", "question_id"} for a in test_a)
    assert len({q["question_id"] for q in test_q}) == NUM_TEST
    assert {q["question_id"] for q in test_q} == {a["question_id"] for a in test_a}
    for q in test_q:
        assert (_test_dir(synth_dir) / "videos" / f"{q['video_name']}.mp4").is_file()
    for a in test_a:
        assert a["answer"] in synth.ANSWERS[a["type"]]


def test_same_seed_gives_identical_files_whatever_the_worker_count(synth_dir, tmp_path):
    again = tmp_path / "again"
    config = synth.SynthConfig(out=again, seed=SEED, num_train=NUM_TRAIN, num_test=NUM_TEST, workers=1)
    synth.generate(config)
    first, second = _data_files(synth_dir), _data_files(again)
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_another_seed_gives_other_clips():
    a = [synth.make_scene(0, "train", i)[0] for i in range(8)]
    b = [synth.make_scene(1, "train", i)[0] for i in range(8)]
    assert a != b


def test_test_answers_are_balanced_per_type():
    per_type: dict[str, Counter] = {t: Counter() for t in synth.QUESTION_TYPES}
    n = 4 * 24  # 24 questions a type: a whole number of cycles through every answer list
    for i in range(n):
        scene, focus, _ = synth.make_scene(0, "test", i)
        per_type[focus["type"]][focus["answer"]] += 1
        assert focus in synth.questions(scene)
    for qtype, counts in per_type.items():
        assert set(counts) == set(synth.ANSWERS[qtype]), qtype
        assert len(set(counts.values())) == 1, (qtype, counts)


def test_every_question_is_unambiguous():
    for i in range(200):
        scene = synth.make_scene(0, "train", i)[0]
        objects = scene.objects
        assert len({o.shape for o in objects}) == len(objects)
        assert len({o.colour for o in objects}) == len(objects)
        assert sum(o.moves for o in objects) == 1
        assert sum(o.event is not None for o in objects) == 1
        assert scene.changer.event in synth.EVENTS
        assert (scene.mover is scene.changer) == (len(objects) == 1)
        asked = [q for q in synth.questions(scene) if q["type"] == "appearance"]
        assert len(asked) == (len(objects) > 1)
        assert all(q["answer"] == scene.mover.colour for q in asked)
        # the motion and temporal questions name their shape by its colour, which no other shape has
        (motion,) = [q["question"].split() for q in synth.questions(scene) if q["type"] == "motion"]
        assert [o for o in objects if o.colour in motion] == [scene.mover]
        temporal = [q for q in synth.questions(scene) if q["type"] == "temporal"]
        assert len(temporal) == (len(objects) > 1)
        for q in temporal:
            assert [o for o in objects if o.colour in q["question"].split()] == [scene.changer]
            assert q["answer"] == scene.changer.event
        assert not any(o.shape in q["question"] for q in synth.questions(scene) for o in objects)
        times = [f / (scene.num_frames - 1) for f in sample_indices(scene.num_frames, scene.fps, 8)]
        # a newcomer shows up inside the first chunk
        assert all(o.appear_time == 0 or times[0] < o.appear_time <= times[3] for o in objects)


def test_an_event_played_backwards_is_its_mirror_event():
    """Reversing the frames turns each event into another one: only the order tells them apart."""
    mirror = {"grows": "shrinks", "shrinks": "grows", "lightens": "darkens", "darkens": "lightens"}
    assert set(mirror) == set(synth.EVENTS)
    for event, other in mirror.items():
        a = synth.SynthObject("circle", "red", 40, (0, 0), (0, 0), event=event)
        b = synth.SynthObject("circle", "red", 40, (0, 0), (0, 0), event=other)
        for t in np.linspace(0, 1, 9):
            assert a.size_at(t) == b.size_at(1 - t) and a.rgb_at(t) == pytest.approx(b.rgb_at(1 - t))
        assert (a.size_at(0), a.rgb_at(0)) != (a.size_at(1), a.rgb_at(1))


def _colour_mask(frame: np.ndarray, colour: str) -> np.ndarray:
    return np.abs(frame.astype(int) - np.array(synth.COLOURS[colour])).sum(-1) < 90


def _colours_present(frame: np.ndarray, min_pixels: int) -> set[str]:
    return {c for c in synth.COLOURS if _colour_mask(frame, c).sum() >= min_pixels}


def _clips(root: Path):
    for i in range(NUM_TRAIN):
        yield synth.make_scene(SEED, "train", i)[0], root / "train" / synth.TRAIN_VIDEO_DIR / f"synth_{SEED}_{i:06d}.mp4"
    for i in range(NUM_TEST):
        yield synth.make_scene(SEED, "test", i)[0], _test_dir(root) / "videos" / f"synth_test_{SEED}_{i:06d}.mp4"


def test_decoded_clips_show_what_the_questions_claim(synth_dir):
    aspects = {a[0] / a[1] for a in synth.ASPECTS}
    for scene, path in _clips(synth_dir):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps, total = float(stream.average_rate), stream.frames
        assert fps == scene.fps and fps in synth.FPS_CHOICES
        assert total == scene.num_frames
        assert synth.DURATION_RANGE[0] - 1 / fps <= total / fps <= synth.DURATION_RANGE[1] + 1 / fps
        assert max(scene.width, scene.height) in synth.LONG_SIDES
        assert min(abs(scene.width / scene.height - a) for a in aspects) < 0.05

        frames = read_video(path, num_frames=8).numpy()
        assert frames.shape == (8, scene.height, scene.width, 3), path
        times = [i / (total - 1) for i in sample_indices(total, fps, 8)]
        first, last = frames[0], frames[-1]
        min_pixels = int(0.25 * scene.objects[0].size ** 2)

        # every shape shows its colour in the first and the last sampled frame, except a darkening one at the
        # start and a lightening one at the end, which are pale then (a growing one is small but there)
        changer = scene.changer
        dim = {"darkens": 0, "lightens": -1}.get(changer.event)
        for k, frame in ((0, first), (-1, last)):
            expected = {o.colour for o in scene.objects if o.appear_time <= times[k]}
            if dim == k:
                expected.discard(changer.colour)
            min_pixels = int(0.25 * (synth.EVENT_FROM * scene.objects[0].size) ** 2)
            assert _colours_present(frame, min_pixels) == expected, (path, k)
        # the event runs through every sampled frame: the changer's area (grows / shrinks, over its cell) or
        # how pale it is (lightens / darkens, at its centre) changes the same way between each two sampled frames
        x, y, half = round(changer.start[0]), round(changer.start[1]), scene.objects[0].size // 2 + 2
        if changer is not scene.mover:
            cell = frames[:, y - half:y + half, x - half:x + half].astype(float)
            base, pale = np.array(synth.COLOURS[changer.colour], float), np.array(synth.PALE, float)
            if changer.event in ("grows", "shrinks"):
                measure = (np.abs(cell - base).sum(-1) < 90).reshape(8, -1).sum(1).astype(float)
            else:
                centre = cell[:, half - 3:half + 3, half - 3:half + 3].reshape(8, -1, 3).mean(1)
                measure = 1 - (centre - base) @ (pale - base) / ((pale - base) @ (pale - base))
                assert np.all(measure > 1 - synth.PALE_MIX - 0.1) and np.all(measure < 1.1), (path, measure)
            # (two sampled frames can be one decoded frame apart, so a step may be as small as the codec's noise)
            steps = np.diff(measure) * (1 if changer.event in ("grows", "darkens") else -1)
            assert np.all(steps > -0.02 * measure.max()) and steps.sum() > 0, (path, changer.event, measure)
            assert measure.min() / measure.max() < 0.75, (path, changer.event, measure)
        # a newcomer is there by frame 3 (half the pixel threshold: the first frame after an event carries some
        # codec lag)
        min_pixels = int(0.25 * scene.objects[0].size ** 2)
        for o in scene.objects:
            if o.appear_time > 0:
                assert o.colour in _colours_present(frames[3], min_pixels // 2) - _colours_present(first, min_pixels)

        mover = scene.mover
        # (a lone shape is the changer too: look for the colour it is drawn in at that time)
        ys0, xs0 = np.nonzero(np.abs(first.astype(int) - np.array(mover.rgb_at(times[0]))).sum(-1) < 90)
        ys1, xs1 = np.nonzero(np.abs(last.astype(int) - np.array(mover.rgb_at(times[-1]))).sum(-1) < 90)
        dx, dy = xs1.mean() - xs0.mean(), ys1.mean() - ys0.mean()
        expected = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}[scene.direction]
        along = dx * expected[0] + dy * expected[1]
        across = abs(dx * expected[1] + dy * expected[0])
        span = scene.width if expected[0] else scene.height
        assert along > 0.3 * span and across < 3, (path, scene.direction, dx, dy)


def test_decord_reads_every_frame_size_the_generator_uses(tmp_path):
    """decord (the first-choice reader) mis-sizes some widths; read_video would hide that behind PyAV."""
    import decord

    for aspect in synth.ASPECTS:
        for long_side in synth.LONG_SIDES:
            scale = long_side / max(aspect)
            width, height = (2 * round(a * scale / 2) for a in aspect)
            path = synth.encode_mp4(np.zeros((3, height, width, 3), np.uint8), 8, tmp_path / f"{width}x{height}.mp4")
            frames = decord.VideoReader(str(path)).get_batch([0, 2]).asnumpy()
            assert frames.shape == (2, height, width, 3), (aspect, long_side)


def test_a_clip_that_fails_to_encode_leaves_the_old_file_and_no_temporary(tmp_path):
    path = synth.encode_mp4(np.zeros((3, 16, 16, 3), np.uint8), 8, tmp_path / "clip.mp4")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="no-such-codec"):
        synth.encode_mp4(np.full((3, 16, 16, 3), 255, np.uint8), 8, path, codec="no-such-codec")
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_shapes_rest_inside_single_cells_of_the_token_grid():
    """Any-resolution framing maps the cell grid onto whole LSD tokens; resting shapes stay inside a cell."""
    from videopanda.data.frames import FrameConfig, frame_placement

    config = FrameConfig(image_size=84, teacher_image_size=42)
    for i in range(100):
        scene = synth.make_scene(0, "train", i)[0]
        cols, rows = synth.grid_shape(scene.width, scene.height)
        student, _ = frame_placement(scene.height, scene.width, config)
        assert (student.width, student.height) == (cols * 28, rows * 28)
        assert student.left % 28 == 0 and student.top % 28 == 0
        cell_w, cell_h = scene.width / cols, scene.height / rows
        for o in scene.objects:
            for x, y in {o.start, o.end}:
                col, row = int(x // cell_w), int(y // cell_h)
                assert col * cell_w <= x - o.size / 2 and x + o.size / 2 <= (col + 1) * cell_w
                assert row * cell_h <= y - o.size / 2 and y + o.size / 2 <= (row + 1) * cell_h


def test_bad_arguments_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        synth.main(["--out", str(tmp_path), "--num-train", "0"])
    assert exc.value.code == 2
    assert "--num-train" in capsys.readouterr().err
