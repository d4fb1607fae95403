"""Distillation head (layer fusion) and the cosine distillation loss."""
import math

import pytest
import torch

from videopanda.model.distill import DistillationHead, distill_layer_indices, distillation_loss


def test_layer_indices():
    assert distill_layer_indices(32) == [32, 28, 24, 20, 16, 12, 8, 4, 0]
    assert distill_layer_indices(2) == [2, 1, 0, 0, 0, 0, 0, 0, 0]


def test_head_parameters_and_fusion_match_a_hand_computation():
    torch.manual_seed(0)
    head = DistillationHead(llm_width=24, teacher_width=16, num_heads=4)
    names = {n: tuple(p.shape) for n, p in head.named_parameters()}
    assert names["layer_proj.0.0.weight"] == (24,) and names["layer_proj.8.1.weight"] == (16, 24)
    assert "layer_proj.0.1.bias" not in names
    assert names["residual_proj.weight"] == (16, 24) and names["residual_proj.bias"] == (16,)
    assert names["fused_proj.weight"] == (16, 16)
    states = [torch.randn(5, 24) for _ in range(9)]
    out = head(states)
    assert out.shape == (5, 16)
    with torch.no_grad():
        proj = [head.layer_proj[i](states[i]) for i in range(9)]
        expected = torch.empty(5, 16)
        for tok in range(5):
            fused = []
            for h in range(4):
                q = proj[0][tok, h * 4:(h + 1) * 4]
                ks = torch.stack([proj[i][tok, h * 4:(h + 1) * 4] for i in range(1, 9)])
                weights = torch.softmax(ks @ q / math.sqrt(16), dim=0)  # scale: full width 16, not head width 4
                fused.append(weights @ ks)
            expected[tok] = head.residual_proj(states[0][tok]) + head.fused_proj(torch.cat(fused))
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
