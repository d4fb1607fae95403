"""The LanguageBind video teacher: CLIP conventions, temporal attention, folder loading, frozen behaviour."""
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from videopanda.train.teacher import LanguageBindVideoTower, TeacherConfig, TeacherFolderError, init_teacher_weights

TINY = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=3,
            image_size=56, patch_size=14, num_frames=8, hidden_act="quick_gelu")


def tiny_tower(seed=0, **overrides):
    return init_teacher_weights(LanguageBindVideoTower(TeacherConfig(**{**TINY, **overrides})), seed=seed, std=0.2)


def test_without_temporal_parts_equals_hf_clip_second_to_last_hidden_state():
    """With the temporal attention switched off (zero out-projection, zero temporal embedding) the tower is
    a plain CLIP vision transformer: features must be transformers' hidden_states[-2] minus the class token."""
    clip = CLIPVisionModel(CLIPVisionConfig(**{k: v for k, v in TINY.items() if k != "num_frames"})).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in clip.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    tower = LanguageBindVideoTower(TeacherConfig(**TINY))
    missing, unexpected = tower.vision_model.load_state_dict(clip.state_dict(), strict=False)
    assert not unexpected and all("temporal" in k for k in missing)
    for layer in tower.vision_model.encoder.layers:
        torch.nn.init.zeros_(layer.temporal_attn.out_proj.weight)
        torch.nn.init.zeros_(layer.temporal_attn.out_proj.bias)
    frames = torch.randn(2, 4, 4, 56, 56)
    ours = tower(frames)
    with torch.no_grad():
        ref = clip(pixel_values=frames[:, :, :3].reshape(8, 3, 56, 56), output_hidden_states=True).hidden_states[-2][:, 1:]
    assert ours.shape == (8, 16, 32)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def _linear(x, layer):
    return x @ layer.weight.T + layer.bias


def _layer_norm(x, norm):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


def _attention(x, attn, heads):
    """x (S, D): softmax(q k^T / sqrt(d_head)) v per head, written out."""
    q, k, v = _linear(x, attn.q_proj), _linear(x, attn.k_proj), _linear(x, attn.v_proj)
    d = x.shape[-1] // heads
    out = torch.empty_like(x)
    for h in range(heads):
        part = slice(h * d, (h + 1) * d)
        weights = torch.softmax(q[:, part] @ k[:, part].T / d ** 0.5, dim=-1)
        out[:, part] = weights @ v[:, part]
    return _linear(out, attn.out_proj)


