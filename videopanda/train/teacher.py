"""The LanguageBind video tower: the frozen distillation teacher of training (the paper's distillation).

A CLIP ViT-L/14 vision transformer with temporal attention in every layer. It takes whole videos:
in each encoder layer the tokens are regrouped per position across a group of G consecutive frames of
one video, the layer's `temporal_embedding[:, :G]` is added and
`x = x + temporal_attn(temporal_layer_norm1(x))` runs over the frame axis; then the usual CLIP pre-LN
spatial self-attention and MLP follow. G is the config's `num_frames` F (8 for LanguageBind_Video_merge),
as in LanguageBind, whatever the chunking of the student (4-frame chunks): the 8 frames of a video
attend to each other. Groups never straddle two videos of a batch (`forward(frames, num_videos)`).

Choices of this project (recorded here):
- "Hidden states of the second-to-last layer" follows the Hugging Face CLIP convention that
  `hidden_states[0]` is the embedding output after `pre_layrnorm` and `hidden_states[k]` the output of
  encoder layer k (1-based); `hidden_states[-2]` is therefore the output of layer 23 of 24 (0-based
  index 22), taken before `post_layernorm`, which never applies to it. The last layer is kept (so the
  module holds exactly the checkpoint's tensors) but never run. `select_layer` makes this explicit.
- Frame counts (`temporal_group`): a video of n frames, n a multiple of F, is n / F groups of F
  consecutive frames (what LanguageBind's reshape by F does); a video shorter than F (the tiny training
  tests use 4-frame videos with an 8-frame teacher, where LanguageBind's reshape would fail) is one
  group of all n frames with `temporal_embedding[:, :n]`; any other n (more than F, not a multiple) is
  a ValueError, since the groups would have to cut a video at arbitrary frames.
- The temporal embedding and attention run for every group size, including 1.
- Patch dropout (`force_patch_dropout` in LanguageBind configs) only acts in training mode, which
  this module never enters: `train()` always keeps it in eval mode.
"""
from __future__ import annotations

import json
import math
import pickle
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from transformers.activations import ACT2FN

from videopanda.log import get_logger
from videopanda.model.checkpoint import read_prefixed_tensors

logger = get_logger(__name__)

WEIGHT_PREFIX = "vision_model."
"""Prefix of the vision tower's tensors in a LanguageBind checkpoint (the text tower is ignored)."""

IGNORED_KEYS = frozenset({"embeddings.position_ids"})
"""Buffers older transformers versions saved that carry no weights."""


class TeacherFolderError(Exception):
    """A teacher folder is missing, incomplete or does not match the module; the message names what."""


@dataclass
class TeacherConfig:
    """Vision-tower fields of a LanguageBind config (`vision_config` in the released config.json)."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_attention_heads: int = 16
    num_hidden_layers: int = 24
    image_size: int = 224
    patch_size: int = 14
    num_channels: int = 3
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    num_frames: int = 8
    force_patch_dropout: float = 0.0
    select_layer: int = -2

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def from_dict(cls, raw: dict) -> "TeacherConfig":
        """Accepts LanguageBind's nested layout (`{"vision_config": {...}}`) or a flat dict; unknown keys are ignored."""
        values = raw.get("vision_config", raw)
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in known})
        if config.hidden_act not in ACT2FN:
            raise ValueError(f"teacher hidden_act {config.hidden_act!r} is not a known activation")
        if config.num_frames < 1:
            raise ValueError(f"teacher num_frames must be at least 1, got {config.num_frames}")
        if config.hidden_size % config.num_attention_heads:
            raise ValueError(f"teacher hidden_size {config.hidden_size} not divisible by {config.num_attention_heads} heads")
        if not -config.num_hidden_layers - 1 <= config.select_layer < config.num_hidden_layers + 1:
            raise ValueError(f"teacher select_layer {config.select_layer} out of range for {config.num_hidden_layers} layers")
        return config

    @property
    def layers_to_run(self) -> int:
        """How many encoder layers produce `hidden_states[select_layer]` (hidden_states has layers + 1 entries)."""
        return self.select_layer % (self.num_hidden_layers + 1)


