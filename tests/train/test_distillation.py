"""Distillation head (layer fusion, checkpoint names), the cosine distillation loss, and how the training
model hands videos to the teacher."""
import math

import pytest
import torch
from helpers.released import head_names_and_shapes

from videopanda.train.teacher import LanguageBindVideoTower, TeacherConfig, init_teacher_weights
from videopanda.model.videopanda import VideoPandaConfig, VideoPandaForCausalLM
from videopanda.train.distillation import DistillationHead, distill_layer_indices, distillation_loss
from videopanda.train.training_model import TrainingModel


def test_layer_indices():
    assert distill_layer_indices(32) == [32, 28, 24, 20, 16, 12, 8, 4, 0]
    assert distill_layer_indices(2) == [2, 1, 0, 0, 0, 0, 0, 0, 0]


def test_head_parameters_and_fusion_match_a_hand_computation():
    torch.manual_seed(0)
    head = DistillationHead(llm_width=24, teacher_width=16, num_heads=4)
    names = {n: tuple(p.shape) for n, p in head.state_dict().items()}
    assert names == head_names_and_shapes(24, 16)  # the EVE / released checkpoint names, 31 tensors
    assert len(names) == 31
    states = [torch.randn(5, 24) for _ in range(9)]
    out = head(states)
    assert out.shape == (5, 16)
    with torch.no_grad():
        proj = [head.norm_layer[i](states[i]) for i in range(9)]
        expected = torch.empty(5, 16)
        for tok in range(5):
            fused = []
            for h in range(4):
                q = proj[0][tok, h * 4:(h + 1) * 4]
                ks = torch.stack([proj[i][tok, h * 4:(h + 1) * 4] for i in range(1, 9)])
                weights = torch.softmax(ks @ q / math.sqrt(16), dim=0)  # scale: full width 16, not head width 4
                fused.append(weights @ ks)
            expected[tok] = head.input_layer(states[0][tok]) + head.output_layer(torch.cat(fused))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="9 layer states"):
        head(states[:8])


def _mask(rows, cols, top=0, left=0, size=4):
    m = torch.zeros(size, size, dtype=torch.bool)
    m[top:top + rows, left:left + cols] = True
    return m


def test_loss_values_padding_and_pooling():
    torch.manual_seed(0)
    teacher = torch.randn(3, 16, 8)
    # frame 0: full 4x4 grid; frame 1: a 2x4 letterboxed box in rows 1-2; frame 2: padding (no content).
    valid = torch.stack([_mask(4, 4), _mask(2, 4, top=1), torch.zeros(4, 4, dtype=torch.bool)])
    grid_t = teacher.view(3, 4, 4, 8)
    student = [grid_t[0].reshape(16, 8).clone(), grid_t[1, 1:3].reshape(8, 8).clone(), torch.randn(4, 8)]
    grids = [(4, 4), (2, 4), (2, 2)]
    assert distillation_loss(student, grids, teacher, valid).item() == pytest.approx(0.0, abs=1e-6)
    flipped = [-student[0], student[1], torch.randn(4, 8)]
    assert distillation_loss(flipped, grids, teacher, valid).item() == pytest.approx(1.0, abs=1e-5)  # mean of 2 and 0
    # A 2x2 student grid against the full 4x4 teacher: the target is the 2x2 average pool.
    pooled = torch.nn.functional.avg_pool2d(grid_t[0].permute(2, 0, 1), 2).flatten(1).T
    loss = distillation_loss([pooled], [(2, 2)], teacher[:1], valid[:1])
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_loss_without_content_is_zero_but_connected():
    student = [torch.randn(4, 8, requires_grad=True)]
    loss = distillation_loss(student, [(2, 2)], torch.randn(1, 16, 8), torch.zeros(1, 4, 4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert student[0].grad is not None and not student[0].grad.any()
    with pytest.raises(ValueError, match="must agree"):
        distillation_loss(student, [(2, 2)], torch.randn(2, 16, 8), torch.ones(2, 4, 4, dtype=torch.bool))


def test_head_learns_to_match_teacher_on_a_fixed_batch():
    torch.manual_seed(0)
    head = DistillationHead(llm_width=32, teacher_width=16, num_heads=4)
    states = [torch.randn(16, 32) for _ in range(9)]
    teacher = torch.randn(1, 16, 16)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = distillation_loss([head(states)], [(4, 4)], teacher, valid)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]


def _model_with_teacher(num_frames: int, lockstep: bool = False) -> TrainingModel:
    torch.manual_seed(0)
    config = VideoPandaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                              num_attention_heads=4, video_hidden_size=64, mm_hidden_size=64, image_size=56,
                              teacher_image_size=28, num_frames=num_frames, pad_token_id=0)
    teacher = LanguageBindVideoTower(TeacherConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                                   num_hidden_layers=2, image_size=28, num_frames=8))
    init_teacher_weights(teacher, seed=1, std=0.2, temporal_std=0.5)
    return TrainingModel(VideoPandaForCausalLM(config), teacher,
                         DistillationHead(llm_width=64, teacher_width=32, num_heads=4), lockstep=lockstep)


@pytest.mark.parametrize("num_frames", [4, 8])
def test_the_model_hands_the_teacher_whole_videos_and_never_mixes_two(num_frames):
    """A batch of two videos: the teacher's features are those of each video alone (a temporal group of 8
    frames for 8-frame videos; for 4-frame videos one group each, not one 8-frame group of both)."""
    model = _model_with_teacher(num_frames).eval()
    teacher = model.teacher
    chunks = num_frames // 4
    generator = torch.Generator().manual_seed(3)
    videos = torch.rand(2, chunks, 4, 4, 56, 56, generator=generator)
    teacher_videos = torch.rand(2, chunks, 4, 4, 28, 28, generator=generator)
    videos[:, :, :, 3] = 1
    teacher_videos[:, :, :, 3] = 1
    run = [64] * 7 * num_frames  # 56 px frames: 2x2 grid, 7 tokens each; 64 = the placeholder id (vocab_size)
    ids = torch.tensor([[1] + run + [5, 6]] * 2)
    labels = ids.masked_fill(ids == 64, -100)
    seen = []
    handle = teacher.register_forward_hook(lambda module, args, kwargs, out: seen.append(out), with_kwargs=True)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, labels=labels, pixel_values_videos=videos,
                        teacher_pixel_values_videos=teacher_videos)
    finally:
        handle.remove()
    assert out.distill_loss > 0 and len(seen) == 1
    with torch.no_grad():
        alone = torch.cat([teacher(v) for v in teacher_videos])
        if num_frames == 4:  # the wrong grouping: both 4-frame videos in one 8-frame group
            wrong = teacher(teacher_videos.flatten(0, 1))
        else:  # the wrong grouping: each 4-frame chunk on its own
            wrong = torch.cat([teacher(chunk[None]) for v in teacher_videos for chunk in v])
    torch.testing.assert_close(seen[0], alone, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(wrong, alone, atol=1e-3)


def test_text_only_training_step_runs_the_teacher_on_one_blank_video_in_lockstep_only():
    text = torch.tensor([[1, 5, 6, 7]])
    for lockstep, expected in ((True, [torch.Size([2, 4, 3, 28, 28])]), (False, [])):
        model = _model_with_teacher(8, lockstep=lockstep).train()
        seen = []
        handle = model.teacher.register_forward_hook(lambda module, args, out: seen.append(args[0].shape))
        try:
            out = model(input_ids=text, labels=text)
        finally:
            handle.remove()
        assert seen == expected
        assert (out.distill_loss == 0) if lockstep else (out.distill_loss is None)
