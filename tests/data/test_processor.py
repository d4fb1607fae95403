"""VideoPandaProcessor: token counts equal to the STAB's, chat template, ids/labels, save/load (tiny, CPU)."""
import itertools
import json

import pytest
import torch
from helpers.released import build_released_folder
from transformers import AutoProcessor, AutoTokenizer

import videopanda  # noqa: F401  (registers the Auto classes)
from videopanda.constants import FRAME_TOKEN_INDEX, IGNORE_INDEX
from videopanda.data.conversation import (
    SYSTEM_HUMAN,
    SYSTEM_USER,
    build_generation_prompt,
    conversation_text,
    tokenize_conversation,
)
from videopanda.data.processor import VideoPandaProcessor, VideoPandaVideoProcessor
from videopanda.model.stab import ABLATION_SWITCHES, LSD_MODES, SpatioTemporalAlignmentBlock, STABConfig
from videopanda.model.videopanda import VideoPandaConfig


def every_switch_combination() -> list[dict]:
    choices = [LSD_MODES if name == "lsd_mode" else (True, False) for name in ABLATION_SWITCHES]
    return [dict(zip(ABLATION_SWITCHES, values)) for values in itertools.product(*choices)]


# (image_size, teacher_image_size): the scale 3 gives odd patch counts on the longer side.
GEOMETRIES = [(112, 56), (126, 42)]
# every ablation switch combination at one geometry; the padding window and the defaults at each
CASES = ([(switches, GEOMETRIES[1]) for switches in every_switch_combination()]
         + [(switches, geometry) for geometry in GEOMETRIES
            for switches in ({}, {"padding_window": 3}, {"padding_window": 5, "use_row_tokens": False})])
FRAME_SIZES = [(30, 50), (50, 30), (17, 61), (40, 40), (7, 90)]


def frames(n: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def tiny_config(vocab: int, image_size: int = 112, teacher_image_size: int = 56, **stab) -> VideoPandaConfig:
    return VideoPandaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=2, video_hidden_size=32, mm_hidden_size=32, image_size=image_size,
                            teacher_image_size=teacher_image_size, stab={"num_heads": 2, **stab})


@pytest.fixture(scope="module")
def tokenizer(tiny_tokenizer_dir):
    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.mark.parametrize(("switches", "geometry"), CASES,
                         ids=[f"{g[0]}-" + ",".join(f"{k}={v}" for k, v in s.items()) for s, g in CASES])
def test_token_counts_equal_the_stabs_output(switches, geometry, tokenizer):
    config = tiny_config(len(tokenizer), *geometry, **switches)
    processor = VideoPandaProcessor.from_model_config(config, AutoTokenizer.from_pretrained(tokenizer.name_or_path))
    torch.manual_seed(0)
    stab = SpatioTemporalAlignmentBlock(config.stab_config).eval()
    # 1..5 real frames, the rest padding frames
    videos = [frames(1 + k % config.num_frames, height, width, seed=k) for k, (height, width) in enumerate(FRAME_SIZES)]
    prompt = build_generation_prompt("what?", config.num_frames)
    inputs = processor(text=[prompt] * len(videos), videos=videos, return_frame_grids=True)
    pixels = inputs["pixel_values_videos"]
    with torch.no_grad():
        tokens, grids = stab(pixels.flatten(0, 1), num_videos=pixels.shape[0])
    assert [grid for video in inputs["frame_grids"] for grid in video] == grids
    counts = [processor.video_processor.token_counts(video) for video in inputs["frame_grids"]]
    assert sum(counts, []) == [t.shape[0] for t in tokens] == [stab.num_tokens(g) for g in grids]
    assert (inputs["input_ids"] == processor.image_token_id).sum(1).tolist() == [sum(c) for c in counts]


def test_odd_boxes_and_padding_frames_are_counted():
    video_processor = VideoPandaVideoProcessor(image_size=126, teacher_image_size=42,
                                               stab_config=STABConfig(padding_window=5))
    # 30x50 -> 9 patches wide (odd: the last column dropped), 6 high; padding frames 5x5 -> 2x2.
    assert video_processor.frame_grids(30, 50, 2) == [(3, 4)] * 2 + [(2, 2)] * 6


def test_chat_template_gives_the_prompt_of_the_template(tokenizer):
    """The template writes `<video>` where the original's prompt has one `<image>` per frame (the processor
    expands it to the video's frame count); everything else is the original's text."""
    processor = VideoPandaProcessor(VideoPandaVideoProcessor(), tokenizer)

    def template(messages, **kwargs):
        text = processor.apply_chat_template(messages, **kwargs)
        return text.replace("<video>", "<image>" * 8)

    video_turn = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "  What happens? "}]}]
    assert processor.apply_chat_template(video_turn, add_generation_prompt=True).count("<video>") == 1
    assert template(video_turn, add_generation_prompt=True) == build_generation_prompt("What happens?", 8, SYSTEM_USER)
    assert template(video_turn, add_generation_prompt=True, system="human") == \
        build_generation_prompt("What happens?", 8, SYSTEM_HUMAN)
    rounds = video_turn + [{"role": "assistant", "content": "A circle moves."},
                           {"role": "user", "content": "Which colour?"}, {"role": "assistant", "content": "Red."}]
    expected = conversation_text([("<image>" * 8 + "\nWhat happens?", "A circle moves."), ("Which colour?", "Red.")])
    assert template(rounds) == expected
    assert "</s>USER:" in expected
    with_system = [{"role": "system", "content": SYSTEM_HUMAN}] + rounds[:3]
    assert template(with_system, add_generation_prompt=True) == conversation_text(
        [("<image>" * 8 + "\nWhat happens?", "A circle moves."), ("Which colour?", None)], SYSTEM_HUMAN)


