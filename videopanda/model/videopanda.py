"""Video-Panda: the STAB and an `mlp2x_gelu` projector in front of a Llama causal LM (the paper's method section).

Shapes: B = batch, S = sequence length, L = LLM width, D = STAB width, V = videos, C = chunks,
T = frames per chunk.

Inputs are the processor's (`VideoPandaProcessor`, for inference and training alike): for each frame a
run of `config.image_token_id` exactly as long as the STAB's output for it, and `pixel_values_videos`
(V, C, T, 4, H, W). `forward` embeds the text (the placeholder positions as id 0), runs the STAB on all
videos' chunks at once (concatenated on C), projects, `masked_scatter`s the tokens over the placeholders
and runs the LLM. `generate` is transformers' own: it passes `pixel_values_videos` only at the prefill
step when caching.

This model holds no teacher and no distillation head: training wraps it (`videopanda.train.training_model`),
and reads the visual tokens' grids through `embed_inputs`. `parts()` names its parts as module objects
("stab", "projector", "llm") for freezing and learning rates (`videopanda.train.stages`).

Choices of this project (see also docs/DESIGN.md):
- The STAB is called (as a module, so hooks fire) with `packed=True`: one token tensor for all frames.
  Under ZeRO-3 it is a leaf module, and DeepSpeed needs a tensor at the top level of its output to
  gather it for backward and to reduce its gradients (see `stab.py`).
- With `labels`, the output has the loss but no logits: only the states whose next token is
  supervised go through `lm_head` (`lm_loss`). The full (B, S, V) logits would be the largest
  activation of 7B training (8 x 2048 x 32000 float32 = 2 GB a device) and most of them (the visual
  tokens, the prompts) carry no loss. Call without labels for logits.
- Checkpoints: `from_pretrained` reads the released layout through a registered key mapping
  (`checkpoint.register_released_key_mapping`), and `save_pretrained` writes the same layout (the
  STAB under the released names, safetensors).
- Every folder `save_pretrained` writes carries `generation_config.json` with the project's answer
  settings (`project_generation_config`: greedy, one beam, the KV cache, at most `MAX_NEW_TOKENS` new
  tokens, the config's EOS and pad ids), so `model.generate(**inputs)` on a saved folder answers like
  `videopanda infer` without arguments.
"""

import typing
from dataclasses import asdict, fields

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict, validate_typed_dict
from huggingface_hub.errors import StrictDataclassFieldValidationError
from torch import Tensor, nn
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, LlamaModel
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.llama.modeling_llama import LlamaPreTrainedModel
from transformers.utils import can_return_tuple

from videopanda.constants import (
    FRAMES_PER_CHUNK,
    IGNORE_INDEX,
    NUM_FRAMES,
    STUDENT_IMAGE_SIZE,
    TEACHER_IMAGE_SIZE,
)
from videopanda.log import get_logger
from videopanda.model.checkpoint import IGNORED_ON_LOAD, MODEL_TYPE
from videopanda.model.stab import SpatioTemporalAlignmentBlock, STABConfig

logger = get_logger(__name__)

MAX_NEW_TOKENS = 1024
"""The longest answer, in tokens, unless a caller or a folder's generation_config.json says otherwise."""
STAB_FIELDS = typing.TypedDict("STAB_FIELDS", typing.get_type_hints(STABConfig), total=False)
"""The `stab` block's field types (STABConfig's), checked with huggingface_hub's strict validation."""


