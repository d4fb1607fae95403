"""Distillation head and loss (the paper's distillation; training only, driven by `training_model.TrainingModel`).

The head maps the LLM hidden states at a frame's visual grid positions, taken from nine layers
(hidden states 32, 28, ..., 4, 0 of a 32-layer LLM; 0 = input embeddings, 32 = final normed output),
to the teacher's width. Each layer has its own LayerNorm(L) + Linear(L -> D_t, no bias); the layer-32
projection is the query and the other eight are keys and values of one multi-head attention over the
layer axis (8 heads, scores scaled by D_t^-0.5, the full width, softmax over the 8 layers, no further
in-projections). Output = Linear(L -> D_t)(layer-32 state) + Linear(D_t -> D_t)(fused).

Parameter names are the checkpoint names of EVE (`model.vision_tower_compressor.*`) and of the
released Video-Panda (`model.video_tower_compressor.*`), so the head loads from both and this project's
folders store it under `model.video_tower_compressor.` + the same names, with no key map:
`norm_layer.{j}.0` LayerNorm(L) and `norm_layer.{j}.1` Linear(L, D_t, bias=False), where j reads
hidden state 32 - 4j (j = 0 is the layer-32 query); `input_layer` Linear(L, D_t) on the layer-32 state;
`output_layer` Linear(D_t, D_t) on the fused mix. 9 * 3 + 4 = 31 tensors. The checkpoints' teacher copies
inside the compressor (`clip_layer.*` in EVE, `teacher_layer.*` in Video-Panda) are not part of it.

Loss choices of this project: cosine similarity is computed in float32; when the student grid
differs from the teacher's valid box, the teacher box is average-pooled (`adaptive_avg_pool2d`) to the
student grid and a position counts as valid when at least half of its pooled teacher cells are valid.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from videopanda.train.experiment import DISTILL_LOSSES


def distill_layer_indices(num_llm_layers: int, num_layers_used: int = 9) -> list[int]:
    """Hidden-state indices the head reads, last first: 32, 28, ..., 0 for a 32-layer LLM.

    The stride is num_llm_layers / (num_layers_used - 1) rounded down (at least 1); a tiny LLM with
    fewer layers than that repeats indices rather than failing."""
    stride = max(1, num_llm_layers // max(1, num_layers_used - 1))
    return [max(0, num_llm_layers - i * stride) for i in range(num_layers_used)]


class DistillationHead(nn.Module):
    """Nine LLM layers (hidden states 32, 28, ..., 0) -> teacher width."""

    def __init__(self, llm_width: int, teacher_width: int = 1024, num_layers_used: int = 9, num_heads: int = 8):
        super().__init__()
        if teacher_width % num_heads:
            raise ValueError(f"teacher_width {teacher_width} not divisible by {num_heads} heads")
        if num_layers_used < 2:
            raise ValueError("the head fuses at least two layers (a query and one key)")
        self.num_layers_used = num_layers_used
        self.num_heads = num_heads
        self.teacher_width = teacher_width
        self.norm_layer = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(llm_width), nn.Linear(llm_width, teacher_width, bias=False))
            for _ in range(num_layers_used))
        self.input_layer = nn.Linear(llm_width, teacher_width)
        self.output_layer = nn.Linear(teacher_width, teacher_width)

    def forward(self, layer_states: Sequence[Tensor]) -> Tensor:
        """layer_states: `num_layers_used` tensors (n, L) in `distill_layer_indices` order, the last-layer (32)
        state FIRST (state j goes through `norm_layer[j]`) -> (n, teacher_width)."""
        if len(layer_states) != self.num_layers_used:
            raise ValueError(f"distillation head expects {self.num_layers_used} layer states, got {len(layer_states)}")
        projected = [proj(state) for proj, state in zip(self.norm_layer, layer_states)]
        n, d, h = projected[0].shape[0], self.teacher_width, self.num_heads
        query = projected[0].view(n, h, 1, d // h)                                   # (n, h, 1, d/h)
        keys = torch.stack(projected[1:], dim=1).view(n, -1, h, d // h).transpose(1, 2)  # (n, h, K, d/h)
        scores = (query @ keys.transpose(-1, -2)) * d ** -0.5                          # (n, h, 1, K)
        fused = (scores.softmax(dim=-1) @ keys).reshape(n, d)
        return self.input_layer(layer_states[0]) + self.output_layer(fused)


def _valid_box(valid: Tensor) -> tuple[slice, slice] | None:
    """Bounding box of the True cells of a (rows, cols) mask, or None when none is True."""
    rows = valid.any(dim=1).nonzero().flatten()
    cols = valid.any(dim=0).nonzero().flatten()
    if rows.numel() == 0:
        return None
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def distillation_loss(student: list[Tensor], grids: list[tuple[int, int]],
                      teacher: Tensor, teacher_valid: Tensor, kind: str = "cosine") -> Tensor:
    """student[i]: (rows_i*cols_i, D_t) for frame i (grid tokens only, row-major);
    teacher: (N, G*G, D_t); teacher_valid: (N, G, G) bool patch mask of the teacher frame (G = 16).
    Per frame, at valid positions (teacher average-pooled to the student grid where they differ):
    kind "cosine" (the paper's loss): 1 - mean cosine; kind "mse" (paper Table 4): the mean over positions of the
    mean squared difference over the D_t features. Mean over frames with content (teacher mask not all
    False); padding frames contribute nothing.
    Returns a float32 scalar that stays connected to every student tensor (zero when no frame has content)."""
    if kind not in DISTILL_LOSSES:
        raise ValueError(f"distillation_loss: kind must be one of {DISTILL_LOSSES}, got {kind!r}")
    n, g = teacher_valid.shape[0], teacher_valid.shape[-1]
    if not (len(student) == len(grids) == n == teacher.shape[0]):
        raise ValueError(f"distillation_loss: {len(student)} student frames, {len(grids)} grids, "
                         f"{teacher.shape[0]} teacher frames and {n} masks must agree")
    teacher_grid = teacher.float().view(n, g, g, -1)
    losses = []
    for tokens, (rows, cols), feats, valid in zip(student, grids, teacher_grid, teacher_valid):
        box = _valid_box(valid)
        if box is None or tokens.numel() == 0:
            continue
        if tokens.shape[0] != rows * cols:
            raise ValueError(f"distillation_loss: student frame has {tokens.shape[0]} tokens for grid {rows}x{cols}")
        target = feats[box].permute(2, 0, 1)                    # (D_t, r, c)
        mask = valid[box].float()[None]                         # (1, r, c)
        if target.shape[1:] != (rows, cols):
            target = F.adaptive_avg_pool2d(target, (rows, cols))
            mask = F.adaptive_avg_pool2d(mask, (rows, cols))
        keep = mask.flatten() >= 0.5
        if not keep.any():
            continue
        if kind == "cosine":
            cos = F.cosine_similarity(tokens.float(), target.flatten(1).T, dim=-1)
            losses.append(1.0 - cos[keep].mean())
        else:
            squared = (tokens.float() - target.flatten(1).T).pow(2).mean(dim=-1)
            losses.append(squared[keep].mean())
    if not losses:
        return sum((t.float().sum() * 0.0 for t in student), teacher.new_zeros((), dtype=torch.float32))
    return torch.stack(losses).mean()


__all__ = ["DistillationHead", "distill_layer_indices", "distillation_loss"]
