"""The synthetic video-QA benchmark: `videopanda synth --out data/synth`.

A procedural dataset of real encoded mp4 clips (square, of varied sizes, lengths and frame rates) in
which large, high-contrast coloured shapes sit on a dark background; in every clip exactly one shape
moves in a straight line, exactly one other shape changes from the first frame to the last (it grows,
shrinks, lightens or darkens; a lone shape does both), and sometimes one more shape
appears. Everything the questions ask about is visible in the 8 frames the recipe samples (its rule,
`video.py`, spreads them over the whole clip): the mover crosses the frame and the change runs from the first sampled
frame to the last, so every two neighbouring sampled frames show both; a shape that appears does so within
the first chunk (after the 1st, 2nd or 3rd sampled frame).

Question types (single-word answers, balanced over the answer list of each type in the test set):

| type        | question                                   | answers                              |
|-------------|--------------------------------------------|--------------------------------------|
| appearance  | What colour is the moving shape?           | red green blue yellow cyan purple    |
| motion      | Which way does the {colour} shape move?    | left right up down                   |
| counting    | How many shapes are there at the end?      | one two three four                   |
| temporal    | What happens to the {colour} shape?        | grows shrinks lightens darkens       |

Motion and temporal questions need the order of the frames: played backwards, a shape moving left moves
right, and a growing shape shrinks, a lightening one darkens (`EVENTS`). Both are changes the STAB's
temporal convolutions can see between neighbouring frames; neither needs to know which frames come first
in the clip, which a temporal question asking "at the start" or "at the end" would (generators up to 11
asked the colour of a shape that changed colour at the start or at the end, and the tiny model never
learned that: docs/quickstart-research.md). Questions name shapes by what they do or by their colour,
never by their kind: telling a circle from a square at 28 px a token is shape recognition that the tiny
model trained from scratch does not learn in the quickstart's budget (asked "What shape is the red one?",
it stayed at chance), and it is not what the questions are meant to test. Every shape has its own colour
for the whole clip; a lone shape is asked no appearance or temporal question.

A training conversation asks every question of its clip, in a random order, and nothing else: training-only
questions on where the mover is at the start and at the end (generators up to 12) put the direction of
motion into the text ("at the end: middle left" before "Which way ...?"), a shortcut that left the direction
unlearned from the frames on some seeds. Every frame is the same 3 x 3 grid of 28 px cells, 13 tokens per
frame in the quickstart's 84 px frames; docs/quickstart-research.md lists the generators that were measured
and what each changed.

Written (the training and evaluation layouts of docs/DESIGN.md, "Choices where the paper is silent"):

```
OUT/train/train_json/valley_.json              captions (stages 1 and 2)
OUT/train/train_json/videochatgpt_tune_.json   multi-turn QA about every clip (stage 3)
OUT/train/synth/{id}.mp4
OUT/eval/GPT_Zero_Shot_QA/Synth_Zero_Shot_QA/{videos/{video_name}.mp4, test_q.json, test_a.json}
OUT/synth_meta.json     the generation settings and answer counts
```

The quickstart's tokenizer, base Llama and teacher are made from this data by `videopanda quickstart-models`
(`videopanda.quickstart.models`), which adds them under OUT/models/ and records them in synth_meta.json.

Everything is a function of `--seed`: each clip draws from its own `random.Random` seeded with the
seed, the split and the index, so the output does not depend on the number of worker processes, and
the clips are encoded with a deterministic encoder (identical bytes run to run).
"""
from __future__ import annotations

import json
import os
import random
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from videopanda.constants import NUM_FRAMES
from videopanda.data.conversation import SYSTEM_HUMAN, SYSTEM_USER
from videopanda.data.video import sample_indices
from videopanda.io import atomic_path, write_json_atomic
from videopanda.log import get_logger

logger = get_logger(__name__)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (235, 35, 35),
    "green": (35, 205, 55),
    "blue": (40, 90, 255),
    "yellow": (245, 225, 30),
    "cyan": (20, 210, 220),
    "purple": (165, 45, 225),
}
SHAPES = ("circle", "square", "triangle", "cross")
DIRECTIONS = ("left", "right", "up", "down")
COUNT_WORDS = ("one", "two", "three", "four")
BACKGROUNDS = ((20, 20, 20), (35, 35, 45), (45, 40, 30), (25, 40, 35))
BACKGROUND_RAMP = 70

