"""Multiple-choice video benchmarks, scored by exact accuracy: MVBench, Video-MME, EgoSchema, NExT-QA,
Perception Test.

Each loader reads the benchmark's released annotation files under `DATA_ROOT/eval/` and finds the
videos as the benchmark's README lays them out (see docs/evaluation.md for the tree):

    MVBench/json/<task>.json + MVBench/video/<source folder>/<video>    (per-task JSON lists:
        video, question, candidates, answer = the text of the right candidate; start/end for some tasks)
    Video-MME/videomme/test-00000-of-00001.parquet + Video-MME/data/<videoID>.mp4   (columns
        videoID, question_id, duration, domain, sub_category, task_type, question, options "A. ...", answer "A")
    EgoSchema/questions.json + EgoSchema/subset_answers.json + EgoSchema/videos/<q_uid>.mp4
        (questions: q_uid, question, "option 0".."option 4"; answers {q_uid: index}, only the public subset)
    NExTQA/<split>.csv + NExTQA/map_vid_vidorID.json + NExTQA/NExTVideo/<folder/vidorID>.mp4
        (columns video, question, answer = index, qid, type, a0..a4)
    PerceptionTest/<annotation>.json + PerceptionTest/videos/<video_id>.mp4
        ({video_id: {"metadata": ..., "mc_question": [{id, question, options, answer_id, area, reasoning}]}})

Values are read strictly, and a sample no reader can use for sure is a `DatasetError` naming the file
and the sample: options must be a list (a string would become one option per character), a right
option an integer index (2, 2.0 or "2"; 2.9, true or "x" are refused, never truncated), clip bounds
finite non-negative seconds (a number or its text) with the end after the start.

Every item becomes an `MCItem`: a `QAItem` whose `question` is the full prompt (question, lettered
options, "Answer with the option's letter from the given choices directly.") and whose `answer` is the
right letter, plus its options and categories (task, duration, domain, question type, area, ...). So
`eval mc` answers them with the `eval qa` machinery (sharded, resumable, fingerprinted chunk files,
then `merge_predictions`), and scores the merged rows: `extract_letter` reads a reply strictly (see
there); a reply it cannot read counts as wrong and is listed. Accuracy is over every item (a missing
or failed prediction counts as wrong), overall and per value of each category, each with its 95% Wilson
interval and its number of items; `outcomes.jsonl` beside `results.json` holds each item's outcome.

Frames: as `eval qa` samples them (`--num-frames N` or `--fps F`); a question about a window of its clip
(start/end: MVBench tasks with bounds) is sampled by count within the window (`read_video`), so `--fps` is
refused, in one line before anything runs, for a benchmark with such questions.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from videopanda.eval.datasets import VIDEO_EXTENSIONS, DatasetError, QAItem, VideoFinder
from videopanda.eval.intervals import INTERVAL_RULE, percent_interval
from videopanda.eval.qa import ModelAnswerer, ModelAnswererConfig, VideoNotFoundError
from videopanda.serve.model_folder import ModelFolder

LETTERS = string.ascii_uppercase
INSTRUCTION = "Answer with the option's letter from the given choices directly."

# MVBench task -> (annotation file under json/, video folder under video/); from the benchmark's README table
MVBENCH_TASKS: dict[str, tuple[str, str]] = {
    "Action Sequence": ("action_sequence.json", "star/Charades_v1_480"),
    "Action Prediction": ("action_prediction.json", "star/Charades_v1_480"),
    "Action Antonym": ("action_antonym.json", "ssv2_video"),
    "Fine-grained Action": ("fine_grained_action.json", "Moments_in_Time_Raw/videos"),
    "Unexpected Action": ("unexpected_action.json", "FunQA_test/test"),
    "Object Existence": ("object_existence.json", "clevrer/video_validation"),
    "Object Interaction": ("object_interaction.json", "star/Charades_v1_480"),
    "Object Shuffle": ("object_shuffle.json", "perception/videos"),
    "Moving Direction": ("moving_direction.json", "clevrer/video_validation"),
    "Action Localization": ("action_localization.json", "sta/sta_video"),
    "Scene Transition": ("scene_transition.json", "scene_qa/video"),
    "Action Count": ("action_count.json", "perception/videos"),
    "Moving Count": ("moving_count.json", "clevrer/video_validation"),
    "Moving Attribute": ("moving_attribute.json", "clevrer/video_validation"),
    "State Change": ("state_change.json", "perception/videos"),
    "Fine-grained Pose": ("fine_grained_pose.json", "nturgbd"),
    "Character Order": ("character_order.json", "perception/videos"),
    "Egocentric Navigation": ("egocentric_navigation.json", "vlnqa"),
    "Episodic Reasoning": ("episodic_reasoning.json", "tvqa/frames_fps3_hq"),
    "Counterfactual Inference": ("counterfactual_inference.json", "clevrer/video_validation"),
}
NEXTQA_TYPE_GROUPS = {"C": "causal", "T": "temporal", "D": "descriptive"}


@dataclass(frozen=True)
class MCItem(QAItem):
    """A multiple-choice question. `question` is the whole prompt, `answer` the right letter.

    options: the option texts in letter order; categories: (name, value) pairs the report groups by;
    start / end: the clip's window in seconds (MVBench tasks with bounds), None for the whole video."""

    options: tuple[str, ...] = ()
    categories: tuple[tuple[str, str], ...] = ()
    start: float | None = None
    end: float | None = None


