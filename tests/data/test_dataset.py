import json
import logging

import pytest
import torch
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from videopanda.constants import IGNORE_INDEX
from videopanda.data.dataset import (
    DataFormatError,
    ModalityLengthGroupedSampler,
    VideoInstructCollator,
    VideoInstructDataset,
    load_samples,
)
from videopanda.data.processor import VideoPandaProcessor, VideoPandaVideoProcessor

SMALL = {"image_size": 56, "teacher_image_size": 28}  # same code path, tiny tensors


def video_sample(sid, video, question="what colour is the circle?", answer="the circle is red"):
    return {"id": sid, "video": video, "conversations": [
        {"from": "human", "value": f"<video>\n{question}"}, {"from": "gpt", "value": answer}]}


def text_sample(sid, words=3):
    question = " ".join(["describe the square"] * words)
    return {"id": sid, "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": "it is green"}]}


FILE_A = [
    video_sample("good_wide", "valley/wide.mp4"),
    video_sample("missing", "valley/missing.mp4"),
    text_sample("text_1"),
    video_sample("random_bytes", "valley/random.mp4"),
    video_sample("gif", "valley/slow.gif"),
    {"id": "bad_conversation", "video": "valley/wide.mp4", "conversations": [{"from": "human", "value": "<video>\nhi"}]},
    video_sample("one_frame", "valley/one_frame.mp4"),
]
FILE_B = [
    video_sample("long", "valley/long.mp4", question="which shape moves first then what turns blue"),
    text_sample("text_2", words=5),
    video_sample("truncated", "valley/truncated.mp4"),
    video_sample("portrait", "valley/portrait.mp4"),
    video_sample("empty", "valley/empty.mp4"),
    text_sample("text_3", words=1),
]
BAD = {"missing": "video_missing", "random_bytes": "video_unreadable", "bad_conversation": "conversation",
       "truncated": "video_unreadable", "empty": "video_empty"}


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def data(tmp_path_factory, media_dir):
    root = tmp_path_factory.mktemp("train")
    (root / "videos").mkdir()
    (root / "videos" / "valley").symlink_to(media_dir, target_is_directory=True)
    (root / "a.json").write_text(json.dumps(FILE_A))
    (root / "b.json").write_text(json.dumps(FILE_B))
    return root


def processor_for(tokenizer, **frames) -> VideoPandaProcessor:
    return VideoPandaProcessor(VideoPandaVideoProcessor(**frames), tokenizer)


def make_dataset(data, tokenizer, frames=SMALL, **kwargs):
    kwargs = {"random_flip": False, **kwargs}
    return VideoInstructDataset([data / "a.json", data / "b.json"], data / "videos", processor_for(tokenizer, **frames),
                                **kwargs)


def test_load_samples_concatenates_and_halves(data):
    assert [s["id"] for s in load_samples([data / "a.json", data / "b.json"])] == [s["id"] for s in FILE_A + FILE_B]
    halves = load_samples([data / "a.json", data / "b.json"], first_half=True)
    assert [s["id"] for s in halves] == [s["id"] for s in FILE_A[:4] + FILE_B[:3]]


def test_unusable_json_files_are_named(tmp_path):
    with pytest.raises(DataFormatError, match="nope.json: data JSON not found"):
        load_samples([tmp_path / "nope.json"])
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(DataFormatError, match="broken.json: not valid JSON"):
        load_samples(tmp_path / "broken.json")
    (tmp_path / "dict.json").write_text("{}")
    with pytest.raises(DataFormatError, match="dict.json: expected a JSON list"):
        load_samples(tmp_path / "dict.json")


