"""STAB tests: token counts, parameter counts, gradients, released-name loading, and parity of the batched
forward with a literal per-frame implementation of the paper's STAB written here (`reference_stab`).

The reference reads its weights by their released names (docs/DESIGN.md, `checkpoint.py`), so the parity
tests also check that `load_released_state_dict` puts every tensor where the forward expects it.
"""
from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from videopanda.model.stab import (
    SpatioTemporalAlignmentBlock,
    STABConfig,
    count_parameters,
    module_key_to_released_stab_key,
    released_stab_key_to_module_key,
)

SMALL = STABConfig(width=64, num_heads=8)


# ---------------------------------------------------------------------------------------------------
# Inputs


def make_frames(chunks: int, per_chunk: int, size: int, contents: list[tuple[int, int] | None],
                seed: int = 0, dtype: torch.dtype = torch.float32) -> Tensor:
    """(C, T, 4, size, size) frames as the preprocessing produces them: content (height, width) in
    teacher-grid patches (28 student px each), centred with padding before = ((grid - k) // 2) * 28;
    None = an all-zero padding frame. `contents` has one entry per frame."""
    assert len(contents) == chunks * per_chunk
    g = torch.Generator().manual_seed(seed)
    grid = size // 28
    frames = torch.zeros(chunks * per_chunk, 4, size, size, dtype=dtype)
    for i, content in enumerate(contents):
        if content is None:
            continue
        kh, kw = content
        top, left = (grid - kh) // 2 * 28, (grid - kw) // 2 * 28
        rgb = torch.randn(3, kh * 28, kw * 28, generator=g, dtype=dtype)
        frames[i, :3] = torch.randn(3, size, size, generator=g, dtype=dtype) * 0.1  # the pad colour, normalised
        frames[i, :3, top:top + kh * 28, left:left + kw * 28] = rgb
        frames[i, 3, top:top + kh * 28, left:left + kw * 28] = 1
    return frames.view(chunks, per_chunk, 4, size, size)


# ---------------------------------------------------------------------------------------------------
# Released-format weights


def released_shapes(cfg: STABConfig) -> dict[str, tuple[int, ...]]:
    """The released STAB keys (docs/DESIGN.md, `checkpoint.py`; no prefix) that `cfg` uses, with their shapes.
    Written out here, independent of the module's own name map."""
    D, hid, p = cfg.width, cfg.lste_width, cfg.patch_size
    shapes: dict[str, tuple[int, ...]] = {"patch_embedding.weight": (D, 3, p, p),
                                          "dpe.weight": (D, 1, 3, 3, 3), "dpe.bias": (D,)}
    if cfg.use_fsra:
        shapes["class_embedding"] = (D,)
    if cfg.use_row_tokens:
        shapes["split_embedding"] = (D,)
    if cfg.use_lste:
        shapes.update({f"lmhra1.pos_embed.0.{n}": (D,) for n in ("weight", "bias", "running_mean", "running_var")})
        shapes["lmhra1.pos_embed.0.num_batches_tracked"] = ()
        shapes.update({"lmhra1.pos_embed.1.weight": (hid, D, 1, 1, 1), "lmhra1.pos_embed.1.bias": (hid,),
                       "lmhra1.pos_embed.2.weight": (hid, 1, 3, 1, 1), "lmhra1.pos_embed.2.bias": (hid,),
                       "lmhra1.pos_embed.3.weight": (D, hid, 1, 1, 1), "lmhra1.pos_embed.3.bias": (D,)})
    if cfg.use_gstra:
        shapes.update({"temporal_cls_token": (1, 1, D), "balance": (D,),
                       "dec.attn.in_proj_weight": (3 * D, D), "dec.attn.in_proj_bias": (3 * D,),
                       "dec.attn.out_proj.weight": (D, D), "dec.attn.out_proj.bias": (D,),
                       "dec.mlp.c_fc.weight": (cfg.mlp_ratio * D, D), "dec.mlp.c_fc.bias": (cfg.mlp_ratio * D,),
                       "dec.mlp.c_proj.weight": (D, cfg.mlp_ratio * D), "dec.mlp.c_proj.bias": (D,),
                       "proj.0.weight": (D,), "proj.0.bias": (D,), "proj.2.weight": (D, D), "proj.2.bias": (D,)})
        shapes.update({f"dec.ln_{i}.{n}": (D,) for i in (1, 2, 3) for n in ("weight", "bias")})
    attentions = (["local_attention"] if cfg.lsd_mode == "attention" else []) + (["global_attention"] if cfg.use_fsra else [])
    for a in attentions:
        shapes.update({f"{a}.q.0.weight": (D,), f"{a}.q.0.bias": (D,), f"{a}.q.1.weight": (D, D),
                       f"{a}.kv.0.weight": (D,), f"{a}.kv.0.bias": (D,), f"{a}.kv.1.weight": (2 * D, D),
                       f"{a}.proj.weight": (D, D), f"{a}.proj.bias": (D,)})
    return shapes


