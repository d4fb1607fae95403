"""`TrainingModel`: the Video-Panda model as training runs it, with the teacher and distillation head.

Shapes: B = batch, S = sequence length (the processor's: each frame a run of placeholder ids), L = LLM
width, V = videos, C = chunks, T = frames per chunk, D_t = teacher width.

The inference model (`VideoPandaForCausalLM`) stays plain; this module holds it as `model` together with
the frozen LanguageBind teacher (`teacher`) and the trainable `DistillationHead` (`distill_head`), both
optional (no teacher: LM loss only). Its `forward` takes the collator's batch (`input_ids`,
`attention_mask`, `labels`, `pixel_values_videos` (V, C, T, 4, H, W), `teacher_pixel_values_videos`
(V, C, T, 4, H_t, W_t)) and returns a `TrainingOutput`: loss = lm_loss + distill_loss.

- Embedding: `model.embed_inputs` scatters the projected STAB tokens over the placeholder runs and
  returns each frame's LSD grid; the LLM then runs on those embeddings (`output_hidden_states` only when
  distilling), and its memory-saving LM loss is the model's own. All videos of the batch go through the
  STAB in one call that tells them apart, so in training its BatchNorm normalises each video alone and
  a step equals the original's loop of one STAB call per video.
- Distillation (the paper's): the k-th visual token of the batch sits at the k-th placeholder position in
  row-major order (that is how `masked_scatter` fills them), so frame f's tokens are the placeholder
  positions [offset_f, offset_f + n_f), n_f = `num_tokens(grid_f)`; its grid tokens are
  `grid_token_index(grid_f)` of those (context and row-split tokens dropped). Frames whose student mask
  is all zero (padding frames of short videos) are left out. The head reads hidden states
  `distill_layer_indices` at those positions; the teacher gets all videos in one call (`num_videos=V`,
  so its temporal groups never mix two videos), and `distillation_loss` compares them (cosine, or the
  MSE of the paper's Table 4 with `distill_loss="mse"`).
- Lockstep (`lockstep=True`, what `videopanda train` sets): every rank must run the same modules each
  step (ZeRO-3 gathers parameters in module hooks; DDP and ZeRO-1/2 reduce the same gradients on every
  rank), and with the LLM frozen (prealign) a text-only batch would otherwise have no gradient at all.
  A batch without video then still runs the STAB and projector on one dummy
  chunk (T frames of 2x2 patches) before the embedding, where videos run, adding 0 x their output to the
  embeddings (the STAB's BatchNorm on its running statistics, which the dummy leaves alone); with distillation the head (on the first position's states) and the teacher (on one
  blank video) run after the LLM, where the real distillation runs, and the distillation loss is
  0 x the head's output. Only in training mode with gradients on.
- `parts()` adds "distill_head" and "teacher" (always frozen) to the model's parts.
- Saving: `released_state_dict` turns this module's state dict into the released key names (the
  model's keys, the head under `model.video_tower_compressor.`, the teacher under `model.video_teacher.`
  only when asked), and `save_pretrained` writes the inference model's folder with them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.utils import ModelOutput

from videopanda.constants import IGNORE_INDEX
from videopanda.model.checkpoint import HEAD_PREFIX, TEACHER_PREFIX, released_key_to_model_key

MODEL_KEY, HEAD_KEY, TEACHER_KEY = "model.", "distill_head.", "teacher."
"""Prefixes of this module's state-dict keys: the wrapped model, the head, the teacher."""


@dataclass
class TrainingOutput(ModelOutput):
    """`loss` = lm_loss + distill_loss when distilling; both parts are also reported alone (distill_loss
    None when not distilling or, outside lockstep, for a batch without video)."""

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    distill_loss: torch.FloatTensor | None = None


