"""Training data: the Valley / Video-ChatGPT JSON layout (docs/DESIGN.md, "Choices where the paper is
silent": Data), a modality- and length-grouped sampler, and the batch collator.

Items and batches are in the processor's layout, built by `VideoPandaProcessor` itself (its video
processor for the frames and their grids, its `tokenize_conversation` for ids and labels): each frame
is a run of `image_token_id` as long as the STAB's output for it, labelled IGNORE_INDEX, and the
videos are `pixel_values_videos` (V, C, T, 4, H, W) with `teacher_pixel_values_videos` for distillation.
`model_max_length` counts each frame as one token, as the original's one placeholder per frame did
(a frame's run adds its length minus one to the limit), so which samples fit and where they are cut
does not depend on the frame size.

JSON layout: each file is a list of samples
`{"id", "video": "valley/xxx.mp4", "conversations": [{"from": "human", "value": "<video>\\n..."}, ...]}`;
a sample without "video" (or with "video": null) is text-only. Video paths are relative to
`video_folder`. Several files are read in the order given and concatenated; `first_half=True`
(stage 1) keeps the first ceil(n / 2) samples of each file.

Bad samples never stop training. A missing, empty or undecodable video, a malformed conversation or
a sample whose frame placeholders or supervised tokens would not survive truncation to
`model_max_length` is replaced by another sample, drawn from `numpy.random.default_rng([seed, index,
attempt])`: the same choice on every rank and in every worker. The random flip of the sample loaded at
that attempt is the next draw of the same generator (the first at attempt 0), so an item's randomness
depends on (seed, index, attempt) only: not on the worker, the number of workers, or whether a training
run was resumed, which keeps resumed loss curves exact. Each bad sample is logged once per
process with its reason and remembered, so a known-bad file is not opened again. Every item carries
the replacements made while producing it (`item["replaced"]`, each record tagged with the process
id); the collator passes them on as `batch["replaced"]` and the training loop hands them to
`dataset.absorb(...)` in the main process, so `dataset.report()` counts what the DataLoader workers
saw too (records of the calling process itself are already counted and are ignored). Training
writes a report of the batches it used on every rank, merged across ranks and resumed runs
(`merge_data_reports`, videopanda/train/trainer.py).
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from videopanda.constants import IGNORE_INDEX
from videopanda.data.conversation import SYSTEM_USER, ConversationFormatError
from videopanda.data.frames import preprocess_video
from videopanda.data.video import VideoReadError, read_video
from videopanda.log import get_logger

if TYPE_CHECKING:
    from videopanda.data.frame_cache import FrameCache

logger = get_logger(__name__)


class DataFormatError(ValueError):
    """A data JSON file that cannot be used at all (missing, not JSON, not a list); names the file."""


class SampleTooLongError(ValueError):
    """Truncation to model_max_length would cut frame placeholders or every supervised token."""


def load_samples(data_paths: str | Path | Sequence[str | Path], first_half: bool = False) -> list:
    """Read and concatenate the sample lists of one or more JSON files (see the module docstring)."""
    paths = [data_paths] if isinstance(data_paths, (str, Path)) else list(data_paths)
    if not paths:
        raise DataFormatError("no data JSON given")
    samples: list = []
    for path in map(Path, paths):
        if not path.is_file():
            raise DataFormatError(f"{path}: data JSON not found")
        try:
            content = json.loads(path.read_text(encoding="utf-8-sig"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DataFormatError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(content, list):
            raise DataFormatError(f"{path}: expected a JSON list of samples, got {type(content).__name__}")
        samples += content[: (len(content) + 1) // 2] if first_half else content
    return samples


def sample_id(sample, index: int):
    """The sample's "id", or its position when it has none."""
    return sample.get("id", index) if isinstance(sample, dict) else index


def video_of(sample) -> str | None:
    """The relative video path of a sample, None for a text-only sample."""
    return sample.get("video") if isinstance(sample, dict) else None


def text_length(sample) -> int:
    """Whitespace-separated words over all turns: a cheap length for grouping (0 when malformed)."""
    try:
        return sum(len(turn["value"].split()) for turn in sample["conversations"])
    except (TypeError, KeyError, AttributeError):
        return 0


def visual_extra(input_ids: torch.Tensor, image_token_id: int, num_frames: int) -> int:
    """How many more tokens a sequence holds than with one placeholder per frame: its placeholder ids minus
    its frames (0 for text)."""
    return int((input_ids == image_token_id).sum()) - num_frames