GENERATOR_VERSION = 18
"""Bumped whenever the same seed would give different clips or questions (the quickstart then regenerates)."""

QUESTION_TYPES = ("appearance", "motion", "counting", "temporal")
EVENTS = ("grows", "shrinks", "lightens", "darkens")
"""What the changing shape does over the whole clip; each is the other's mirror image in time, so only the
order of the frames tells "grows" from "shrinks" and "lightens" from "darkens"."""
EVENT_FROM = 0.4
"""A growing shape starts at this fraction of its full size (a shrinking one ends at it)."""
PALE = (240, 240, 240)
PALE_MIX = 0.6
"""A lightening shape ends as its colour mixed this much with PALE (a darkening one starts so). Mixing towards
white, not black, moves a shape's pixels along another line in colour space than growing or shrinking over
the dark backdrop does (with black, 0.4 of the colour, the model told the two kinds apart in only 60-65% of
the cases; their direction in time it got right in over 90%); the palette has no white for that reason."""
ANSWERS: dict[str, tuple[str, ...]] = {
    "appearance": tuple(COLOURS),
    "motion": DIRECTIONS,
    "counting": COUNT_WORDS,
    "temporal": EVENTS,
}

ASPECTS = ((1, 1),)
LONG_SIDES = (144, 160, 176, 192)
"""Longer side in pixels. decord 0.6 returns mis-sized frames for clips 48 or 72 pixels wide; no
aspect gives those widths with these sides (a test decodes every frame size used)."""
FPS_CHOICES = (6, 8, 10, 12, 15, 24)
DURATION_RANGE = (2.0, 12.0)
GRID_CELLS = 3
"""Shapes sit on a grid of GRID_CELLS cells along the longer side. The quickstart's student frame is
84 px, i.e. 3 LSD cells of 28 px (2x2 patches of 14 px), and any-resolution framing puts cell
boundaries exactly on token boundaries (the shorter side becomes a whole number of cells and the
padding is a whole number of cells), so every resting shape lies inside one visual token."""
SHAPE_FILL = 0.8
"""Shape size as a fraction of the smaller cell side."""

DATASET_DIR = Path("eval/GPT_Zero_Shot_QA/Synth_Zero_Shot_QA")
TRAIN_VIDEO_DIR = "synth"
CAPTION_PROMPTS = (
    "Describe the video.",
    "What happens in this video?",
    "Describe what you see in the clip.",
    "Give a short description of the video.",
)
SYSTEM_TEXTS = (SYSTEM_USER, SYSTEM_HUMAN)


@dataclass(frozen=True)
class SynthObject:
    """One shape. Positions are centres in pixels; `size` is the shape's bounding-box side."""

    shape: str
    colour: str
    size: int
    start: tuple[float, float]
    end: tuple[float, float]
    event: str | None = None     # one of EVENTS for the shape that changes, from the first frame to the last
    appear_time: float = 0.0     # fraction of the clip at which the shape appears (0 = from the start)

    @property
    def moves(self) -> bool:
        return self.start != self.end

    def _ramp(self, t: float, rising: str, falling: str) -> float:
        """0 unless the event is `rising` (0 at t = 0 up to 1 at t = 1) or `falling` (the reverse)."""
        return t if self.event == rising else 1 - t if self.event == falling else 0.0

    def size_at(self, t: float) -> int:
        """The drawn size in pixels at time t (a fraction of the clip)."""
        return max(2, round(self.size * (1 - (1 - EVENT_FROM) * self._ramp(t, "shrinks", "grows"))))

    def rgb_at(self, t: float) -> tuple[float, float, float]:
        """The drawn colour at time t: the colour mixed with PALE by up to PALE_MIX when lightening or darkening."""
        w = PALE_MIX * self._ramp(t, "lightens", "darkens")
        return tuple((1 - w) * c + w * p for c, p in zip(COLOURS[self.colour], PALE))


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    fps: int
    num_frames: int
    background: tuple[int, int, int]
    objects: tuple[SynthObject, ...]
    direction: str

    @property
    def duration(self) -> float:
        return self.num_frames / self.fps

    @property
    def mover(self) -> SynthObject:
        return next(o for o in self.objects if o.moves)

    @property
    def changer(self) -> SynthObject:
        """The shape that grows, shrinks, lightens or darkens."""
        return next(o for o in self.objects if o.event is not None)