def mc_prompt(question: str, options: Sequence[str]) -> str:
    """The question, one `(A) option` line per option, and the instruction."""
    lines = [question.strip()] + [f"({LETTERS[i]}) {str(option).strip()}" for i, option in enumerate(options)]
    return "\n".join(lines + [INSTRUCTION])


def make_item(id: Any, question: str, options: Sequence[str], correct: int, video: str, video_path: Path | None,
              categories: Sequence[tuple[str, str]], where: str, start: float | None = None,
              end: float | None = None) -> MCItem:
    """An MCItem after checking the options and the right index (errors name `where`)."""
    options = tuple(str(o) for o in options)
    if not 2 <= len(options) <= len(LETTERS):
        raise DatasetError(f"{where}: {len(options)} options (need 2..{len(LETTERS)})")
    if not 0 <= correct < len(options):
        raise DatasetError(f"{where}: the right option {correct} is not one of the {len(options)} options")
    categories = tuple((name, str(value)) for name, value in categories if value not in (None, ""))
    return MCItem(id=id, question=mc_prompt(question, options), answer=LETTERS[correct], video=video,
                  video_path=video_path, type=categories[0][1] if categories else None, options=options,
                  categories=categories, start=start, end=end)


# ------------------------------------------------------------------------------------------ loaders


def find_video(folder: Path, name: str) -> Path | None:
    """`folder/name`, or `folder/name` plus the first of VIDEO_EXTENSIONS, that is a file (a name may hold
    subfolders, e.g. NExT-QA's `1006/4010069381`); None when there is none."""
    for candidate in (name, *(name + ext for ext in VIDEO_EXTENSIONS)):
        path = folder / candidate
        if path.is_file():
            return path
    return None


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: not valid JSON ({error})") from None


def _need(entry: Any, names: Sequence[str], where: str) -> None:
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: not a JSON object")
    missing = [name for name in names if name not in entry]
    if missing:
        raise DatasetError(f"{where}: no {', '.join(repr(m) for m in missing)} field")


def _option_texts(value: Any, where: str, name: str = "options") -> list[str]:
    """A JSON list of option texts (strings or numbers) as strings; a string (whose characters would
    become options) or anything else is a DatasetError naming `where`."""
    if not isinstance(value, list) or not all(isinstance(o, (str, int, float)) and not isinstance(o, bool)
                                              for o in value):
        raise DatasetError(f"{where}: {name} {_shown(value)} is not a list of option texts")
    return [str(option) for option in value]