class VideoInstructDataset(Dataset):
    """Video instruction samples -> dicts for `VideoInstructCollator`, through `processor`
    (a `VideoPandaProcessor`: its frame geometry, tokenizer and placeholder runs).

    An item: `input_ids` int64 (S,) with each frame's run of `processor.image_token_id`, `labels` int64
    (S,) (IGNORE_INDEX on the runs), `pixel_values_videos` float (C, T, 4, H, W) or None,
    `teacher_pixel_values_videos` float (C, T, 4, H_t, W_t) or None, `id`, and `replaced` (records of the
    samples replaced while producing this item). `random_flip` draws a horizontal flip with
    probability 0.5 per item from the generator of (seed, index, attempt) (module docstring) and
    applies it to student and teacher alike; keep it off outside training. With `frame_cache` (a
    `videopanda.data.frame_cache.FrameCache`) videos are read and resized through it: the same frames, decoded
    and resized once.
    """

    def __init__(self, data_paths, video_folder: str | Path, processor, first_half: bool = False,
                 system: str = SYSTEM_USER, random_flip: bool = True, seed: int = 42,
                 model_max_length: int | None = None, max_attempts: int = 100,
                 frame_cache: FrameCache | None = None):
        self.samples = load_samples(data_paths, first_half)
        if not self.samples:
            raise DataFormatError(f"{data_paths}: no samples")
        self.video_folder = Path(video_folder)
        self.processor = processor
        self.system = system
        self.random_flip = random_flip
        self.seed = seed
        self.model_max_length = model_max_length
        self.max_attempts = max_attempts
        self.frame_cache = frame_cache
        self._bad: dict[int, dict] = {}
        self._replacements = 0
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        """Per sample: text length in words (for the length-grouped sampler)."""
        if self._lengths is None:
            self._lengths = [text_length(s) for s in self.samples]
        return self._lengths

    @property
    def is_video(self) -> list[bool]:
        """Per sample: True when it references a video."""
        return [video_of(s) is not None for s in self.samples]

    def _draw(self, index: int, attempt: int) -> tuple[int, bool]:
        """(sample to load, flip it) for `index` at `attempt`, from `default_rng([seed, index, attempt])`: at
        attempt >= 1 the first draw picks the replacement; the flip is the next draw."""
        rng = np.random.default_rng([self.seed, index, attempt])
        candidate = int(rng.integers(len(self.samples))) if attempt else index
        return candidate, self.random_flip and bool(rng.random() < 0.5)

    def replacement_index(self, index: int, attempt: int) -> int:
        """The sample tried instead of `index` at attempt >= 1: a function of (seed, index, attempt) only."""
        return self._draw(index, attempt)[0]

    def __getitem__(self, index: int) -> dict:
        replaced = []
        for attempt in range(self.max_attempts):
            candidate, flip = self._draw(index, attempt)
            record = self._bad.get(candidate)
            if record is None:
                try:
                    item = self._load(candidate, flip)
                except (VideoReadError, ConversationFormatError, SampleTooLongError) as exc:
                    record = self._remember(candidate, exc)
                else:
                    item["replaced"] = replaced
                    return item
            self._replacements += 1
            replaced.append({**record, "replaced_for": index, "pid": os.getpid()})
        raise RuntimeError(
            f"sample {index}: {self.max_attempts} attempts all hit bad samples; "
            f"{len(self._bad)} of {len(self)} samples seen so far are bad: check the data with `videopanda data check`"
        )

    def _load(self, index: int, flip: bool) -> dict:
        sample = self.samples[index]
        sid = sample_id(sample, index)
        if not isinstance(sample, dict):
            raise ConversationFormatError(sid, f"not a JSON object: {type(sample).__name__}")
        video = video_of(sample)
        if video is not None and not isinstance(video, str):
            raise ConversationFormatError(sid, f"'video' must be a string path, got {type(video).__name__}")
        student = teacher = grids = None
        if video is not None:
            student, teacher, grids = self._frames(self.video_folder / video, flip)
        input_ids, labels = self.processor.tokenize_conversation(sample.get("conversations"), grids,
                                                                 system=self.system, sample_id=sid)
        self._check_length(sid, input_ids, labels, len(grids or ()))
        return {"input_ids": input_ids, "labels": labels, "pixel_values_videos": student,
                "teacher_pixel_values_videos": teacher, "id": sid}

    def _frames(self, path: Path, flip: bool) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
        """The video processor's student (C, T, 4, H, W) and teacher (C, T, 4, H_t, W_t) frames and frame grids
        of the clip at `path`, at its `num_frames`; through the frame cache (decoded and resized frames) when
        there is one."""
        video_processor = self.processor.video_processor
        num_frames = video_processor.num_frames
        if self.frame_cache is None:
            frames, resize = read_video(path, num_frames), None
        else:
            frames, resize = self.frame_cache.read(path, num_frames), self.frame_cache.resizer(path, num_frames, flip)
        student, teacher = preprocess_video(frames, video_processor.frame_config, flip=flip, resize=resize)
        return student, teacher, video_processor.frame_grids(frames.shape[1], frames.shape[2], frames.shape[0])

    def _check_length(self, sid, input_ids: torch.Tensor, labels: torch.Tensor, num_frames: int) -> None:
        if self.model_max_length is None:
            return
        image_token_id = self.processor.image_token_id
        limit = self.model_max_length + visual_extra(input_ids, image_token_id, num_frames)
        if len(input_ids) <= limit:
            return
        placeholders = (input_ids == image_token_id).nonzero()
        if len(placeholders) and int(placeholders[-1]) >= limit:
            raise SampleTooLongError(f"sample {sid!r}: frame placeholders beyond model_max_length {self.model_max_length}")
        if bool((labels[:limit] == IGNORE_INDEX).all()):
            raise SampleTooLongError(f"sample {sid!r}: no supervised token within model_max_length {self.model_max_length}")

    def _remember(self, index: int, exc: Exception) -> dict:
        sample = self.samples[index]
        if isinstance(exc, VideoReadError):
            kind, reason = f"video_{exc.kind}", str(exc)
        elif isinstance(exc, ConversationFormatError):
            kind, reason = "conversation", str(exc)
        else:
            kind, reason = "too_long", str(exc)
        record = {"index": index, "id": sample_id(sample, index), "video": video_of(sample), "kind": kind, "reason": reason}
        self._bad[index] = record
        logger.warning("skipping sample %r (%s): %s", record["id"], kind, reason)
        return record

    def absorb(self, records: Sequence[dict]) -> None:
        """Add replacement records that DataLoader worker processes returned in `batch["replaced"]`."""
        pid = os.getpid()
        for record in records:
            if record.get("pid") == pid:
                continue
            self._replacements += 1
            if record["index"] not in self._bad:
                self._bad[record["index"]] = bad_record(record)
                logger.warning("skipping sample %r (%s): %s", record["id"], record["kind"], record["reason"])

    def report(self) -> dict:
        """This process's `data_report` (see `data_report`): what it loaded itself or absorbed."""
        return data_report(len(self), self._bad.values(), self._replacements)

    def log_summary(self) -> dict:
        """Log the report's counts (one line) and return the report."""
        report = self.report()
        log_data_report(report)
        return report


