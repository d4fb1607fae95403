"""Checkpoints: the released layout through the Auto classes, our save/load round trip, readers and key maps."""
import json
import pickle
from pathlib import Path

import pytest
import torch
from helpers.released import TOWER_FOLDER, build_released_folder, released_state_dict
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
    assert released_key_to_model_key("model.video_tower_compressor.layer_proj.0.0.weight", include_training=True) == \
        "model.video_tower_compressor.layer_proj.0.0.weight"
    for released in released_stab_keys():
        ours = released_key_to_model_key("model.video_tower." + released)
        if ours is not None:
            assert model_key_to_released_key(ours) == "model.video_tower." + released
    # EVE: vision tower -> STAB (its CLIP teacher dropped), mm_projector -> projector, compressor -> head
    assert eve_key_to_model_key("model.vision_tower.global_attention.q.1.weight") == "model.video_tower.fsra.query.weight"
    assert eve_key_to_model_key("model.vision_tower.clip_vision_tower.vision_model.post_layernorm.weight") is None
    assert eve_key_to_model_key("model.mm_projector.2.bias") == "model.video_projector.2.bias"
    assert eve_key_to_model_key("model.vision_tower_compressor.teacher_layer.a.weight") is None
    assert eve_key_to_model_key("model.vision_tower_compressor.fused_proj.weight") == \
        "model.video_tower_compressor.fused_proj.weight"
    assert eve_key_to_model_key("lm_head.weight") == "lm_head.weight"


def test_helper_state_dict_has_every_released_name():
    config = VideoPandaConfig(vocab_size=320, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=4, video_hidden_size=32, mm_hidden_size=32)
    state = released_state_dict(config)
    for released in released_stab_keys():
        assert state["model.video_tower." + released].dtype in (torch.bfloat16, torch.int64)
        assert torch.equal(state["model.vision_tower." + released], state["model.video_tower." + released])
    assert state["model.video_tower.lmhra1.pos_embed.0.num_batches_tracked"].dtype == torch.int64
