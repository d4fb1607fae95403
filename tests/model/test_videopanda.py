"""VideoPandaForCausalLM: config, frame-token merge, mixed batches, generation, distillation hook (tiny, CPU)."""
import json
from pathlib import Path

import pytest
import torch
from helpers.released import tokenizer_vocab_size
from transformers import AutoConfig, AutoModelForCausalLM

import videopanda  # noqa: F401  (registers the Auto classes)
from videopanda.constants import FRAME_TOKEN_INDEX, IGNORE_INDEX
from videopanda.model.distill import DistillationHead, distill_layer_indices, distillation_loss
from videopanda.model.teacher import LanguageBindVideoTower, TeacherConfig
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


def test_each_placeholder_becomes_its_frames_tokens_in_order(model):
    v = video(chunks=1, seed=1)
    expected = frame_tokens(model, v)
    # text between the placeholders checks the order: frame k -> k-th placeholder
    ids = [1, 20, FRAME_TOKEN_INDEX, 21, 22, FRAME_TOKEN_INDEX, FRAME_TOKEN_INDEX, 23, FRAME_TOKEN_INDEX, 24]
    input_ids = torch.tensor([ids])
    labels = torch.tensor([[IGNORE_INDEX, 20, FRAME_TOKEN_INDEX, 21, 22, FRAME_TOKEN_INDEX, FRAME_TOKEN_INDEX, 23,
                            FRAME_TOKEN_INDEX, 24]])
    with torch.no_grad():
        merged = model.embed_multimodal(input_ids, None, labels, [v])
        embed = model.get_input_embeddings()
        n = TOKENS_56
        assert merged.inputs_embeds.shape == (1, 6 + 4 * n, 64)
        assert [(s, c) for s, c, _ in merged.frame_spans[0]] == [(2, n), (4 + n, n), (4 + 2 * n, n), (5 + 3 * n, n)]
        pos = 0
        out_labels = merged.labels[0].tolist()
        frame = 0
        for tok, lab in zip(ids, labels[0].tolist()):
            if tok == FRAME_TOKEN_INDEX:
                torch.testing.assert_close(merged.inputs_embeds[0, pos:pos + n], expected[frame], rtol=1e-5, atol=1e-6)
                assert out_labels[pos:pos + n] == [IGNORE_INDEX] * n
                pos, frame = pos + n, frame + 1
            else:
                assert torch.equal(merged.inputs_embeds[0, pos], embed(torch.tensor(tok)))
                assert out_labels[pos] == lab
                pos += 1
        assert merged.attention_mask.tolist() == [[1] * pos]


def test_placeholder_count_must_match_the_frames(model):
    ids = torch.tensor([[1, 5] + [FRAME_TOKEN_INDEX] * 3 + [6]])
    with pytest.raises(ValueError, match=r"sample 0: 3 frame placeholders .* but 4 frames"):
        model(input_ids=ids, videos=[video(chunks=1)])
    with pytest.raises(ValueError, match=r"sample 0: 3 frame placeholders .* but 0 frames"):
        model(input_ids=ids)
    with pytest.raises(ValueError, match="2 videos for a batch of 1"):
        model(input_ids=ids, videos=[video(chunks=1), None])


def mixed_batch():
    """Square video, letterboxed video with two padding frames, text-only sample; right padded."""
    slots = [FRAME_TOKEN_INDEX] * 8
    rows = [[1, 30, 31] + slots + [32, 33, 34], [1, 40] + slots + [41], [1, 50, 51, 52, 53, 54, 55]]
    videos = [video(seed=2), video(valid_rows=(14, 42), padding_frames=2, seed=3), None]
    return rows, videos


def test_mixed_batch_equals_each_sample_alone(model):
    rows, videos = mixed_batch()
    ids, mask = padded(rows)
    labels = ids.masked_fill(ids < 0, IGNORE_INDEX).masked_fill(mask == 0, IGNORE_INDEX)
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask, videos=videos)
        lengths = []
        for i, (row, v) in enumerate(zip(rows, videos)):
            alone = model(input_ids=torch.tensor([row]), videos=[v])
            n = alone.logits.shape[1]
            lengths.append(n)
            torch.testing.assert_close(batch.logits[i, :n], alone.logits[0], rtol=1e-4, atol=1e-5)
    # the letterboxed frames have a 1x2 grid (4 tokens), its padding frames the top-left 2x2 window (7 tokens)
    assert lengths == [6 + 8 * TOKENS_56, 3 + 6 * 4 + 2 * TOKENS_56, 7]
    assert batch.logits.shape[1] == max(lengths)


