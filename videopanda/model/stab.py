"""The Spatio-Temporal Alignment Block (STAB): raw frames -> per-frame tokens for the LLM (the paper's method section).

Shapes: C = chunks, T = frames per chunk, N = C*T frames, D = width, H x W pixels, h x w patches
(h = H / patch_size), h' x w' = LSD grid of a frame's crop (h' = rows / window).

Pipeline (`SpatioTemporalAlignmentBlock.forward`):

1. Patch embedding (Conv2d 3 -> D, kernel = stride = 14, no bias) and the patch mask (14x14 average of
   the mask channel).
2. Temporal path, only when T > 1: E0 = embeddings; X = E0 + LSTE(E0); X = X + DPE(X); GSTRA turns all
   T*h*w tokens of a chunk into one video token G per chunk; X = X + E0.
3. Per frame: crop to the bounding box of non-zero patch-mask cells (an all-zero mask takes the top-left
   `padding_window` x `padding_window` patch window, clipped to the frame), LSD (2x2 window attention
   around a 2x2 average pool), FSRA (a learned frame query over all LSD tokens -> F), the context token
   (proj((1 - a) G + a F), a = sigmoid(balance), when T > 1; F for images), and row tokens (a learned
   split token after each LSD row). Output: [context; rows], 1 + h'*(w'+1) tokens.

How the fast path computes the same thing (tests compare it with a literal per-frame loop):

- Everything runs channels-last ((..., D) last), so every 1x1 convolution and projection is one matmul.
  The patch embedding is an unfold + matmul; LSTE's 1x1x1 convolutions are matmuls on the conv
  weights viewed as (out, in) and its depthwise (3,1,1) convolution is three shifted multiply-adds.
- Frames are grouped by identical crop box and each group is processed in one batch: one video whose
  real frames share a region and whose padding frames share the top-left window is two groups. Finding
  the boxes costs one host-device synchronisation per forward (a single `.tolist()` of the N boxes).
- Attention with a single query per head (GSTRA, FSRA, and LSD's one query per window) is reassociated:
  q_h . (W_k,h x + b_k,h) = (W_k,h^T q_h) . x + const, and sum_j p_j (W_v,h x_j + b_v,h) =
  W_v,h (sum_j p_j x_j) + b_v,h. So the keys/values are never projected: the D-wide per-head query
  W_k,h^T q_h attends over the normalised tokens themselves (`F.scaled_dot_product_attention`, the heads
  as the query axis, scale given explicitly), and the value projection is applied once per head to the
  attended mix. This is exact algebra (key bias drops out of the softmax); only float rounding differs.
  It removes the (tokens x D x 2D) key/value projections, the bulk of LSD, FSRA and GSTRA.
- Several videos run in one call (`num_videos`: their chunks concatenated on C). The one part that looks
  across chunks is the LSTE's BatchNorm in training mode; it takes each video's statistics on its own and
  updates its running statistics once per video in order, so the call equals one call per video (the
  original's loop over the batch) in training as in eval.

Choices of this project (also in docs/DESIGN.md, "Choices where the paper is silent"):

- A crop with an odd number of patch rows or columns drops the last one (as 2x2 average pooling does);
  preprocessing aligned to 28 px never produces one.
- LayerNorm eps 1e-5, BatchNorm eps 1e-5 and momentum 0.1, no attention dropout (PyTorch defaults).
- Initialisation: `frame_query` (class_embedding), `split_embedding` and the GSTRA query ~ N(0, D^-1);
  GSTRA in-projection Xavier-uniform with zero bias (as nn.MultiheadAttention); other layers PyTorch's
  defaults; zero starts as in the original code (docs/DESIGN.md, `stab.py`): LSTE last conv, DPE bias,
  GSTRA out-projection and last MLP layer, balance.
- Ablations (paper Tables 4 and 9), what replaces the removed part:
  `use_lste=False`: X = E0 before DPE (no LSTE). `use_gstra=False`: no video token; the context token
  is F for videos as for images (no `balance`, no context projection). `use_fsra=False`: F is the mean
  of the frame's LSD tokens. `use_row_tokens=False`: no split tokens, 1 + h'*w' tokens.
  `lsd_mode="avgpool"`: the LSD output is the 2x2 average pool R alone.
  Modules of removed parts are not built; loading a full released checkpoint into an ablated block
  therefore reports their keys as unplaceable.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from videopanda.log import get_logger

logger = get_logger(__name__)

LSD_MODES = ("attention", "avgpool")
ABLATION_SWITCHES = ("use_row_tokens", "use_fsra", "lsd_mode", "use_lste", "use_gstra")
"""The STABConfig fields that switch parts off (paper Tables 4 and 9)."""


@dataclass
class STABConfig:
    width: int = 1024            # D
    num_heads: int = 8           # LSD, FSRA and GSTRA heads
    patch_size: int = 14
    window: int = 2              # LSD window s
    frames_per_chunk: int = 4    # T for videos
    lste_hidden: int | None = None   # default int(width / 1.5) = 682
    mlp_ratio: int = 4           # GSTRA MLP
    dropout: float = 0.5         # GSTRA MLP and context projection
    padding_window: int = 16     # patch window a padding frame is cropped to (16x16 patches)
    # ablation switches (paper Tables 4 and 9)
    use_lste: bool = True
    use_gstra: bool = True
    use_fsra: bool = True
    use_row_tokens: bool = True
    lsd_mode: str = "attention"  # or "avgpool"

    def __post_init__(self) -> None:
        if self.width % self.num_heads:
            raise ValueError(f"STABConfig: width {self.width} is not divisible by num_heads {self.num_heads}")
        if self.lsd_mode not in LSD_MODES:
            raise ValueError(f"STABConfig: lsd_mode must be one of {LSD_MODES}, got {self.lsd_mode!r}")
        for name in ("patch_size", "window", "frames_per_chunk", "padding_window", "mlp_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"STABConfig: {name} must be >= 1, got {getattr(self, name)}")

    @property
    def lste_width(self) -> int:
        return self.lste_hidden if self.lste_hidden is not None else int(self.width / 1.5)

    def padding_box(self, frame_patches: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of patches a padding frame (all-zero mask) is cropped to, from its top-left corner."""
        return min(self.padding_window, frame_patches[0]), min(self.padding_window, frame_patches[1])

    def frame_grid(self, box: tuple[int, int] | None, frame_patches: tuple[int, int]) -> tuple[int, int]:
        """LSD grid (rows, cols) of a frame whose valid patch box is `box` = (rows, cols) of patches, or
        None for a padding frame (the top-left `padding_window` square, clipped to the frame's
        `frame_patches` = (h, w)). An odd count drops its last row/column."""
        if box is None:
            box = self.padding_box(frame_patches)
        return box[0] // self.window, box[1] // self.window

    def num_tokens(self, grid: tuple[int, int]) -> int:
        """Tokens the STAB gives a frame with LSD grid (rows, cols): the context token, the grid and, with
        row tokens, one split token per row. The one place this count is defined (the processor uses it
        to write that many placeholders)."""
        rows, cols = grid
        return 1 + rows * (cols + 1 if self.use_row_tokens else cols)

    def grid_token_index(self, grid: tuple[int, int]) -> list[int]:
        """Positions, within a frame's `num_tokens(grid)` tokens, of its rows*cols LSD grid tokens in row-major
        order (the context token and the row-split tokens skipped): what distillation compares."""
        rows, cols = grid
        row_length = cols + 1 if self.use_row_tokens else cols
        return [1 + r * row_length + c for r in range(rows) for c in range(cols)]