def released_parameter_count(cfg: STABConfig) -> int:
    """Parameter elements among the released keys `cfg` uses (BatchNorm running statistics are buffers)."""
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(math.prod(s) for k, s in released_shapes(cfg).items() if not k.endswith(buffers))


def random_released_state_dict(cfg: STABConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Random, all non-zero weights under the released names, scaled like trained layers (fan-in)."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in released_shapes(cfg).items():
        if name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(7)
        elif name.endswith("running_var"):
            sd[name] = torch.rand(shape, generator=g, dtype=dtype) + 0.5
        elif len(shape) == 1 and name.endswith("weight"):  # norm scales
            sd[name] = 1 + 0.2 * torch.randn(shape, generator=g, dtype=dtype)
        elif len(shape) > 1:
            sd[name] = torch.randn(shape, generator=g, dtype=dtype) / math.sqrt(math.prod(shape[1:]))
        else:  # biases and learned embeddings
            sd[name] = 0.5 * torch.randn(shape, generator=g, dtype=dtype)
    return sd


def loaded_block(cfg: STABConfig, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[SpatioTemporalAlignmentBlock, dict]:
    sd = random_released_state_dict(cfg, seed, dtype)
    block = SpatioTemporalAlignmentBlock(cfg).to(dtype)
    block.load_released_state_dict(sd)
    return block.eval(), sd


# ---------------------------------------------------------------------------------------------------
# The literal per-frame reference (the paper's STAB, with the original's details in docs/DESIGN.md, `stab.py`),
# from released-name weights


def _ln(x: Tensor, sd: dict, name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _query_attention(sd: dict, prefix: str, query: Tensor, tokens: Tensor, heads: int) -> Tensor:
    """LSD / FSRA attention, spelled out: query (B, D) one per token set, tokens (B, K, D) -> (B, D)."""
    B, K, D = tokens.shape
    d = D // heads
    q = F.linear(_ln(query, sd, f"{prefix}.q.0"), sd[f"{prefix}.q.1.weight"]).view(B, heads, d)
    kv = F.linear(_ln(tokens, sd, f"{prefix}.kv.0"), sd[f"{prefix}.kv.1.weight"])
    k, v = kv[..., :D].reshape(B, K, heads, d), kv[..., D:].reshape(B, K, heads, d)
    weights = (torch.einsum("bhd,bkhd->bhk", q, k) * D ** -0.5).softmax(-1)
    attended = torch.einsum("bhk,bkhd->bhd", weights, v).reshape(B, D)
    return F.linear(attended, sd[f"{prefix}.proj.weight"], sd[f"{prefix}.proj.bias"])


def reference_stab(sd: dict, frames: Tensor, cfg: STABConfig, bn_training: bool = False,
                   bn_buffers: tuple[Tensor, Tensor] | None = None) -> tuple[list[Tensor], list[tuple[int, int]]]:
    """The STAB as described, one frame at a time (dropout off). bn_training uses batch statistics and updates
    bn_buffers (running mean, var) in place, as BatchNorm3d in train mode does."""
    D, p, s, heads = cfg.width, cfg.patch_size, cfg.window, cfg.num_heads
    C, T, _, H, W = frames.shape
    N, h, w = C * T, H // p, W // p
    flat = frames.reshape(N, 4, H, W)
    emb = F.conv2d(flat[:, :3], sd["patch_embedding.weight"], stride=p)          # (N, D, h, w)
    patch_mask = F.avg_pool2d(flat[:, 3:4], p)[:, 0]                              # (N, h, w)
    video = None
    if T > 1:
        x = emb.view(C, T, D, h, w).permute(0, 2, 1, 3, 4)                         # (C, D, T, h, w)
        e0 = x
        if cfg.use_lste:
            bn = "lmhra1.pos_embed.0"
            mean, var = bn_buffers if bn_buffers is not None else (sd[f"{bn}.running_mean"], sd[f"{bn}.running_var"])
            m = F.batch_norm(x, mean, var, sd[f"{bn}.weight"], sd[f"{bn}.bias"], training=bn_training,
                             momentum=0.1, eps=1e-5)
            m = F.conv3d(m, sd["lmhra1.pos_embed.1.weight"], sd["lmhra1.pos_embed.1.bias"])
            m = F.conv3d(m, sd["lmhra1.pos_embed.2.weight"], sd["lmhra1.pos_embed.2.bias"], padding=(1, 0, 0),
                         groups=m.shape[1])
            m = F.conv3d(m, sd["lmhra1.pos_embed.3.weight"], sd["lmhra1.pos_embed.3.bias"])
            x = x + m
        x = x + F.conv3d(x, sd["dpe.weight"], sd["dpe.bias"], padding=1, groups=D)
        if cfg.use_gstra:
            mha = nn.MultiheadAttention(D, heads, batch_first=True).to(frames.dtype).eval()
            mha.in_proj_weight.data.copy_(sd["dec.attn.in_proj_weight"])
            mha.in_proj_bias.data.copy_(sd["dec.attn.in_proj_bias"])
            mha.out_proj.weight.data.copy_(sd["dec.attn.out_proj.weight"])
            mha.out_proj.bias.data.copy_(sd["dec.attn.out_proj.bias"])
            tokens = _ln(x.flatten(2).transpose(1, 2), sd, "dec.ln_3")                 # (C, T*h*w, D)
            q = sd["temporal_cls_token"].expand(C, 1, D)
            q = q + mha(_ln(q, sd, "dec.ln_1"), tokens, tokens, need_weights=False)[0]
            hidden = F.linear(_ln(q, sd, "dec.ln_2"), sd["dec.mlp.c_fc.weight"], sd["dec.mlp.c_fc.bias"])
            hidden = hidden * torch.sigmoid(1.702 * hidden)
            q = q + F.linear(hidden, sd["dec.mlp.c_proj.weight"], sd["dec.mlp.c_proj.bias"])
            video = q[:, 0]                                                             # (C, D)
        emb = (x + e0).permute(0, 2, 1, 3, 4).reshape(N, D, h, w)

    outputs, grids = [], []
    for n in range(N):
        cells = patch_mask[n].nonzero()
        if len(cells):
            r0, r1 = int(cells[:, 0].min()), int(cells[:, 0].max()) + 1
            c0, c1 = int(cells[:, 1].min()), int(cells[:, 1].max()) + 1
        else:
            r0, r1, c0, c1 = 0, min(cfg.padding_window, h), 0, min(cfg.padding_window, w)
        crop = emb[n, :, r0:r1, c0:c1]                                                  # (D, rows*s, cols*s)
        pooled = F.avg_pool2d(crop[None], s)[0]                                        # (D, rows, cols)
        rows, cols = pooled.shape[1:]
        grid = pooled.flatten(1).T                                                      # (rows*cols, D)
        if cfg.lsd_mode == "attention":
            windows = F.unfold(crop[None], s, stride=s)[0].view(D, s * s, rows * cols).permute(2, 1, 0)
            grid = grid + _query_attention(sd, "local_attention", grid, windows, heads)
        if cfg.use_fsra:
            cls_emb = sd["class_embedding"]
            frame = cls_emb + _query_attention(sd, "global_attention", cls_emb[None], grid[None], heads)[0]
        else:
            frame = grid.mean(0)
        if video is not None:
            a = torch.sigmoid(sd["balance"])
            mixed = (1 - a) * video[n // T] + a * frame
            cls = F.linear(_ln(mixed, sd, "proj.0"), sd["proj.2.weight"], sd["proj.2.bias"])
        else:
            cls = frame
        pieces = [cls[None]]
        for r in range(rows):
            pieces.append(grid[r * cols:(r + 1) * cols])
            if cfg.use_row_tokens:
                pieces.append(sd["split_embedding"][None])
        outputs.append(torch.cat(pieces))
        grids.append((rows, cols))
    return outputs, grids


def assert_parity(fast: list[Tensor], ref: list[Tensor], tol: float) -> None:
    assert len(fast) == len(ref)
    for i, (a, b) in enumerate(zip(fast, ref)):
        assert a.shape == b.shape, f"frame {i}: {tuple(a.shape)} vs reference {tuple(b.shape)}"
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel <= tol, f"frame {i}: relative error {rel:.2e} > {tol:.0e}"


# ---------------------------------------------------------------------------------------------------
# Cases: (chunks, frames per chunk, size, per-frame content in 28-px teacher patches or None = padding)

FULL16, LAND, PORT = (16, 16), (12, 16), (16, 10)
CASES = {
    "square_video_448": (2, 4, 448, [FULL16] * 8),
    "letterbox_landscape_448": (2, 4, 448, [LAND] * 8),
    "letterbox_portrait_448": (2, 4, 448, [PORT] * 8),
    "short_video_padding_448": (2, 4, 448, [LAND] * 5 + [None] * 3),
    "single_image_448": (1, 1, 448, [(11, 16)]),
    "sixteen_frames_224": (4, 4, 224, [(8, 8)] * 16),
    "mixed_regions_224": (2, 4, 224, [(8, 8), (6, 8), (8, 5), (8, 8), None, (6, 8), (3, 3), None]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_forward_matches_per_frame_reference(case):
    chunks, per_chunk, size, contents = CASES[case]
    block, sd = loaded_block(SMALL)
    frames = make_frames(chunks, per_chunk, size, contents, seed=1)
    with torch.no_grad():
        fast, grids = block(frames)
        ref, ref_grids = reference_stab(sd, frames, SMALL)
    assert grids == ref_grids
    assert_parity(fast, ref, 1e-5)


ABLATIONS = {
    "no_lste": dict(use_lste=False),
    "no_gstra": dict(use_gstra=False),
    "no_fsra": dict(use_fsra=False),
    "no_row_tokens": dict(use_row_tokens=False),
    "lsd_avgpool": dict(lsd_mode="avgpool"),
    "no_gstra_no_fsra": dict(use_gstra=False, use_fsra=False),
}


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_ablations_match_reference(name):
    cfg = dataclasses.replace(SMALL, **ABLATIONS[name])
    block, sd = loaded_block(cfg, seed=2)
    frames = make_frames(2, 4, 224, [(8, 8), (6, 8), (6, 8), None, (8, 5), (8, 5), (8, 5), None], seed=3)
    with torch.no_grad():
        fast, grids = block(frames)
        ref, _ = reference_stab(sd, frames, cfg)
    assert_parity(fast, ref, 1e-5)
    rows, cols = grids[1]
    assert (rows, cols) == (6, 8)
    assert fast[1].shape[0] == 1 + rows * (cols + int(cfg.use_row_tokens))


def test_ablations_remove_their_parameters():
    full = count_parameters(SpatioTemporalAlignmentBlock(SMALL))
    for name, change in ABLATIONS.items():
        cfg = dataclasses.replace(SMALL, **change)
        block = SpatioTemporalAlignmentBlock(cfg)
        expected = released_parameter_count(cfg)
        assert count_parameters(block) == expected < full, name


def test_float64_parity_is_exact_algebra():
    """In float64 the reassociated attention equals the literal one to rounding (1e-10), not just 1e-5."""
    block, sd = loaded_block(SMALL, seed=4, dtype=torch.float64)
    frames = make_frames(2, 4, 224, [(8, 8), (6, 8), None, (8, 8), (8, 8), (6, 8), None, (4, 4)],
                         seed=5, dtype=torch.float64)
    with torch.no_grad():
        fast, _ = block(frames)
        ref, _ = reference_stab(sd, frames, SMALL)
    assert_parity(fast, ref, 1e-10)


def test_train_mode_batchnorm_matches_reference():
    """Train mode (dropout 0): batch statistics over all chunks, running statistics updated the same way."""
    cfg = dataclasses.replace(SMALL, dropout=0.0)
    block, sd = loaded_block(cfg, seed=6)
    block.train()
    frames = make_frames(2, 4, 224, [(8, 8)] * 4 + [(6, 8)] * 3 + [None], seed=7)
    buffers = (sd["lmhra1.pos_embed.0.running_mean"].clone(), sd["lmhra1.pos_embed.0.running_var"].clone())
    with torch.no_grad():
        fast, _ = block(frames)
        ref, _ = reference_stab(sd, frames, cfg, bn_training=True, bn_buffers=buffers)
    assert_parity(fast, ref, 1e-5)
    torch.testing.assert_close(block.lste.norm.running_mean, buffers[0])
    torch.testing.assert_close(block.lste.norm.running_var, buffers[1])
    assert int(block.lste.norm.num_batches_tracked) == 8


def videos_unlike_each_other(dtype: torch.dtype = torch.float64) -> list[Tensor]:
    """Three 2x4-frame 224 px videos whose statistics differ: full frames, a letterboxed clip ending in padding
    frames, and full frames brighter and with more contrast."""
    bright = make_frames(2, 4, 224, [(8, 8)] * 8, seed=12, dtype=dtype)
    bright[:, :, :3] = bright[:, :, :3] * 3 + 1
    return [make_frames(2, 4, 224, [(8, 8)] * 8, seed=10, dtype=dtype),
            make_frames(2, 4, 224, [(6, 8)] * 5 + [None] * 3, seed=11, dtype=dtype), bright]


def test_train_mode_batchnorm_normalises_each_video_alone():
    """Several videos in one training-mode call equal one call per video in order (the original's loop over the
    batch), in float64: the tokens (checked against the literal reference, video by video, its BatchNorm buffers
    carried from one video to the next), the gradients of every parameter (against the block called per video)
    and the running statistics, updated once per video with each video's own mean and unbiased variance."""
    cfg = dataclasses.replace(SMALL, dropout=0.0)
    block, sd = loaded_block(cfg, seed=9, dtype=torch.float64)
    per_video = copy.deepcopy(block)
    block.train()
    per_video.train()
    videos = videos_unlike_each_other()
    tokens, grids = block(torch.cat(videos), num_videos=len(videos))

    buffers = (sd["lmhra1.pos_embed.0.running_mean"].clone(), sd["lmhra1.pos_embed.0.running_var"].clone())
    expected, expected_grids, one_by_one = [], [], []
    for video in videos:
        with torch.no_grad():
            ref, ref_grids = reference_stab(sd, video, cfg, bn_training=True, bn_buffers=buffers)
        expected += ref
        expected_grids += ref_grids
        one_by_one += per_video(video)[0]
    assert grids == expected_grids
    assert_parity(tokens, expected, 1e-10)
    norm = block.lste.norm
    torch.testing.assert_close(norm.running_mean, buffers[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(norm.running_var, buffers[1], rtol=0, atol=1e-12)
    assert int(norm.num_batches_tracked) == 7 + len(videos)  # the released state said 7
    for name, buffer in per_video.lste.norm.named_buffers():
        torch.testing.assert_close(getattr(norm, name), buffer, rtol=0, atol=1e-12)

    weights = [torch.randn(t.shape, generator=torch.Generator().manual_seed(i), dtype=t.dtype)
               for i, t in enumerate(tokens)]
    sum((t * w).sum() for t, w in zip(tokens, weights)).backward()
    sum((t * w).sum() for t, w in zip(one_by_one, weights)).backward()
    reference_grads = dict(per_video.named_parameters())
    for name, param in block.named_parameters():
        ref = reference_grads[name].grad
        assert (param.grad - ref).abs().max() <= 1e-10 * ref.abs().max().clamp_min(1e-30), name


def test_videos_in_one_call_do_not_share_batchnorm_statistics():
    """In training, one video's tokens do not depend on the videos beside it in the call."""
    cfg = dataclasses.replace(SMALL, dropout=0.0)
    block, _ = loaded_block(cfg, seed=13, dtype=torch.float64)
    block.train()
    first, second, third = videos_unlike_each_other()
    with torch.no_grad():
        beside_second, _ = block(torch.cat([first, second]), num_videos=2)
        beside_third, _ = block(torch.cat([first, third]), num_videos=2)
    assert_parity(beside_second[:8], beside_third[:8], 1e-12)


# ---------------------------------------------------------------------------------------------------
# Token and parameter counts of the 7B geometry


def test_token_counts_at_448_and_224():
    block = SpatioTemporalAlignmentBlock(STABConfig(width=16, num_heads=2)).eval()
    # 448 video: square frame, a 448x336 landscape frame, and padding frames of a short video.
    video = make_frames(2, 4, 448, [FULL16, LAND, LAND, LAND, LAND, None, None, None])
    with torch.no_grad():
        tokens, grids = block(video)
        image_tokens, image_grids = block(make_frames(1, 1, 448, [FULL16]))
        small_tokens, small_grids = block(make_frames(4, 4, 224, [(8, 8)] * 16))
    assert [t.shape[0] for t in tokens] == [273, 205, 205, 205, 205, 73, 73, 73]
    assert grids == [(16, 16)] + [(12, 16)] * 4 + [(8, 8)] * 3
    assert image_tokens[0].shape == (273, 16) and image_grids == [(16, 16)]
    assert [t.shape[0] for t in small_tokens] == [1 + 8 * 9] * 16 and small_grids == [(8, 8)] * 16
    # Split tokens close every row; the context token comes first.
    rows = tokens[1][1:].view(12, 17, 16)
    assert torch.equal(rows[:, 16], block.split_embedding.detach().expand(12, 16))


def test_parameter_counts_of_the_7b_block():
    with torch.device("meta"):
        block = SpatioTemporalAlignmentBlock()
        projector = nn.Sequential(nn.Linear(1024, 4096), nn.GELU(), nn.Linear(4096, 4096))
    stab = count_parameters(block)
    assert round(stab / 1e6, 2) == 24.09
    assert round((stab + count_parameters(projector)) / 1e6, 2) == 45.07
    # The released checkpoint holds exactly these parameters (plus the unused lmhra2 copy of the LSTE).
    assert stab == released_parameter_count(STABConfig())
    assert block.lste.expand.out_channels == 682


# ---------------------------------------------------------------------------------------------------
# Initialisation and gradients


@pytest.mark.parametrize("row_tokens", [True, False])
def test_packed_output_is_the_list_output_concatenated_in_frame_order(row_tokens):
    cfg = STABConfig(width=64, num_heads=8, use_row_tokens=row_tokens)
    block, _ = loaded_block(cfg, seed=3)
    frames = make_frames(*CASES["mixed_regions_224"][:3], CASES["mixed_regions_224"][3], seed=5)
    with torch.no_grad():
        tokens, grids = block(frames)
        packed, packed_grids = block(frames, packed=True)
    assert isinstance(tokens, list) and torch.is_tensor(packed) and packed_grids == grids
    assert torch.equal(packed, torch.cat(tokens))
    assert [block.num_tokens(g) for g in grids] == [t.shape[0] for t in tokens]
    assert all(torch.equal(a, b) for a, b in zip(packed.split([block.num_tokens(g) for g in grids]), tokens))


def test_zero_starts():
    block = SpatioTemporalAlignmentBlock(SMALL)
    zero = ["lste.reduce.weight", "lste.reduce.bias", "dpe.bias", "gstra.out_proj.weight", "gstra.out_proj.bias",
            "gstra.mlp_out.weight", "gstra.mlp_out.bias", "context.balance"]
    params = dict(block.named_parameters())
    for name in zero:
        assert not params[name].any(), name
    nonzero = [n for n in params if n not in zero and not n.endswith("bias")]
    assert all(params[n].any() for n in nonzero)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    block.reset_parameters()
    for name in zero:
        assert not params[name].any(), name
    assert not torch.equal(before["lsd.kv.weight"], block.lsd.kv.weight)


def test_gradients_reach_every_trainable_parameter():
    block, _ = loaded_block(SMALL, seed=8)
    block.train()
    frames = make_frames(2, 4, 224, [(8, 8), (6, 8), (6, 8), (6, 8), (8, 8), None, None, None], seed=9)
    tokens, _ = block(frames)
    torch.cat(tokens).pow(2).mean().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None, f"no gradient for {name}"
        assert param.grad.abs().sum() > 0, f"zero gradient for {name}"


# ---------------------------------------------------------------------------------------------------
# Released names


def test_key_map_covers_the_released_layout():
    block = SpatioTemporalAlignmentBlock(SMALL)
    own = block.state_dict()
    released = released_shapes(SMALL)
    targets = {released_stab_key_to_module_key(k) for k in released}
    assert targets == set(own)
    for name, shape in released.items():
        target = released_stab_key_to_module_key(name)
        assert tuple(own[target].shape) == shape, name
        assert module_key_to_released_stab_key(target) == name
    assert released_stab_key_to_module_key("lmhra2.pos_embed.1.weight") is None
    assert released_stab_key_to_module_key("not_a_stab_key") == "not_a_stab_key"


def test_load_released_state_dict_round_trip_and_ignores_lmhra2():
    sd = random_released_state_dict(SMALL, seed=10, dtype=torch.bfloat16)
    for name in [k for k in sd if k.startswith("lmhra1.")]:
        sd[name.replace("lmhra1.", "lmhra2.")] = torch.full_like(sd[name], 3)
    block = SpatioTemporalAlignmentBlock(SMALL)
    block.load_released_state_dict(sd)
    saved = block.released_state_dict()
    assert set(saved) == {k for k in sd if not k.startswith("lmhra2.")}
    for name, tensor in saved.items():
        expected = sd[name].float() if sd[name].is_floating_point() else sd[name]
        torch.testing.assert_close(tensor, expected, rtol=0, atol=0, msg=name)


def test_load_released_state_dict_reports_every_problem_and_changes_nothing():
    sd = random_released_state_dict(SMALL, seed=11)
    del sd["dpe.bias"], sd["global_attention.kv.1.weight"]
    sd["local_attention.extra.weight"] = torch.zeros(3)
    sd["mystery"] = torch.zeros(1)
    sd["proj.2.weight"] = torch.zeros(5, 5)
    block = SpatioTemporalAlignmentBlock(SMALL)
    before = {k: v.clone() for k, v in block.state_dict().items()}
    with pytest.raises(ValueError) as err:
        block.load_released_state_dict(sd)
    message = str(err.value)
    for expected in ("dpe.bias", "fsra.kv.weight", "global_attention.kv.1.weight", "local_attention.extra.weight",
                     "mystery", "proj.2.weight", "context.linear.weight"):
        assert expected in message, expected
    for k, v in block.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed by a failed load"


def test_ablated_block_rejects_keys_of_removed_parts():
    sd = random_released_state_dict(SMALL, seed=12)
    block = SpatioTemporalAlignmentBlock(dataclasses.replace(SMALL, use_gstra=False))
    with pytest.raises(ValueError, match="dec.attn.in_proj_weight"):
        block.load_released_state_dict(sd)


# ---------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("shape, message", [((1, 4, 3, 56, 56), "chunks, frames_per_chunk, 4"),
                                            ((4, 4, 56, 56), "chunks, frames_per_chunk, 4"),
                                            ((1, 1, 4, 56, 50), "multiples of the patch size")])
def test_bad_input_shapes_are_named(shape, message):
    with pytest.raises(ValueError, match=message):
        SpatioTemporalAlignmentBlock(SMALL)(torch.zeros(shape))


def test_chunks_that_do_not_split_into_the_videos_are_named():
    with pytest.raises(ValueError, match="3 chunks do not split evenly into 2 videos"):
        SpatioTemporalAlignmentBlock(SMALL)(torch.zeros(3, 4, 4, 56, 56), num_videos=2)


def test_valid_region_smaller_than_the_window_is_named():
    frames = make_frames(1, 2, 56, [(2, 2), (2, 2)])
    frames[0, 1, 3] = 0
    frames[0, 1, 3, 14:28, 14:28] = 1  # exactly one patch
    with pytest.raises(ValueError, match=r"frames \[1\].*smaller than the 2x2 LSD window"):
        SpatioTemporalAlignmentBlock(SMALL)(frames)


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="lsd_mode"):
        STABConfig(lsd_mode="conv")
    with pytest.raises(ValueError, match="num_heads"):
        STABConfig(width=60, num_heads=8)
