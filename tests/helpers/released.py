"""Tiny model folders in the layouts of the released Video-Panda-7B (docs/DESIGN.md, `checkpoint.py`) and of
EVE-7B-Pretrain (the stage-1 starting point), built in-process.

`build_released_folder(folder, tokenizer_dir)` writes:
- config.json with the released fields (model_type "videopanda", Llama fields, `mm_video_tower`
  pointing at a relative folder that does not exist, no `stab` field) plus the odd extras such
  configs carry;
- the tokenizer files copied from `tokenizer_dir` (a tokenizer trained in the test);
- bf16 tensors under the released names, sharded as `pytorch_model-0000X-of-0000Y.bin` with
  `pytorch_model.bin.index.json`: the LLM, the STAB under `model.video_tower.` with every released
  STAB name (incl. `lmhra2.*` and BatchNorm `num_batches_tracked`), the projector
  `model.video_projector.0/2.*`, the same tensors again under `model.vision_tower.*` /
  `model.mm_projector.*`, and training-only `model.video_teacher.*` keys and the distillation head
  `model.video_tower_compressor.*` (its 31 tensors under the checkpoint names, plus a
  `teacher_layer.` teacher copy) that inference ignores.

`build_eve_folder(folder, tokenizer_dir)` writes an EVE-7B-Pretrain layout: config.json with
model_type "eve", the LLM, the non-temporal STAB parts under `model.vision_tower.` (with a CLIP copy
under `model.vision_tower.clip_vision_tower.`), `model.mm_projector.*`, and the head under
`model.vision_tower_compressor.` (with a `clip_layer.` CLIP copy).

The head's names and shapes are written out here from docs/DESIGN.md (`train/distillation.py`), not taken
from the model's head, so that a head whose names drift from the checkpoints' fails to load.

Tensor shapes come from the model class itself (LLM, projector) and from the STAB key map for every
released STAB name, so a released name the STAB cannot hold fails here, loudly. Values are random
(perturbed around the module's own init), so a tensor that lands in the wrong place is detectable.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from videopanda.model.checkpoint import (
    HEAD_PREFIX,
    PROJECTOR_PREFIX,
    STAB_PREFIX,
    TEACHER_PREFIX,
    UNUSED_STAB_PREFIX,
    released_stab_keys,
)
from videopanda.model.stab import released_stab_key_to_module_key
from videopanda.model.videopanda import VideoPandaConfig, VideoPandaForCausalLM

TOWER_FOLDER = "./checkpoints/videopanda_tower_does_not_exist"


def released_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, stab_width: int = 64) -> dict:
    """config.json fields as the released folders write them, at a tiny size."""
    return {
        "_name_or_path": "EVE-7B-Pretrain-v1.0",
        "architectures": ["VideoPandaLlamaForCausalLM"],
        "model_type": "videopanda",
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": 2 * hidden,
        "max_position_embeddings": 4096,
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": heads,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.31.0",
        "use_cache": True,
        "vocab_size": vocab_size,
        "mm_video_tower": TOWER_FOLDER,
        "mm_vision_tower": TOWER_FOLDER,
        "video_hidden_size": stab_width,
        "mm_hidden_size": stab_width,
        "mm_projector_type": "mlp2x_gelu",
        "video_tower_teacher": "LanguageBind/LanguageBind_Video_merge",
        "requires_video_distill": True,
        "requires_image_distill": False,
        "mm_use_im_start_end": False,
        "mm_use_im_patch_token": False,
        "mm_vision_select_layer": -2,
        "mm_vision_select_feature": "patch",
        "image_aspect_ratio": "pad",
        "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False,
        "use_mm_proj": True,
        "tokenizer_model_max_length": 4096,
        "tokenizer_padding_side": "right",
    }


def _perturbed(tensor: torch.Tensor, name: str, generator: torch.Generator) -> torch.Tensor:
    if not tensor.is_floating_point():
        return torch.tensor(1000 + len(name), dtype=tensor.dtype).expand_as(tensor).clone()
    noise = torch.randn(tensor.shape, generator=generator) * 0.02
    value = tensor.float() + noise
    if name.endswith("running_var"):
        value = value.abs() + 0.5
    return value.to(torch.bfloat16)


def released_state_dict(config: VideoPandaConfig, seed: int = 0, teacher_width: int | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a released checkpoint for `config`, under the released names (bf16); the head's
    output width is `teacher_width` (default: mm_hidden_size, as in the 7B release)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    reference = VideoPandaForCausalLM(config).state_dict()
    state: dict[str, torch.Tensor] = {}
    for name, tensor in reference.items():
        if not name.startswith(STAB_PREFIX):
            state[name] = _perturbed(tensor, name, generator)
    for released in released_stab_keys():
        holder = released.replace(UNUSED_STAB_PREFIX, "lmhra1.", 1)
        ours = released_stab_key_to_module_key(holder)
        if ours is None or STAB_PREFIX + ours not in reference:
            raise KeyError(f"released STAB key {released} has no place in the STAB (mapped to {ours})")
        state[STAB_PREFIX + released] = _perturbed(reference[STAB_PREFIX + ours], released, generator)
    for name in [k for k in state if k.startswith(STAB_PREFIX)]:
        state["model.vision_tower." + name[len(STAB_PREFIX):]] = state[name].clone()
    for name in [k for k in state if k.startswith(PROJECTOR_PREFIX)]:
        state["model.mm_projector." + name[len(PROJECTOR_PREFIX):]] = state[name].clone()
    width = teacher_width or config.mm_hidden_size
    for name, tensor in head_state_dict(config.hidden_size, width, generator).items():
        state[HEAD_PREFIX + name] = tensor
    junk = {
        TEACHER_PREFIX + "vision_model.embeddings.class_embedding": (width,),
        TEACHER_PREFIX + "vision_model.embeddings.patch_embedding.weight": (width, 3, 14, 14),
        TEACHER_PREFIX + "vision_model.encoder.layers.0.temporal_embedding": (1, 8, width),
        TEACHER_PREFIX + "vision_model.encoder.layers.0.self_attn.q_proj.weight": (width, width),
        TEACHER_PREFIX + "vision_model.post_layernorm.weight": (width,),
        **teacher_copy(HEAD_PREFIX + "teacher_layer.", width),
    }
    for name, shape in junk.items():
        state[name] = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
    return state


HEAD_LAYERS = 9
"""The head reads hidden states 32, 28, ..., 0: `norm_layer.{j}` for j = 0..8 (j = 0 is the layer-32 query)."""


def head_names_and_shapes(llm_width: int, teacher_width: int) -> dict[str, tuple[int, ...]]:
    """The 31 distillation-head tensors of the EVE and released checkpoints (docs/DESIGN.md), no prefix."""
    shapes: dict[str, tuple[int, ...]] = {}
    for j in range(HEAD_LAYERS):
        shapes[f"norm_layer.{j}.0.weight"] = (llm_width,)
        shapes[f"norm_layer.{j}.0.bias"] = (llm_width,)
        shapes[f"norm_layer.{j}.1.weight"] = (teacher_width, llm_width)
    shapes.update({"input_layer.weight": (teacher_width, llm_width), "input_layer.bias": (teacher_width,),
                   "output_layer.weight": (teacher_width, teacher_width), "output_layer.bias": (teacher_width,)})
    return shapes


def head_state_dict(llm_width: int, teacher_width: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random bf16 head tensors under the checkpoint names: LayerNorm weights around 1, the rest around 0,
    large enough that every tensor moves the head's output."""
    state = {}
    for name, shape in head_names_and_shapes(llm_width, teacher_width).items():
        value = torch.randn(shape, generator=generator) * (0.1 if len(shape) == 1 else 0.5 / shape[1] ** 0.5)
        if ".0.weight" in name:
            value = value + 1.0
        state[name] = value.to(torch.bfloat16)
    return state