class TrainingModel(nn.Module):
    """A `VideoPandaForCausalLM` with the optional teacher and distillation head; see the module docstring."""

    main_input_name = "input_ids"

    def __init__(self, model: nn.Module, teacher: nn.Module | None = None, distill_head: nn.Module | None = None,
                 lockstep: bool = False, distill_loss: str = "cosine"):
        super().__init__()
        from videopanda.train.experiment import DISTILL_LOSSES

        if distill_loss not in DISTILL_LOSSES:
            raise ValueError(f"distill_loss must be one of {DISTILL_LOSSES}, got {distill_loss!r}")
        self.distill_loss = distill_loss
        if (teacher is None) != (distill_head is None):
            raise ValueError("distillation needs both a teacher and a distillation head")
        self.model = model
        self.distill_head = distill_head
        self.teacher = teacher
        if teacher is not None:
            teacher.requires_grad_(False)
            teacher.eval()
        self.lockstep = lockstep
        self.keep_eval: list[nn.Module] = []
        """Frozen modules that stay in eval mode while training (their BatchNorm statistics too)."""

    def train(self, mode: bool = True) -> "TrainingModel":
        super().train(mode)
        for module in self.keep_eval:
            module.eval()
        return self

    # ---- what the Trainer expects of a model -----------------------------------------------------

    @property
    def config(self):
        return self.model.config

    @property
    def distilling(self) -> bool:
        return self.distill_head is not None

    def activation_checkpointing_enable(self, **kwargs) -> None:
        self.model.activation_checkpointing_enable(**kwargs)

    def parts(self) -> dict[str, tuple[nn.Module, ...]]:
        """The model's parts plus "distill_head" and "teacher" when distilling."""
        parts = dict(self.model.parts())
        if self.distilling:
            parts["distill_head"] = (self.distill_head,)
            parts["teacher"] = (self.teacher,)
        return parts

    # ---- forward ---------------------------------------------------------------------------------

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None,
                pixel_values_videos: Tensor | None = None,
                teacher_pixel_values_videos: Tensor | None = None) -> TrainingOutput:
        """The collator's batch (module docstring) -> loss, lm_loss, distill_loss (0-d tensors or None)."""
        if labels is None:
            raise ValueError("TrainingModel needs labels (call the wrapped model for logits)")
        has_video = pixel_values_videos is not None and pixel_values_videos.shape[0] > 0
        lockstep = self.lockstep and self.training and torch.is_grad_enabled() and not has_video
        if has_video:
            embeds, grids = self.model.embed_inputs(input_ids, pixel_values_videos)
        else:
            zero = self._lockstep_visual() if lockstep else None
            embeds, grids = self.model.embed_inputs(input_ids)
            if zero is not None:
                embeds = embeds + zero.to(embeds.dtype)
        read_states = self.distilling and (has_video or lockstep)
        out = self.model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels,
                         output_hidden_states=read_states)
        distill_loss = None
        if self.distilling and has_video:
            distill_loss = self._distillation(out.hidden_states, input_ids, grids, pixel_values_videos,
                                              teacher_pixel_values_videos)
        elif self.distilling and lockstep:
            distill_loss = self._lockstep_distillation(out.hidden_states)
        loss = out.loss if distill_loss is None else out.loss + distill_loss
        return TrainingOutput(loss=loss, lm_loss=out.loss, distill_loss=distill_loss)

    def _distillation(self, hidden_states: tuple[Tensor, ...], input_ids: Tensor, grids: list[tuple[int, int]],
                      pixels: Tensor, teacher_pixels: Tensor | None) -> Tensor:
        """Head on the LLM states at each content frame's grid positions vs the teacher's features."""
        from videopanda.train.distillation import distill_layer_indices, distillation_loss

        if teacher_pixels is None or teacher_pixels.shape[:3] != pixels.shape[:3]:
            raise ValueError(f"teacher_pixel_values_videos {None if teacher_pixels is None else tuple(teacher_pixels.shape)} "
                             f"does not match pixel_values_videos {tuple(pixels.shape)} in (videos, chunks, frames)")
        stab = self.model.model.video_tower
        device = hidden_states[0].device
        slots = (input_ids == self.config.image_token_id).nonzero().to(device)  # (N, 2), scatter order
        content = content_frames(pixels).tolist()
        picked, kept_grids, offset = [], [], 0
        for grid, keep in zip(grids, content):
            if keep:
                picked.append(offset + torch.tensor(stab.config.grid_token_index(grid), dtype=torch.long))
                kept_grids.append(grid)
            offset += stab.num_tokens(grid)
        index = torch.cat(picked).to(device) if picked else torch.zeros(0, dtype=torch.long, device=device)
        rows, cols = slots[index, 0], slots[index, 1]
        head = self.distill_head
        layers = distill_layer_indices(len(hidden_states) - 1, head.num_layers_used)
        student = head([hidden_states[i][rows, cols] for i in layers]).split([r * c for r, c in kept_grids])
        frames = teacher_pixels.flatten(0, 1)
        param = next(self.teacher.parameters())
        features = self.teacher(frames.to(device=param.device, dtype=param.dtype), num_videos=pixels.shape[0])
        keep = torch.tensor(content, device=features.device)
        valid = teacher_valid(frames, self.teacher.grid_size).to(features.device)
        return distillation_loss(list(student), kept_grids, features[keep], valid[keep], kind=self.distill_loss)

    def _lockstep_visual(self) -> Tensor:
        """STAB and projector on one dummy chunk (T frames of 2x2 patches) -> a 0-d zero connected to both.

        The STAB's BatchNorm layers run on their running statistics for it (eval mode), so the dummy leaves
        them as they were: only videos update them, once per video, as the original's per-video calls."""
        cfg = self.config.stab_config
        side = cfg.patch_size * cfg.window
        frames = torch.zeros((1, 1, cfg.frames_per_chunk, 4, side, side))
        frames[:, :, :, 3] = 1
        norms = [m for m in self.model.model.video_tower.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and m.training]
        for norm in norms:
            norm.eval()
        try:
            tokens, _ = self.model.visual_tokens(frames)
        finally:
            for norm in norms:
                norm.train()
        return tokens.sum() * 0.0

    def _lockstep_distillation(self, hidden_states: tuple[Tensor, ...]) -> Tensor:
        """Head on the first position's states of sample 0, then the teacher on one blank video (C chunks of T
        frames), in the order of `_distillation` -> a 0-d float32 zero connected to the head."""
        from videopanda.train.distillation import distill_layer_indices

        head, teacher = self.distill_head, self.teacher
        layers = distill_layer_indices(len(hidden_states) - 1, head.num_layers_used)
        zero = head([hidden_states[i][0, :1] for i in layers]).float().sum() * 0.0
        size, t = teacher.config.image_size, self.config.frames_per_chunk
        param = next(teacher.parameters())
        teacher(torch.zeros((self.config.num_frames // t, t, 3, size, size), device=param.device, dtype=param.dtype))
        return zero

    # ---- saving ----------------------------------------------------------------------------------

    @staticmethod
    def released_state_dict(state_dict: dict[str, Tensor], save_teacher: bool = False) -> dict[str, Tensor]:
        """This module's state dict (or a ZeRO-3 consolidated one, same keys) -> the model's keys, the head
        under `model.video_tower_compressor.`, the teacher under `model.video_teacher.` (only with
        save_teacher). Raises ValueError on a key of none of the three parts."""
        out = {}
        for key, tensor in state_dict.items():
            if key.startswith(MODEL_KEY):
                out[key[len(MODEL_KEY):]] = tensor
            elif key.startswith(HEAD_KEY):
                out[HEAD_PREFIX + key[len(HEAD_KEY):]] = tensor
            elif key.startswith(TEACHER_KEY):
                if save_teacher:
                    out[TEACHER_PREFIX + key[len(TEACHER_KEY):]] = tensor
            else:
                raise ValueError(f"state-dict key {key!r} belongs to no part of the training model")
        return out

    def save_pretrained(self, folder: str | Path, state_dict: dict[str, Tensor] | None = None,
                        save_teacher: bool = False) -> None:
        """The inference model's folder (config.json, weights in the released key names, the head included)."""
        state = self.released_state_dict(self.state_dict() if state_dict is None else state_dict, save_teacher)
        self.model.save_pretrained(folder, state_dict=state)

    def load_released_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """The inverse of `released_state_dict`, for a folder's tensors in the released names (the STAB too):
        loads the model, and the head when distilling. Raises ValueError naming missing or unexpected tensors
        (the teacher, always loaded from its own folder, and the released aliases are neither)."""
        ours = {}
        for key, tensor in state_dict.items():
            name = released_key_to_model_key(key, include_training=self.distilling)
            if name is None:
                continue
            ours[HEAD_KEY + name[len(HEAD_PREFIX):] if name.startswith(HEAD_PREFIX) else MODEL_KEY + name] = tensor
        result = self.load_state_dict(ours, strict=False)
        missing = [k for k in result.missing_keys if not k.startswith(TEACHER_KEY)]
        if missing or result.unexpected_keys:
            raise ValueError(f"the tensors do not fit the training model: missing {sorted(missing)}, "
                             f"unexpected {sorted(result.unexpected_keys)}")

def content_frames(pixels: Tensor) -> Tensor:
    """pixel_values_videos (V, C, T, 4, H, W) -> (V*C*T,) bool in frame order: frames whose student mask is not all
    zero, the frames distillation compares (padding frames of short videos are not)."""
    return pixels[:, :, :, 3].flatten(3).ne(0).any(-1).flatten()


def loss_counts(batch: dict) -> tuple[int, int]:
    """A collated batch -> (supervised next tokens, content frames): what its LM loss and its distillation loss
    are means over."""
    labels = batch["labels"]
    pixels = batch.get("pixel_values_videos")
    frames = int(content_frames(pixels).sum()) if pixels is not None and pixels.shape[0] else 0
    return int(labels[:, 1:].ne(IGNORE_INDEX).sum()), frames


def teacher_valid(frames: Tensor, grid: int) -> Tensor:
    """(N, T, 4, S, S) teacher frames -> (N*T, grid, grid) bool: patches that are at least half real pixels."""
    mask = frames[:, :, 3].flatten(0, 1).float()
    return F.adaptive_avg_pool2d(mask, grid) >= 0.5


__all__ = ["TrainingModel", "TrainingOutput", "content_frames", "loss_counts", "teacher_valid"]