def test_items_for_video_and_text_samples(data, tokenizer):
    dataset = make_dataset(data, tokenizer, frames={})
    processor = dataset.processor
    token = processor.image_token_id
    item = dataset[0]
    assert item["id"] == "good_wide" and item["replaced"] == []
    assert tuple(item["pixel_values_videos"].shape) == (2, 4, 4, 448, 448)
    assert tuple(item["teacher_pixel_values_videos"].shape) == (2, 4, 4, 224, 224)
    # the processor's own layout: its ids and labels for this conversation and video
    frames = processor.video_processor(data / "videos" / FILE_A[0]["video"], teacher=True)
    ids, labels = processor.tokenize_conversation(FILE_A[0]["conversations"], frames["frame_grids"][0])
    assert torch.equal(item["input_ids"], ids) and torch.equal(item["labels"], labels)
    assert torch.equal(item["pixel_values_videos"], frames["pixel_values_videos"][0])
    runs = processor.video_processor.token_counts(frames["frame_grids"][0])
    assert int((ids == token).sum()) == sum(runs) and len(runs) == 8 and min(runs) > 1
    assert (labels[ids == token] == IGNORE_INDEX).all() and (labels != IGNORE_INDEX).any()
    text = dataset[2]
    assert text["id"] == "text_1" and text["pixel_values_videos"] is None and text["teacher_pixel_values_videos"] is None
    assert token not in text["input_ids"].tolist()
    one = dataset[6]  # a 1-frame clip: one real frame, seven all-zero padding frames
    frames = one["pixel_values_videos"].reshape(8, -1)
    assert torch.count_nonzero(frames[0]) > 0 and torch.count_nonzero(frames[1:]) == 0


def test_bad_samples_are_replaced_deterministically_and_reported(data, tokenizer, caplog):
    first = make_dataset(data, tokenizer)
    second = make_dataset(data, tokenizer)
    with caplog.at_level(logging.WARNING, logger="videopanda"):
        ids_first = [first[i]["id"] for i in range(len(first))]
        ids_again = [first[i]["id"] for i in range(len(first))]
    warnings = [r.getMessage() for r in caplog.records]
    ids_second = [second[i]["id"] for i in range(len(second))]
    good = [s["id"] for s in FILE_A + FILE_B if s["id"] not in BAD]
    assert ids_first == ids_second == ids_again
    for index, sample in enumerate(FILE_A + FILE_B):
        if sample["id"] in BAD:
            assert ids_first[index] in good
            assert first[index]["replaced"][0]["id"] == sample["id"]
        else:
            assert ids_first[index] == sample["id"]

    report = first.report()
    assert {r["id"]: r["kind"] for r in report["bad"]} == BAD
    assert report["bad_samples"] == len(BAD) and report["samples"] == len(FILE_A) + len(FILE_B)
    assert report["by_kind"] == {"conversation": 1, "video_empty": 1, "video_missing": 1, "video_unreadable": 2}
    assert report["replacements"] >= 3 * len(BAD)  # three passes over the data, at least one per bad index
    for bad_id in BAD:  # each bad sample logged once, with its reason
        lines = [line for line in warnings if repr(bad_id) in line]
        assert len(lines) == 1, lines
    assert "file not found" in next(r["reason"] for r in report["bad"] if r["id"] == "missing")


def test_replacement_depends_on_seed_index_and_attempt_only(data, tokenizer):
    a, b = make_dataset(data, tokenizer, seed=1), make_dataset(data, tokenizer, seed=1)
    c = make_dataset(data, tokenizer, seed=2)
    picks = lambda d: [d.replacement_index(i, k) for i in range(len(d)) for k in range(1, 4)]  # noqa: E731
    assert picks(a) == picks(b) != picks(c)


def test_too_long_samples_are_replaced_counting_each_frame_as_one_token(data, tokenizer):
    full = make_dataset(data, tokenizer)[0]
    token = processor_for(tokenizer).image_token_id
    extra = int((full["input_ids"] == token).sum()) - 8  # the runs' length beyond one token a frame
    last_placeholder = int((full["input_ids"] == token).nonzero()[-1]) - extra
    first_label = int((full["labels"] != IGNORE_INDEX).nonzero()[0]) - extra
    kept = make_dataset(data, tokenizer, model_max_length=first_label + 1)[0]  # the collator will cut the rest
    assert kept["id"] == "good_wide" and torch.equal(kept["input_ids"], full["input_ids"])
    for limit, reason in ((last_placeholder, "frame placeholders beyond"), (first_label, "no supervised token")):
        dataset = make_dataset(data, tokenizer, model_max_length=limit)
        assert dataset[0]["id"] != "good_wide"
        record = dataset.report()["bad"][0]
        assert record["id"] == "good_wide" and record["kind"] == "too_long" and reason in record["reason"]