def teacher_copy(prefix: str, width: int) -> dict[str, tuple[int, ...]]:
    """A few CLIP-style tensor names and shapes under `prefix` (the checkpoints' teacher copies in the head)."""
    return {prefix + "vision_model.embeddings.class_embedding": (width,),
            prefix + "vision_model.encoder.layers.0.mlp.fc1.weight": (4 * width, width),
            prefix + "vision_model.post_layernorm.bias": (width,)}


def write_sharded_bin(folder: Path, state: dict[str, torch.Tensor], shards: int = 3) -> None:
    """`pytorch_model-0000X-of-0000Y.bin` files plus `pytorch_model.bin.index.json`, like the release."""
    names = sorted(state)
    per_shard = -(-len(names) // shards)
    weight_map, total = {}, 0
    for i in range(shards):
        part = names[i * per_shard:(i + 1) * per_shard]
        file_name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        torch.save({k: state[k] for k in part}, folder / file_name)
        weight_map.update({k: file_name for k in part})
        total += sum(state[k].numel() * state[k].element_size() for k in part)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2))


def tokenizer_vocab_size(tokenizer_dir: str | Path) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=str(Path(tokenizer_dir) / "tokenizer.model")).get_piece_size()


def _write_config_and_tokenizer(folder: Path, fields: dict, tokenizer_dir: str | Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(fields, indent=2))
    for item in Path(tokenizer_dir).iterdir():
        if item.is_file():
            shutil.copy(item, folder / item.name)