def bad_record(record: dict) -> dict:
    """A replacement record (`item["replaced"]`) without its per-event fields: what the report lists."""
    return {k: v for k, v in record.items() if k not in ("replaced_for", "pid")}


def data_report(samples: int, bad: Iterable[dict], replacements: int) -> dict:
    """{"samples", "bad_samples", "replacements", "by_kind": {kind: count}, "bad": [records by index]}.

    `bad` holds one record per bad sample index (duplicates by index are dropped)."""
    unique = {record["index"]: bad_record(record) for record in bad}
    records = [unique[i] for i in sorted(unique)]
    return {
        "samples": samples,
        "bad_samples": len(records),
        "replacements": replacements,
        "by_kind": dict(sorted(Counter(r["kind"] for r in records).items())),
        "bad": records,
    }


def merge_data_reports(reports: Sequence[dict]) -> dict:
    """One report from the reports of several ranks or resumed runs over the same data: bad samples
    united by index, replacements summed."""
    if not reports:
        raise ValueError("no data reports to merge")
    return data_report(reports[0]["samples"], [r for report in reports for r in report["bad"]],
                       sum(report["replacements"] for report in reports))


def log_data_report(report: dict) -> None:
    """One log line with the report's counts (a warning when there are bad samples)."""
    kinds = ", ".join(f"{k}: {v}" for k, v in report["by_kind"].items()) or "none"
    log = logger.warning if report["bad_samples"] else logger.info
    log("data: %d samples, %d bad (%s), %d replacements", report["samples"], report["bad_samples"], kinds,
        report["replacements"])