class _Attention(nn.Module):
    """CLIP multi-head attention with separate q/k/v/out projections (all with bias), scale head_dim^-0.5."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, S, width) -> (B, S, width), full (non-causal) attention over S."""
        b, s, d = x.shape
        heads = [p(x).view(b, s, self.num_heads, d // self.num_heads).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj)]
        out = F.scaled_dot_product_attention(*heads)
        return self.out_proj(out.transpose(1, 2).reshape(b, s, d))


class _MLP(nn.Module):
    def __init__(self, config: TeacherConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.act = ACT2FN[config.hidden_act]

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _EncoderLayer(nn.Module):
    def __init__(self, config: TeacherConfig):
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.temporal_embedding = nn.Parameter(torch.zeros(1, config.num_frames, d))
        self.temporal_layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.temporal_attn = _Attention(d, config.num_attention_heads)
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.self_attn = _Attention(d, config.num_attention_heads)
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = _MLP(config)

    def forward(self, x: Tensor, group: int) -> Tensor:
        """x (N, P, D), N a multiple of `group`, each `group` consecutive frames one temporal group -> (N, P, D)."""
        n, p, d = x.shape
        # (N, P, D) -> (N/G * P, G, D): one sequence per group and position, across the group's frames.
        x = x.view(n // group, group, p, d).transpose(1, 2).reshape(-1, group, d)
        x = x + self.temporal_embedding[:, :group]
        x = x + self.temporal_attn(self.temporal_layer_norm1(x))
        x = x.view(n // group, p, group, d).transpose(1, 2).reshape(n, p, d)
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class _Embeddings(nn.Module):
    def __init__(self, config: TeacherConfig):
        super().__init__()
        d = config.hidden_size
        self.class_embedding = nn.Parameter(torch.zeros(d))
        self.patch_embedding = nn.Conv2d(config.num_channels, d, config.patch_size, config.patch_size, bias=False)
        self.position_embedding = nn.Embedding(config.num_patches + 1, d)
        self.register_buffer("position_ids", torch.arange(config.num_patches + 1), persistent=False)

    def forward(self, pixels: Tensor) -> Tensor:
        """pixels (N, 3, S, S) -> (N, 1 + (S/p)^2, D)."""
        patches = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        cls = self.class_embedding.view(1, 1, -1).expand(patches.shape[0], 1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding(self.position_ids)


class _VisionModel(nn.Module):
    """Attribute names mirror the checkpoint keys under `vision_model.`."""

    def __init__(self, config: TeacherConfig):
        super().__init__()
        self.embeddings = _Embeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(_EncoderLayer(config) for _ in range(config.num_hidden_layers))
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)


class LanguageBindVideoTower(nn.Module):
    """Frozen LanguageBind video encoder. Always in eval mode; `forward` runs under no_grad."""

    def __init__(self, config: TeacherConfig | None = None):
        super().__init__()
        self.config = config or TeacherConfig()
        self.vision_model = _VisionModel(self.config)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LanguageBindVideoTower":
        """Stays in eval mode whatever the caller (e.g. the Trainer's `model.train()`) asks."""
        return super().train(False)

    @property
    def grid_size(self) -> int:
        return self.config.image_size // self.config.patch_size

    def temporal_group(self, frames_per_video: int) -> int:
        """Frames per temporal-attention group for videos of `frames_per_video` frames: the config's
        num_frames F, or all of them for a video shorter than F. Raises ValueError (naming both counts)
        when a video is longer than F and not a multiple of it."""
        f = self.config.num_frames
        if frames_per_video < 1:
            raise ValueError(f"teacher got videos of {frames_per_video} frames")
        if frames_per_video <= f:
            return frames_per_video
        if frames_per_video % f:
            raise ValueError(f"teacher got videos of {frames_per_video} frames, which do not split into the "
                             f"{f}-frame groups of its temporal attention (config num_frames {f})")
        return f

    @torch.no_grad()
    def forward(self, frames: Tensor, num_videos: int = 1) -> Tensor:
        """frames (C, T, 3 or 4, S, S) normalised RGB (+ a mask channel, dropped): the chunks of
        `num_videos` videos, each video's C / num_videos chunks consecutive and in time order ->
        features (C*T, (S/p)^2, D): `hidden_states[select_layer]` with the class token dropped.
        Temporal attention spans `temporal_group(C*T / num_videos)` consecutive frames of one video."""
        if frames.dim() != 5 or frames.shape[2] not in (3, 4):
            raise ValueError(f"teacher expects frames (C, T, 3|4, H, W), got {tuple(frames.shape)}")
        c, t, _, h, w = frames.shape
        size = self.config.image_size
        if (h, w) != (size, size):
            raise ValueError(f"teacher expects {size}x{size} frames, got {h}x{w}")
        if num_videos < 1 or c % num_videos:
            raise ValueError(f"teacher got {c} chunks for {num_videos} videos "
                             "(each video needs the same whole number of chunks)")
        group = self.temporal_group(c // num_videos * t)
        vm = self.vision_model
        x = vm.pre_layrnorm(vm.embeddings(frames[:, :, :3].reshape(c * t, 3, h, w)))
        for layer in vm.encoder.layers[: self.config.layers_to_run]:
            x = layer(x, group)
        return x[:, 1:]

    # ---- folders -------------------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write `config.json` (LanguageBind's nested `vision_config` layout) and `model.safetensors`
        with `vision_model.*` keys: the layout `from_pretrained` reads."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = {"model_type": "LanguageBindVideo", "vision_config": asdict(self.config)}
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        tensors = {f"{WEIGHT_PREFIX}{k}": v.detach().contiguous() for k, v in self.vision_model.state_dict().items()}
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, dtype: torch.dtype | None = None) -> "LanguageBindVideoTower":
        """Build from a LanguageBind folder: config.json (nested or flat) and the `vision_model.*` tensors
        of its weights (safetensors or .bin, single or sharded). Raises `TeacherFolderError` naming the
        folder, and every missing or unexpected key, when they do not match."""
        folder = Path(folder)
        config_path = folder / "config.json"
        if not folder.is_dir():
            raise TeacherFolderError(f"teacher folder {folder} does not exist")
        if not config_path.is_file():
            raise TeacherFolderError(f"teacher folder {folder} has no config.json")
        try:
            config = TeacherConfig.from_dict(json.loads(config_path.read_text()))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise TeacherFolderError(f"teacher config {config_path} is invalid: {err}") from err
        try:
            raw = read_prefixed_tensors(folder, (WEIGHT_PREFIX,))
        except (FileNotFoundError, ValueError, pickle.UnpicklingError) as err:
            raise TeacherFolderError(f"teacher folder: {err}") from err
        state = {k[len(WEIGHT_PREFIX):]: v for k, v in raw.items() if k[len(WEIGHT_PREFIX):] not in IGNORED_KEYS}
        if not state:
            raise TeacherFolderError(f"teacher folder {folder} holds no `{WEIGHT_PREFIX}*` tensors")
        tower = cls(config)
        expected = tower.vision_model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong_shape = sorted(f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}" for k in set(state) & set(expected)
                             if state[k].shape != expected[k].shape)
        if missing or unexpected or wrong_shape:
            parts = [f"teacher weights in {folder} do not match its config.json"]
            parts += [f"missing: {', '.join(WEIGHT_PREFIX + k for k in missing)}"] if missing else []
            parts += [f"unexpected: {', '.join(WEIGHT_PREFIX + k for k in unexpected)}"] if unexpected else []
            parts += [f"wrong shape: {', '.join(wrong_shape)}"] if wrong_shape else []
            raise TeacherFolderError("; ".join(parts))
        tower.vision_model.load_state_dict(state, strict=True)
        if dtype is not None:
            tower.to(dtype)
        logger.info("loaded LanguageBind teacher from %s: %d layers (runs %d), width %d, %.1fM parameters",
                    folder, config.num_hidden_layers, config.layers_to_run, config.hidden_size,
                    sum(p.numel() for p in tower.parameters()) / 1e6)
        return tower


def smooth_position_embedding(grid: int, width: int, frequencies: int, std: float,
                               generator: torch.Generator) -> Tensor:
    """(grid*grid, width) patch position embeddings that change smoothly over the grid, as a trained ViT's do.

    Features cos(pi k u) and cos(pi k v), k = 1..frequencies, of the patch centre's normalised column u
    and row v (in (0, 1)); each feature standardised over the grid; mapped to `width` dims by a random
    normal matrix; scaled to element std `std`. With k = 1 the code is monotone along each axis, so
    "further right" is one direction of the feature space rather than a per-patch lookup."""
    centres = (torch.arange(grid) + 0.5) / grid
    k = torch.arange(1, frequencies + 1)
    codes = torch.cos(math.pi * k[None, :] * centres[:, None])                       # (grid, K)
    per_patch = torch.cat([codes[None].expand(grid, grid, frequencies),              # column features
                           codes[:, None].expand(grid, grid, frequencies)], -1)      # row features
    per_patch = per_patch.reshape(grid * grid, 2 * frequencies)
    per_patch = (per_patch - per_patch.mean(0)) / per_patch.std(0)
    mixed = per_patch @ (torch.randn(2 * frequencies, width, generator=generator) / math.sqrt(2 * frequencies))
    return mixed / mixed.std() * std


def init_teacher_weights(tower: LanguageBindVideoTower, seed: int = 0, std: float = 0.02,
                         position_std: float | None = None, patch_std: float | None = None,
                         position_frequencies: int = 0, temporal_std: float | None = None) -> LanguageBindVideoTower:
    """Random weights for tiny test / quickstart teachers: normal(0, std) matrices and embeddings, unit
    LayerNorms, zero biases; the spatial position embeddings get `position_std` and the patch embedding
    (what a patch shows) `patch_std` instead, when given. With `position_frequencies` > 0 the patch
    positions (not the class token's) are `smooth_position_embedding` with that many frequencies per
    axis, drawn from a second generator (seed + 1) so that every other weight is the same draw.
    `temporal_std`, when given, replaces `std` for the temporal embeddings and temporal attention
    matrices, which sets how much each frame's features mix in the other frames of its video."""
    special = {"position_embedding.weight": position_std, "patch_embedding.weight": patch_std,
               "temporal_embedding": temporal_std, **{f"temporal_attn.{proj}.weight": temporal_std
                                                      for proj in ("q_proj", "k_proj", "v_proj", "out_proj")}}
    generator = torch.Generator().manual_seed(seed)
    for name, param in tower.named_parameters():
        if param.dim() == 1 and ("norm" in name):
            param.data.fill_(1.0 if name.endswith("weight") else 0.0)
        elif name.endswith("bias"):
            param.data.zero_()
        else:
            scale = next((s for suffix, s in special.items() if s is not None and name.endswith(suffix)), std)
            param.data.copy_(torch.randn(param.shape, generator=generator) * scale)
    if position_frequencies > 0:
        positions = tower.vision_model.embeddings.position_embedding.weight
        positions.data[1:] = smooth_position_embedding(tower.grid_size, positions.shape[1], position_frequencies,
                                                       std if position_std is None else position_std,
                                                       torch.Generator().manual_seed(seed + 1))
    return tower


__all__ = ["LanguageBindVideoTower", "TeacherConfig", "TeacherFolderError", "init_teacher_weights",
           "smooth_position_embedding"]