def test_loss_with_labels_is_the_cross_entropy_of_the_full_logits(model):
    rows, videos = mixed_batch()
    ids, mask = padded(rows)
    labels = ids.masked_fill(ids < 0, IGNORE_INDEX).masked_fill(mask == 0, IGNORE_INDEX)
    labels[0, :3] = IGNORE_INDEX  # an unsupervised prompt
    with torch.no_grad():
        full = model(input_ids=ids, attention_mask=mask, videos=videos).logits
        expanded = model.embed_multimodal(ids, mask, labels, videos).labels
        out = model(input_ids=ids, attention_mask=mask, labels=labels, videos=videos)
    assert out.logits is None and out.distill_loss is None and torch.equal(out.loss, out.lm_loss)
    wanted = torch.nn.functional.cross_entropy(full[:, :-1].flatten(0, 1), expanded[:, 1:].flatten(),
                                               ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.lm_loss, wanted, rtol=1e-5, atol=1e-6)
    assert (expanded[:, 1:] != IGNORE_INDEX).sum() < expanded.numel() // 2  # most positions carry no loss


def scattered(model, rows, videos, left: bool = True):
    """The processor's layout of `mixed_batch`: each -200 becomes its frame's run of image_token_id (counts
    from the STAB's grids), left padded -> input_ids, attention_mask, pixel_values_videos (V, C, T, 4, H, W)."""
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
    present = [v for v in videos if v is not None]
    return ids, mask, torch.stack(present) if present else None


def test_scatter_path_equals_the_expansion(model):
    rows, videos = mixed_batch()
    with torch.no_grad():
        old = model(input_ids=padded(rows)[0], attention_mask=padded(rows)[1], videos=videos).logits
        ids, mask, pixels = scattered(model, rows, videos, left=False)
        new = model(input_ids=ids, attention_mask=mask, pixel_values_videos=pixels).logits
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="placeholders"):
        model(input_ids=ids[:, :-3] if ids.shape[1] > 3 else ids, pixel_values_videos=pixels[:1])
    with pytest.raises(ValueError, match="no pixel_values_videos"):
        model(input_ids=ids)


def test_generate_with_and_without_cache_agree_and_match_a_plain_greedy_loop(model):
    rows, videos = mixed_batch()
    steps = 6
    singles = []
    for row, v in zip(rows, videos):
        ids, mask, pixels = scattered(model, [row], [v])
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
    ids, mask, pixels = scattered(model, rows, videos)
    batch = model.generate(ids, attention_mask=mask, pixel_values_videos=pixels, max_new_tokens=steps,
                           do_sample=False, pad_token_id=0)
    for got, want in zip(batch[:, ids.shape[1]:], singles):
        assert torch.equal(got, want)


