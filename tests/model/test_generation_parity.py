"""Two lines, `processor(...)` and `model.generate(**inputs)`, answer as the earlier path did (tiny, CPU).

The reference is the earlier path kept as code: one -200 per frame in the prompt, each replaced by that
frame's projected STAB tokens with a per-sample splice, the expanded sequences left-padded, and the
plain `GenerationMixin.generate` run on those `inputs_embeds` (greedy, KV cache)."""
import torch
from helpers.released import build_released_folder
from transformers import AutoModelForCausalLM, AutoProcessor
from transformers.generation.utils import GenerationMixin

import videopanda  # noqa: F401  (registers the Auto classes)
from videopanda.constants import FRAME_TOKEN_INDEX
from videopanda.data.conversation import build_generation_prompt, tokenize_prompt
from videopanda.data.frames import FrameConfig, preprocess_video

STEPS = 6


def frames(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def reference_answers(model, tokenizer, questions, videos, frame_config) -> list[list[int]]:
    """The earlier inference path: returns the new token ids of each answer."""
    embed = model.get_input_embeddings()
    sequences = []
    for question, video in zip(questions, videos):
        student, _ = preprocess_video(video, frame_config, teacher=False)
        ids = tokenize_prompt(build_generation_prompt(question, frame_config.num_frames), tokenizer)
        tokens, grids = model.model.video_tower(student, packed=True)
        per_frame = model.model.video_projector(tokens).split([model.model.video_tower.num_tokens(g) for g in grids])
        pieces, cursor = [], 0
        slots = (ids == FRAME_TOKEN_INDEX).nonzero().flatten().tolist()
        for slot, frame_tokens in zip(slots, per_frame):
            pieces += [embed(ids[cursor:slot]), frame_tokens]
            cursor = slot + 1
        pieces.append(embed(ids[cursor:]))
        sequences.append(torch.cat(pieces))
    width = max(s.shape[0] for s in sequences)
    embeds = sequences[0].new_zeros(len(sequences), width, sequences[0].shape[-1])
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for b, seq in enumerate(sequences):
        embeds[b, width - seq.shape[0]:] = seq
        mask[b, width - seq.shape[0]:] = 1
    out = GenerationMixin.generate(model, inputs_embeds=embeds, attention_mask=mask, max_new_tokens=STEPS,
                                   min_new_tokens=STEPS, do_sample=False, pad_token_id=0)
    return out.tolist()


def new_answers(model, processor, questions, videos) -> list[list[int]]:
    prompts = [processor.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": q}]}],
                                             add_generation_prompt=True) for q in questions]
    inputs = processor(text=prompts, videos=videos)
    out = model.generate(**inputs, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False, pad_token_id=0)
    return out[:, inputs["input_ids"].shape[1]:].tolist()


def test_released_and_saved_folders_answer_as_the_earlier_path(tmp_path, tiny_tokenizer_dir):
    folder = tmp_path / "released"
    build_released_folder(folder, tiny_tokenizer_dir)
    saved = tmp_path / "saved"
    for source in (folder, saved):
        model = AutoModelForCausalLM.from_pretrained(source).eval()
        processor = AutoProcessor.from_pretrained(source)
        if source == folder:
            model.save_pretrained(saved)
            processor.save_pretrained(saved)
        cfg = model.config
        frame_config = FrameConfig(cfg.num_frames, cfg.frames_per_chunk, cfg.image_size, cfg.teacher_image_size)
        questions = ["what moves?", "which colour is the square that turns left?"]
        videos = [frames(8, 48, 64, seed=1), frames(3, 90, 40, seed=2)]
        with torch.no_grad():
            for q, v in zip(questions, videos):
                assert new_answers(model, processor, [q], [v]) == reference_answers(
                    model, processor.tokenizer, [q], [v], frame_config)
            assert new_answers(model, processor, questions, videos) == reference_answers(
                model, processor.tokenizer, questions, videos, frame_config)