def reference_features(tower, video):
    """video (N, 3, S, S): ONE video's frames in time order -> (N, P, D), by loops: every position's temporal
    attention over all N frames with temporal_embedding[:, :N], then each frame's spatial block."""
    cfg, vm = tower.config, tower.vision_model
    n, heads = video.shape[0], cfg.num_attention_heads
    emb = vm.embeddings
    patches = torch.nn.functional.conv2d(video, emb.patch_embedding.weight, stride=cfg.patch_size)
    tokens = torch.cat([emb.class_embedding.expand(n, 1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
    x = _layer_norm(tokens + emb.position_embedding.weight, vm.pre_layrnorm)
    for layer in vm.encoder.layers[:cfg.num_hidden_layers - 1]:          # hidden_states[-2]
        x = x.clone()
        for p in range(x.shape[1]):
            seq = x[:, p] + layer.temporal_embedding[0, :n]
            x[:, p] = seq + _attention(_layer_norm(seq, layer.temporal_layer_norm1), layer.temporal_attn, heads)
        for f in range(n):
            y = x[f] + _attention(_layer_norm(x[f], layer.layer_norm1), layer.self_attn, heads)
            hidden = torch.nn.functional.gelu(_linear(_layer_norm(y, layer.layer_norm2), layer.mlp.fc1))
            x[f] = y + _linear(hidden, layer.mlp.fc2)
    return x[:, 1:]


def test_temporal_attention_spans_all_frames_of_a_video_like_a_per_position_loop():
    """An 8-frame video in two 4-frame chunks: one temporal group of 8 frames (the config's num_frames),
    as the written-out reference computes it; frame 7 reaches frame 0."""
    tower = tiny_tower(seed=4, hidden_act="gelu", num_hidden_layers=3)
    init_teacher_weights(tower, seed=4, std=0.2, temporal_std=0.5)
    frames = torch.randn(2, 4, 3, 56, 56)
    ours = tower(frames)
    with torch.no_grad():
        expected = reference_features(tower, frames.flatten(0, 1))
    assert ours.shape == (8, 16, 32)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)
    changed = frames.clone()
    changed[1, 3] = torch.randn(3, 56, 56)  # frame 7, in the second chunk
    shift = (tower(changed)[0] - ours[0]).norm() / ours[0].norm()
    assert shift > 1e-2, "frame 0 must see frame 7 of its video through temporal attention"
    # The mask channel is dropped.
    torch.testing.assert_close(tower(torch.cat([frames, torch.ones(2, 4, 1, 56, 56)], dim=2)), ours)


def test_videos_of_a_batch_never_mix_and_long_videos_group_by_num_frames():
    tower = tiny_tower(seed=5, hidden_act="gelu")
    init_teacher_weights(tower, seed=5, std=0.2, temporal_std=0.5)
    a, b = torch.randn(2, 4, 3, 56, 56), torch.randn(2, 4, 3, 56, 56)
    batch = tower(torch.cat([a, b]), num_videos=2)
    torch.testing.assert_close(batch[:8], tower(a), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch[8:], tower(b), rtol=1e-5, atol=1e-5)
    other = tower(torch.cat([a, torch.randn(2, 4, 3, 56, 56)]), num_videos=2)
    torch.testing.assert_close(other[:8], batch[:8], rtol=0, atol=0)
    # Videos shorter than num_frames (8): each 4-frame video is its own group, with temporal_embedding[:, :4].
    short = tower(torch.cat([a[:1], b[:1]]), num_videos=2)
    torch.testing.assert_close(short[:4], tower(a[:1]), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(short[4:], reference_features(tower, b[0]), rtol=1e-4, atol=1e-4)
    # A 16-frame video is two 8-frame groups (LanguageBind reshapes by num_frames): frame 15 does not reach frame 0.
    long = torch.cat([a, b])
    edited = long.clone()
    edited[3, 3] += 1.0
    torch.testing.assert_close(tower(edited)[:8], tower(long)[:8], rtol=0, atol=0)
    assert not torch.allclose(tower(edited)[8], tower(long)[8])


def test_frame_counts_that_do_not_split_into_groups_are_refused():
    tower = tiny_tower()
    assert [tower.temporal_group(n) for n in (1, 4, 8, 16, 24)] == [1, 4, 8, 8, 8]
    with pytest.raises(ValueError, match="videos of 12 frames.*8-frame groups"):
        tower(torch.randn(3, 4, 3, 56, 56))
    with pytest.raises(ValueError, match="3 chunks for 2 videos"):
        tower(torch.randn(3, 4, 3, 56, 56), num_videos=2)


def test_temporal_block_matches_a_per_position_loop():
    """One layer's temporal step, regrouping done by hand one 4-frame group and one position at a time."""
    tower = tiny_tower(seed=3, num_hidden_layers=1, select_layer=-1)
    layer = tower.vision_model.encoder.layers[0]
    x = torch.randn(2 * 4, 17, 32)
    expected = torch.empty_like(x)
    with torch.no_grad():
        for c in range(2):
            for p in range(17):
                seq = x[c * 4:(c + 1) * 4, p] + layer.temporal_embedding[0, :4]       # (T, D)
                normed = layer.temporal_layer_norm1(seq)[None]
                expected[c * 4:(c + 1) * 4, p] = seq + layer.temporal_attn(normed)[0]
        expected = expected + layer.self_attn(layer.layer_norm1(expected))
        expected = expected + layer.mlp(layer.layer_norm2(expected))
        torch.testing.assert_close(layer(x, 4), expected, rtol=1e-5, atol=1e-5)


def test_frozen_eval_no_grad():
    tower = tiny_tower()
    tower.train()
    assert not tower.training and not any(m.training for m in tower.modules())
    assert not any(p.requires_grad for p in tower.parameters())
    out = tower(torch.randn(1, 4, 3, 56, 56, requires_grad=True))
    assert not out.requires_grad


def test_save_and_load_round_trip(tmp_path):
    tower = tiny_tower(seed=1)
    folder = tower.save_pretrained(tmp_path / "teacher")
    config = json.loads((folder / "config.json").read_text())
    assert config["vision_config"]["num_frames"] == 8
    assert all(k.startswith("vision_model.") for k in load_file(folder / "model.safetensors"))
    loaded = LanguageBindVideoTower.from_pretrained(folder)
    frames = torch.randn(1, 4, 3, 56, 56)
    torch.testing.assert_close(loaded(frames), tower(frames))


def test_loads_sharded_bin_in_languagebind_layout(tmp_path):
    """Nested config with a text tower, sharded pytorch_model-*.bin with an index, text keys and an old
    position_ids buffer that must be ignored; gelu activation read from the config."""
    tower = tiny_tower(seed=2, hidden_act="gelu")
    state = {f"vision_model.{k}": v for k, v in tower.vision_model.state_dict().items()}
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    state["text_model.embeddings.token_embedding.weight"] = torch.randn(10, 32)
    state["logit_scale"] = torch.tensor(1.0)
    keys = sorted(state)
    shards = {"pytorch_model-00001-of-00002.bin": keys[: len(keys) // 2], "pytorch_model-00002-of-00002.bin": keys[len(keys) // 2:]}
    folder = tmp_path / "LanguageBind_Video_merge"
    folder.mkdir()
    for name, names in shards.items():
        torch.save({k: state[k] for k in names}, folder / name)
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, names in shards.items() for k in names}}))
    vision = {**TINY, "hidden_act": "gelu", "add_time_attn": True, "force_patch_dropout": 0.0}
    (folder / "config.json").write_text(json.dumps({"model_type": "LanguageBindVideo", "text_config": {"hidden_size": 32},
                                                    "vision_config": vision}))
    loaded = LanguageBindVideoTower.from_pretrained(folder)
    assert loaded.config.hidden_act == "gelu"
    frames = torch.randn(1, 4, 3, 56, 56)
    torch.testing.assert_close(loaded(frames), tower(frames))


def test_clear_errors(tmp_path):
    with pytest.raises(TeacherFolderError, match="does not exist"):
        LanguageBindVideoTower.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherFolderError, match="no config.json"):
        LanguageBindVideoTower.from_pretrained(tmp_path / "empty")
    folder = tiny_tower().save_pretrained(tmp_path / "teacher")
    state = load_file(folder / "model.safetensors")
    state.pop("vision_model.encoder.layers.1.temporal_attn.q_proj.weight")
    state["vision_model.encoder.layers.9.mlp.fc1.weight"] = torch.zeros(1)
    from safetensors.torch import save_file
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(TeacherFolderError, match=r"missing: vision_model\.encoder\.layers\.1\.temporal_attn\.q_proj\.weight.*"
                                                 r"unexpected: vision_model\.encoder\.layers\.9\.mlp\.fc1\.weight"):
        LanguageBindVideoTower.from_pretrained(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(TeacherFolderError, match="no model weights"):
        LanguageBindVideoTower.from_pretrained(folder)
    with pytest.raises(ValueError, match="224x224|56x56"):
        tiny_tower()(torch.randn(1, 4, 3, 28, 28))


def test_smooth_position_embeddings_order_the_patches_along_each_axis():
    """With position_frequencies the patch positions are a smooth 2D code: a linear map reads column and
    row exactly, nearer patches are more alike, and every other weight is the same draw as without it."""
    config = TeacherConfig(**{**TINY, "image_size": 112})  # an 8x8 grid
    plain = init_teacher_weights(LanguageBindVideoTower(config), seed=3, position_std=0.5)
    smooth = init_teacher_weights(LanguageBindVideoTower(config), seed=3, position_std=0.5, position_frequencies=2)
    positions = smooth.vision_model.embeddings.position_embedding.weight.detach()
    grid = smooth.grid_size
    patches = positions[1:]
    assert abs(patches.std().item() - 0.5) < 1e-4
    # a linear readout of the embedding orders the patches along each axis (the k = 1 cosines are monotone)
    column = torch.arange(grid).repeat(grid).float()
    row = torch.arange(grid).repeat_interleave(grid).float()
    for target, along in ((column, 1), (row, 0)):
        centred = target - target.mean()
        readout = (patches @ torch.linalg.lstsq(patches, centred[:, None], driver="gelsd").solution).view(grid, grid)
        assert (readout.diff(dim=along) > 0.1).all()
        assert torch.corrcoef(torch.stack([readout.flatten(), centred]))[0, 1] > 0.95
    # similarity falls with distance: neighbour > far end of the same row > opposite corner
    similarity = [torch.nn.functional.cosine_similarity(patches[0], patches[i], dim=0) for i in (1, grid - 1, -1)]
    assert similarity[0] > similarity[1] > similarity[2]
    # the class token's position and all other weights: identical to the independent draw
    plain_state, smooth_state = plain.state_dict(), smooth.state_dict()
    key = "vision_model.embeddings.position_embedding.weight"
    assert torch.equal(plain_state[key][0], smooth_state[key][0])
    assert not torch.equal(plain_state[key][1:], smooth_state[key][1:])
    assert all(torch.equal(plain_state[k], smooth_state[k]) for k in plain_state if k != key)


def test_temporal_std_makes_each_frame_carry_the_other_frames_of_its_video():
    """With CLIP-scale temporal weights a frame's features hardly depend on the other frames of its video;
    `temporal_std` scales the temporal embeddings and temporal attention so that they do (changing only
    the last frame moves the first frame's features), and leaves every other weight as drawn."""
    config = TeacherConfig(**{**TINY, "num_hidden_layers": 2})
    torch.manual_seed(0)
    clip = torch.rand(1, 4, 3, 56, 56)
    edited = clip.clone()
    edited[0, 3] = torch.rand(3, 56, 56)

    def first_frame_shift(tower):
        with torch.no_grad():
            before, after = tower(clip).view(4, -1, config.hidden_size), tower(edited).view(4, -1, config.hidden_size)
        return ((before[0] - after[0]).norm() / before[0].norm()).item()

    plain = init_teacher_weights(LanguageBindVideoTower(config), seed=5, position_std=0.5, patch_std=0.1)
    mixed = init_teacher_weights(LanguageBindVideoTower(config), seed=5, position_std=0.5, patch_std=0.1, temporal_std=0.1)
    assert first_frame_shift(plain) < 0.01
    assert first_frame_shift(mixed) > 0.025
    plain_state, mixed_state = plain.state_dict(), mixed.state_dict()
    for key in plain_state:
        temporal = "temporal_embedding" in key or ("temporal_attn" in key and key.endswith("weight"))
        assert torch.equal(plain_state[key], mixed_state[key]) != temporal, key
        if temporal:
            assert abs(mixed_state[key].std().item() - 0.1) < 0.03, key