def _option_index(value: Any, where: str, name: str = "answer") -> int:
    """An option index: an integer, an integral float (2.0) or its digits as text ("2"); 2.9, true or "x"
    is a DatasetError naming `where` (never truncated to an option)."""
    if isinstance(value, str) and re.fullmatch(r"[0-9]+", value.strip()):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise DatasetError(f"{where}: {name} {_shown(value)} is not an option index")


def _seconds(value: Any, where: str, name: str) -> float | None:
    """A clip bound in seconds (a number or its text, finite, not negative), None when absent."""
    if value is None:
        return None
    try:
        seconds = float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else None
    except ValueError:
        seconds = None
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        raise DatasetError(f"{where}: {name} {_shown(value)} is not a time in seconds")
    return seconds


def _shown(value: Any) -> str:
    """`value` for an error line: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def load_mvbench(root: Path, tasks: Sequence[str] | None = None) -> list[MCItem]:
    """Every task whose JSON file exists under `root/json/` (all of `tasks` must exist when given).
    Ids `<json stem>/<index>`; the right letter is the position of `answer` among `candidates`."""
    wanted = list(tasks) if tasks else [t for t, (name, _) in MVBENCH_TASKS.items() if (root / "json" / name).is_file()]
    if not wanted:
        raise DatasetError(f"{root / 'json'}: none of the MVBench task files ({', '.join(sorted(n for n, _ in MVBENCH_TASKS.values()))})")
    items: list[MCItem] = []
    for task in wanted:
        if task not in MVBENCH_TASKS:
            raise DatasetError(f"unknown MVBench task {task!r}; choose from {', '.join(MVBENCH_TASKS)}")
        filename, folder = MVBENCH_TASKS[task]
        path = root / "json" / filename
        entries = _read_json(path)
        if not isinstance(entries, list) or not entries:
            raise DatasetError(f"{path}: expected a non-empty JSON list of questions")
        videos = root / "video" / folder
        for index, entry in enumerate(entries):
            where = f"{path}: entry {index}"
            _need(entry, ("video", "question", "candidates", "answer"), where)
            candidates = _option_texts(entry["candidates"], where, "candidates")
            if candidates.count(str(entry["answer"])) != 1:
                raise DatasetError(f"{where}: answer {entry['answer']!r} is not exactly one of the candidates")
            video = str(entry["video"])
            start, end = _seconds(entry.get("start"), where, "start"), _seconds(entry.get("end"), where, "end")
            if start is not None and end is not None and end <= start:
                raise DatasetError(f"{where}: end {end:g} is not after start {start:g}")
            items.append(make_item(f"{path.stem}/{index}", str(entry["question"]), candidates,
                                   candidates.index(str(entry["answer"])), video, find_video(videos, video),
                                   [("task", task)], where, start, end))
    return items


_OPTION_PREFIX = re.compile(r"^\s*\(?([A-Z])[.):]\s*")


def load_videomme(root: Path) -> list[MCItem]:
    """The parquet file of Video-MME (needs pyarrow: `pip install videopanda[mc]`). Options are stored
    as "A. text"; the prefix is checked against the position and dropped (the prompt adds its own)."""
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise DatasetError("Video-MME's annotation is a parquet file: install pyarrow (pip install 'videopanda[mc]')") from None
    files = sorted((root / "videomme").glob("*.parquet"))
    if not files:
        raise DatasetError(f"{root / 'videomme'}: no *.parquet annotation file")
    finder = VideoFinder(root / "data")
    items: list[MCItem] = []
    for path in files:
        try:
            rows = parquet.read_table(path).to_pylist()
        except Exception as error:  # noqa: BLE001 (pyarrow raises several types for a damaged file)
            raise DatasetError(f"{path}: unreadable parquet file ({' '.join(str(error).split())})") from None
        for index, row in enumerate(rows):
            where = f"{path}: row {index}"
            _need(row, ("videoID", "question_id", "question", "options", "answer", "duration", "domain", "task_type"),
                  where)
            options = []
            for position, option in enumerate(_option_texts(row["options"], where)):
                match = _OPTION_PREFIX.match(str(option))
                if match is None or match.group(1) != LETTERS[position]:
                    raise DatasetError(f"{where}: option {position} {option!r} does not start with {LETTERS[position]}.")
                options.append(str(option)[match.end():])
            answer = str(row["answer"]).strip()
            if len(answer) != 1 or answer not in LETTERS:
                raise DatasetError(f"{where}: answer {row['answer']!r} is not a letter")
            video = str(row["videoID"])
            items.append(make_item(str(row["question_id"]), str(row["question"]), options, LETTERS.index(answer),
                                   video, finder.find(video),
                                   [("task_type", row["task_type"]), ("duration", row["duration"]),
                                    ("domain", row["domain"]), ("sub_category", row.get("sub_category"))], where))
    return items


def load_egoschema(root: Path) -> list[MCItem]:
    """The questions that have a public answer (`subset_answers.json`); the others can only be scored
    by the benchmark's own server and are left out (their number is logged)."""
    from videopanda.log import get_logger

    questions_path, answers_path = root / "questions.json", root / "subset_answers.json"
    questions, answers = _read_json(questions_path), _read_json(answers_path)
    if not isinstance(questions, list):
        raise DatasetError(f"{questions_path}: expected a JSON list of questions")
    if not isinstance(answers, dict) or not answers:
        raise DatasetError(f"{answers_path}: expected a JSON object {{q_uid: answer index}}")
    finder = VideoFinder(root / "videos")
    items: list[MCItem] = []
    seen: set[str] = set()
    for index, entry in enumerate(questions):
        where = f"{questions_path}: entry {index}"
        _need(entry, ("q_uid", "question", *(f"option {i}" for i in range(5))), where)
        uid = str(entry["q_uid"])
        seen.add(uid)
        if uid not in answers:
            continue
        correct = _option_index(answers[uid], f"{answers_path}: {uid}")
        items.append(make_item(uid, str(entry["question"]), [entry[f"option {i}"] for i in range(5)], correct,
                               uid, finder.find(uid), [], where))
    unknown = sorted(set(answers) - seen)
    if unknown:
        raise DatasetError(f"{answers_path}: answers for {len(unknown)} q_uid(s) not in {questions_path.name}: "
                           f"{', '.join(unknown[:5])}")
    get_logger(__name__).info("EgoSchema: %d questions with a public answer (of %d)", len(items), len(questions))
    return items