def build_released_folder(folder: str | Path, tokenizer_dir: str | Path, *, hidden: int = 64, layers: int = 2,
                          heads: int = 4, stab_width: int = 64, seed: int = 0, shards: int = 3,
                          teacher_width: int | None = None) -> dict[str, torch.Tensor]:
    """Write the folder and return the state dict written (released names)."""
    folder = Path(folder)
    fields = released_config(tokenizer_vocab_size(tokenizer_dir), hidden, layers, heads, stab_width)
    _write_config_and_tokenizer(folder, fields, tokenizer_dir)
    config = VideoPandaConfig(**{k: v for k, v in fields.items() if k not in ("architectures", "model_type")})
    state = released_state_dict(config, seed, teacher_width)
    write_sharded_bin(folder, state, shards)
    return state


EVE_STAB_PARTS = ("class_embedding", "split_embedding", "patch_embedding.", "local_attention.", "global_attention.")
"""The released STAB names EVE's vision tower also has (its patch embedding layers, no temporal parts)."""


def eve_config(vocab_size: int, hidden: int = 64, layers: int = 2, heads: int = 4, stab_width: int = 64) -> dict:
    """config.json fields of EVE-7B-Pretrain at a tiny size: Llama fields plus EVE's multimodal ones."""
    fields = {k: v for k, v in released_config(vocab_size, hidden, layers, heads, stab_width).items()
              if k not in ("mm_video_tower", "video_hidden_size", "video_tower_teacher", "requires_video_distill",
                           "requires_image_distill")}
    fields.update({"_name_or_path": "lmsys/vicuna-7b-v1.5", "architectures": ["EVELlamaForCausalLM"],
                   "model_type": "eve", "mm_vision_tower": "openai/clip-vit-large-patch14-336"})
    return fields


def eve_state_dict(config: VideoPandaConfig, seed: int = 0, teacher_width: int | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of an EVE-7B-Pretrain checkpoint for `config` (bf16): the LLM, `model.vision_tower.*`
    (EVE_STAB_PARTS + a CLIP copy), `model.mm_projector.*`, `model.vision_tower_compressor.*` (the 31 head
    tensors + a `clip_layer.` copy)."""
    released = released_state_dict(config, seed, teacher_width)
    generator = torch.Generator().manual_seed(seed + 1)
    state = {}
    for name, tensor in released.items():
        if name.startswith(("model.vision_tower.", "model.mm_projector.")):
            local = name.split(".", 2)[2]
            if name.startswith("model.mm_projector.") or local.startswith(EVE_STAB_PARTS):
                state[name] = tensor
        elif name.startswith(HEAD_PREFIX):
            local = name[len(HEAD_PREFIX):]
            if not local.startswith("teacher_layer."):
                state["model.vision_tower_compressor." + local] = tensor
        elif not name.startswith((STAB_PREFIX, PROJECTOR_PREFIX, TEACHER_PREFIX)):
            state[name] = tensor
    width = teacher_width or config.mm_hidden_size
    junk = {**teacher_copy("model.vision_tower.clip_vision_tower.", width),
            **teacher_copy("model.vision_tower_compressor.clip_layer.", width)}
    for name, shape in junk.items():
        state[name] = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
    return state


def build_eve_folder(folder: str | Path, tokenizer_dir: str | Path, *, hidden: int = 64, layers: int = 2,
                     heads: int = 4, stab_width: int = 64, teacher_width: int | None = None, seed: int = 0,
                     shards: int = 2) -> dict[str, torch.Tensor]:
    """Write an EVE-7B-Pretrain-layout folder and return the state dict written (EVE names)."""
    folder = Path(folder)
    fields = eve_config(tokenizer_vocab_size(tokenizer_dir), hidden, layers, heads, stab_width)
    _write_config_and_tokenizer(folder, fields, tokenizer_dir)
    config = VideoPandaConfig(**{k: v for k, v in fields.items() if k not in ("architectures", "model_type")},
                              video_hidden_size=stab_width)
    state = eve_state_dict(config, seed, teacher_width)
    write_sharded_bin(folder, state, shards)
    return state