# ---- scenes ------------------------------------------------------------------------------------


def sample_scene(rng: random.Random, qtype: str, answer: str) -> Scene:
    """A random scene in which the question of `qtype` has `answer`. Every scene has one mover and one
    changer (a shape that grows, shrinks, lightens or darkens), two different shapes unless the scene
    has only one."""
    if answer not in ANSWERS[qtype]:
        raise ValueError(f"{answer!r} is not an answer of question type {qtype!r}")
    if qtype == "counting":
        count = COUNT_WORDS.index(answer) + 1
    elif qtype in ("appearance", "temporal"):
        count = rng.randint(2, 4)  # the mover and the changer are two shapes
    else:
        count = rng.randint(1, 4)
    mover = rng.randrange(count)
    changer = rng.choice([i for i in range(count) if i != mover]) if count > 1 else mover
    shapes = rng.sample(SHAPES, count)
    direction = answer if qtype == "motion" else rng.choice(DIRECTIONS)

    event = answer if qtype == "temporal" else rng.choice(EVENTS)

    # Distinct colours, so "the red one" is unambiguous.
    colours: list[str | None] = [None] * count
    if qtype == "appearance":
        colours[mover] = answer
    taken = {c for c in colours if c}
    for i in range(count):
        if colours[i] is None:
            colours[i] = rng.choice(sorted(set(COLOURS) - taken))
            taken.add(colours[i])

    # An extra shape that appears early on: one that neither moves nor changes.
    static = [i for i in range(count) if i not in (mover, changer)]
    appearer = rng.choice(static) if static and rng.random() < 0.4 else None

    aspect = rng.choice(ASPECTS)
    long_side = rng.choice(LONG_SIDES)
    scale = long_side / max(aspect)
    width, height = (2 * round(a * scale / 2) for a in aspect)
    fps = rng.choice(FPS_CHOICES)
    num_frames = max(2, round(rng.uniform(*DURATION_RANGE) * fps))
    background = rng.choice(BACKGROUNDS)
    positions, size = _layout(rng, width, height, count, mover, direction)
    picked = sample_indices(num_frames, fps, NUM_FRAMES)
    early = _between(rng, picked, rng.randrange(len(picked) // 2 - 1), num_frames)
    objects = tuple(
        SynthObject(
            shape=shapes[i],
            colour=colours[i],
            size=size,
            start=positions[i][0],
            end=positions[i][1],
            event=event if i == changer else None,
            appear_time=early if i == appearer else 0.0,
        )
        for i in range(count)
    )
    return Scene(width, height, fps, num_frames, background, objects, direction)


def _between(rng: random.Random, picked: list[int], k: int, num_frames: int) -> float:
    """A random time (a fraction of the clip; frame f shows time f / (num_frames - 1)) after sampled
    frame `picked[k]` and up to sampled frame `picked[k + 1]` (`videopanda.data.video.sample_indices`)."""
    first_new = rng.randint(picked[k] + 1, picked[k + 1])
    return (first_new - 0.5) / (num_frames - 1)


def grid_shape(width: int, height: int, cells: int = GRID_CELLS) -> tuple[int, int]:
    """(columns, rows) of the cell grid: `cells` along the longer side and, along the shorter one, the
    number of patches any-resolution framing gives it on a grid of `cells` patches
    (ceil(cells * short / long), as in `videopanda.data.frames.frame_placement`)."""
    long_side, short_side = max(width, height), min(width, height)
    short_cells = -(-(cells * short_side) // long_side)
    return (cells, short_cells) if width >= height else (short_cells, cells)


def _layout(rng: random.Random, width: int, height: int, count: int, mover: int, direction: str):
    """Placement on the cell grid (see GRID_CELLS): the mover travels along one lane (a row for left /
    right, a column for up / down) from the centre of its first cell to the centre of its last; the
    other shapes sit at the centres of distinct cells outside that lane, so no two shapes ever overlap.
    Returns ([(start, end)] centre positions per shape, shape size in pixels)."""
    cols, rows = grid_shape(width, height)
    cell_w, cell_h = width / cols, height / rows
    size = int(SHAPE_FILL * min(cell_w, cell_h))
    horizontal = direction in ("left", "right")
    lane = rng.randrange(rows if horizontal else cols)
    free = [(c, r) for r in range(rows) for c in range(cols) if (r if horizontal else c) != lane]
    cells = iter(rng.sample(free, count - 1))

    def centre(c: float, r: float) -> tuple[float, float]:
        return ((c + 0.5) * cell_w, (r + 0.5) * cell_h)

    if horizontal:
        ends = (centre(0, lane), centre(cols - 1, lane))
    else:
        ends = (centre(lane, 0), centre(lane, rows - 1))
    if direction in ("left", "up"):
        ends = ends[::-1]
    positions = []
    for i in range(count):
        if i == mover:
            positions.append(ends)
        else:
            p = centre(*next(cells))
            positions.append((p, p))
    return positions, size


# ---- text --------------------------------------------------------------------------------------


def questions(scene: Scene) -> list[dict[str, str]]:
    """Every question the scene answers unambiguously: [{"type", "question", "answer"}]."""
    mover, changer = scene.mover, scene.changer
    out = [
        {"type": "motion", "question": f"Which way does the {mover.colour} shape move?", "answer": scene.direction},
        {"type": "counting", "question": "How many shapes are there at the end?", "answer": COUNT_WORDS[len(scene.objects) - 1]},
    ]
    if changer is not mover:
        out.append({"type": "temporal", "question": f"What happens to the {changer.colour} shape?",
                    "answer": changer.event})
        out.append({"type": "appearance", "question": "What colour is the moving shape?", "answer": mover.colour})
    return out


def question_for(scene: Scene, qtype: str, answer: str) -> dict[str, str]:
    """The question of `qtype` whose answer is `answer` in this scene."""
    for q in questions(scene):
        if q["type"] == qtype and q["answer"] == answer:
            return q
    raise AssertionError(f"scene has no {qtype} question answered {answer!r}")


def caption(scene: Scene) -> str:
    """A full description: the shapes present at the start, the motion, the change, the appearance, and
    the final count, in the order they happen."""
    start = [o for o in scene.objects if o.appear_time == 0.0]
    names = [f"a {o.colour} {o.shape}" for o in start]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    events = [(0.0, f"The {scene.mover.colour} {scene.mover.shape} moves {scene.direction}.")]
    events.append((0.0, f"The {scene.changer.colour} {scene.changer.shape} {scene.changer.event}."))
    events += [(o.appear_time, f"A {o.colour} {o.shape} appears.") for o in scene.objects if o.appear_time > 0]
    events.sort(key=lambda e: e[0])
    total = len(scene.objects)
    end = f"In the end there {'is one shape' if total == 1 else f'are {COUNT_WORDS[total - 1]} shapes'}."
    verb = "is" if len(names) == 1 else "are"
    return " ".join([f"{listed[0].upper()}{listed[1:]} {verb} on a dark background."] + [e[1] for e in events] + [end])


# ---- pixels ------------------------------------------------------------------------------------


def _sprite(shape: str, size: int) -> np.ndarray:
    """bool (size, size) mask of a shape filling its box (cross arms one third wide)."""
    c = (np.arange(size) + 0.5) / size * 2 - 1  # pixel centres in [-1, 1]
    y, x = np.meshgrid(c, c, indexing="ij")
    if shape == "circle":
        return x**2 + y**2 <= 1.0
    if shape == "square":
        return (np.abs(x) <= 0.85) & (np.abs(y) <= 0.85)
    if shape == "triangle":
        return (y <= 0.9) & (np.abs(x) <= (y + 1.0) / 1.9 * 0.95)
    if shape == "cross":
        return ((np.abs(x) <= 1 / 3) & (np.abs(y) <= 1.0)) | ((np.abs(y) <= 1 / 3) & (np.abs(x) <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")


def background_image(scene: Scene) -> np.ndarray:
    """uint8 (height, width, 3): the scene's dark base colour with red rising to the right and blue
    rising downwards (by up to BACKGROUND_RAMP). The tokens of this architecture carry no absolute
    position, so the backdrop tells every visual token where in the frame it is."""
    x = (np.arange(scene.width) + 0.5) / scene.width
    y = (np.arange(scene.height) + 0.5) / scene.height
    image = np.empty((scene.height, scene.width, 3))
    image[:] = scene.background
    image[..., 0] += BACKGROUND_RAMP * x[None, :]
    image[..., 2] += BACKGROUND_RAMP * y[:, None]
    return image.round().astype(np.uint8)


def render(scene: Scene) -> np.ndarray:
    """uint8 (num_frames, height, width, 3) RGB frames of the scene."""
    frames = np.empty((scene.num_frames, scene.height, scene.width, 3), np.uint8)
    frames[:] = background_image(scene)
    sprites: dict[tuple[str, int], np.ndarray] = {}
    for f in range(scene.num_frames):
        t = f / max(scene.num_frames - 1, 1)
        for o in scene.objects:
            if t < o.appear_time:
                continue
            cx = o.start[0] + (o.end[0] - o.start[0]) * t
            cy = o.start[1] + (o.end[1] - o.start[1]) * t
            size = o.size_at(t)
            x0, y0 = round(cx - size / 2), round(cy - size / 2)
            sprite = sprites.get((o.shape, size))
            if sprite is None:
                sprite = sprites[o.shape, size] = _sprite(o.shape, size)
            ys = slice(max(y0, 0), min(y0 + size, scene.height))
            xs = slice(max(x0, 0), min(x0 + size, scene.width))
            mask = sprite[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
            frames[f, ys, xs][mask] = np.round(o.rgb_at(t)).astype(np.uint8)
    return frames


VIDEO_CODEC = "mpeg4"
"""MPEG-4 part 2 (libavcodec's own encoder, no B-frames, near-lossless at qscale 2). Chosen over
libx264 because x264 output was not byte-identical from run to run here even single-threaded, and
byte-identical clips are what the determinism test checks. Both decord and PyAV read it."""


def encode_mp4(frames: np.ndarray, fps: int, path: Path, codec: str = VIDEO_CODEC) -> Path:
    """Encode uint8 (n, H, W, 3) frames (H, W even) to an mp4 (`videopanda.io.atomic_path`: a reader never
    sees a partial clip)."""
    with atomic_path(path) as tmp, av.open(str(tmp), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps))
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1
        stream.options = {"crf": "12", "preset": "veryfast", "threads": "1"} if codec == "libx264" else {"qscale": "2"}
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ---- the dataset -------------------------------------------------------------------------------


@dataclass
class SynthConfig:
    out: Path = Path("data/synth")
    seed: int = 0
    num_train: int = 2000
    num_test: int = 400
    workers: int = field(default_factory=lambda: min(2, os.cpu_count() or 1))


def _target(index: int) -> tuple[str, str]:
    """Balanced (type, answer) for sample `index`: types round-robin, answers cycling through each type's list."""
    qtype = QUESTION_TYPES[index % len(QUESTION_TYPES)]
    answers = ANSWERS[qtype]
    return qtype, answers[(index // len(QUESTION_TYPES)) % len(answers)]


def make_scene(seed: int, split: str, index: int) -> tuple[Scene, dict[str, str], random.Random]:
    """Sample `index` of `split` ("train" / "test"): its scene, its focus question (the test question)
    and the sample's random generator, positioned after the scene was drawn."""
    rng = random.Random(f"videopanda-synth/{seed}/{split}/{index}")
    qtype, answer = _target(index)
    scene = sample_scene(rng, qtype, answer)
    return scene, question_for(scene, qtype, answer), rng


def _make_sample(args: tuple[int, str, int, str]) -> dict:
    """Generate, render and encode one clip; returns its record (runs in a worker process)."""
    seed, split, index, video_path = args
    scene, focus, rng = make_scene(seed, split, index)
    encode_mp4(render(scene), scene.fps, Path(video_path))
    qas = questions(scene)
    return {
        "focus": focus,
        "questions": qas,
        "caption": caption(scene),
        "caption_prompt": rng.choice(CAPTION_PROMPTS),
        "qa_order": rng.sample(range(len(qas)), len(qas)),
    }


def _generate(config: SynthConfig, split: str, count: int, paths: list[Path]) -> list[dict]:
    from tqdm import tqdm

    jobs = [(config.seed, split, i, str(p)) for i, p in enumerate(paths)]
    if config.workers <= 1:
        return [_make_sample(j) for j in tqdm(jobs, desc=f"synth {split}", unit="clip")]
    with ProcessPoolExecutor(config.workers) as pool:
        return list(tqdm(pool.map(_make_sample, jobs, chunksize=8), total=count, desc=f"synth {split}", unit="clip"))


def generate(config: SynthConfig) -> dict:
    """Write the dataset and its metadata (OUT/synth_meta.json); returns the metadata."""
    out = Path(config.out)
    train_json = out / "train" / "train_json"
    train_json.mkdir(parents=True, exist_ok=True)
    test_dir = out / DATASET_DIR
    (test_dir / "videos").mkdir(parents=True, exist_ok=True)

    train_names = [f"synth_{config.seed}_{i:06d}" for i in range(config.num_train)]
    train = _generate(config, "train", config.num_train,
                      [out / "train" / TRAIN_VIDEO_DIR / f"{n}.mp4" for n in train_names])
    test_names = [f"synth_test_{config.seed}_{i:06d}" for i in range(config.num_test)]
    test = _generate(config, "test", config.num_test, [test_dir / "videos" / f"{n}.mp4" for n in test_names])

    valley, tune = [], []
    for name, rec in zip(train_names, train):
        video = f"{TRAIN_VIDEO_DIR}/{name}.mp4"
        valley.append({"id": name, "video": video, "conversations": [
            {"from": "human", "value": f"<video>\n{rec['caption_prompt']}"},
            {"from": "gpt", "value": rec["caption"]},
        ]})
        turns = []
        for j, k in enumerate(rec["qa_order"]):
            q = rec["questions"][k]
            turns.append({"from": "human", "value": ("<video>\n" if j == 0 else "") + q["question"]})
            turns.append({"from": "gpt", "value": q["answer"]})
        tune.append({"id": name, "video": video, "conversations": turns})
    test_q = [{"video_name": name, "question": rec["focus"]["question"], "question_id": f"synth_q_{i:06d}"}
              for i, (name, rec) in enumerate(zip(test_names, test))]
    test_a = [{"answer": rec["focus"]["answer"], "type": rec["focus"]["type"], "question_id": f"synth_q_{i:06d}"}
              for i, rec in enumerate(test)]
    write_json_atomic(train_json / "valley_.json", valley)
    write_json_atomic(train_json / "videochatgpt_tune_.json", tune)
    write_json_atomic(test_dir / "test_q.json", test_q)
    write_json_atomic(test_dir / "test_a.json", test_a)

    meta = {
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "num_train": config.num_train,
        "num_test": config.num_test,
        "codec": VIDEO_CODEC,
        "question_types": {t: list(a) for t, a in ANSWERS.items()},
        "test_answer_counts": {t: dict(sorted(Counter(a["answer"] for a in test_a if a["type"] == t).items()))
                               for t in QUESTION_TYPES},
    }
    write_json_atomic(out / "synth_meta.json", meta)
    logger.info("synthetic benchmark in %s: %d training clips, %d test questions", out, config.num_train, config.num_test)
    return meta


# ---- command line ------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    from videopanda.argparsing import CommandParser

    parser = CommandParser(prog="videopanda synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/synth"), help="output DATA_ROOT")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train", type=int, default=SynthConfig.num_train, help="training clips")
    parser.add_argument("--num-test", type=int, default=SynthConfig.num_test, help="test clips (one question each)")
    parser.add_argument("--workers", type=int, default=SynthConfig().workers)
    args = parser.parse_args(argv)
    if args.num_train < 1 or args.num_test < 1:
        parser.error("--num-train and --num-test must be at least 1")
    config = SynthConfig(out=args.out, seed=args.seed, num_train=args.num_train, num_test=args.num_test,
                         workers=args.workers)
    meta = generate(config)
    print(json.dumps({k: meta[k] for k in ("num_train", "num_test", "test_answer_counts")}))
    return 0