def test_text_path_skips_the_stab_in_eval_and_keeps_it_in_the_graph_in_training(vocab):
    torch.manual_seed(1)
    model = VideoPandaForCausalLM(tiny_config(vocab))
    calls = []
    model.model.video_tower.register_forward_hook(lambda *args: calls.append(1))
    ids = torch.tensor([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        out = model.eval()(input_ids=ids, labels=ids)
    assert calls == [] and out.loss is not None
    model.train()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    assert calls == [1]  # ZeRO-3 lockstep: the visual modules run on a dummy chunk
    visual = list(model.model.video_tower.named_parameters()) + list(model.model.video_projector.named_parameters())
    assert all(not p.grad.any() for _, p in visual if p.grad is not None)  # zero-weighted: the dummy adds nothing
    assert model.model.video_projector[0].weight.grad is not None  # but the modules are in the graph
    assert model.model.video_tower.lsd.query.weight.grad is not None
    assert model.lm_head.weight.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def distilling(vocab):
    torch.manual_seed(2)
    model = VideoPandaForCausalLM(tiny_config(vocab))
    teacher = LanguageBindVideoTower(TeacherConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                                   num_hidden_layers=2, image_size=SIZE // 2, num_frames=4))
    for p in teacher.parameters():
        torch.nn.init.normal_(p, std=0.1)
    head = DistillationHead(llm_width=64, teacher_width=32, num_heads=4)
    model.enable_distillation(teacher, head)
    return model


def teacher_video(v: torch.Tensor) -> torch.Tensor:
    """A 28 px teacher tensor with the student's mask, downsampled."""
    c, t = v.shape[:2]
    small = torch.nn.functional.avg_pool2d(v.flatten(0, 1), 2).view(c, t, 4, SIZE // 2, SIZE // 2)
    small[:, :, 3] = (small[:, :, 3] > 0.5).float()
    return small


def test_distillation_loss_uses_the_grid_positions_of_content_frames(distilling):
    model = distilling.eval()
    rows, videos = mixed_batch()
    ids, mask = padded(rows)
    labels = ids.masked_fill(ids < 0, IGNORE_INDEX).masked_fill(mask == 0, IGNORE_INDEX)
    teachers = [None if v is None else teacher_video(v) for v in videos]
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, labels=labels, videos=videos, teacher_videos=teachers)
        assert out.distill_loss > 0
        torch.testing.assert_close(out.loss, out.lm_loss + out.distill_loss)
        # independent: positions written out from the known prompt layout (text prefix, 7- or 5-token frames)
        hidden = model(input_ids=ids, attention_mask=mask, videos=videos, output_hidden_states=True).hidden_states
        layers = distill_layer_indices(2)
        student, grids, feats, valid = [], [], [], []
        layouts = [(3, [(2, 2)] * 8, 8), (2, [(1, 2)] * 6 + [(2, 2)] * 2, 6)]  # prefix, grids, content frames
        for b, (prefix, frame_grids, content) in enumerate(layouts):
            start = prefix
            t_feats = model.model.video_teacher(teachers[b])
            t_valid = torch.nn.functional.avg_pool2d(teachers[b][:, :, 3].flatten(0, 1), 14) >= 0.5
            for k, (r, c) in enumerate(frame_grids):
                if k < content:
                    pos = [start + 1 + i * (c + 1) + j for i in range(r) for j in range(c)]
                    student.append(model.model.video_tower_compressor([hidden[l][b, pos] for l in layers]))
                    grids.append((r, c))
                    feats.append(t_feats[k])
                    valid.append(t_valid[k])
                start += 1 + r * (c + 1)
        expected = distillation_loss(student, grids, torch.stack(feats), torch.stack(valid))
    torch.testing.assert_close(out.distill_loss, expected, rtol=1e-5, atol=1e-6)


def test_distillation_trains_head_stab_and_projector_and_runs_on_text_only_batches(distilling):
    model = distilling.train()
    model.zero_grad()
    rows, videos = mixed_batch()
    ids, mask = padded(rows)
    labels = ids.masked_fill(ids < 0, IGNORE_INDEX).masked_fill(mask == 0, IGNORE_INDEX)
    out = model(input_ids=ids, attention_mask=mask, labels=labels, videos=videos,
                teacher_videos=[None if v is None else teacher_video(v) for v in videos])
    out.loss.backward()
    for part in (model.model.video_tower_compressor, model.model.video_tower.lsd, model.model.video_projector):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None for p in model.model.video_teacher.parameters())
    model.zero_grad()
    text = torch.tensor([[1, 5, 6, 7]])
    out = model(input_ids=text, labels=text, videos=[None], teacher_videos=[None])
    assert out.distill_loss == 0 and torch.equal(out.loss, out.lm_loss + out.distill_loss)
    out.loss.backward()
    head_grads = [p.grad for p in model.model.video_tower_compressor.parameters()]
    assert all(g is not None and not g.any() for g in head_grads)  # in the graph (ZeRO-3), contributing 0
    model.eval()


def test_auto_class_builds_our_model(vocab):
    model = AutoModelForCausalLM.from_config(tiny_config(vocab))
    assert type(model) is VideoPandaForCausalLM
