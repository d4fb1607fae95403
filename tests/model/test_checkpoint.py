"""Checkpoints: the released layout through the Auto classes, our save/load round trip, readers and key maps,
and the distillation head from EVE, released and our own training folders."""
import json
import logging
import math
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from helpers.released import (
    TOWER_FOLDER,
    build_eve_folder,
    build_released_folder,
    head_names_and_shapes,
    released_state_dict,
    write_sharded_bin,
)
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM

import videopanda  # noqa: F401  (registers the Auto classes)
from videopanda.model.checkpoint import (
    eve_key_to_model_key,
    model_key_to_released_key,
    place_state_dict,
    read_state_dict,
    released_key_to_model_key,
    released_stab_keys,
)
from videopanda.model.videopanda import VideoPandaConfig, VideoPandaForCausalLM

IGNORED = ("model.vision_tower.", "model.mm_projector.", "model.video_teacher.", "model.video_tower_compressor.",
           "model.video_tower.lmhra2.")


@pytest.fixture(scope="module")
def released(tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp("videopanda_fitu")
    state = build_released_folder(folder, tiny_tokenizer_dir)
    return folder, state


@pytest.fixture(scope="module")
def loaded(released):
    folder, _ = released
    model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
    return model, info


def test_released_layout_loads_every_tensor_through_the_auto_classes(released, loaded):
    folder, source = released
    model, info = loaded
    assert not (folder / TOWER_FOLDER).exists()
    assert sorted(p.name for p in folder.glob("pytorch_model-*.bin")) == [
        f"pytorch_model-0000{i}-of-00003.bin" for i in (1, 2, 3)]
    assert type(model) is VideoPandaForCausalLM and model.dtype == torch.bfloat16
    assert isinstance(AutoConfig.from_pretrained(folder), VideoPandaConfig)
    # nothing missing, and the ignored keys are not reported as unexpected
    assert info == {"missing_keys": set(), "unexpected_keys": set(), "mismatched_keys": set(), "error_msgs": []}
    ours = model.state_dict()
    used = {}
    for name, tensor in source.items():
        target = released_key_to_model_key(name)
        if target is None:
            assert name.startswith(IGNORED), name
            continue
        assert torch.equal(ours[target], tensor), name
        used[target] = name
    assert set(used) == set(ours)  # every model tensor came from the folder
    stab_used = sorted(k[len("model.video_tower."):] for k in used.values() if k.startswith("model.video_tower."))
    assert stab_used == sorted(k for k in released_stab_keys() if not k.startswith("lmhra2."))
    assert {k for k in source if k.startswith("model.video_tower.lmhra2.")}  # present, never used


def test_save_pretrained_round_trips_exactly(loaded, tmp_path):
    model, _ = loaded
    model.save_pretrained(tmp_path / "ours")
    assert (tmp_path / "ours" / "model.safetensors").is_file()
    with safe_open(str(tmp_path / "ours" / "model.safetensors"), "pt") as f:
        stored = set(f.keys())
    # the STAB is stored under the released names (the registered mapping works both ways)
    assert "model.video_tower.class_embedding" in stored and "model.video_tower.frame_query" not in stored
    again, info = AutoModelForCausalLM.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert again.config.to_dict()["stab"] == model.config.to_dict()["stab"]
    a, b = model.state_dict(), again.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # our own reader gives the same tensors from the safetensors folder
    read = read_state_dict(tmp_path / "ours")
    assert read.keys() == stored
    # a model built from scratch (training) saves and loads the same way
    torch.manual_seed(4)
    fresh = VideoPandaForCausalLM(model.config)
    fresh.save_pretrained(tmp_path / "fresh")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fresh", dtype=torch.float32).state_dict()
    assert all(torch.equal(v, reloaded[k]) for k, v in fresh.state_dict().items())


def test_read_state_dict_formats(released, tmp_path):
    folder, source = released
    read = read_state_dict(folder)  # sharded .bin + index
    assert read.keys() == source.keys() and all(torch.equal(read[k], source[k]) for k in source)
    single = tmp_path / "single"
    single.mkdir()
    torch.save({"a": torch.arange(3)}, single / "pytorch_model.bin")
    assert torch.equal(read_state_dict(single)["a"], torch.arange(3))
    sharded = tmp_path / "sharded"
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.save_pretrained(sharded, max_shard_size="200KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(read_state_dict(sharded)) == len(model.state_dict())
    with pytest.raises(FileNotFoundError, match="no model weights"):
        read_state_dict(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": {"x": "pytorch_model-00001-of-00002.bin"}}))
    with pytest.raises(FileNotFoundError, match="pytorch_model-00001-of-00002.bin is missing"):
        read_state_dict(broken)


class _Payload:
    """Unpickling this runs `Path.touch(marker)`: it must never be unpickled when loading weights."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_bin_files_are_loaded_with_weights_only(released, tmp_path):
    folder, _ = released
    evil = tmp_path / "evil"
    evil.mkdir()
    for item in folder.iterdir():
        (evil / item.name).write_bytes(item.read_bytes())
    marker = tmp_path / "code_ran"
    shard = evil / "pytorch_model-00001-of-00003.bin"
    tensors = torch.load(shard, weights_only=True)
    name = next(iter(tensors))
    tensors[name] = _Payload(marker)
    torch.save(tensors, shard)
    with pytest.raises(pickle.UnpicklingError):
        read_state_dict(evil)
    with pytest.raises((pickle.UnpicklingError, OSError)):
        AutoModelForCausalLM.from_pretrained(evil)
    assert not marker.exists()
    torch.load(shard, weights_only=False)  # the payload is live: a full unpickle runs it
    assert marker.exists()


def test_place_state_dict_reports_what_it_cannot_place(released, tiny_tokenizer_dir):
    folder, source = released
    config = AutoConfig.from_pretrained(folder)
    model = VideoPandaForCausalLM(config)
    report = place_state_dict(model, source, released_key_to_model_key, source=str(folder))
    assert not report.unplaced and not report.missing
    assert sorted(report.ignored) == sorted(k for k in source if k.startswith(IGNORED))
    assert torch.equal(model.model.video_tower.frame_query.data, source["model.video_tower.class_embedding"].float())
    odd = dict(source)
    odd["model.video_tower.not_a_part.weight"] = torch.zeros(2)
    del odd["lm_head.weight"]
    report = place_state_dict(model, odd, released_key_to_model_key)
    assert report.unplaced == ["model.video_tower.not_a_part.weight"] and report.missing == ["lm_head.weight"]
    with pytest.raises(ValueError, match=r"not_a_part\.weight.*lm_head\.weight"):
        place_state_dict(model, odd, released_key_to_model_key, strict=True)
    bad_shape = dict(source)
    bad_shape["model.norm.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="model.norm.weight has shape"):
        place_state_dict(model, bad_shape, released_key_to_model_key)


def test_key_maps():
    assert released_key_to_model_key("model.layers.0.self_attn.q_proj.weight") == "model.layers.0.self_attn.q_proj.weight"
    assert released_key_to_model_key("model.video_tower.local_attention.kv.1.weight") == "model.video_tower.lsd.kv.weight"
    assert released_key_to_model_key("model.video_tower.lmhra2.pos_embed.1.bias") is None
    assert released_key_to_model_key("model.vision_tower.dpe.weight") is None
    assert released_key_to_model_key("model.video_tower_compressor.teacher_layer.x") is None
    assert released_key_to_model_key("model.video_tower_compressor.norm_layer.0.0.weight", include_training=True) == \
        "model.video_tower_compressor.norm_layer.0.0.weight"
    assert released_key_to_model_key("model.video_tower_compressor.teacher_layer.x", include_training=True) is None
    for released in released_stab_keys():
        ours = released_key_to_model_key("model.video_tower." + released)
        if ours is not None:
            assert model_key_to_released_key(ours) == "model.video_tower." + released
    # EVE: vision tower -> STAB (its CLIP teacher dropped), mm_projector -> projector, compressor -> head
    assert eve_key_to_model_key("model.vision_tower.global_attention.q.1.weight") == "model.video_tower.fsra.query.weight"
    assert eve_key_to_model_key("model.vision_tower.clip_vision_tower.vision_model.post_layernorm.weight") is None
    assert eve_key_to_model_key("model.mm_projector.2.bias") == "model.video_projector.2.bias"
    assert eve_key_to_model_key("model.vision_tower_compressor.clip_layer.vision_model.pre_layrnorm.weight") is None
    assert eve_key_to_model_key("model.vision_tower_compressor.teacher_layer.a.weight") is None
    assert eve_key_to_model_key("model.vision_tower_compressor.norm_layer.3.1.weight") == \
        "model.video_tower_compressor.norm_layer.3.1.weight"
    assert eve_key_to_model_key("model.vision_tower_compressor.output_layer.bias") == \
        "model.video_tower_compressor.output_layer.bias"
    assert eve_key_to_model_key("lm_head.weight") == "lm_head.weight"


def test_helper_state_dict_has_every_released_name():
    config = VideoPandaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, video_hidden_size=32, mm_hidden_size=32)
    state = released_state_dict(config)
    for released in released_stab_keys():
        assert state["model.video_tower." + released].dtype in (torch.bfloat16, torch.int64)
        assert torch.equal(state["model.vision_tower." + released], state["model.video_tower." + released])
    assert state["model.video_tower.lmhra1.pos_embed.0.num_batches_tracked"].dtype == torch.int64


# ---- the distillation head: EVE (stage 1), released and training folders ------------------------------------

LLM, STAB_WIDTH, TEACHER_WIDTH = 64, 32, 48
TRAINING_CONFIG = {"num_frames": 4, "frames_per_chunk": 4, "image_size": 112, "teacher_image_size": 56}
HEAD_PREFIX = "model.video_tower_compressor."


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def vp_log():
    """Messages of the `videopanda` loggers at INFO and above (they do not propagate to caplog)."""
    logger, handler = logging.getLogger("videopanda"), _Messages()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def _teacher_folder(folder: Path, image_size: int) -> Path:
    from videopanda.train.teacher import LanguageBindVideoTower, TeacherConfig, init_teacher_weights

    config = TeacherConfig(hidden_size=TEACHER_WIDTH, intermediate_size=2 * TEACHER_WIDTH, num_attention_heads=4,
                           num_hidden_layers=2, image_size=image_size, num_frames=8)
    return init_teacher_weights(LanguageBindVideoTower(config), seed=1).save_pretrained(folder)


def _build(folder: Path, teacher: Path):
    from videopanda.train.stages import build_model

    return build_model(folder, init="auto", stab_overrides={"width": STAB_WIDTH, "num_heads": 4},
                       config_overrides=TRAINING_CONFIG, teacher_folder=teacher, dtype=torch.float32,
                       attn_implementation="sdpa")


@pytest.fixture(scope="module")
def eve(tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp("EVE-7B-Pretrain")
    state = build_eve_folder(folder, tiny_tokenizer_dir, hidden=LLM, stab_width=STAB_WIDTH, teacher_width=TEACHER_WIDTH)
    return folder, state, _teacher_folder(tmp_path_factory.mktemp("teacher56"), 56)


def _head_by_hand(raw: dict[str, torch.Tensor], states: list[torch.Tensor], heads: int = 8) -> torch.Tensor:
    """The head written out from the checkpoint's tensors: LayerNorm + Linear per layer (j = 0 the layer-32
    query), attention of the query over the other 8 per head with scale width^-0.5,
    input_layer(layer-32 state) + output_layer(fused)."""
    w = {k: v.float() for k, v in raw.items()}
    projected = []
    for j, state in enumerate(states):
        normed = torch.nn.functional.layer_norm(state, (state.shape[-1],), w[f"norm_layer.{j}.0.weight"],
                                                w[f"norm_layer.{j}.0.bias"], eps=1e-5)
        projected.append(normed @ w[f"norm_layer.{j}.1.weight"].T)
    width = projected[0].shape[-1]
    d = width // heads
    out = torch.empty(states[0].shape[0], width)
    for n in range(states[0].shape[0]):
        fused = torch.empty(width)
        for h in range(heads):
            part = slice(h * d, (h + 1) * d)
            query = projected[0][n, part]
            keys = torch.stack([projected[j][n, part] for j in range(1, 9)])
            fused[part] = torch.softmax(keys @ query / math.sqrt(width), dim=0) @ keys
        out[n] = (states[0][n] @ w["input_layer.weight"].T + w["input_layer.bias"]
                  + fused @ w["output_layer.weight"].T + w["output_layer.bias"])
    return out


def test_stage1_from_eve_places_all_31_head_tensors(eve, vp_log):
    folder, state, teacher = eve
    model = _build(folder, teacher)
    head = model.distill_head
    raw = {k[len("model.vision_tower_compressor."):]: v for k, v in state.items()
           if k.startswith("model.vision_tower_compressor.") and ".clip_layer." not in k}
    assert len(raw) == 31 and {k: tuple(v.shape) for k, v in raw.items()} == head_names_and_shapes(LLM, TEACHER_WIDTH)
    ours = head.state_dict()
    assert set(ours) == set(raw)
    assert all(torch.equal(ours[k], raw[k].float()) for k in raw)
    assert any("31 of 31 distillation-head tensors" in m for m in vp_log), vp_log
    assert not any("could not be placed" in m or "received nothing" in m for m in vp_log if "compressor" in m)
    torch.manual_seed(0)
    states = [torch.randn(5, LLM) for _ in range(9)]
    with torch.no_grad():
        torch.testing.assert_close(head(states), _head_by_hand(raw, states), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("model.vision_tower_compressor.norm_layer.4.1.weight"), r"received nothing: norm_layer\.4\.1\.weight"),
    (lambda s: s.update({"model.vision_tower_compressor.norm_layer.9.0.weight": torch.ones(LLM)}),
     r"could not be placed: model\.vision_tower_compressor\.norm_layer\.9\.0\.weight"),
], ids=["missing", "extra"])
def test_stage1_from_eve_refuses_a_missing_or_extra_head_tensor(eve, tmp_path, edit, message):
    folder, state, teacher = eve
    broken = tmp_path / "eve_broken"
    broken.mkdir()
    shutil.copy(folder / "config.json", broken / "config.json")
    changed = dict(state)
    edit(changed)
    write_sharded_bin(broken, changed, shards=2)
    with pytest.raises(ValueError, match=message):
        _build(broken, teacher)


def test_released_folder_head_loads_and_its_teacher_copy_is_skipped(tmp_path, tiny_tokenizer_dir):
    folder = tmp_path / "videopanda_prtr1"
    state = build_released_folder(folder, tiny_tokenizer_dir, hidden=LLM, stab_width=STAB_WIDTH,
                                  teacher_width=TEACHER_WIDTH)
    assert any(k.startswith(HEAD_PREFIX + "teacher_layer.") for k in state)
    model = _build(folder, _teacher_folder(tmp_path / "teacher224", 224))  # released configs: 224 px teacher
    ours = model.distill_head.state_dict()
    released = {k[len(HEAD_PREFIX):]: v for k, v in state.items()
                if k.startswith(HEAD_PREFIX) and not k.startswith(HEAD_PREFIX + "teacher_layer.")}
    assert set(ours) == set(released) and len(ours) == 31
    assert all(torch.equal(ours[k], released[k].float()) for k in released)


def test_training_folder_keeps_the_head_under_the_released_names_bit_exact(eve, tmp_path):
    from safetensors import safe_open

    from videopanda.train.checkpointing import FINAL_MARKER

    folder, _, teacher = eve
    model = _build(folder, teacher)
    head = model.distill_head
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p) * 0.01)  # as after training: values no checkpoint holds
    saved = tmp_path / "prealign"
    model.save_pretrained(saved)
    (saved / FINAL_MARKER).write_text("{}")
    with safe_open(str(saved / "model.safetensors"), framework="pt") as handle:
        names = {k[len(HEAD_PREFIX):] for k in handle.keys() if k.startswith(HEAD_PREFIX)}
    assert names == set(head_names_and_shapes(LLM, TEACHER_WIDTH))
    loaded = _build(saved, teacher).distill_head.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in head.state_dict().items())