def load_nextqa(root: Path, split: str = "val") -> list[MCItem]:
    """NExT-QA's multiple-choice CSV; videos through `map_vid_vidorID.json` (video -> folder/vidorID).
    Categories: the question type (CW, TN, DC, ...) and its group (causal, temporal, descriptive)."""
    path = root / f"{split}.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: file not found")
    mapping_path = root / "map_vid_vidorID.json"
    mapping = _read_json(mapping_path) if mapping_path.is_file() else {}
    items: list[MCItem] = []
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            where = f"{path}: row {index + 2}"
            _need(row, ("video", "question", "answer", "qid", "type", *(f"a{i}" for i in range(5))), where)
            correct = _option_index(row["answer"], where)
            video = str(mapping.get(row["video"], row["video"]))
            question_type = row["type"].strip()
            items.append(make_item(f"{row['video']}_{row['qid']}", row["question"], [row[f"a{i}"] for i in range(5)],
                                   correct, video, find_video(root / "NExTVideo", video),
                                   [("type", question_type), ("group", NEXTQA_TYPE_GROUPS.get(question_type[:1], ""))],
                                   where))
    if not items:
        raise DatasetError(f"{path}: no questions")
    return items


def load_perceptiontest(root: Path, annotation: str | None = None) -> list[MCItem]:
    """Perception Test's multiple-choice questions: `mc_question` of every video in the annotation
    file (default: the first of mc_question_valid.json, all_valid.json, mc_question_test.json present).
    Ids `<video_id>/<question id>`; categories area and reasoning."""
    names = [annotation] if annotation else ["mc_question_valid.json", "all_valid.json", "mc_question_test.json"]
    path = next((root / name for name in names if (root / name).is_file()), root / names[0])
    data = _read_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object {{video_id: {{metadata, mc_question}}}}")
    finder = VideoFinder(root / "videos")
    items: list[MCItem] = []
    for video_id, entry in data.items():
        questions = entry.get("mc_question", []) if isinstance(entry, dict) else None
        if not isinstance(questions, list):
            raise DatasetError(f"{path}: video {video_id}: 'mc_question' is not a list")
        for question in questions:
            where = f"{path}: video {video_id} question {question.get('id') if isinstance(question, dict) else '?'}"
            _need(question, ("id", "question", "options", "answer_id"), where)
            items.append(make_item(f"{video_id}/{question['id']}", str(question["question"]),
                                   _option_texts(question["options"], where),
                                   _option_index(question["answer_id"], where, "answer_id"), str(video_id),
                                   finder.find(str(video_id)),
                                   [("area", question.get("area")), ("reasoning", question.get("reasoning"))], where))
    if not items:
        raise DatasetError(f"{path}: no multiple-choice questions")
    return items


