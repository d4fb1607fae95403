"""Resumable, sharded question answering over an evaluation set.

`run_qa(items, answer_fn, out_file)` is the whole inference loop, independent of how answers are
produced: `answer_fn(batch: list[QAItem]) -> list[str | Exception]` returns, per item, the answer or
the exception that prevented it (an unreadable video, say). Each result is appended to `out_file`
as soon as the batch returns (flushed and fsynced), so a killed run restarted with the same
arguments answers only what is missing. The CLI passes `ModelAnswerer`, which runs a Video-Panda
folder; tests and baselines can pass any callable with the same signature.

Prediction lines: `{"id", "question", "answer", "video", "video_key", "pred"}` plus `"type"` when the
dataset has one, and `"error"` with `"pred": null` when the item could not be answered (never a silent
gap). `video` is the dataset's video name, `video_key` the identity of the clip the answer is about
(`video_key`: the file's resolved path, size, mtime and inode, as the frame cache keys a video, and the
item's start/end window; null when there is no file). A line is reused, by a resumed run or by `eval
merge`, only for a question whose question, answer, video name and video key all equal the line's
(`row_signature` == `item_signature`): after the dataset's text or videos change, the questions whose
lines no longer match are answered again, and the outdated lines stay in the file, ignored.

Given a `fingerprint` (what produced the answers: `ModelAnswerer.fingerprint` plus the dataset),
`run_qa` first checks the output folder and writes `out_file`'s sidecar (`provenance.py`): answers of
another model or other settings are never resumed into, or mixed with, this run's. The folder's other
chunk files, which that check proved to share the fingerprint, count as done too: a rerun with another
`--num-chunks` answers only the questions no chunk file has (with `retry_errors`, also those that only
have error rows), so no question is answered twice and `eval merge` still finds each exactly once.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm import tqdm

from videopanda.eval.datasets import QAItem
from videopanda.data.frame_cache import video_identity
from videopanda.eval.provenance import chunk_files, claim_prediction_file, model_experiment
from videopanda.serve.model_folder import ModelFolder, model_identity
from videopanda.eval.records import JsonlAppender, read_jsonl
from videopanda.io import write_jsonl_atomic
from videopanda.log import get_logger

logger = get_logger(__name__)

AnswerFn = Callable[[list[QAItem]], list["str | Exception"]]


def shard(items: Sequence[QAItem], num_chunks: int, chunk_idx: int) -> list[QAItem]:
    """Contiguous, balanced split: chunk i gets items[i*n//k : (i+1)*n//k]."""
    if num_chunks < 1 or not 0 <= chunk_idx < num_chunks:
        raise ValueError(f"need num_chunks >= 1 and 0 <= chunk_idx < num_chunks, got {chunk_idx} of {num_chunks}")
    n = len(items)
    return list(items[chunk_idx * n // num_chunks:(chunk_idx + 1) * n // num_chunks])


def chunk_file(output_dir: str | os.PathLike, num_chunks: int, chunk_idx: int) -> Path:
    return Path(output_dir) / f"chunk-{chunk_idx}-of-{num_chunks}.jsonl"


def video_key(item: QAItem) -> str | None:
    """16 hex digits naming the clip `item` is about: its video file's `video_identity` (resolved path,
    size, mtime_ns, inode) plus the start/end window of an item that has one (`mc.MCItem`); None when
    the item has no (non-empty) video file."""
    identity = None if item.video_path is None else video_identity(item.video_path)
    if identity is None:
        return None
    clip = {**identity, "start": getattr(item, "start", None), "end": getattr(item, "end", None)}
    return hashlib.sha256(json.dumps(clip, sort_keys=True).encode()).hexdigest()[:16]


def item_signature(item: QAItem) -> tuple[Any, ...]:
    """What a prediction line must carry to answer `item`: (question, answer, video name, video key)."""
    return item.question, item.answer, item.video, video_key(item)


def row_signature(row: dict[str, Any]) -> tuple[Any, ...]:
    """The `item_signature` a prediction line was written for (None where a field is absent)."""
    answer = row.get("answer")
    return row.get("question"), None if answer is None else str(answer), row.get("video"), row.get("video_key")


def prediction_record(item: QAItem, result: "str | Exception") -> dict[str, Any]:
    record: dict[str, Any] = {"id": item.id, "question": item.question, "answer": item.answer,
                              "video": item.video, "video_key": video_key(item)}
    if isinstance(result, Exception):
        record["pred"] = None
        record["error"] = f"{type(result).__name__}: {result}"
    else:
        record["pred"] = result
    if item.type is not None:
        record["type"] = item.type
    return record


@dataclass
class QARunSummary:
    total: int
    skipped: int     # already in the file (or another chunk file of the folder) from an earlier run
    answered: int    # answered in this run
    errors: int      # error rows written in this run
    earlier_errors: int = 0  # questions whose only rows, from earlier runs, are error rows


def _rows_elsewhere(out_file: Path, wanted: dict[str, tuple[Any, ...]]) -> dict[str, bool]:
    """id -> whether it has an answered row, over the rows that match `wanted` (id -> `item_signature`)
    in the chunk files of `out_file`'s folder but itself."""
    found: dict[str, bool] = {}
    for path in chunk_files(out_file.parent):
        if path.resolve() == out_file.resolve():
            continue
        for record in read_jsonl(path):
            key = str(record.get("id"))
            if wanted.get(key) == row_signature(record):
                found[key] = found.get(key, False) or record.get("pred") is not None
    return found


def run_qa(items: Sequence[QAItem], answer_fn: AnswerFn, out_file: str | os.PathLike, batch_size: int = 1,
           retry_errors: bool = False, progress: bool = True, fingerprint: dict[str, Any] | None = None,
           run_info: dict[str, Any] | None = None) -> QARunSummary:
    """Answer every item not yet in `out_file`, appending one line per item as results arrive.

    `retry_errors`: first drop the error rows of earlier runs from the file, so those items are tried again.
    `fingerprint`: check the folder and write `out_file`'s sidecar first (raises ProvenanceError when the
    folder holds predictions made otherwise), then skip the questions the folder's other chunk files
    already hold; `run_info` is stored beside it, not compared.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out_file = Path(out_file)
    wanted = {item.key: item_signature(item) for item in items}
    elsewhere: dict[str, bool] = {}
    if fingerprint is not None:
        claim_prediction_file(out_file, fingerprint, run_info)
        elsewhere = _rows_elsewhere(out_file, wanted)
    if retry_errors and out_file.exists():
        with JsonlAppender(out_file) as existing:
            kept = [r for r in existing.records if r.get("error") is None]
            dropped = len(existing.records) - len(kept)
        if dropped:
            logger.info("%s: retrying %d error row(s) of earlier runs", out_file, dropped)
            write_jsonl_atomic(out_file, kept)

    with JsonlAppender(out_file) as writer:
        current = [r for r in writer.records if wanted.get(str(r.get("id"))) == row_signature(r)]
        done = {str(r.get("id")) for r in current}
        answered = {str(r.get("id")) for r in current if r.get("pred") is not None}
        answered |= {key for key, has_answer in elsewhere.items() if has_answer}
        other = {key for key, has_answer in elsewhere.items() if has_answer or not retry_errors} - done
        done |= other
        outdated = {str(r.get("id")) for r in writer.records} & wanted.keys() - done
        if outdated:
            logger.info("%s: %d question(s) have only lines made for another question, answer or video than the "
                        "dataset's now; answering them again", out_file, len(outdated))
        earlier_errors = sum(1 for item in items if item.key in done and item.key not in answered)
        todo = [item for item in items if item.key not in done]
        skipped = len(items) - len(todo)
        if skipped:
            in_others = sum(1 for item in items if item.key in other)
            logger.info("%s: %d of %d questions already answered%s, %d to go", out_file, skipped, len(items),
                        f" ({in_others} in other chunk files of the folder)" if in_others else "", len(todo))
        errors = 0
        with tqdm(total=len(todo), desc=out_file.stem, unit="q", disable=not progress) as bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                results = answer_fn(batch)
                if len(results) != len(batch):
                    raise RuntimeError(f"answer_fn returned {len(results)} results for a batch of {len(batch)}")
                for item, result in zip(batch, results):
                    if isinstance(result, Exception):
                        errors += 1
                        logger.warning("question %s (video %s) failed: %s", item.id, item.video, result)
                    writer.append(prediction_record(item, result))
                bar.update(len(batch))
    return QARunSummary(total=len(items), skipped=skipped, answered=len(todo), errors=errors,
                        earlier_errors=earlier_errors)


class VideoNotFoundError(FileNotFoundError):
    pass


@dataclass
class ModelAnswererConfig:
    model: str
    device: str = "cpu"
    dtype: str = "auto"            # auto: the checkpoint's own dtype (config.json's torch_dtype / dtype)
    num_frames: int | None = None  # None (and no fps): the folder's saved sampling, else 8 frames by count
    fps: float | None = None       # sample this many frames a second instead of num_frames
    max_frames: int | None = None  # with fps: at most this many frames (None: the video processor's 32)
    max_new_tokens: int = 1024
    system: str = "user"           # "user" (training text) or "human" (the original inference text)


def _dtype_name(dtype: Any) -> str:
    return str(dtype).removeprefix("torch.")


def frame_sampling(config: ModelAnswererConfig, video_processor: Any) -> dict[str, Any]:
    """How `config` samples frames with a model folder's video processor (`folder_video_processor`): its saved
    sampling unless `config` gives one (`infer.video_with_sampling`). -> {"num_frames": N} by count or
    {"fps": f, "min_frames": a, "max_frames": b} by rate. Raises InferError for a bad setting."""
    from videopanda.serve.infer import video_with_sampling
    from videopanda.serve.model_folder import InferError

    video = video_with_sampling(video_processor, config.num_frames, config.fps, config.max_frames)
    try:
        return video.sampling()
    except ValueError as err:
        raise InferError(str(err)) from err


def answerer_fingerprint(config: ModelAnswererConfig, model_config: Any, dtype: Any,
                         video_processor: Any) -> dict[str, Any]:
    """What the answers depend on (see provenance.py): model identity, generation settings, system
    text, frame geometry and sampling, dtype and code version. `model_config` is the folder's VideoPandaConfig,
    `video_processor` its video processor (`frame_sampling`: the sampling is the one the answers use).

    `frames` is the frame layout (`FrameConfig`: num_frames, frames_per_chunk, image sizes, patch size); with
    sampling by rate it has no `num_frames` and a `sampling` part instead ({"fps", "min_frames",
    "max_frames"}), so the fingerprints of the default count sampling stay what they were."""
    import dataclasses

    import videopanda
    from videopanda.data import conversation

    sampling = frame_sampling(config, video_processor)
    count = sampling.get("num_frames", video_processor.num_frames)
    frames = dataclasses.asdict(video_processor.frame_config_for(count))  # the geometry the answers use
    if "fps" in sampling:
        frames = {**{k: v for k, v in frames.items() if k != "num_frames"}, "sampling": sampling}
    system = {"user": conversation.SYSTEM_USER, "human": conversation.SYSTEM_HUMAN}[config.system]
    return {"model": {"id": model_identity(config.model), **model_experiment(config.model, model_config)},
            "generation": {"max_new_tokens": config.max_new_tokens, "greedy": True},
            "system": system, "frames": frames, "dtype": _dtype_name(dtype),
            "code_version": videopanda.__version__}


def expected_fingerprint(config: ModelAnswererConfig, folder: ModelFolder | None = None) -> dict[str, Any]:
    """The fingerprint `ModelAnswerer(config)` will have, from the folder's description (`folder`, or read from
    `config.model`) without loading weights (dtype "auto": the checkpoint's own). Raises ModelFolderError /
    InferError."""
    from videopanda.serve.model_folder import folder_video_processor, read_model_folder

    folder = folder or read_model_folder(config.model)
    return answerer_fingerprint(config, folder.config, folder.dtype if config.dtype == "auto" else config.dtype,
                                folder_video_processor(folder))


class ModelAnswerer:
    """Greedy answers from a Video-Panda model folder (the paper's evaluation protocol), batched with left padding.

    The folder is loaded with `videopanda.serve.model_folder.load_model` (dtype "auto": the checkpoint's own) and the
    frame geometry comes from the folder's `VideoPandaProcessor`; its video processor samples the frames (as
    saved in the folder, or `num_frames` / `fps` when given: `frame_sampling`). Per item: the video processor
    decodes the video -> uint8 frames; per batch: the chat template's prompt for each question and `processor(text=prompts,
    videos=frames)` (left padded) -> `model.generate(**inputs)`, one call per frame count within the batch. A
    video that cannot be found or decoded becomes that item's exception; the rest of the batch still runs.
    `fingerprint` describes what produced the answers (`answerer_fingerprint`, with the loaded dtype).
    `folder`: the description `read_model_folder(config.model)` returned, when the caller has it already.
    """

    def __init__(self, config: ModelAnswererConfig, folder: ModelFolder | None = None):
        import torch

        from videopanda.serve.infer import with_sampling
        from videopanda.serve.model_folder import load_model

        self.config = config
        self.torch = torch
        dtype = None if config.dtype == "auto" else getattr(torch, config.dtype)
        self.model, processor = load_model(folder or config.model, config.device, dtype=dtype)
        self.processor = with_sampling(processor, config.num_frames, config.fps, config.max_frames)
        self.sampling = frame_sampling(config, self.processor.video_processor)
        self.tokenizer = self.processor.tokenizer
        self.dtype = self.model.dtype
        self.fingerprint = answerer_fingerprint(config, self.model.config, self.dtype, self.processor.video_processor)

    def read_frames(self, path: Path):
        """The frames the video processor samples from a video file: uint8 (n, H, W, 3). Raises VideoReadError."""
        return self.processor.video_processor.load(path)[0]

    def frame_count(self, frames: Any) -> int:
        """The frames the model gets for `frames` (uint8 (n, H, W, 3)): n padded to the sampling's count."""
        return self.processor.video_processor.load(frames)[1]

    def prepare(self, item: QAItem):
        """(the chat template's prompt for the question, uint8 frames (n, H, W, 3) read from the video)."""
        from videopanda.serve.infer import video_prompt

        if item.video_path is None:
            raise VideoNotFoundError(f"video {item.video!r} not found in the dataset's videos/ folder "
                                     f"(tried the name and the name plus each known extension)")
        return video_prompt(self.processor, item.question, self.config.system), self.read_frames(item.video_path)

    def generate(self, prepared: list[tuple[Any, Any]], max_new_tokens: int | None = None) -> list["str | Exception"]:
        """prepared: per sample (prompt text, uint8 frames (n, H, W, 3)) -> greedy answers of at most
        `max_new_tokens` tokens (default: the config's), each capped to the room its own prompt leaves in
        the model's context (`infer.fit_context`): a sample's answer does not depend on its batch. The samples
        of one frame count are generated together (sampled by rate, clips of different lengths have other
        counts). A sample whose prompt leaves no room gets its `ContextLengthError` instead and is not run."""
        groups: dict[int, list[int]] = {}
        for row, (_, frames) in enumerate(prepared):
            groups.setdefault(self.frame_count(frames), []).append(row)
        results: list[str | Exception] = [""] * len(prepared)
        for rows in groups.values():
            for row, result in zip(rows, self._generate_together([prepared[r] for r in rows], max_new_tokens)):
                results[row] = result
        return results

    def _generate_together(self, prepared: list[tuple[Any, Any]], max_new_tokens: int | None) -> list["str | Exception"]:
        """`generate` for samples of one frame count, in one `model.generate` call."""
        from videopanda.serve.infer import ContextLengthError, fit_context, generation_settings

        torch, video_processor = self.torch, self.processor.video_processor
        inputs = self.processor(text=[p for p, _ in prepared], videos=[f for _, f in prepared], return_frame_grids=True)
        grids = inputs.pop("frame_grids")
        inputs = inputs.to(self.config.device)
        settings = generation_settings(self.tokenizer, max_new_tokens or self.config.max_new_tokens,
                                       self.model.generation_config)
        limits: list[int | Exception] = []
        for length, grid in zip(inputs["attention_mask"].sum(dim=1).tolist(), grids):
            try:
                limits.append(fit_context(length, self.model.config.max_position_embeddings,
                                          settings["max_new_tokens"], frame_tokens=video_processor.token_counts(grid),
                                          frames_per_chunk=video_processor.frames_per_chunk))
            except ContextLengthError as error:
                limits.append(error)
        rows = [row for row, limit in enumerate(limits) if isinstance(limit, int)]
        if not rows:
            return limits
        # one video per prompt: keeping rows keeps their videos; the left padding of the rows kept is trimmed
        width = int(inputs["attention_mask"][rows].sum(dim=1).max())
        kept = {"input_ids": inputs["input_ids"][rows, -width:],
                "attention_mask": inputs["attention_mask"][rows, -width:],
                "pixel_values_videos": inputs["pixel_values_videos"][rows].to(self.dtype)}
        settings["max_new_tokens"] = max(limits[row] for row in rows)
        with torch.inference_mode():
            output = self.model.generate(**kept, **settings)
        output = output[:, width:].cpu()
        for index, row in enumerate(rows):
            limits[row] = self.tokenizer.decode(output[index, :limits[row]], skip_special_tokens=True).strip()
        return limits

    def continuation_logprobs(self, prompt: str, frames: Any, continuations: Sequence[str]) -> list[tuple[float, bool]]:
        """Per continuation (text appended to `prompt`, e.g. " B"): (sum of the log-probabilities of its
        tokens after the prompt, whether greedy decoding would produce exactly those tokens). The
        continuations are batched with left padding, one copy of the frames (n, H, W, 3) each.
        ValueError when a continuation is empty or changes how the prompt itself is tokenized;
        ContextLengthError (`infer.fit_context`) when the longest text does not fit in the model's context."""
        from videopanda.serve.infer import fit_context

        torch = self.torch
        texts = [prompt] + [prompt + continuation for continuation in continuations]
        video_processor = self.processor.video_processor
        inputs = self.processor(text=texts, videos=[frames] * len(texts), return_frame_grids=True)
        frame_tokens = video_processor.token_counts(inputs.pop("frame_grids")[0])
        inputs = inputs.to(self.config.device)
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        fit_context(max(lengths), self.model.config.max_position_embeddings, 0, subject="the prompt and its answer are",
                    frame_tokens=frame_tokens, frames_per_chunk=video_processor.frames_per_chunk)
        ids, width = inputs["input_ids"], inputs["input_ids"].shape[1]
        prompt_ids = ids[0, width - lengths[0]:]
        rows = list(range(1, len(texts)))
        with torch.inference_mode():
            logits = self.model(input_ids=ids[rows], attention_mask=inputs["attention_mask"][rows],
                                pixel_values_videos=inputs["pixel_values_videos"][rows].to(self.dtype)).logits
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        end = logprobs.shape[1]   # the text ends in the last column (left padding), whatever the model inserts
        scores = []
        for row, index in enumerate(rows):
            extra = lengths[index] - lengths[0]
            if extra < 1 or not torch.equal(ids[index, width - lengths[index]:width - extra], prompt_ids):
                raise ValueError(f"the continuation {continuations[index - 1]!r} is empty or changes how the "
                                 f"prompt is tokenized")
            targets = ids[index, width - extra:]
            # the logits at position p predict the token at p + 1
            predicted = logprobs[row, end - extra - 1:end - 1]
            scores.append((float(predicted.gather(1, targets[:, None]).sum()),
                           bool(torch.equal(predicted.argmax(dim=-1), targets))))
        return scores

    def __call__(self, items: list[QAItem]) -> list["str | Exception"]:
        from videopanda.data.video import VideoReadError

        results: list[str | Exception] = [""] * len(items)
        prepared, rows = [], []
        for row, item in enumerate(items):
            try:
                prepared.append(self.prepare(item))
                rows.append(row)
            except (VideoReadError, OSError) as error:
                results[row] = error
        if prepared:
            for row, answer in zip(rows, self.generate(prepared)):
                results[row] = answer
        return results
