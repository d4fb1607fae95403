"""Question sets for evaluation: the four zero-shot QA sets and the Video-ChatGPT benchmark.

Layout under `DATA_ROOT/eval/` (docs/DESIGN.md, "Choices where the paper is silent": Evaluation):

    GPT_Zero_Shot_QA/{MSVD,MSRVTT,TGIF,Activitynet}_Zero_Shot_QA/   (and Synth_Zero_Shot_QA from `videopanda synth`)
        videos/        the clips
        test_q.json    [{"video_name": ..., "question": ..., "question_id": ...}, ...]
        test_a.json    [{"answer": ..., "type": ..., "question_id": ...}, ...]
    Video_ChatGPT_Benchmark/
        videos/
        generic_qa.json      [{"video_name": ..., "Q": ..., "A": ...}, ...]
        temporal_qa.json     [{"video_name": ..., "Q": ..., "A": ...}, ...]
        consistency_qa.json  [{"video_name": ..., "Q1": ..., "Q2": ..., "A": ...}, ...]

Questions and answers are paired by `question_id`, never by position; a duplicated id, a question
without an answer or a question file without any question is an error naming the file. Video files
are found by name: the name as given if that file exists, else the name plus the first of
`VIDEO_EXTENSIONS` that exists (ActivityNet files are `v_{video_name}`). A video that cannot be found
is not an error here: the item carries `video_path=None` and inference writes it as an error row.

Benchmark items get stable ids from their position in the file: `generic/{i}`, `temporal/{i}`,
`consistency/{i}/q1` and `consistency/{i}/q2` (Q1 and Q2 are answered separately).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from videopanda.io import read_json

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".avi", ".webm", ".gif", ".mov")

QA_DATASETS = {
    "msvd": "MSVD_Zero_Shot_QA",
    "msrvtt": "MSRVTT_Zero_Shot_QA",
    "tgif": "TGIF_Zero_Shot_QA",
    "activitynet": "Activitynet_Zero_Shot_QA",
    "synth": "Synth_Zero_Shot_QA",  # the built-in synthetic benchmark (`videopanda synth`)
}
BENCHMARK = "videochatgpt"
BENCHMARK_DIR = "Video_ChatGPT_Benchmark"
BENCHMARK_FILES = ("generic_qa.json", "temporal_qa.json", "consistency_qa.json")
DATASETS = (*QA_DATASETS, BENCHMARK)


class DatasetError(Exception):
    """A question or answer file that cannot be used (message names the file and the entry)."""


@dataclass(frozen=True)
class QAItem:
    """One question to answer. `id` is the question_id as written in the file (int or str)."""

    id: Any
    question: str
    answer: str
    video: str
    video_path: Path | None
    type: str | None = None

    @property
    def key(self) -> str:
        return str(self.id)


def dataset_dir(data_root: str | os.PathLike, dataset: str) -> Path:
    if dataset == BENCHMARK:
        return Path(data_root) / "eval" / BENCHMARK_DIR
    if dataset not in QA_DATASETS:
        raise DatasetError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}")
    return Path(data_root) / "eval" / "GPT_Zero_Shot_QA" / QA_DATASETS[dataset]


def _load_list(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return read_json(path, expected=list)
    except ValueError as error:  # not UTF-8, not JSON, not a list: one line naming the file
        raise DatasetError(str(error)) from None


def _field(entry: Any, name: str, path: Path, index: int) -> Any:
    if not isinstance(entry, dict) or name not in entry:
        raise DatasetError(f"{path}: entry {index} has no {name!r} field")
    return entry[name]


class VideoFinder:
    """Maps a video name to its file in one folder (the folder is listed once)."""

    def __init__(self, videos_dir: Path, prefix: str = ""):
        self.videos_dir = videos_dir
        self.prefix = prefix
        self._files = set(os.listdir(videos_dir)) if videos_dir.is_dir() else set()

    def find(self, name: str) -> Path | None:
        stem = self.prefix + name
        for candidate in (stem, *(stem + ext for ext in VIDEO_EXTENSIONS)):
            if candidate in self._files:
                return self.videos_dir / candidate
        return None


def load_zero_shot_qa(data_root: str | os.PathLike, dataset: str) -> list[QAItem]:
    """The questions of one zero-shot QA set, in `test_q.json` order, each paired with its answer."""
    root = dataset_dir(data_root, dataset)
    q_path, a_path = root / "test_q.json", root / "test_a.json"
    questions, answers = _load_list(q_path), _load_list(a_path)
    if not questions:
        raise DatasetError(f"{q_path}: no questions (an empty list)")

    answer_by_id: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(answers):
        key = str(_field(entry, "question_id", a_path, index))
        _field(entry, "answer", a_path, index)
        if key in answer_by_id:
            raise DatasetError(f"{a_path}: question_id {key!r} appears more than once")
        answer_by_id[key] = entry

    finder = VideoFinder(root / "videos", prefix="v_" if dataset == "activitynet" else "")
    items: list[QAItem] = []
    seen: set[str] = set()
    missing: list[str] = []
    for index, entry in enumerate(questions):
        qid = _field(entry, "question_id", q_path, index)
        key = str(qid)
        if key in seen:
            raise DatasetError(f"{q_path}: question_id {key!r} appears more than once")
        seen.add(key)
        if key not in answer_by_id:
            missing.append(key)
            continue
        video = str(_field(entry, "video_name", q_path, index))
        answer = answer_by_id[key]
        items.append(QAItem(id=qid, question=str(_field(entry, "question", q_path, index)),
                            answer=str(answer["answer"]), video=video, video_path=finder.find(video),
                            type=None if answer.get("type") is None else str(answer["type"])))
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DatasetError(f"{a_path}: no answer for {len(missing)} question_id(s) of {q_path.name}: {shown}")
    return items


def load_benchmark(data_root: str | os.PathLike) -> list[QAItem]:
    """Every question of the Video-ChatGPT benchmark (generic, temporal, consistency Q1 and Q2)."""
    root = dataset_dir(data_root, BENCHMARK)
    finder = VideoFinder(root / "videos")
    items: list[QAItem] = []
    for filename in BENCHMARK_FILES:
        path = root / filename
        part = filename.removesuffix("_qa.json")
        entries = _load_list(path)
        if not entries:
            raise DatasetError(f"{path}: no questions (an empty list)")
        for index, entry in enumerate(entries):
            video = str(_field(entry, "video_name", path, index))
            answer = str(_field(entry, "A", path, index))
            video_path = finder.find(video)
            if part == "consistency":
                for q in ("Q1", "Q2"):
                    items.append(QAItem(id=f"{part}/{index}/{q.lower()}", question=str(_field(entry, q, path, index)),
                                        answer=answer, video=video, video_path=video_path))
            else:
                items.append(QAItem(id=f"{part}/{index}", question=str(_field(entry, "Q", path, index)),
                                    answer=answer, video=video, video_path=video_path))
    return items


def load_questions(data_root: str | os.PathLike, dataset: str) -> list[QAItem]:
    """Items of any supported dataset (`msvd`, `msrvtt`, `tgif`, `activitynet`, `videochatgpt`)."""
    return load_benchmark(data_root) if dataset == BENCHMARK else load_zero_shot_qa(data_root, dataset)