BENCHMARKS: dict[str, tuple[str, Callable[[Path], list[MCItem]]]] = {
    "mvbench": ("MVBench", load_mvbench),
    "videomme": ("Video-MME", load_videomme),
    "egoschema": ("EgoSchema", load_egoschema),
    "nextqa": ("NExTQA", load_nextqa),
    "perceptiontest": ("PerceptionTest", load_perceptiontest),
}


def benchmark_dir(data_root: str | os.PathLike, benchmark: str) -> Path:
    if benchmark not in BENCHMARKS:
        raise DatasetError(f"unknown multiple-choice benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    return Path(data_root) / "eval" / BENCHMARKS[benchmark][0]


def load_mc(data_root: str | os.PathLike, benchmark: str) -> list[MCItem]:
    """Every question of a multiple-choice benchmark, in file order; ids are unique."""
    items = BENCHMARKS[benchmark][1](benchmark_dir(data_root, benchmark))
    seen: set[str] = set()
    for item in items:
        if item.key in seen:
            raise DatasetError(f"{benchmark_dir(data_root, benchmark)}: question id {item.key!r} appears more than once")
        seen.add(item.key)
    return items


# ------------------------------------------------------------------------------------------ scoring

_LEAD = re.compile(r"^(?:the\s+)?(?:correct\s+|best\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*",
                   re.IGNORECASE)
_BRACKETED = re.compile(r"^[(\[]([A-Za-z])[)\]]")
_BARE = re.compile(r"^([A-Z])(?:$|[.):,])")


def _normalized(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def extract_letter(reply: str | None, options: Sequence[str]) -> str | None:
    """The option letter a reply states, or None when it cannot be read for sure.

    Accepted, after an optional "Answer:", "The answer is", "Option" lead: a letter in brackets ("(B)",
    "[b]") or a capital letter alone or followed by . ) : or , ("B", "B.", "B) cats"); else a reply that
    is exactly one option's text (case and punctuation aside). A letter beyond the options, a bare
    "A" starting a sentence ("A dog runs") and anything else give None (counted wrong, listed)."""
    if not isinstance(reply, str):
        return None
    text = _LEAD.sub("", reply.strip(), count=1).strip()
    match = _BRACKETED.match(text) or _BARE.match(text)
    if match:
        letter = match.group(1).upper()
        return letter if letter in LETTERS[:len(options)] else None
    same = [i for i, option in enumerate(options) if _normalized(option) == _normalized(reply)]
    return LETTERS[same[0]] if len(same) == 1 and _normalized(reply) else None


def _accuracy(correct: int, total: int) -> float | None:
    return 100.0 * correct / total if total else None


def item_outcomes(records: Sequence[dict[str, Any]], items: Sequence[MCItem]) -> list[dict[str, Any]]:
    """Merged prediction rows -> one row per item, in item order: {"id", "answer" (the right letter),
    "letter" (what `extract_letter` read; None when unreadable), "correct", "status" ("answered",
    "unparsable" or "failed": no prediction), "pred" (the reply, cut to 300 characters; None when failed),
    "error" (the inference error of a failed item), "categories" {name: value}}. `eval compare` pairs
    two runs by these rows (`outcomes.jsonl`)."""
    by_id = {str(r["id"]): r for r in records}
    rows = []
    for item in items:
        record = by_id.get(item.key)
        pred = None if record is None else record.get("pred")
        letter = None if pred is None else extract_letter(pred, item.options)
        status = "failed" if pred is None else "unparsable" if letter is None else "answered"
        rows.append({"id": item.key, "answer": item.answer, "letter": letter, "correct": letter == item.answer,
                     "status": status, "pred": None if pred is None else str(pred)[:300],
                     "error": None if record is None or pred is not None else record.get("error"),
                     "categories": dict(item.categories)})
    return rows


def score_mc(records: Sequence[dict[str, Any]], items: Sequence[MCItem]) -> dict[str, Any]:
    """Merged prediction rows (one per item, in item order) -> accuracy overall and per category value,
    each with its 95% Wilson interval in percent (`accuracy_ci95`, `intervals`) and its number of items.

    An item is right when `extract_letter` reads its answer letter from the prediction; a prediction it
    cannot read (`unparsable`, listed with the reply) and an item without a prediction (`failed`) are wrong."""
    outcomes = item_outcomes(records, items)
    correct = sum(row["correct"] for row in outcomes)
    per_category: dict[str, dict[str, dict[str, Any]]] = {}
    for row in outcomes:
        for name, value in row["categories"].items():
            cell = per_category.setdefault(name, {}).setdefault(value, {"num_items": 0, "num_correct": 0})
            cell["num_items"] += 1
            cell["num_correct"] += int(row["correct"])
    for groups in per_category.values():
        for cell in groups.values():
            cell["accuracy"] = _accuracy(cell["num_correct"], cell["num_items"])
            cell["accuracy_ci95"] = percent_interval(cell["num_correct"], cell["num_items"])
    return {"accuracy": _accuracy(correct, len(items)), "accuracy_ci95": percent_interval(correct, len(items)),
            "num_items": len(items), "num_correct": correct,
            "num_unparsable": sum(row["status"] == "unparsable" for row in outcomes),
            "num_failed": sum(row["status"] == "failed" for row in outcomes),
            "complete": all(row["status"] != "failed" for row in outcomes),
            "per_category": {name: dict(sorted(groups.items())) for name, groups in per_category.items()},
            "unparsable": [{"id": row["id"], "pred": row["pred"]} for row in outcomes if row["status"] == "unparsable"],
            "failed": [{"id": row["id"], "error": row["error"]} for row in outcomes if row["status"] == "failed"],
            "metric_rule": "accuracy = right letters / all items; an unparsable reply or a missing prediction "
                           "counts as wrong",
            "interval_rule": INTERVAL_RULE}


def format_mc(results: dict[str, Any]) -> str:
    """The overall line and one line per category value."""
    lines = [f"{results['benchmark']}: accuracy {results['accuracy']:.2f}{_interval(results)} ({results['num_correct']} "
             f"of {results['num_items']}; {results['num_unparsable']} unparsable, {results['num_failed']} without a "
             "prediction)"]
    for name, groups in results["per_category"].items():
        for value, cell in groups.items():
            lines.append(f"  {name} {value}: {cell['accuracy']:.2f}{_interval(cell)} "
                         f"({cell['num_correct']}/{cell['num_items']})")
    return "\n".join(lines)


def _interval(cell: dict[str, Any]) -> str:
    interval = cell.get("accuracy_ci95")
    return "" if interval is None else f" [{interval[0]:.2f}, {interval[1]:.2f}]"


# ------------------------------------------------------------------------------------------ answering

METHODS = ("generate", "loglikelihood")
WINDOWS_BY_RATE = "a start/end window of a clip is sampled by count (--num-frames), not by rate (--fps)"


def refuse_windows_by_rate(items: Sequence[MCItem], benchmark: str) -> None:
    """Before answering by rate: InferError (one line) when some items are about a window (start/end) of their
    clip, which sampling by rate (whole clips) cannot answer."""
    from videopanda.serve.model_folder import InferError

    windowed = [item for item in items if item.start is not None or item.end is not None]
    if windowed:
        raise InferError(f"{benchmark}: {len(windowed)} of {len(items)} questions are about a window of their clip "
                         f"(e.g. {windowed[0].key}): {WINDOWS_BY_RATE}")


def mc_fingerprint(method: str) -> dict[str, Any]:
    """What an MC answer depends on beyond the model's answerer fingerprint."""
    return {"method": method, "instruction": INSTRUCTION}


class MCAnswerer(ModelAnswerer):
    """A `ModelAnswerer` for MCItems: each clip is read within its window (start/end); with method
    "loglikelihood" the answer is the letter whose continuation (" B" after the prompt) the model finds
    most likely, instead of a generated reply."""

    def __init__(self, config: ModelAnswererConfig, method: str = "generate", folder: ModelFolder | None = None):
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        super().__init__(config, folder)
        self.method = method
        self.fingerprint = {**self.fingerprint, "mc": mc_fingerprint(method)}

    def prepare(self, item: MCItem):
        """(prompt, uint8 frames (n, H, W, 3), number of options). A clip's window (start/end) is sampled by count
        (`read_video`, the original's rule within the window); sampling by rate takes whole clips only, so a
        windowed item then gets a VideoReadError."""
        from videopanda.data.video import VideoReadError, read_video
        from videopanda.serve.infer import video_prompt

        if item.video_path is None:
            raise VideoNotFoundError(f"video {item.video!r} not found in the benchmark's video folder")
        if item.start is None and item.end is None:
            frames = self.read_frames(item.video_path)
        elif "num_frames" in self.sampling:
            frames = read_video(item.video_path, num_frames=self.sampling["num_frames"], start=item.start, end=item.end)
        else:
            raise VideoReadError(item.video_path, f"{WINDOWS_BY_RATE} (the question's window: start={item.start}, end={item.end})")
        return video_prompt(self.processor, item.question, self.config.system), frames, len(item.options)

    def generate(self, prepared: list[tuple[Any, ...]], max_new_tokens: int | None = None) -> list["str | Exception"]:
        """prepared: per item (prompt, uint8 frames (n, H, W, 3), number of options) -> replies or letters;
        an item whose prompt does not fit in the model's context gets its ContextLengthError instead."""
        if self.method == "generate":
            return super().generate([(prompt, frames) for prompt, frames, _ in prepared], max_new_tokens)
        return [self._letter_or_error(prompt, frames, count) for prompt, frames, count in prepared]

    def _letter_or_error(self, prompt: str, frames: Any, count: int) -> "str | Exception":
        from videopanda.serve.infer import ContextLengthError

        try:
            return self.best_letter(prompt, frames, count)
        except ContextLengthError as error:
            return error

    def option_logprobs(self, prompt: str, frames: Any, count: int) -> list[float]:
        """Sum of the log-probabilities of the tokens of " A", " B", ... (the first `count` letters)
        after `prompt` (`continuation_logprobs`)."""
        scores = self.continuation_logprobs(prompt, frames, [f" {LETTERS[i]}" for i in range(count)])
        return [logprob for logprob, _ in scores]

    def best_letter(self, prompt: str, frames: Any, count: int) -> str:
        scores = self.option_logprobs(prompt, frames, count)
        return LETTERS[max(range(count), key=lambda i: scores[i])]
