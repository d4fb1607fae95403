"""The zero-shot QA sets as lmms-eval tasks, read from this project's layout (docs/DESIGN.md,
"Choices where the paper is silent": Evaluation).

A task YAML in `tasks/` names `ZeroShotQATask` as its `class` and the set in `dataset_name` (`msvd`,
`msrvtt`, `tgif`, `activitynet`, as `videopanda eval qa --dataset`). The questions are read from
`$VIDEOPANDA_DATA_ROOT/eval/GPT_Zero_Shot_QA/<set>/` with `videopanda.eval.datasets.load_zero_shot_qa`
(questions paired with answers by question_id), in `test_q.json` order. A question whose video file is
missing stops the task before any inference, naming the folder and the videos.

Documents: `question_id` (as a string), `question`, `answer`, `type` ("" when the set has none),
`video_name`, `video_path`. The metric, `exact_match`, is the share of replies equal to the answer after
`videopanda.eval.judge.normalize_answer`: a quick check, not comparable with the paper's GPT-judged
accuracy (for that: `videopanda eval qa` + `eval judge`, which give the same replies).
"""
from __future__ import annotations

import os
from typing import Any

from lmms_eval.api.task import ConfigurableTask

from videopanda.eval.datasets import DatasetError, QAItem, dataset_dir, load_zero_shot_qa

DATA_ROOT_ENV = "VIDEOPANDA_DATA_ROOT"


def data_root() -> str:
    """$VIDEOPANDA_DATA_ROOT; DatasetError when unset."""
    root = os.environ.get(DATA_ROOT_ENV)
    if not root:
        raise DatasetError(f"set {DATA_ROOT_ENV} to the data root that holds eval/GPT_Zero_Shot_QA/")
    return root


def as_doc(item: QAItem) -> dict[str, str]:
    return {"question_id": item.key, "question": item.question, "answer": item.answer, "type": item.type or "",
            "video_name": item.video, "video_path": str(item.video_path)}


def load_docs(dataset: str) -> list[dict[str, str]]:
    """The documents of one zero-shot QA set; DatasetError naming the folder when a video is missing."""
    items = load_zero_shot_qa(data_root(), dataset)
    missing = sorted({item.video for item in items if item.video_path is None})
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise DatasetError(f"{dataset_dir(data_root(), dataset) / 'videos'}: no file for {len(missing)} video(s) "
                           f"named in test_q.json: {shown}")
    return [as_doc(item) for item in items]


class ZeroShotQATask(ConfigurableTask):
    """A lmms-eval task whose documents come from `load_docs(config.dataset_name)`, as its `test` split."""

    def __init__(self, config: dict[str, Any]):
        super().__init__(config={key: value for key, value in config.items() if key != "class"})

    def download(self, dataset_kwargs: dict | None = None) -> None:
        import datasets

        docs = load_docs(self.config.dataset_name)
        self.dataset = datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})
        self.dataset_no_image = self.dataset


def doc_to_visual(doc: dict[str, str]) -> list[str]:
    return [doc["video_path"]]


def doc_to_text(doc: dict[str, str], lmms_eval_specific_kwargs: dict | None = None) -> str:
    """The question as written (what `eval qa` asks), between the task's optional pre_prompt and post_prompt."""
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def doc_to_target(doc: dict[str, str]) -> str:
    return doc["answer"]


def process_results(doc: dict[str, str], results: list[str]) -> dict[str, float]:
    from videopanda.eval.judge import normalize_answer

    return {"exact_match": float(normalize_answer(results[0]) == normalize_answer(doc["answer"]))}