def test_an_epoch_with_workers_completes_and_reports_every_bad_sample(data, tokenizer):
    dataset = make_dataset(data, tokenizer, random_flip=True)
    sampler = ModalityLengthGroupedSampler(dataset.lengths, dataset.is_video, batch_size=2, seed=42)
    loader = DataLoader(dataset, batch_size=2, sampler=sampler, num_workers=2,
                        collate_fn=VideoInstructCollator(dataset.processor))
    seen = 0
    token = dataset.processor.image_token_id
    for batch in loader:
        seen += len(batch["ids"])
        dataset.absorb(batch["replaced"])
        with_video = int((batch["input_ids"] == token).any(dim=1).sum())
        assert with_video == (len(batch["pixel_values_videos"]) if "pixel_values_videos" in batch else 0)
    assert seen == len(dataset)
    report = dataset.log_summary()
    assert {r["id"]: r["kind"] for r in report["bad"]} == BAD
    assert report["replacements"] >= len(BAD)



def assert_same_items(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_a_frame_cache_gives_the_same_items_and_bad_samples(data, tokenizer, tmp_path):
    """Items with a frame cache equal those without, bit for bit, whether the cache is being filled (here by
    two DataLoader workers) or read; unreadable videos are still replaced and reported."""
    from videopanda.data.frame_cache import FrameCache

    plain = make_dataset(data, tokenizer, random_flip=True)
    expected = [plain[i] for i in range(len(plain))]
    filling = make_dataset(data, tokenizer, random_flip=True, frame_cache=FrameCache(tmp_path / "frames"))
    loader = DataLoader(filling, batch_size=None, num_workers=2)
    for index, item in enumerate(loader):
        assert_same_items({**item, "replaced": []}, {**expected[index], "replaced": []})
    videos = {s["video"] for s in FILE_A + FILE_B if s.get("video") and s["id"] not in BAD}
    assert len(list((tmp_path / "frames").rglob("*.npy"))) == len(videos)
    cache = FrameCache(tmp_path / "frames")
    cached = make_dataset(data, tokenizer, random_flip=True, frame_cache=cache)
    for index in range(len(cached)):
        assert_same_items(cached[index], expected[index])
    assert cache.misses == 0 and cache.hits > 0
    assert cached.report() == plain.report()


# --- sampler ---

def sampler_data():
    lengths = [(i * 37) % 101 for i in range(103)]
    is_video = [(i * 7) % 3 != 0 for i in range(103)]
    return lengths, is_video


def test_sampler_is_a_deterministic_permutation_per_epoch():
    lengths, is_video = sampler_data()
    sampler = ModalityLengthGroupedSampler(lengths, is_video, batch_size=4, world_size=2, seed=42)
    order = list(sampler)
    assert sorted(order) == list(range(103)) and len(sampler) == 103
    assert order == list(ModalityLengthGroupedSampler(lengths, is_video, batch_size=4, world_size=2, seed=42))
    sampler.set_epoch(1)
    assert list(sampler) != order and sorted(sampler) == list(range(103))
    assert list(ModalityLengthGroupedSampler(lengths, is_video, batch_size=4, world_size=2, seed=7)) != order


@pytest.mark.parametrize("batch_size, world_size", [(4, 2), (3, 1), (2, 4)])
def test_sampler_groups_by_modality_and_length(batch_size, world_size):
    lengths, is_video = sampler_data()
    order = list(ModalityLengthGroupedSampler(lengths, is_video, batch_size, world_size, seed=3))
    step = batch_size * world_size
    leftover = sum(is_video) % step + (len(is_video) - sum(is_video)) % step
    full = order[: len(order) - leftover]
    for s in range(0, len(full), step):
        assert len({is_video[i] for i in full[s : s + step]}) == 1, "a step mixes modalities"
    mixed_batches = 0
    for b in range(0, len(order), batch_size):
        batch = order[b : b + batch_size]
        modalities = [is_video[i] for i in batch]
        mixed_batches += len(set(modalities)) > 1
        for same in (True, False):
            picked = [lengths[i] for i in batch if is_video[i] == same]
            assert picked == sorted(picked, reverse=True), "a batch is not sorted by length"
    assert mixed_batches <= 1


def test_sampler_ranks_share_one_global_order():
    lengths, is_video = sampler_data()
    global_order = list(ModalityLengthGroupedSampler(lengths, is_video, batch_size=4, world_size=3, seed=5))
    per_rank = [ModalityLengthGroupedSampler(lengths, is_video, batch_size=4, world_size=3, seed=5, rank=r) for r in range(3)]
    orders = [list(s) for s in per_rank]
    assert sorted(i for o in orders for i in o) == list(range(103))
    assert [len(o) for o in orders] == [len(s) for s in per_rank]
    batches = [global_order[s : s + 4] for s in range(0, 103, 4)]
    for rank, order in enumerate(orders):
        assert order == [i for b in batches[rank::3] for i in b]
    # the k-th batch of every rank is one step of the global order: same modality on every rank
    for k in range(len(batches) // 3 - 1):
        assert len({is_video[i] for r in range(3) for i in orders[r][4 * k : 4 * k + 4]}) == 1


# --- collator ---

def item(ids, labels, video=None, sid="x"):
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "pixel_values_videos": video,
            "teacher_pixel_values_videos": None if video is None else video[..., :2, :2], "id": sid, "replaced": []}


def test_collator_pads_right_and_stacks_the_videos(tokenizer):
    processor = processor_for(tokenizer, **SMALL)
    t = processor.image_token_id
    video, other = torch.zeros(2, 4, 4, 56, 56), torch.ones(2, 4, 4, 56, 56)
    items = [item([1, 5, t, t, 7, 2], [-100, -100, -100, -100, 7, 2], video, "a"), item([1, 9, 2], [-100, 9, 2], None, "b"),
             item([1, t, 2], [-100, -100, 2], other, "c")]
    batch = VideoInstructCollator(processor)(items)
    pad = tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[1, 5, t, t, 7, 2], [1, 9, 2, pad, pad, pad], [1, t, 2, pad, pad, pad]]
    assert batch["labels"].tolist() == [[-100, -100, -100, -100, 7, 2], [-100, 9, 2, -100, -100, -100],
                                        [-100, -100, 2, -100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0]]
    assert torch.equal(batch["pixel_values_videos"], torch.stack([video, other]))
    assert torch.equal(batch["teacher_pixel_values_videos"], torch.stack([video, other])[..., :2, :2])
    assert batch["ids"] == ["a", "b", "c"] and batch["replaced"] == []
    assert pad == tokenizer.unk_token_id
    assert "pixel_values_videos" not in VideoInstructCollator(processor)([items[1]])


def test_collator_truncates_counting_each_frame_as_one_token_but_never_through_placeholders(tokenizer):
    processor = processor_for(tokenizer, **SMALL)
    t = processor.image_token_id
    frame = torch.zeros(1, 1, 4, 56, 56)  # one frame, here a run of three placeholder ids
    batch = VideoInstructCollator(processor, model_max_length=4)([item([1, t, t, t, 5, 6, 7, 2], [-100] * 4 + [5, 6, 7, 2],
                                                                       frame)])
    assert batch["input_ids"].tolist() == [[1, t, t, t, 5, 6]] and batch["labels"].tolist() == [[-100] * 4 + [5, 6]]
    with pytest.raises(ValueError, match="'cut'.*1 frame placeholder ids"):
        VideoInstructCollator(processor, model_max_length=3)([item([1, 5, 6, t, t, t, 2], [-100] * 6 + [2], frame,
                                                                   sid="cut")])
