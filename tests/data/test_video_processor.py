"""The video processor as transformers users drive it: AutoVideoProcessor, videos in chat messages, frame counts
other than 8 and sampling by frame rate, on real mp4 files and tiny model folders."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.media import frame_index, make_frames, write_video
from helpers.released import build_released_folder
from transformers import AutoModelForCausalLM, AutoProcessor
from transformers.models.auto.video_processing_auto import AutoVideoProcessor
from transformers.video_processing_utils import BaseVideoProcessor

import videopanda  # noqa: F401  (registers the Auto classes)
from videopanda.data.conversation import build_generation_prompt
from videopanda.data.frames import FrameConfig, preprocess_video
from videopanda.data.video import VideoReadError, read_video, sample_indices
from videopanda.data.video_processor import VideoPandaVideoProcessor

QUESTION = "what colour is the circle?"


def video_message(path=None, text=QUESTION) -> list[dict]:
    item = {"type": "video"} if path is None else {"type": "video", "path": str(path)}
    return [{"role": "user", "content": [item, {"type": "text", "text": text}]}]


@pytest.fixture(scope="module")
def released(tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp("videopanda_fitu")
    build_released_folder(folder, tiny_tokenizer_dir, seed=5)
    return folder


@pytest.fixture(scope="module")
def saved(released, tmp_path_factory):
    """The released folder loaded and saved by this project: config, weights, processor files, tokenizer."""
    folder = tmp_path_factory.mktemp("saved")
    AutoModelForCausalLM.from_pretrained(released, dtype=torch.float32).save_pretrained(folder)
    AutoProcessor.from_pretrained(released).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("clips")
    return {"ten_seconds": write_video(root / "ten.mp4", make_frames(100, height=48, width=64), fps=10),
            "forty_frames": write_video(root / "forty.mp4", make_frames(40, height=48, width=64, seed=1), fps=8),
            "three_frames": write_video(root / "three.mp4", make_frames(3, height=48, width=64, seed=2), fps=8),
            "half_second": write_video(root / "half.mp4", make_frames(5, height=48, width=64, seed=3), fps=10)}


def test_auto_video_processor_gives_the_subclass_for_a_saved_folder(saved, released):
    loaded = AutoVideoProcessor.from_pretrained(saved)
    assert type(loaded) is VideoPandaVideoProcessor and isinstance(loaded, BaseVideoProcessor)
    built = VideoPandaVideoProcessor.from_pretrained(released)  # no processor files: from config.json
    assert loaded.to_dict() == built.to_dict()
    assert AutoProcessor.from_pretrained(saved).video_processor.to_dict() == built.to_dict()


def test_sampling_settings_survive_save_and_load(tmp_path):
    processor = VideoPandaVideoProcessor(fps=2.0, max_frames=16)
    processor.save_pretrained(tmp_path)  # video_preprocessor_config.json alone
    loaded = AutoVideoProcessor.from_pretrained(tmp_path)
    assert type(loaded) is VideoPandaVideoProcessor
    assert (loaded.fps, loaded.max_frames, loaded.num_frames) == (2.0, 16, 8)


def test_default_sampling_gives_the_pixels_and_frames_of_the_data_path(clips):
    path = clips["forty_frames"]
    out = VideoPandaVideoProcessor()(path, return_metadata=True, teacher=True)
    student, teacher = preprocess_video(read_video(path, num_frames=8), FrameConfig(), flip=False)
    assert torch.equal(out["pixel_values_videos"][0], student)
    assert torch.equal(out["teacher_pixel_values_videos"][0], teacher)
    [meta] = out["video_metadata"]
    assert meta.frames_indices == sample_indices(40, 8.0, 8) == [0, 5, 10, 15, 20, 25, 30, 35]  # 5 grid points < 8: stride 39 // 7
    assert (meta.total_num_frames, meta.fps, meta.duration, meta.width, meta.height) == (40, 8.0, 5.0, 64, 48)


def test_one_frame_a_second_on_a_ten_second_clip_samples_the_hand_computed_frames(clips):
    """10 s at 10 fps, fps=1: floor(10 * 1) = 10 frames, rounded to whole chunks of 4 (2.5 chunks, halves up):
    12 frames, spread from the first frame as floor(i * 100 / 12): 0, 8, 16, 25, 33, 41, 50, 58, 66, 75, 83, 91."""
    hand = [0, 8, 16, 25, 33, 41, 50, 58, 66, 75, 83, 91]
    processor = VideoPandaVideoProcessor()
    out = processor(clips["ten_seconds"], fps=1, return_metadata=True)
    [meta] = out["video_metadata"]
    assert meta.frames_indices == hand and meta.duration == 10.0 and meta.fps == 10.0
    assert meta.timestamps == [i / 10 for i in hand]
    assert out["pixel_values_videos"].shape[:3] == (1, 3, 4)
    frames, count, _ = processor.load(clips["ten_seconds"], processor.sampling(fps=1))
    assert count == 12 and [frame_index(f) for f in frames] == hand
    assert processor(clips["ten_seconds"], fps=0.5)["pixel_values_videos"].shape[1] == 1  # 5 frames -> 4
    assert processor(clips["ten_seconds"], fps=10, max_frames=24)["pixel_values_videos"].shape[1] == 6


@pytest.mark.parametrize("num_frames", [16, 32])
def test_more_frames_reach_the_stab_and_the_llm_with_its_token_counts(released, clips, num_frames):
    processor = AutoProcessor.from_pretrained(released)
    model = AutoModelForCausalLM.from_pretrained(released, dtype=torch.float32).eval()
    inputs = processor.apply_chat_template(video_message(clips["forty_frames"]), add_generation_prompt=True,
                                           tokenize=True, return_dict=True, return_tensors="pt",
                                           processor_kwargs={"num_frames": num_frames})
    pixels = inputs["pixel_values_videos"]
    assert pixels.shape[:3] == (1, num_frames // 4, 4)
    with torch.no_grad():
        tokens, grids = model.model.video_tower(pixels.flatten(0, 1), num_videos=1)
        assert len(grids) == num_frames
        placeholders = int((inputs["input_ids"] == processor.image_token_id).sum())
        assert placeholders == sum(t.shape[0] for t in tokens)
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert out.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("kind", ["released", "saved"])
def test_chat_template_with_a_video_path_and_generate_answer_as_infer(kind, released, saved, clips, capsys):
    from videopanda.serve.infer import main

    folder = {"released": released, "saved": saved}[kind]
    clip = clips["forty_frames"]
    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    inputs = processor.apply_chat_template(video_message(clip), add_generation_prompt=True, tokenize=True,
                                           return_dict=True, return_tensors="pt")
    today = processor(text=build_generation_prompt(QUESTION, 8), videos=read_video(clip, num_frames=8))
    assert torch.equal(inputs["input_ids"], today["input_ids"])
    assert torch.equal(inputs["pixel_values_videos"], today["pixel_values_videos"])
    out = model.generate(**inputs, max_new_tokens=6)
    answer = processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
    assert main(["--model", str(folder), "--video", str(clip), "--question", QUESTION, "--max-new-tokens", "6",
                 "--device", "cpu"]) == 0
    assert capsys.readouterr().out.strip() == answer


def test_text_only_and_multi_turn_conversations_still_work(released, clips):
    processor = AutoProcessor.from_pretrained(released)
    text_only = processor.apply_chat_template([{"role": "user", "content": "hello"}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True, return_tensors="pt")
    assert "pixel_values_videos" not in text_only and int((text_only["input_ids"] == processor.image_token_id).sum()) == 0
    rounds = video_message(clips["forty_frames"]) + [{"role": "assistant", "content": "red"},
                                                     {"role": "user", "content": "and the square?"}]
    inputs = processor.apply_chat_template(rounds, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    first = processor.apply_chat_template(video_message(clips["forty_frames"]), add_generation_prompt=True,
                                          tokenize=True, return_dict=True, return_tensors="pt")
    assert int((inputs["input_ids"] == processor.image_token_id).sum()) == \
        int((first["input_ids"] == processor.image_token_id).sum())


def test_bad_video_input_is_refused_with_a_clear_error(released, clips, tmp_path):
    processor = AutoProcessor.from_pretrained(released)

    def run(messages, **sampling):
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                             return_tensors="pt", processor_kwargs=sampling)

    with pytest.raises(ValueError, match="needs a 'path' or 'url'"):
        run(video_message())
    with pytest.raises(VideoReadError, match="missing.mp4: file not found"):
        run(video_message(tmp_path / "missing.mp4"))
    with pytest.raises(ValueError, match=r"num_frames \(6\) must be a positive multiple of frames_per_chunk \(4\)"):
        run(video_message(clips["forty_frames"]), num_frames=6)
    with pytest.raises(VideoReadError, match=r"half.mp4: fps=1 samples no frame from a 0.5 s clip"):
        run(video_message(clips["half_second"]), fps=1)
    with pytest.raises(ValueError, match="fps must be a positive number"):
        run(video_message(clips["forty_frames"]), fps=0)
    with pytest.raises(ValueError, match="min_frames .* multiple of the chunk length"):
        VideoPandaVideoProcessor(fps=1.0, min_frames=6)


def test_a_video_shorter_than_the_frames_asked_for_is_padded(clips):
    processor = VideoPandaVideoProcessor()
    out = processor(clips["three_frames"], num_frames=16, return_metadata=True)
    assert out["pixel_values_videos"].shape[:3] == (1, 4, 4)
    assert out["video_metadata"][0].frames_indices == [0, 1, 2]
    real, pad = out["frame_grids"][0][0], out["frame_grids"][0][-1]
    assert out["frame_grids"][0] == [real] * 3 + [pad] * 13
    assert not out["pixel_values_videos"][0].flatten(0, 1)[3:].any()
    by_rate = processor(clips["three_frames"], fps=8)  # 3 frames at 8 fps: 0.375 s -> 3 frames -> one chunk
    assert by_rate["pixel_values_videos"].shape[:3] == (1, 1, 4)
    assert np.array_equal(by_rate["pixel_values_videos"][0, 0, 3], out["pixel_values_videos"][0, 0, 3])


def test_clips_sampled_by_rate_to_different_counts_are_refused_in_one_call(clips):
    with pytest.raises(ValueError, match=r"give \[4, 12\] frames: sampled by rate"):
        VideoPandaVideoProcessor()([clips["ten_seconds"], clips["forty_frames"]], fps=1)