# ---------------------------------------------------------------------------------------------------
# Released checkpoint names (docs/DESIGN.md, `checkpoint.py`; `model.video_tower.` stripped) <-> module names.

_RELEASED_TO_MODULE: tuple[tuple[str, str], ...] = (
    ("class_embedding", "frame_query"),
    ("split_embedding", "split_embedding"),
    ("temporal_cls_token", "gstra.query"),
    ("balance", "context.balance"),
    ("patch_embedding", "patch_embedding"),
    ("lmhra1.pos_embed.0", "lste.norm"),
    ("lmhra1.pos_embed.1", "lste.expand"),
    ("lmhra1.pos_embed.2", "lste.temporal"),
    ("lmhra1.pos_embed.3", "lste.reduce"),
    ("dpe", "dpe"),
    ("dec.attn.in_proj_weight", "gstra.in_proj_weight"),
    ("dec.attn.in_proj_bias", "gstra.in_proj_bias"),
    ("dec.attn.out_proj", "gstra.out_proj"),
    ("dec.ln_1", "gstra.norm_query"),
    ("dec.ln_2", "gstra.norm_mlp"),
    ("dec.ln_3", "gstra.norm_tokens"),
    ("dec.mlp.c_fc", "gstra.mlp_in"),
    ("dec.mlp.c_proj", "gstra.mlp_out"),
    ("proj.0", "context.norm"),
    ("proj.2", "context.linear"),
) + tuple(
    (f"{released}.{part}", f"{ours}.{mine}")
    for released, ours in (("local_attention", "lsd"), ("global_attention", "fsra"))
    for part, mine in (("q.0", "query_norm"), ("q.1", "query"), ("kv.0", "kv_norm"), ("kv.1", "kv"), ("proj", "proj"))
)
_IGNORED_RELEASED_PREFIXES = ("lmhra2",)


