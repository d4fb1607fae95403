"""VideoPandaForCausalLM: config, parts, frame-token scatter, mixed batches, LM loss, generation (tiny, CPU)."""
import json
from pathlib import Path

import pytest
import torch
from helpers.released import tokenizer_vocab_size
from transformers import AutoConfig, AutoModelForCausalLM

import videopanda  # noqa: F401  (registers the Auto classes)
from videopanda.constants import FRAME_TOKEN_INDEX, IGNORE_INDEX
from videopanda.model.videopanda import VideoPandaConfig, VideoPandaForCausalLM

REPO = Path(__file__).resolve().parents[2]
SIZE = 56  # student frames: 4x4 patches -> 2x2 LSD grid -> 1 + 2*3 = 7 tokens a frame
TOKENS_56 = 7


def tiny_config(vocab_size: int, **overrides) -> VideoPandaConfig:
    fields = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, video_hidden_size=64, mm_hidden_size=64, image_size=SIZE,
                  teacher_image_size=SIZE // 2, pad_token_id=0)
    fields.update(overrides)
    return VideoPandaConfig(**fields)


@pytest.fixture(scope="module")
def vocab(tiny_tokenizer_dir) -> int:
    return tokenizer_vocab_size(tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def model(vocab) -> VideoPandaForCausalLM:
    torch.manual_seed(0)
    return VideoPandaForCausalLM(tiny_config(vocab)).eval()


def video(chunks: int = 2, size: int = SIZE, valid_rows: tuple[int, int] | None = None, padding_frames: int = 0,
          seed: int = 0) -> torch.Tensor:
    """(chunks, 4, 4, size, size): random pixels, mask 1 on rows valid_rows (all rows when None), the
    last `padding_frames` frames all zero."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(chunks, 4, 4, size, size, generator=g)
    v[:, :, 3] = 0
    top, bottom = valid_rows or (0, size)
    v[:, :, :3, :top] = 0
    v[:, :, :3, bottom:] = 0
    v[:, :, 3, top:bottom] = 1
    flat = v.view(chunks * 4, 4, size, size)
    if padding_frames:
        flat[-padding_frames:] = 0
    return v


def padded(rows: list[list[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask


def frame_tokens(model, v: torch.Tensor) -> list[torch.Tensor]:
    """Expected projected tokens of each frame, STAB and projector run per video."""
    with torch.no_grad():
        tokens, _ = model.model.video_tower(v)
        return [model.model.video_projector(t) for t in tokens]


def test_released_7b_config_gives_the_7b_model():
    folder_config = json.loads((REPO / "configs/model/videopanda-7b.json").read_text())
    assert "stab" not in folder_config  # released configs carry none: derived from video_hidden_size
    config = VideoPandaConfig(**{k: v for k, v in folder_config.items() if k not in ("architectures", "model_type")})
    assert config.stab_config.width == 1024 and config.stab_config.frames_per_chunk == 4
    assert (config.num_frames, config.image_size, config.teacher_image_size) == (8, 448, 224)
    with torch.device("meta"):
        model = VideoPandaForCausalLM(config)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert round(count(model.model.video_tower) / 1e6, 2) == 24.09
    assert round((count(model.model.video_tower) + count(model.model.video_projector)) / 1e6, 2) == 45.07
    assert round(count(model) / 1e9, 2) == 6.78  # Vicuna-7B 6.74B + 45M visual
    assert type(AutoConfig.for_model("videopanda")).__name__ == "VideoPandaConfig"
    again = VideoPandaConfig.from_dict(config.to_dict())
    assert again.stab == config.stab and again.mm_video_tower == "./checkpoints/videopanda_tower"


def test_config_rejects_inconsistent_fields(vocab):
    with pytest.raises(ValueError, match="unknown fields"):
        tiny_config(vocab, stab={"width": 64, "heads": 8})
    with pytest.raises(ValueError, match="STAB width"):
        tiny_config(vocab, stab={"width": 128})


def test_parts_cover_every_parameter_once(model):
    parts = model.parts()
    assert set(parts) == {"stab", "projector", "llm"}
    owned = [id(p) for modules in parts.values() for m in modules for p in m.parameters()]
    assert len(owned) == len(set(owned)) and set(owned) == {id(p) for p in model.parameters()}
    assert parts["stab"] == (model.model.video_tower,)


def test_each_run_of_placeholders_gets_its_frames_tokens_in_order(model):
    v = video(chunks=1, seed=1)
    expected = frame_tokens(model, v)
    n, token = TOKENS_56, model.config.image_token_id
    # text between the runs checks the order: frame k -> k-th run
    ids = [1, 20] + [token] * n + [21, 22] + [token] * 2 * n + [23] + [token] * n + [24]
    with torch.no_grad():
        embeds, grids = model.embed_inputs(torch.tensor([ids]), v[None])
        embed = model.get_input_embeddings()
    assert embeds.shape == (1, len(ids), 64) and grids == [(2, 2)] * 4
    starts = [2, 4 + n, 4 + 2 * n, 5 + 3 * n]
    for frame, start in enumerate(starts):
        torch.testing.assert_close(embeds[0, start:start + n], expected[frame], rtol=1e-5, atol=1e-6)
    text = [i for i in range(len(ids)) if not any(s <= i < s + n for s in starts)]
    assert torch.equal(embeds[0, text], embed(torch.tensor(ids)[text]))


def test_placeholder_count_must_match_the_frames(model):
    ids = torch.tensor([[1, 5] + [model.config.image_token_id] * 3 * TOKENS_56 + [6]])
    with pytest.raises(ValueError, match=r"hold 21 video placeholders .* give 28 visual tokens"):
        model(input_ids=ids, pixel_values_videos=video(chunks=1)[None])
    with pytest.raises(ValueError, match="no pixel_values_videos"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match=r"pixel_values_videos must be \(videos, chunks"):
        model(input_ids=ids, pixel_values_videos=video(chunks=1))


def mixed_batch():
    """Square video, letterboxed video with two padding frames, text-only sample; right padded."""
    slots = [FRAME_TOKEN_INDEX] * 8
    rows = [[1, 30, 31] + slots + [32, 33, 34], [1, 40] + slots + [41], [1, 50, 51, 52, 53, 54, 55]]
    videos = [video(seed=2), video(valid_rows=(14, 42), padding_frames=2, seed=3), None]
    return rows, videos


def scattered(model, rows, videos, left: bool = True):
    """The processor's layout of `mixed_batch`, written out here: each -200 becomes its frame's run of
    image_token_id (counts from the STAB's grids), padded -> input_ids, attention_mask, labels (the text
    ids, -100 on the runs and the padding), pixel_values_videos (V, C, T, 4, H, W) or None."""
    token, out = model.config.image_token_id, []
    present = iter([v for v in videos if v is not None])
    for row in rows:
        if FRAME_TOKEN_INDEX in row:
            _, grids = model.model.video_tower(next(present))
            counts = iter([model.model.video_tower.num_tokens(g) for g in grids])
            row = [t for i in row for t in ([token] * next(counts) if i == FRAME_TOKEN_INDEX else [i])]
        out.append(row)
    width = max(map(len, out))
    ids = torch.zeros((len(out), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(out):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        ids[b, span], mask[b, span] = torch.tensor(row), 1
    labels = ids.masked_fill(ids == token, IGNORE_INDEX).masked_fill(mask == 0, IGNORE_INDEX)
    present = [v for v in videos if v is not None]
    return ids, mask, labels, torch.stack(present) if present else None


def expanded_embeddings(model, rows, videos) -> tuple[torch.Tensor, torch.Tensor]:
    """Independent of the scatter: per sample, the text embeddings with each -200 replaced by its frame's
    tokens (`frame_tokens`, STAB and projector run per video), right padded -> (B, S, L), mask (B, S)."""
    embed = model.get_input_embeddings()
    sequences = []
    for row, v in zip(rows, videos):
        frames = iter(frame_tokens(model, v) if v is not None else [])
        with torch.no_grad():
            sequences.append(torch.cat([next(frames) if i == FRAME_TOKEN_INDEX else embed(torch.tensor([i]))
                                        for i in row]))
    width = max(s.shape[0] for s in sequences)
    embeds = torch.zeros(len(rows), width, sequences[0].shape[-1])
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for b, seq in enumerate(sequences):
        embeds[b, :len(seq)], mask[b, :len(seq)] = seq, 1
    return embeds, mask


def test_mixed_batch_equals_each_sample_alone(model):
    rows, videos = mixed_batch()
    ids, mask, _, pixels = scattered(model, rows, videos, left=False)
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels)
        lengths = []
        for i, (row, v) in enumerate(zip(rows, videos)):
            one, _, _, one_pixels = scattered(model, [row], [v])
            alone = model(input_ids=one, pixel_values_videos=one_pixels)
            n = alone.logits.shape[1]
            lengths.append(n)
            torch.testing.assert_close(batch.logits[i, :n], alone.logits[0], rtol=1e-4, atol=1e-5)
    # the letterboxed frames have a 1x2 grid (4 tokens), its padding frames the top-left 2x2 window (7 tokens)
    assert lengths == [6 + 8 * TOKENS_56, 3 + 6 * 4 + 2 * TOKENS_56, 7]
    assert batch.logits.shape[1] == max(lengths)


def test_loss_with_labels_is_the_cross_entropy_of_the_full_logits(model):
    rows, videos = mixed_batch()
    ids, mask, labels, pixels = scattered(model, rows, videos, left=False)
    labels[0, :3] = IGNORE_INDEX  # an unsupervised prompt
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels).logits
        out = model(input_ids=ids, attention_mask=mask, labels=labels, pixel_values_videos=pixels)
    assert out.logits is None
    wanted = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1), labels[:, 1:].flatten(),
                                               ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, wanted, rtol=1e-5, atol=1e-6)
    assert (labels[:, 1:] != IGNORE_INDEX).sum() < labels.numel() // 2  # most positions carry no loss


def test_scatter_path_equals_the_expanded_embeddings(model):
    rows, videos = mixed_batch()
    embeds, mask = expanded_embeddings(model, rows, videos)
    with torch.no_grad():
        reference = model(inputs_embeds=embeds, attention_mask=mask).logits
        ids, mask, _, pixels = scattered(model, rows, videos, left=False)
        scattered_logits = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels).logits
    torch.testing.assert_close(scattered_logits, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="placeholders"):
        model(input_ids=ids, pixel_values_videos=pixels[:1])


def test_generate_with_and_without_cache_agree_and_match_a_plain_greedy_loop(model):
    rows, videos = mixed_batch()
    steps = 6
    singles = []
    for row, v in zip(rows, videos):
        ids, mask, _, pixels = scattered(model, [row], [v])
        extra = {"pixel_values_videos": pixels} if pixels is not None else {}
        cached = model.generate(ids, attention_mask=mask, max_new_tokens=steps, do_sample=False, use_cache=True, **extra)
        uncached = model.generate(ids, attention_mask=mask, max_new_tokens=steps, do_sample=False, use_cache=False,
                                  **extra)
        assert cached.shape == (1, ids.shape[1] + steps) and torch.equal(cached, uncached)
        seq = ids
        with torch.no_grad():
            for _ in range(steps):
                logits = model(input_ids=seq, **extra).logits
                seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        assert torch.equal(cached, seq)
        singles.append(cached[0, ids.shape[1]:])
    # a batch, left padded for generation, gives each sample's own answer
    ids, mask, _, pixels = scattered(model, rows, videos)
    batch = model.generate(ids, attention_mask=mask, pixel_values_videos=pixels, max_new_tokens=steps,
                           do_sample=False, pad_token_id=0)
    for got, want in zip(batch[:, ids.shape[1]:], singles):
        assert torch.equal(got, want)


def test_text_only_inputs_never_run_the_stab(vocab):
    torch.manual_seed(1)
    model = VideoPandaForCausalLM(tiny_config(vocab))
    calls = []
    model.model.video_tower.register_forward_hook(lambda *args: calls.append(1))
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    for mode in (model.eval(), model.train()):
        out = mode(input_ids=ids, labels=ids)
        out.loss.backward()
    assert calls == [] and out.loss is not None
    assert not hasattr(model.model, "video_teacher") and not hasattr(model.model, "video_tower_compressor")


def test_auto_class_builds_our_model(vocab):
    model = AutoModelForCausalLM.from_config(tiny_config(vocab))
    assert type(model) is VideoPandaForCausalLM