class ModalityLengthGroupedSampler(Sampler[int]):
    """Order samples so that every step holds one modality and similar lengths.

    A step is `batch_size * world_size` consecutive indices of the global order (one per-device batch
    per rank, the way a DataLoader sharded by accelerate hands them out: rank r gets batches r, r + W,
    r + 2W, ...). Per epoch, with a generator seeded by seed + epoch: the video and the text-only
    samples are each shuffled and cut into steps; inside a step, indices are sorted by length
    (longest first) and cut into the per-rank batches, so each batch has similar lengths; the full
    steps of both modalities are shuffled together; the leftovers of both modalities (less than a
    step each) form the last steps, sorted by modality then length, so at most one batch mixes them.

    `rank=None` yields the global order (identical on every rank; use it when the DataLoader is
    sharded afterwards). `rank=r` yields only rank r's batches of it, for a loop that shards itself.
    Call `set_epoch(epoch)` before each epoch.
    """

    def __init__(self, lengths: Sequence[int], is_video: Sequence[bool], batch_size: int, world_size: int = 1,
                 seed: int = 42, rank: int | None = None):
        if len(lengths) != len(is_video):
            raise ValueError(f"{len(lengths)} lengths for {len(is_video)} modality flags")
        if batch_size < 1 or world_size < 1:
            raise ValueError("batch_size and world_size must be positive")
        if rank is not None and not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.lengths = list(lengths)
        self.is_video = list(map(bool, is_video))
        self.batch_size = batch_size
        self.world_size = world_size
        self.seed = seed
        self.rank = rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> list[int]:
        """All indices, each once, in this epoch's order."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        step = self.batch_size * self.world_size
        steps: list[list[int]] = []
        leftover: list[int] = []
        for modality in (True, False):
            members = [i for i, v in enumerate(self.is_video) if v == modality]
            shuffled = [members[i] for i in torch.randperm(len(members), generator=generator).tolist()]
            full = len(shuffled) - len(shuffled) % step
            steps += [self._sorted_step(shuffled[s : s + step]) for s in range(0, full, step)]
            leftover += shuffled[full:]
        order = [i for k in torch.randperm(len(steps), generator=generator).tolist() for i in steps[k]]
        return order + sorted(leftover, key=lambda i: (not self.is_video[i], -self.lengths[i]))

    def _sorted_step(self, indices: list[int]) -> list[int]:
        return sorted(indices, key=lambda i: -self.lengths[i])

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()
        if self.rank is None:
            return iter(order)
        batches = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        return iter([i for b in batches[self.rank :: self.world_size] for i in b])

    def __len__(self) -> int:
        if self.rank is None:
            return len(self.lengths)
        num_batches = math.ceil(len(self.lengths) / self.batch_size)
        mine = range(self.rank, num_batches, self.world_size)
        return sum(min(self.batch_size, len(self.lengths) - b * self.batch_size) for b in mine)


class VideoInstructCollator:
    """Items of `VideoInstructDataset` -> a batch for `TrainingModel`.

    Batch: `input_ids` int64 (B, S) right-padded with the tokenizer's pad id (its unk when it has none),
    `attention_mask` int64 (B, S), `labels` int64 (B, S) padded with -100, and when any item has a
    video `pixel_values_videos` (V, C, T, 4, H, W) and `teacher_pixel_values_videos` (V, C, T, 4, H_t, W_t),
    the items' videos in batch order; `ids`, and `replaced` (the dataset's replacement records, for
    `VideoInstructDataset.absorb`). Sequences longer than `model_max_length` (each frame counted as one
    token, see the module docstring) are cut at the end; a cut through the frame placeholders raises
    ValueError naming the sample (the dataset already replaces such samples, so this only fires when the
    collator is used with other data).
    """

    def __init__(self, processor, model_max_length: int | None = None):
        tokenizer = processor.tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.unk_token_id
        if pad is None:
            raise ValueError("the tokenizer has neither a pad nor an unk token")
        self.pad_token_id = int(pad)
        self.image_token_id = processor.image_token_id
        self.model_max_length = model_max_length

    def __call__(self, items: Sequence[dict]) -> dict:
        ids, labels = [], []
        for item in items:
            input_ids, item_labels = item["input_ids"], item["labels"]
            video = item.get("pixel_values_videos")
            num_frames = 0 if video is None else video.shape[0] * video.shape[1]
            if self.model_max_length is not None:
                limit = self.model_max_length + visual_extra(input_ids, self.image_token_id, num_frames)
                if len(input_ids) > limit:
                    dropped = int((input_ids[limit:] == self.image_token_id).sum())
                    if dropped:
                        raise ValueError(f"sample {item['id']!r}: truncation to {self.model_max_length} tokens would "
                                         f"cut {dropped} frame placeholder ids")
                    input_ids, item_labels = input_ids[:limit], item_labels[:limit]
            ids.append(input_ids)
            labels.append(item_labels)
        width = max(len(x) for x in ids)
        batch_ids = torch.full((len(items), width), self.pad_token_id, dtype=torch.long)
        batch_labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for row, (x, y) in enumerate(zip(ids, labels)):
            batch_ids[row, : len(x)] = x
            batch_labels[row, : len(y)] = y
            mask[row, : len(x)] = 1
        batch = {"input_ids": batch_ids, "attention_mask": mask, "labels": batch_labels}
        videos = [item for item in items if item.get("pixel_values_videos") is not None]
        if videos:
            batch["pixel_values_videos"] = torch.stack([item["pixel_values_videos"] for item in videos])
            teachers = [item.get("teacher_pixel_values_videos") for item in videos]
            if all(t is not None for t in teachers):
                batch["teacher_pixel_values_videos"] = torch.stack(teachers)
        batch["ids"] = [item["id"] for item in items]
        batch["replaced"] = [record for item in items for record in item.get("replaced", [])]
        return batch