def _rename(name: str, table: tuple[tuple[str, str], ...]) -> str | None:
    for source, target in table:
        if name == source:
            return target
        if name.startswith(source + "."):
            return target + name[len(source):]
    return None


def released_stab_key_to_module_key(name: str) -> str | None:
    """A released STAB key (no `model.video_tower.` prefix) -> this module's state-dict key.

    None for the keys the STAB ignores (`lmhra2.*`, a second LSTE the original never runs). A name
    outside the released layout comes back unchanged, so that loading reports it as unplaceable.
    """
    if any(name == p or name.startswith(p + ".") for p in _IGNORED_RELEASED_PREFIXES):
        return None
    mapped = _rename(name, _RELEASED_TO_MODULE)
    return name if mapped is None else mapped


def module_key_to_released_stab_key(name: str) -> str:
    """Inverse of `released_stab_key_to_module_key` for this module's keys (unknown names unchanged)."""
    mapped = _rename(name, tuple((ours, released) for released, ours in _RELEASED_TO_MODULE))
    return name if mapped is None else mapped


# ---------------------------------------------------------------------------------------------------
# Parts


def _per_head_key_query(query: Tensor, weight_k: Tensor) -> Tensor:
    """query (B, H, d) per-head query, weight_k (H, d, D) per-head key projection -> (B, H, D) = W_k,h^T q_h."""
    return torch.bmm(query.transpose(0, 1), weight_k).transpose(0, 1)


def _per_head_values(mix: Tensor, weight_v: Tensor) -> Tensor:
    """mix (B, H, D) attended raw tokens, weight_v (H, d, D) per-head value projection -> (B, H*d)."""
    return torch.bmm(mix.transpose(0, 1), weight_v.transpose(1, 2)).transpose(0, 1).flatten(1)