def project_generation_config(config, max_new_tokens: int = MAX_NEW_TOKENS) -> GenerationConfig:
    """The answer settings of this project (the paper's greedy decoding) for a model `config` (any
    Llama-style config): greedy, one beam, the KV cache, at most `max_new_tokens` new tokens, stop at the
    config's EOS; pad with its pad id, else EOS (padding only fills rows that finished early, never decoded)."""
    pad = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    return GenerationConfig(do_sample=False, num_beams=1, use_cache=True, max_new_tokens=max_new_tokens,
                            bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=pad)


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
        try:
            validate_typed_dict(STAB_FIELDS, given)
        except StrictDataclassFieldValidationError as err:
            raise TypeError(f"stab: {err.__cause__}") from None
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

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' `save_pretrained`, with the project's `generation_config.json` (module docstring)
        whatever generation config the model was loaded with."""
        self.generation_config = project_generation_config(self.config)
        return super().save_pretrained(save_directory, *args, **kwargs)

    def parts(self) -> dict[str, tuple[nn.Module, ...]]:
        """The model's parts as module objects, for freezing and learning-rate groups: "stab" (the STAB),
        "projector" and "llm" (embeddings, decoder layers, final norm, lm_head). Every parameter is in
        exactly one of them."""
        inner = self.model
        return {"stab": (inner.video_tower,), "projector": (inner.video_projector,),
                "llm": (inner.embed_tokens, inner.layers, inner.norm, self.lm_head)}

    # ---- visual tokens ---------------------------------------------------------------------------

    def visual_tokens(self, pixel_values_videos: Tensor) -> tuple[Tensor, list[tuple[int, int]]]:
        """pixel_values_videos (V, C, T, 4, H, W) -> projected tokens of all frames, packed in frame order
        (sum_i n_i, L), and each frame's LSD grid (V*C*T of them). One STAB call on all V*C chunks (told the
        V videos apart: in training its BatchNorm normalises each video alone) and one projector call."""
        if pixel_values_videos.dim() != 6:
            raise ValueError(f"pixel_values_videos must be (videos, chunks, frames_per_chunk, 4, H, W), "
                             f"got {tuple(pixel_values_videos.shape)}")
        stab = self.model.video_tower
        param = next(stab.parameters())
        frames = pixel_values_videos.flatten(0, 1).to(device=param.device, dtype=param.dtype)
        packed, grids = stab(frames, packed=True, num_videos=pixel_values_videos.shape[0])  # (sum_i n_i, D)
        return self.model.video_projector(packed), grids                       # (sum_i n_i, L)

    def embed_inputs(self, input_ids: Tensor, pixel_values_videos: Tensor | None = None
                     ) -> tuple[Tensor, list[tuple[int, int]]]:
        """input_ids (B, S) holding, for each frame of each video in order, a run of `config.image_token_id`
        as long as the STAB's output for that frame; pixel_values_videos (V, C, T, 4, H, W) or None
        -> inputs_embeds (B, S, L) with the projected frame tokens scattered over the runs (in row-major
        order of the placeholder positions), and each frame's LSD grid (empty without videos).

        The placeholder positions are embedded as id 0 (the embedding is not resized) and then
        overwritten; the STAB and projector run before the embedding."""
        slots = input_ids == self.config.image_token_id
        if pixel_values_videos is None:
            if bool(slots.any()):
                raise ValueError(f"input_ids hold video placeholders (id {self.config.image_token_id}) "
                                 "but no pixel_values_videos were given")
            return self.get_input_embeddings()(input_ids), []
        visual, grids = self.visual_tokens(pixel_values_videos)
        count = int(slots.sum())
        if count != visual.shape[0]:
            raise ValueError(f"input_ids hold {count} video placeholders (id {self.config.image_token_id}) but the "
                             f"{pixel_values_videos.shape[0]} videos give {visual.shape[0]} visual tokens: build the "
                             "inputs with VideoPandaProcessor for this model's config")
        embeds = self.get_input_embeddings()(input_ids.masked_fill(slots, 0))
        return embeds.masked_scatter(slots.unsqueeze(-1), visual.to(embeds.dtype)), grids

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
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids (B, S) from the processor: each frame's run of `config.image_token_id`;
        pixel_values_videos (V, C, T, 4, H, W): the batch's videos in order of appearance -> logits (B, S, V);
        with labels (B, S), the LM loss and no logits (see the module docstring). Generation passes
        `pixel_values_videos` at the prefill step only (transformers drops it afterwards when caching)."""
        if inputs_embeds is None and input_ids is not None:
            inputs_embeds, _ = self.embed_inputs(input_ids, pixel_values_videos)
            input_ids = None
        elif pixel_values_videos is not None:
            raise ValueError("pass pixel_values_videos with input_ids (not with inputs_embeds)")
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        logits = loss = None
        if labels is None:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = self.lm_head(outputs.last_hidden_state[:, keep, :])
        else:
            loss = self.lm_loss(outputs.last_hidden_state, labels)
        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def lm_loss(self, hidden: Tensor, labels: Tensor) -> Tensor:
        """Next-token cross-entropy, the mean over supervised tokens (as `LlamaForCausalLM`'s loss), from
        the final normed states hidden (B, S, L) and labels (B, S). Only the N states whose next token
        is supervised go through `lm_head`: (N, V) logits instead of (B, S, V)."""
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
        supervised = targets != IGNORE_INDEX
        logits = self.lm_head(hidden[supervised])
        return F.cross_entropy(logits.float(), targets[supervised])


__all__ = ["MAX_NEW_TOKENS", "VideoPandaConfig", "VideoPandaModel", "VideoPandaForCausalLM",
           "project_generation_config"]
