"""Video-Panda: the STAB and an `mlp2x_gelu` projector in front of a Llama causal LM (SPEC sections 1-3, 5).

Shapes: B = batch, S = sequence length, L = LLM width, D = STAB width, C = chunks, T = frames per chunk.

Inference (`pixel_values_videos`): `VideoPandaProcessor` writes, for each frame, a run of
`config.image_token_id` exactly as long as the STAB's output for it; `forward` embeds the text (the
placeholder positions as id 0), runs the STAB on all videos' chunks at once (concatenated on C), projects,
and `masked_scatter`s the tokens over the placeholders, then runs the LLM. `generate` is transformers'
own: it passes `pixel_values_videos` only at the prefill step when caching.

Training (still, until it moves to the processor): `videos=`, one FRAME_TOKEN_INDEX (-200) per frame,
each replaced by that frame's projected tokens with the labels there IGNORE_INDEX, the expanded sequences
re-padded on the right; the distillation and ZeRO-3 lockstep passes below run on that path.

Choices where SPEC is silent (see also docs/DESIGN.md):
- Distillation reads the hidden states `distill.distill_layer_indices(n)`: 32, 28, ..., 0 for the
  32-layer LLM (`hidden_states[n]` is the final normed output, `[0]` the input embeddings; checked for
  transformers 5). A smaller LLM uses every floor(n/8)-th state, repeating indices when n < 8.
- ZeRO-3 keeps parameters partitioned and gathers them in module hooks, so every rank has to run the
  same modules in the same order every step. In training (grad enabled), a batch without any video
  still runs the STAB and projector on one dummy chunk of T frames of 2x2 patches before the LLM, where
  videos run, adding 0 x their output to the input embeddings; with distillation, the head (on the
  LLM's first-position states) and the teacher (on one blank video of `num_frames` frames) run after the
  LLM, where the real distillation runs, and the distillation loss is 0 x the head's output. Inference
  keeps the text path plain.
- The teacher gets all videos of a batch in one call, each video's chunks consecutive, with the number
  of videos, so that its temporal attention (over the teacher config's `num_frames` frames) never
  mixes two videos.
- The STAB is called (as a module, so hooks fire) with `packed=True`: one token tensor for all frames,
  split here by the grids. Under ZeRO-3 it is a leaf module, and DeepSpeed needs a tensor at the top
  level of its output to gather it for backward and to reduce its gradients (see `stab.py`).
- With `labels`, the output has the loss but no logits: only the states whose next token is
  supervised go through `lm_head` (`lm_loss`). The full (B, S', V) logits would be the largest
  activation of 7B training (8 x 2048 x 32000 float32 = 2 GB a device) and most of them (the visual
  tokens, the prompts) carry no loss. Call without labels for logits.
- Checkpoints: `from_pretrained` reads the released layout through a registered key mapping
  (`checkpoint.register_released_key_mapping`), and `save_pretrained` writes the same layout (the
  STAB under the released names, safetensors).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel
from transformers.utils import can_return_tuple

from videopanda.constants import (
    FRAME_TOKEN_INDEX,
    FRAMES_PER_CHUNK,
    IGNORE_INDEX,
    NUM_FRAMES,
    STUDENT_IMAGE_SIZE,
    TEACHER_IMAGE_SIZE,
)
from videopanda.log import get_logger
from videopanda.model.checkpoint import IGNORED_ON_LOAD, MODEL_TYPE
from videopanda.model.distill import distill_layer_indices, distillation_loss
from videopanda.model.stab import SpatioTemporalAlignmentBlock, STABConfig

logger = get_logger(__name__)


@strict
class VideoPandaConfig(LlamaConfig):
    """Llama fields (7B defaults: 4096 wide, 32 layers, vocab 32000, 4096 positions, eps 1e-5) plus the
    released multimodal fields and ours.

    `stab` is an `STABConfig` as a dict; released configs have none, so it is derived from
    `video_hidden_size` and `frames_per_chunk` with the 7B defaults for the rest. `mm_video_tower`
    (a folder path relative to the original training run) is only recorded, never opened.
    `image_token_id` is the processor's placeholder id, the tokenizer's `<image>` special token, by
    default `vocab_size` (the first id past the released vocabulary; the embedding is not resized).
    """

    model_type = MODEL_TYPE

    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    mm_video_tower: str | None = None
    mm_vision_tower: str | None = None
    video_hidden_size: int = 1024
    mm_hidden_size: int = 1024
    mm_projector_type: str = "mlp2x_gelu"
    video_tower_teacher: str | None = "LanguageBind/LanguageBind_Video_merge"
    requires_video_distill: bool = True
    requires_image_distill: bool = False
    mm_use_im_start_end: bool = False
    mm_vision_select_layer: int = -2
    stab: dict | None = None
    num_frames: int = NUM_FRAMES
    frames_per_chunk: int = FRAMES_PER_CHUNK
    image_size: int = STUDENT_IMAGE_SIZE
    teacher_image_size: int = TEACHER_IMAGE_SIZE
    image_token_id: int | None = None

    def __post_init__(self, **kwargs):
        known = {f.name for f in fields(STABConfig)}
        given = dict(self.stab or {})
        unknown = sorted(set(given) - known)
        if unknown:
            raise ValueError(f"VideoPandaConfig.stab has unknown fields {unknown} (STABConfig has {sorted(known)})")
        given.setdefault("width", self.video_hidden_size)
        given.setdefault("frames_per_chunk", self.frames_per_chunk)
        self.stab = asdict(STABConfig(**given))
        super().__post_init__(**kwargs)
        if self.image_token_id is None:
            self.image_token_id = self.vocab_size
        self._check_multimodal_fields()

    def _check_multimodal_fields(self) -> None:
        """Raises ValueError on fields that contradict each other (plain ValueError, unlike `@strict`'s
        validators, so callers see the message directly)."""
        width = self.stab["width"]
        if width != self.video_hidden_size or width != self.mm_hidden_size:
            raise ValueError(f"STAB width {width} must equal video_hidden_size ({self.video_hidden_size}) "
                             f"and mm_hidden_size ({self.mm_hidden_size})")
        if self.mm_projector_type != "mlp2x_gelu":
            raise ValueError(f"mm_projector_type {self.mm_projector_type!r} is not supported (only 'mlp2x_gelu')")
        if self.stab["frames_per_chunk"] != self.frames_per_chunk:
            raise ValueError(f"stab.frames_per_chunk {self.stab['frames_per_chunk']} != "
                             f"frames_per_chunk {self.frames_per_chunk}")
        if self.num_frames % self.frames_per_chunk:
            raise ValueError(f"num_frames {self.num_frames} is not a multiple of frames_per_chunk {self.frames_per_chunk}")

    @property
    def stab_config(self) -> STABConfig:
        return STABConfig(**self.stab)

    def validate_token_ids(self):
        """transformers' check that every `*_token_id` indexes the embedding, except `image_token_id`: the
        placeholder id is the first id past the vocabulary on purpose (its positions are overwritten by
        visual tokens before the embedding is read) and must only be non-negative."""
        if self.image_token_id is not None and self.image_token_id < 0:
            raise ValueError(f"image_token_id must be >= 0, got {self.image_token_id}")
        for name in self:
            value = getattr(self, name)
            if (name.endswith("_token_id") and name != "image_token_id" and isinstance(value, int)
                    and not 0 <= value < self.vocab_size):
                logger.warning("config %s %s is outside the vocabulary (0 to %d)", name, value, self.vocab_size - 1)


@dataclass
class VideoPandaCausalLMOutput(CausalLMOutputWithPast):
    """`loss` = lm_loss + distill_loss when distilling; both parts are also reported alone."""

    lm_loss: torch.FloatTensor | None = None
    distill_loss: torch.FloatTensor | None = None


@dataclass
class MultimodalInputs:
    """Expanded batch: inputs_embeds (B, S', L), attention_mask (B, S'), labels (B, S') or None, and per
    sample the start position, token count and grid of each frame in the expanded sequence."""

    inputs_embeds: Tensor
    attention_mask: Tensor
    labels: Tensor | None
    frame_spans: list[list[tuple[int, int, tuple[int, int]]]]


def _stab_of(model: nn.Module) -> nn.Module | None:
    inner = getattr(model, "model", model)
    return getattr(inner, "video_tower", None)


class VideoPandaPreTrainedModel(LlamaPreTrainedModel):
    config: VideoPandaConfig
    config_class = VideoPandaConfig
    _no_split_modules = ["LlamaDecoderLayer", "SpatioTemporalAlignmentBlock"]
    _keys_to_ignore_on_load_unexpected = list(IGNORED_ON_LOAD)

    def _init_weights(self, module: nn.Module) -> None:
        """Llama's init for the LLM and projector; the STAB uses its own `reset_parameters` (zero-started
        LSTE/GSTRA outputs, balance 0, ...), which transformers' generic per-layer init would overwrite.
        transformers guards `torch.nn.init` during this call, so tensors already loaded stay untouched."""
        stab = _stab_of(self)
        if module is stab:
            stab.reset_parameters()
        elif stab is None or not any(module is m for m in stab.modules()):
            super()._init_weights(module)


class VideoPandaModel(VideoPandaPreTrainedModel, LlamaModel):
    """The Llama decoder plus `video_tower` (STAB) and `video_projector` (Linear(D, L) -> GELU -> Linear(L, L))."""

    def __init__(self, config: VideoPandaConfig):
        super().__init__(config)
        self.video_tower = SpatioTemporalAlignmentBlock(config.stab_config)
        self.video_projector = nn.Sequential(
            nn.Linear(config.mm_hidden_size, config.hidden_size), nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)
        )
        self.post_init()


class VideoPandaForCausalLM(VideoPandaPreTrainedModel, LlamaForCausalLM):
    """Llama causal LM whose inputs may carry video frames; see the module docstring."""

    def __init__(self, config: VideoPandaConfig):
        # LlamaForCausalLM.__init__ would first build a plain LlamaModel; build ours directly.
        LlamaPreTrainedModel.__init__(self, config)
        self.model = VideoPandaModel(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    # ---- distillation --------------------------------------------------------------------------

    @property
    def distillation_enabled(self) -> bool:
        return hasattr(self.model, "video_teacher") and hasattr(self.model, "video_tower_compressor")

    def enable_distillation(self, teacher: nn.Module, head: nn.Module) -> None:
        """Attach the frozen teacher (`model.video_teacher`) and the trainable head
        (`model.video_tower_compressor`), the released checkpoint's names."""
        teacher.requires_grad_(False)
        teacher.eval()
        self.model.video_teacher = teacher
        self.model.video_tower_compressor = head

    # ---- visual tokens ---------------------------------------------------------------------------

    def encode_videos(self, videos: list[Tensor | None]) -> tuple[list[list[Tensor]], list[list[tuple[int, int]]]]:
        """videos: per sample (C, T, 4, H, W) or None -> per sample, per frame: projected tokens (n_i, L) and grid.

        One STAB call on all chunks and one projector call on all frames' tokens."""
        present = [v for v in videos if v is not None]
        tokens: list[list[Tensor]] = [[] for _ in videos]
        grids: list[list[tuple[int, int]]] = [[] for _ in videos]
        if not present:
            return tokens, grids
        for i, v in enumerate(videos):
            if v is not None and (v.dim() != 5 or v.shape[1:] != present[0].shape[1:]):
                raise ValueError(f"sample {i}: video tensor {tuple(v.shape)} does not match (C, T, 4, H, W) "
                                 f"of the batch's other videos {tuple(present[0].shape)}")
        stab = self.model.video_tower
        param = next(stab.parameters())
        frames = torch.cat(present).to(device=param.device, dtype=param.dtype)
        packed, frame_grids = stab(frames, packed=True)                       # (sum_i n_i, D)
        projected = self.model.video_projector(packed).split([stab.num_tokens(g) for g in frame_grids])
        start = 0
        for i, v in enumerate(videos):
            if v is None:
                continue
            n = v.shape[0] * v.shape[1]
            tokens[i] = list(projected[start:start + n])
            grids[i] = list(frame_grids[start:start + n])
            start += n
        return tokens, grids

    def embed_with_videos(self, input_ids: Tensor, pixel_values_videos: Tensor) -> Tensor:
        """input_ids (B, S) holding, for each frame of each video in order, a run of `config.image_token_id`
        as long as the STAB's output for that frame; pixel_values_videos (V, C, T, 4, H, W)
        -> inputs_embeds (B, S, L): the text embedded, the projected frame tokens scattered over the runs.

        One STAB call on all V*C chunks and one projector call; the placeholder positions are embedded
        as id 0 (the embedding is not resized) and then overwritten."""
        if pixel_values_videos.dim() != 6:
            raise ValueError(f"pixel_values_videos must be (videos, chunks, frames_per_chunk, 4, H, W), "
                             f"got {tuple(pixel_values_videos.shape)}")
        stab = self.model.video_tower
        param = next(stab.parameters())
        frames = pixel_values_videos.flatten(0, 1).to(device=param.device, dtype=param.dtype)
        packed, _ = stab(frames, packed=True)                                  # (sum_i n_i, D)
        visual = self.model.video_projector(packed)                            # (sum_i n_i, L)
        slots = input_ids == self.config.image_token_id
        count = int(slots.sum())
        if count != visual.shape[0]:
            raise ValueError(f"input_ids hold {count} video placeholders (id {self.config.image_token_id}) but the "
                             f"{pixel_values_videos.shape[0]} videos give {visual.shape[0]} visual tokens: build the "
                             "inputs with VideoPandaProcessor for this model's config")
        embeds = self.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        return embeds.masked_scatter(slots.unsqueeze(-1), visual.to(embeds.dtype))

    def embed_multimodal(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None,
        labels: Tensor | None,
        videos: list[Tensor | None] | None,
        padding_side: str = "right",
    ) -> MultimodalInputs:
        """Replace each -200 of `input_ids` (B, S) by one frame's projected tokens (frame k -> k-th
        placeholder of its sample) and re-pad on `padding_side`. Padding positions (attention 0) of the
        input are dropped first, so either padding side is accepted."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        batch = input_ids.shape[0]
        videos = list(videos) if videos is not None else [None] * batch
        if len(videos) != batch:
            raise ValueError(f"{len(videos)} videos for a batch of {batch} samples (use None for text-only samples)")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        frame_tokens, frame_grids = self.encode_videos(videos)
        embeds = self.get_input_embeddings()(input_ids.clamp(min=0))
        sequences, label_seqs, spans = [], [], []
        for b in range(batch):
            keep = attention_mask[b].bool()
            ids, emb = input_ids[b][keep], embeds[b][keep]
            lab = labels[b][keep] if labels is not None else None
            slots = (ids == FRAME_TOKEN_INDEX).nonzero().flatten().tolist()
            if len(slots) != len(frame_tokens[b]):
                raise ValueError(f"sample {b}: {len(slots)} frame placeholders ({FRAME_TOKEN_INDEX}) in input_ids "
                                 f"but {len(frame_tokens[b])} frames in its video")
            pieces, label_pieces, sample_spans = [], [], []
            cursor, length = 0, 0
            for slot, tokens, grid in zip(slots, frame_tokens[b], frame_grids[b]):
                pieces += [emb[cursor:slot], tokens.to(emb.dtype)]
                length += slot - cursor
                sample_spans.append((length, tokens.shape[0], grid))
                length += tokens.shape[0]
                if lab is not None:
                    label_pieces += [lab[cursor:slot], lab.new_full((tokens.shape[0],), IGNORE_INDEX)]
                cursor = slot + 1
            pieces.append(emb[cursor:])
            if lab is not None:
                label_pieces.append(lab[cursor:])
            sequences.append(torch.cat(pieces))
            label_seqs.append(torch.cat(label_pieces) if lab is not None else None)
            spans.append(sample_spans)
        width = max(s.shape[0] for s in sequences)
        out_embeds = embeds.new_zeros((batch, width, embeds.shape[-1]))
        out_mask = attention_mask.new_zeros((batch, width))
        out_labels = labels.new_full((batch, width), IGNORE_INDEX) if labels is not None else None
        for b, seq in enumerate(sequences):
            n = seq.shape[0]
            offset = width - n if padding_side == "left" else 0
            out_embeds[b, offset:offset + n] = seq
            out_mask[b, offset:offset + n] = 1
            if out_labels is not None:
                out_labels[b, offset:offset + n] = label_seqs[b]
            spans[b] = [(start + offset, count, grid) for start, count, grid in spans[b]]
        return MultimodalInputs(out_embeds, out_mask, out_labels, spans)

    # ---- forward ---------------------------------------------------------------------------------

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | Tensor = 0,
        pixel_values_videos: Tensor | None = None,
        videos: list[Tensor | None] | None = None,
        teacher_videos: list[Tensor | None] | None = None,
        **kwargs,
    ) -> VideoPandaCausalLMOutput:
        """input_ids (B, S) from the processor: each frame's run of `config.image_token_id`;
        pixel_values_videos (V, C, T, 4, H, W): the batch's videos in order of appearance -> logits (B, S, V);
        with labels, the loss and no logits (see the module docstring). Generation passes
        `pixel_values_videos` at the prefill step only (transformers drops it afterwards when caching).

        Training still uses the earlier layout: input_ids (B, S) with one -200 per frame, videos: per
        sample (C, T, 4, H, W) or None; teacher_videos: per sample (C, T, 4, 224, 224) or None; the
        sequences are expanded to S' and position ids cannot be given."""
        if pixel_values_videos is not None:
            if videos is not None or inputs_embeds is not None:
                raise ValueError("pass pixel_values_videos with input_ids only (not with videos or inputs_embeds)")
            inputs_embeds, input_ids = self.embed_with_videos(input_ids, pixel_values_videos), None
        elif input_ids is not None and bool((input_ids == self.config.image_token_id).any()):
            raise ValueError(f"input_ids hold video placeholders (id {self.config.image_token_id}) "
                             "but no pixel_values_videos were given")
        has_video = videos is not None and any(v is not None for v in videos)
        has_slots = input_ids is not None and bool((input_ids == FRAME_TOKEN_INDEX).any())
        spans: list = []
        if has_video or has_slots:
            if inputs_embeds is not None:
                raise ValueError("pass either input_ids with frame placeholders and videos, or inputs_embeds")
            if position_ids is not None:
                raise ValueError("position_ids cannot be given with frame placeholders: they change the sequence length")
            merged = self.embed_multimodal(input_ids, attention_mask, labels, videos)
            input_ids, inputs_embeds = None, merged.inputs_embeds
            attention_mask, labels, spans = merged.attention_mask, merged.labels, merged.frame_spans
        lockstep = self.training and torch.is_grad_enabled() and not has_video
        if lockstep:
            if inputs_embeds is None:
                inputs_embeds = self.get_input_embeddings()(input_ids)
            input_ids, inputs_embeds = None, inputs_embeds + self._lockstep_visual().to(inputs_embeds.dtype)

        distill = teacher_videos is not None and self.distillation_enabled
        want_hidden = bool(kwargs.pop("output_hidden_states", False))
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            output_hidden_states=want_hidden or (distill and (has_video or lockstep)),
            **kwargs,
        )
        logits = lm_loss = distill_loss = None
        if labels is None:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(outputs.last_hidden_state[:, keep, :])
        else:
            lm_loss = self.lm_loss(outputs.last_hidden_state, labels)
        if distill and has_video:
            distill_loss = self._distillation(outputs.hidden_states, videos, teacher_videos, spans)
        elif distill and lockstep:
            distill_loss = self._lockstep_distillation(outputs.hidden_states)
        loss = lm_loss
        if distill_loss is not None:
            loss = distill_loss if loss is None else loss + distill_loss
        return VideoPandaCausalLMOutput(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states if want_hidden else None,
            attentions=outputs.attentions,
            lm_loss=lm_loss,
            distill_loss=distill_loss,
        )

    def lm_loss(self, hidden: Tensor, labels: Tensor) -> Tensor:
        """Next-token cross-entropy, the mean over supervised tokens (as `LlamaForCausalLM`'s loss), from
        the final normed states hidden (B, S', L) and labels (B, S'). Only the N states whose next token
        is supervised go through `lm_head`: (N, V) logits instead of (B, S', V)."""
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        supervised = targets != IGNORE_INDEX
        logits = self.lm_head(hidden[supervised])
        return F.cross_entropy(logits.float(), targets[supervised])

    def _distillation(self, hidden_states, videos, teacher_videos, spans) -> Tensor:
        """Head on the LLM states at each content frame's grid positions vs the teacher's features."""
        teacher, head = self.model.video_teacher, self.model.video_tower_compressor
        if len(teacher_videos) != len(videos):
            raise ValueError(f"{len(teacher_videos)} teacher videos for {len(videos)} videos")
        batch_index, positions, grids, content, teacher_frames = [], [], [], [], []
        for b, (video, teacher_video) in enumerate(zip(videos, teacher_videos)):
            if (video is None) != (teacher_video is None) or (
                video is not None and video.shape[:2] != teacher_video.shape[:2]
            ):
                raise ValueError(f"sample {b}: teacher video {None if teacher_video is None else tuple(teacher_video.shape)} "
                                 f"does not match video {None if video is None else tuple(video.shape)}")
            if video is None:
                continue
            teacher_frames.append(teacher_video)
            has_content = video[:, :, 3].flatten(2).ne(0).any(-1).flatten().tolist()  # per frame, frame order
            for (start, count, (rows, cols)), keep in zip(spans[b], has_content):
                content.append(keep)
                if not keep:
                    continue
                row_len = cols + 1 if count == 1 + rows * (cols + 1) else cols
                grid = torch.arange(rows)[:, None] * row_len + torch.arange(cols)[None, :]
                positions.append(start + 1 + grid.flatten())
                batch_index.append(torch.full((rows * cols,), b))
                grids.append((rows, cols))
        device = hidden_states[0].device
        index_b = torch.cat(batch_index).to(device) if batch_index else torch.zeros(0, dtype=torch.long, device=device)
        index_p = torch.cat(positions).to(device) if positions else index_b
        layers = distill_layer_indices(len(hidden_states) - 1, head.num_layers_used)
        student = head([hidden_states[i][index_b, index_p] for i in layers]).split([r * c for r, c in grids])
        frames = torch.cat(teacher_frames)
        param = next(teacher.parameters())
        # One teacher call for the batch; its temporal groups stay within each video (chunks of a video consecutive).
        features = teacher(frames.to(device=param.device, dtype=param.dtype), num_videos=len(teacher_frames))
        keep = torch.tensor(content, device=features.device)
        valid = self._teacher_valid(frames, teacher.grid_size).to(features.device)
        return distillation_loss(list(student), grids, features[keep], valid[keep])

    @staticmethod
    def _teacher_valid(frames: Tensor, grid: int) -> Tensor:
        """(C, T, 4, S, S) teacher frames -> (C*T, grid, grid) bool: patches that are at least half real pixels."""
        mask = frames[:, :, 3].flatten(0, 1).float()
        return F.adaptive_avg_pool2d(mask, grid) >= 0.5

    def _lockstep_visual(self) -> Tensor:
        """STAB and projector on one dummy chunk (T frames of 2x2 patches), through `encode_videos` like real
        videos, so that every rank calls the same modules (ZeRO-3) -> a 0-d zero connected to both."""
        cfg = self.config.stab_config
        side = cfg.patch_size * cfg.window
        frames = torch.zeros((1, cfg.frames_per_chunk, 4, side, side))
        frames[:, :, 3] = 1
        tokens, _ = self.encode_videos([frames])
        return torch.cat(tokens[0]).sum() * 0.0

    def _lockstep_distillation(self, hidden_states) -> Tensor:
        """Head on the first position's states of sample 0, then the teacher on one blank video (C chunks of T
        frames), in the order of `_distillation` -> a 0-d float32 zero connected to the head."""
        teacher, head = self.model.video_teacher, self.model.video_tower_compressor
        layers = distill_layer_indices(len(hidden_states) - 1, head.num_layers_used)
        zero = head([hidden_states[i][0, :1] for i in layers]).float().sum() * 0.0
        size, t = teacher.config.image_size, self.config.frames_per_chunk
        param = next(teacher.parameters())
        teacher(torch.zeros((self.config.num_frames // t, t, 3, size, size), device=param.device, dtype=param.dtype))
        return zero


__all__ = ["VideoPandaConfig", "VideoPandaModel", "VideoPandaForCausalLM", "VideoPandaCausalLMOutput"]