def _attend(key_query: Tensor, tokens: Tensor, scale: float) -> Tensor:
    """key_query (B, H, D) per-head queries already mapped into token space, tokens (B, L, D)
    -> (B, H, D): for each head, the softmax(scale * key_query . token)-weighted mix of the tokens."""
    tokens = tokens.unsqueeze(1)
    return F.scaled_dot_product_attention(key_query.unsqueeze(1), tokens, tokens, scale=scale).squeeze(1)


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class LSTE(nn.Module):
    """Local spatio-temporal embedding M: BatchNorm3d -> 1x1x1 conv -> depthwise (3,1,1) conv -> 1x1x1 conv.

    Parameters keep the Conv3d shapes of the checkpoint; the forward runs them channels-last."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.norm = nn.BatchNorm3d(width)
        self.expand = nn.Conv3d(width, hidden, 1)
        self.temporal = nn.Conv3d(hidden, hidden, (3, 1, 1), padding=(1, 0, 0), groups=hidden)
        self.reduce = nn.Conv3d(hidden, width, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.reduce.weight)
        nn.init.zeros_(self.reduce.bias)

    def forward(self, x: Tensor, num_videos: int = 1) -> Tensor:
        """x (C, T, h, w, D), the chunks of `num_videos` videos in order (C / num_videos each) -> M(x) (C, T, h, w, D).

        With batch statistics (training), each video is normalised on its own, as separate calls per video
        would: BatchNorm3d runs once per video, in order, so its running statistics are updated once per
        video (momentum applied `num_videos` times, each video's unbiased variance) and one video's output
        never depends on the others. With running statistics (eval) the videos are independent anyway."""
        C, T, h, w, D = x.shape
        weight, bias = self.expand.weight.flatten(1), self.expand.bias
        norm = self.norm
        if norm.training or norm.running_mean is None:
            # A (B, D, 1, 1, 1) view gives BatchNorm3d the same per-channel statistics over a video's
            # C/num_videos*T*h*w positions.
            videos = x.reshape(num_videos, -1, D, 1, 1, 1).unbind(0)
            normed = norm(videos[0]) if num_videos == 1 else torch.cat([norm(v) for v in videos])
            z = F.linear(normed.view(C, T, h * w, D), weight, bias)
        else:
            # Eval: the BatchNorm affine map is folded into the first 1x1x1 convolution.
            scale = torch.rsqrt(norm.running_var + norm.eps)
            shift = -norm.running_mean * scale
            if norm.affine:
                scale, shift = scale * norm.weight, shift * norm.weight + norm.bias
            z = F.linear(x.view(C, T, h * w, D), weight * scale, torch.addmv(bias, weight, shift))
        k = self.temporal.weight.view(-1, 3)
        y = torch.addcmul(self.temporal.bias, z, k[:, 1])
        y[:, 1:].addcmul_(z[:, :-1], k[:, 0])
        y[:, :-1].addcmul_(z[:, 1:], k[:, 2])
        return F.linear(y, self.reduce.weight.flatten(1), self.reduce.bias).view(C, T, h, w, D)


class GSTRA(nn.Module):
    """Global spatio-temporal relation aggregation: one learned query cross-attends to all tokens of a
    chunk (nn.MultiheadAttention semantics: packed in-projection, scale head_dim^-0.5), then an MLP."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.empty(1, 1, width))
        self.norm_query = nn.LayerNorm(width)
        self.norm_tokens = nn.LayerNorm(width)
        self.norm_mlp = nn.LayerNorm(width)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        self.mlp_in = nn.Linear(width, mlp_ratio * width)
        self.mlp_act = QuickGELU()
        self.mlp_drop = nn.Dropout(dropout)
        self.mlp_out = nn.Linear(mlp_ratio * width, width)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        width = self.query.shape[-1]
        nn.init.normal_(self.query, std=width ** -0.5)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        for layer in (self.out_proj, self.mlp_out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, tokens: Tensor) -> Tensor:
        """tokens (C, L, D) -> one video token per chunk (C, D)."""
        D = tokens.shape[-1]
        H = self.num_heads
        d = D // H
        wq, wk, wv = self.in_proj_weight.view(3, H, d, D).unbind(0)
        bq, _, bv = self.in_proj_bias.view(3, D).unbind(0)
        query = self.query.view(1, D)
        q = F.linear(self.norm_query(query), wq.reshape(D, D), bq)                      # (1, D)
        key_query = _per_head_key_query(q.view(1, H, d), wk).expand(tokens.shape[0], H, D)
        mix = _attend(key_query, self.norm_tokens(tokens), d ** -0.5)                    # (C, H, D)
        attended = _per_head_values(mix, wv) + bv                                        # (C, D)
        x = query + self.out_proj(attended)
        return x + self.mlp_out(self.mlp_drop(self.mlp_act(self.mlp_in(self.norm_mlp(x)))))


class QueryPool(nn.Module):
    """The attention of LSD and FSRA: q = Linear(LN(query)), [k; v] = Linear(LN(tokens)) (no biases),
    `num_heads` heads, scores scaled by width^-0.5 (the full width); output proj(attended values)."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.query_norm = nn.LayerNorm(width)
        self.query = nn.Linear(width, width, bias=False)
        self.kv_norm = nn.LayerNorm(width)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.proj = nn.Linear(width, width)

    def forward(self, query: Tensor, tokens: Tensor) -> Tensor:
        """query (B, D) one query per row of tokens, or (1, D) shared by all; tokens (B, L, D)
        -> proj(attention) (B, D), the residual not added."""
        B, _, D = tokens.shape
        H = self.num_heads
        d = D // H
        wk, wv = self.kv.weight.view(2, H, d, D).unbind(0)
        q = self.query(self.query_norm(query)).view(-1, H, d)
        key_query = _per_head_key_query(q, wk).expand(B, H, D)
        mix = _attend(key_query, self.kv_norm(tokens), D ** -0.5)
        return self.proj(_per_head_values(mix, wv))


class ContextProjection(nn.Module):
    """cls = Linear(Dropout(LN((1 - a) G + a F))), a = sigmoid(balance)."""

    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.balance = nn.Parameter(torch.zeros(width))
        self.norm = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        self.linear = nn.Linear(width, width)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.balance)

    def forward(self, video: Tensor, frame: Tensor) -> Tensor:
        """video (B, D) chunk token G of each frame, frame (B, D) F -> (B, D)."""
        a = torch.sigmoid(self.balance)
        return self.linear(self.drop(self.norm(torch.lerp(video, frame, a))))


# ---------------------------------------------------------------------------------------------------


class SpatioTemporalAlignmentBlock(nn.Module):
    """Frames (C, T, 4, H, W) -> per-frame token sequences of width D (see the module docstring)."""

    def __init__(self, config: STABConfig | None = None):
        super().__init__()
        self.config = config = config if config is not None else STABConfig()
        D = config.width
        self.patch_embedding = nn.Conv2d(3, D, config.patch_size, config.patch_size, bias=False)
        self.lste = LSTE(D, config.lste_width) if config.use_lste else None
        self.dpe = nn.Conv3d(D, D, 3, padding=1, groups=D)
        self.gstra = GSTRA(D, config.num_heads, config.mlp_ratio, config.dropout) if config.use_gstra else None
        self.context = ContextProjection(D, config.dropout) if config.use_gstra else None
        self.lsd = QueryPool(D, config.num_heads) if config.lsd_mode == "attention" else None
        self.frame_query = nn.Parameter(torch.empty(D)) if config.use_fsra else None
        self.fsra = QueryPool(D, config.num_heads) if config.use_fsra else None
        self.split_embedding = nn.Parameter(torch.empty(D)) if config.use_row_tokens else None
        self._reset_own_parameters()

    def _reset_own_parameters(self) -> None:
        std = self.config.width ** -0.5
        for p in (self.frame_query, self.split_embedding):
            if p is not None:
                nn.init.normal_(p, std=std)
        nn.init.zeros_(self.dpe.bias)

    def reset_parameters(self) -> None:
        """Re-initialise every part: PyTorch defaults, then the zero starts listed in the module docstring.

        Submodules are reset children first, so a part's own zero starts are applied last."""
        for module in reversed(list(self.modules())):
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()
        self._reset_own_parameters()

    # -- forward -------------------------------------------------------------------------------------

    def forward(self, frames: Tensor, packed: bool = False,
                num_videos: int = 1) -> tuple[list[Tensor] | Tensor, list[tuple[int, int]]]:
        """frames (C, T, 4, H, W) float -> per frame, in frame order: tokens (n_i, D) and its LSD grid (rows, cols).
        n_i = 1 + rows*(cols+1) with row tokens (1 + rows*cols without), see `num_tokens`. Token 0 is the
        context token; then the grid row-major, each row followed by its split token.

        `num_videos`: the C chunks are those of that many videos, C / num_videos each, in order. Only the
        LSTE's BatchNorm in training mode looks across chunks: it normalises each video on its own (see
        `LSTE.forward`), so the result is that of one call per video.

        `packed=True` returns the tokens as one tensor (sum_i n_i, D), the frames' tokens concatenated in
        frame order (split it with `num_tokens` of the grids). The model calls it so because under ZeRO-3
        the STAB is a DeepSpeed leaf module: DeepSpeed re-gathers a module's parameters for backward from
        hooks on the tensors of its output (tuples searched, lists not) and reduces a leaf's gradients in
        a full backward hook, which PyTorch attaches only to tensors at the output's top level."""
        cfg = self.config
        p = cfg.patch_size
        if frames.dim() != 5 or frames.shape[2] != 4:
            raise ValueError(f"STAB input must be (chunks, frames_per_chunk, 4, H, W), got {tuple(frames.shape)}")
        C, T, _, H, W = frames.shape
        if H % p or W % p:
            raise ValueError(f"STAB input frames {H}x{W} are not multiples of the patch size {p}")
        if num_videos < 1 or C % num_videos:
            raise ValueError(f"STAB input: {C} chunks do not split evenly into {num_videos} videos")
        N, h, w, D = C * T, H // p, W // p, cfg.width
        frames = frames.to(self.patch_embedding.weight.dtype)

        x = self._embed_patches(frames.reshape(N, 4, H, W))                    # (N, h, w, D)
        valid = F.avg_pool2d(frames[:, :, 3].reshape(N, 1, H, W), p).view(N, h, w) != 0
        video_tokens = None
        if T > 1:
            x, video_tokens = self._temporal(x.view(C, T, h, w, D), num_videos)
            if video_tokens is not None:
                video_tokens = video_tokens.repeat_interleave(T, dim=0)       # (N, D)

        tokens: list[Tensor | None] = [None] * N
        grids: list[tuple[int, int] | None] = [None] * N
        s = cfg.window
        for box, members in self._group_by_box(valid).items():
            if box[1] - box[0] < s or box[3] - box[2] < s:
                raise ValueError(f"STAB frames {members}: the valid region (patch rows {box[0]}:{box[1]}, columns "
                                 f"{box[2]}:{box[3]}) is smaller than the {s}x{s} LSD window")
            select = self._selector(members, x.device)
            group_tokens, grid = self._frame_tokens(x[select], box,
                                                    None if video_tokens is None else video_tokens[select])
            for i, t in zip(members, group_tokens.unbind(0)):
                tokens[i], grids[i] = t, grid
        if packed:
            return torch.cat(tokens), grids  # type: ignore[arg-type, return-value]
        return tokens, grids  # type: ignore[return-value]

    def num_tokens(self, grid: tuple[int, int]) -> int:
        """Tokens of a frame with LSD grid (rows, cols): the context token, the grid and, with row tokens,
        one split token per row."""
        return self.config.num_tokens(grid)

    def _embed_patches(self, frames: Tensor) -> Tensor:
        """frames (N, 4, H, W) -> patch embeddings (N, h, w, D), as unfold + one matmul."""
        N, _, H, W = frames.shape
        p = self.config.patch_size
        h, w = H // p, W // p
        patches = frames[:, :3].reshape(N, 3, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(N * h * w, 3 * p * p)
        return F.linear(patches, self.patch_embedding.weight.flatten(1)).view(N, h, w, -1)

    def _temporal(self, x: Tensor, num_videos: int) -> tuple[Tensor, Tensor | None]:
        """x (C, T, h, w, D) of `num_videos` videos -> (N, h, w, D) after LSTE, DPE and the E0 residual, and
        G (C, D) or None."""
        C, T, h, w, D = x.shape
        e0 = x
        # Residuals are added in place into the fresh outputs of the LSTE and DPE layers (whose backward
        # does not need them), saving a full-size allocation each.
        if self.lste is not None:
            x = self.lste(x, num_videos).add_(x)
        # A channels-last 3D view of the same memory: the depthwise conv keeps that layout.
        x = F.conv3d(x.permute(0, 4, 1, 2, 3), self.dpe.weight, self.dpe.bias, padding=1,
                     groups=D).permute(0, 2, 3, 4, 1).add_(x)
        video = self.gstra(x.reshape(C, T * h * w, D)) if self.gstra is not None else None
        return (x + e0).reshape(C * T, h, w, D), video

    def _group_by_box(self, valid: Tensor) -> dict[tuple[int, int, int, int], list[int]]:
        """valid (N, h, w) bool patch mask -> {(r0, r1, c0, c1) half-open crop box: frame indices}, in frame order.

        The only host-device synchronisation of the forward: one `.tolist()` of the N boxes."""
        N, h, w = valid.shape
        rows, cols = valid.any(2), valid.any(1)
        has_content = rows.any(1)
        rank_r = torch.arange(h, device=valid.device)
        rank_c = torch.arange(w, device=valid.device)
        r0 = torch.where(rows, rank_r, h).amin(1)
        r1 = torch.where(rows, rank_r, -1).amax(1) + 1
        c0 = torch.where(cols, rank_c, w).amin(1)
        c1 = torch.where(cols, rank_c, -1).amax(1) + 1
        pad_h, pad_w = self.config.padding_box((h, w))
        zero = torch.zeros_like(r0)
        boxes = torch.stack([torch.where(has_content, r0, zero), torch.where(has_content, r1, zero + pad_h),
                             torch.where(has_content, c0, zero), torch.where(has_content, c1, zero + pad_w)], 1)
        groups: dict[tuple[int, int, int, int], list[int]] = {}
        for i, box in enumerate(boxes.tolist()):
            groups.setdefault(tuple(box), []).append(i)
        return groups

    @staticmethod
    def _selector(members: list[int], device: torch.device) -> slice | Tensor:
        """Frame indices -> a slice when they are consecutive (no copy), else an index tensor."""
        if members[-1] - members[0] + 1 == len(members):
            return slice(members[0], members[-1] + 1)
        return torch.tensor(members, device=device)

    def _frame_tokens(self, x: Tensor, box: tuple[int, int, int, int],
                      video_tokens: Tensor | None) -> tuple[Tensor, tuple[int, int]]:
        """x (G, h, w, D) frames sharing one crop box, video_tokens (G, D) their chunks' G or None
        -> tokens (G, n, D) and the LSD grid (rows, cols)."""
        s = self.config.window
        r0, r1, c0, c1 = box
        rows, cols = self.config.frame_grid((r1 - r0, c1 - c0), x.shape[1:3])
        G, D = x.shape[0], x.shape[-1]
        windows = x[:, r0:r0 + rows * s, c0:c0 + cols * s].reshape(G, rows, s, cols, s, D)
        # One copy that makes each window's s*s tokens contiguous: the pooling and LSD read it.
        members = windows.permute(0, 1, 3, 2, 4, 5).reshape(G * rows * cols, s * s, D)
        pooled = members.mean(1)                                                       # R (G*rows*cols, D)
        if self.lsd is not None:
            pooled = self.lsd(pooled, members).add_(pooled)
        grid = pooled.view(G, rows, cols, D)
        flat = grid.reshape(G, rows * cols, D)
        if self.fsra is not None:
            frame = self.frame_query + self.fsra(self.frame_query.view(1, D), flat)      # F (G, D)
        else:
            frame = flat.mean(1)
        cls = frame if video_tokens is None else self.context(video_tokens, frame)
        if self.split_embedding is not None:
            grid = torch.cat([grid, self.split_embedding.view(1, 1, 1, D).expand(G, rows, 1, D)], dim=2)
        return torch.cat([cls.unsqueeze(1), grid.reshape(G, -1, D)], dim=1), (rows, cols)

    # -- released checkpoints ------------------------------------------------------------------------

    def load_released_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Released names without the `model.video_tower.` prefix; ignores only `lmhra2.*`;
        raises naming every key it cannot place and every parameter left unset."""
        own = self.state_dict(keep_vars=True)
        plan: dict[str, Tensor] = {}
        unplaced: list[str] = []
        for name, tensor in state_dict.items():
            target = released_stab_key_to_module_key(name)
            if target is None:
                continue
            if target not in own:
                unplaced.append(f"{name} (no such part: {target})")
            elif tuple(own[target].shape) != tuple(tensor.shape):
                unplaced.append(f"{name} (shape {tuple(tensor.shape)}, {target} needs {tuple(own[target].shape)})")
            elif target in plan:
                unplaced.append(f"{name} (a second tensor for {target})")
            else:
                plan[target] = tensor
        unset = [f"{k} (released name {module_key_to_released_stab_key(k)})" for k in own if k not in plan]
        if unplaced or unset:
            parts = []
            if unplaced:
                parts.append(f"{len(unplaced)} key(s) cannot be placed: " + ", ".join(unplaced))
            if unset:
                parts.append(f"{len(unset)} parameter(s)/buffer(s) left unset: " + ", ".join(unset))
            raise ValueError("STAB load_released_state_dict: " + "; ".join(parts))
        with torch.no_grad():
            for target, tensor in plan.items():
                own[target].copy_(tensor.to(device=own[target].device))
        logger.debug("loaded %d released STAB tensors", len(plan))

    def released_state_dict(self) -> dict[str, Tensor]:
        """This block's state dict under the released names (no `model.video_tower.` prefix, no `lmhra2`)."""
        return {module_key_to_released_stab_key(k): v for k, v in self.state_dict().items()}


def count_parameters(module: nn.Module) -> int:
    """Number of parameter elements (works on the meta device)."""
    return sum(p.numel() for p in module.parameters())


__all__ = ["STABConfig", "SpatioTemporalAlignmentBlock", "released_stab_key_to_module_key",
           "module_key_to_released_stab_key", "count_parameters", "LSD_MODES"]