def test_ids_and_labels_are_todays_with_each_frame_expanded(tiny_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    old_ids, old_labels = tokenize_conversation(
        [{"from": "human", "value": "<video>\nWhat moves?"}, {"from": "gpt", "value": "A red circle."},
         {"from": "human", "value": "Then?"}, {"from": "gpt", "value": "It turns left."}], tokenizer, 8)
    processor = VideoPandaProcessor(VideoPandaVideoProcessor(), AutoTokenizer.from_pretrained(tiny_tokenizer_dir))
    grids = processor.video_processor.frame_grids(48, 64, 5)
    ids, labels = processor.tokenize_conversation(
        [{"from": "human", "value": "<video>\nWhat moves?"}, {"from": "gpt", "value": "A red circle."},
         {"from": "human", "value": "Then?"}, {"from": "gpt", "value": "It turns left."}], grids)
    counts = iter(processor.video_processor.token_counts(grids))
    expect_ids, expect_labels = [], []
    for i, label in zip(old_ids.tolist(), old_labels.tolist()):
        run = next(counts) if i == FRAME_TOKEN_INDEX else 1
        expect_ids += [processor.image_token_id if i == FRAME_TOKEN_INDEX else i] * run
        expect_labels += [label] * run
    assert ids.tolist() == expect_ids and labels.tolist() == expect_labels
    assert IGNORE_INDEX in expect_labels and processor.image_token_id == len(tokenizer)


def test_batch_left_padding_and_video_count_checks(tokenizer):
    processor = VideoPandaProcessor(VideoPandaVideoProcessor(image_size=112, teacher_image_size=56), tokenizer)
    prompts = [build_generation_prompt("What?", 8), build_generation_prompt("What happens in this long video?", 8)]
    inputs = processor(text=prompts, videos=[frames(8, 40, 60), frames(3, 60, 40)], teacher=True)
    assert inputs["pixel_values_videos"].shape == (2, 2, 4, 4, 112, 112)
    assert inputs["teacher_pixel_values_videos"].shape == (2, 2, 4, 4, 56, 56)
    mask = inputs["attention_mask"]
    assert mask[:, -1].all() and not mask[:, 0].all()
    assert "frame_grids" not in inputs
    with pytest.raises(ValueError, match="videos"):
        processor(text=prompts, videos=[frames(8, 40, 60)])
    with pytest.raises(ValueError, match="multiple of"):
        processor(text="USER: <image> hi", videos=[frames(8, 40, 60)])


def test_save_and_load_round_trip_and_released_folder(tmp_path, tiny_tokenizer_dir):
    released = tmp_path / "released"
    build_released_folder(released, tiny_tokenizer_dir)
    processor = AutoProcessor.from_pretrained(released)
    assert isinstance(processor, VideoPandaProcessor)
    config = VideoPandaConfig.from_pretrained(released)
    assert processor.image_token_id == config.image_token_id == config.vocab_size
    assert processor.video_processor.image_size == config.image_size
    processor.save_pretrained(tmp_path / "saved")
    again = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert again.image_token_id == processor.image_token_id
    assert again.video_processor.to_dict() == processor.video_processor.to_dict()
    assert again.chat_template == processor.chat_template
    prompt = build_generation_prompt("What?", 8)
    video = frames(4, 30, 50)
    first, second = processor(text=prompt, videos=video), again(text=prompt, videos=video)
    assert torch.equal(first["input_ids"], second["input_ids"])
    assert torch.equal(first["pixel_values_videos"], second["pixel_values_videos"])


def test_saved_processors_keep_the_stab_config_and_earlier_flat_configs_load(tmp_path, tokenizer):
    config = tiny_config(len(tokenizer), 126, 42, padding_window=5, use_row_tokens=False, lsd_mode="avgpool")
    processor = VideoPandaProcessor.from_model_config(config, tokenizer)
    processor.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "processor_config.json").read_text())["video_processor"]
    assert saved["stab_config"] == config.stab
    again = AutoProcessor.from_pretrained(tmp_path / "saved")
    assert again.video_processor.stab_config == config.stab_config

    # processor_config.json as earlier versions wrote it: the STAB fields that set token counts at the top level
    processor.save_pretrained(tmp_path / "flat")
    (tmp_path / "flat" / "processor_config.json").write_text(json.dumps({
        "processor_class": "VideoPandaProcessor",
        "video_processor": {"frames_per_chunk": 4, "image_size": 126, "num_frames": 8, "padding_window": 5,
                            "patch_size": 14, "teacher_image_size": 42, "use_row_tokens": False,
                            "video_processor_type": "VideoPandaVideoProcessor", "window": 2}}))
    flat = AutoProcessor.from_pretrained(tmp_path / "flat")
    assert flat.video_processor.stab_config == STABConfig(padding_window=5, use_row_tokens=False)
    prompt = build_generation_prompt("What?", 8)
    videos = [frames(3, 30, 50), frames(8, 61, 17)]
    expected = processor(text=[prompt] * 2, videos=videos, return_frame_grids=True)
    for loaded in (again, flat):
        inputs = loaded(text=[prompt] * 2, videos=videos, return_frame_grids=True)
        assert torch.equal(inputs["input_ids"], expected["input_ids"])
        assert inputs["frame_grids"] == expected["frame_grids"]
    with pytest.raises(ValueError, match="stab_config"):
        VideoPandaVideoProcessor(stab_config=STABConfig(), window=2)
