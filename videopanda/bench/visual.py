"""`videopanda bench visual`: the encoder-free STAB front end against encoder-based ones, side by side.

Rows (random weights of the real shapes, eval mode, `torch.inference_mode`, batch = one video):

- `video-panda-stab`: the STAB plus the `mlp2x_gelu` projector (D -> L -> L), 8 frames at 448x448
  with square content (mask all ones) as C = frames/4 chunks of T = 4; the projector runs once on
  all frames' tokens (8 x 273 = 2184 tokens).
- `clip-vit-l14`: transformers' `CLIPVisionModel` with the ViT-L/14-224 shape (width 1024, 24 layers,
  16 heads, MLP 4096, patch 14, quick_gelu), built from an explicit `CLIPVisionConfig` (nothing is
  downloaded), 8 frames at 224 as a batch of 8 images, `attn_implementation="sdpa"` so that both
  sides use fused attention: the Video-ChatGPT front end.
- `languagebind-video-vit-l14`: our LanguageBind teacher module (`videopanda.train.teacher`, default
  shape: ViT-L/14 with temporal attention in every layer), 8 frames at 224 as one chunk of 8 frames,
  as Video-LLaVA feeds its video tower. It runs the 23 layers that produce the second-to-last hidden
  state, as both Video-LLaVA and our distillation use it.

`--tiny` shrinks every width, depth and frame size so that the whole command runs in seconds (tests).
"""
from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from videopanda.bench.timing import (
    BenchError,
    MemoryMeter,
    count_flops,
    count_params,
    environment,
    format_table,
    median,
    print_profile,
    set_threads,
    synchronize,
    time_call,
)
from videopanda.log import get_logger

logger = get_logger(__name__)

STAB_ROW = "video-panda-stab"
CLIP_ROW = "clip-vit-l14"
TEACHER_ROW = "languagebind-video-vit-l14"
ROW_NAMES = (STAB_ROW, CLIP_ROW, TEACHER_ROW)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class VisualShapes:
    """Model shapes of the three front ends. The defaults are the real ones."""

    stab_width: int = 1024        # D
    stab_heads: int = 8
    llm_width: int = 4096         # L, the projector's output width
    student_size: int = 448
    frames_per_chunk: int = 4     # STAB chunks (T)
    vit_size: int = 224           # CLIP and teacher frames
    vit_width: int = 1024
    vit_layers: int = 24
    vit_heads: int = 16
    vit_mlp: int = 4096
    patch_size: int = 14
    teacher_frames_per_chunk: int = 8   # Video-LLaVA sends all 8 frames as one chunk


TINY_SHAPES = VisualShapes(stab_width=128, llm_width=256, student_size=112, vit_size=56, vit_width=128,
                           vit_layers=2, vit_heads=4, vit_mlp=512)


@dataclass
class VisualBenchConfig:
    device: str = "cpu"
    dtype: str = "float32"
    frames: int = 8
    warmup: int | None = None     # default: 1 on CPU, 10 on CUDA
    iters: int | None = None      # default: 3 on CPU, 50 on CUDA
    threads: int | None = 2       # CPU intra-op threads (ignored on CUDA)
    compile: bool = False
    tiny: bool = False
    rows: Sequence[str] = ROW_NAMES
    profile: int = 0              # print the top-N ops of each row from torch.profiler
    seed: int = 0
    command: str = ""
    shapes: VisualShapes = field(default_factory=VisualShapes)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        unknown = [r for r in self.rows if r not in ROW_NAMES]
        if unknown:
            raise ValueError(f"unknown rows {unknown}; choose from {', '.join(ROW_NAMES)}")
        if self.tiny:
            self.shapes = TINY_SHAPES
        cuda = torch.device(self.device).type == "cuda"
        self.warmup = self.warmup if self.warmup is not None else (10 if cuda else 1)
        self.iters = self.iters if self.iters is not None else (50 if cuda else 3)
        if self.iters < 1 or self.warmup < 0:
            raise ValueError(f"--iters must be >= 1 and --warmup >= 0, got {self.iters} and {self.warmup}")
        if self.compile and self.warmup < 1:
            raise ValueError("--compile needs --warmup >= 1 (the first call compiles)")


class StabWithProjector(nn.Module):
    """The Video-Panda visual front end: STAB, then the `mlp2x_gelu` projector on all frames at once."""

    def __init__(self, stab: nn.Module, stab_width: int, llm_width: int):
        super().__init__()
        self.stab = stab
        self.projector = nn.Sequential(nn.Linear(stab_width, llm_width), nn.GELU(), nn.Linear(llm_width, llm_width))

    def forward(self, frames: Tensor) -> Tensor:
        """frames (C, T, 4, H, W) -> LLM-width tokens of all frames in order, (sum_i n_i, L)."""
        tokens, _grids = self.stab(frames)
        return self.projector(torch.cat(tokens, dim=0))


def _chunks(frames: int, per_chunk: int, what: str) -> tuple[int, int]:
    """(C, T) for `frames` frames in chunks of up to `per_chunk` (one image: (1, 1))."""
    if frames <= per_chunk:
        return 1, frames
    if frames % per_chunk:
        raise ValueError(f"{what}: {frames} frames do not split into chunks of {per_chunk}")
    return frames // per_chunk, per_chunk


def random_video(chunks: int, per_chunk: int, size: int, generator: torch.Generator) -> Tensor:
    """(C, T, 4, size, size) on the CPU: normalised-looking RGB noise and an all-ones validity mask (square content)."""
    rgb = torch.randn(chunks, per_chunk, 3, size, size, generator=generator, device="cpu")
    return torch.cat([rgb, torch.ones(chunks, per_chunk, 1, size, size, device="cpu")], dim=2)


def _build_stab(shapes: VisualShapes, frames: int, generator: torch.Generator) -> tuple[nn.Module, Tensor, str]:
    from videopanda.model.stab import SpatioTemporalAlignmentBlock, STABConfig

    if frames == 1:
        chunks, per_chunk = 1, 1
    elif frames % shapes.frames_per_chunk == 0:
        chunks, per_chunk = frames // shapes.frames_per_chunk, shapes.frames_per_chunk
    else:
        raise ValueError(f"{STAB_ROW}: --frames must be 1 or a multiple of {shapes.frames_per_chunk}, got {frames}")
    stab = SpatioTemporalAlignmentBlock(STABConfig(width=shapes.stab_width, num_heads=shapes.stab_heads,
                                                   patch_size=shapes.patch_size,
                                                   frames_per_chunk=shapes.frames_per_chunk))
    module = StabWithProjector(stab, shapes.stab_width, shapes.llm_width)
    size = shapes.student_size
    return module, random_video(chunks, per_chunk, size, generator), f"{frames} frames at {size} as C={chunks} x T={per_chunk}"


def clip_vision_config(shapes: VisualShapes):
    """The CLIP ViT-L/14-224 vision config (or its tiny version), written out field by field."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(hidden_size=shapes.vit_width, intermediate_size=shapes.vit_mlp,
                            num_hidden_layers=shapes.vit_layers, num_attention_heads=shapes.vit_heads,
                            image_size=shapes.vit_size, patch_size=shapes.patch_size, num_channels=3,
                            hidden_act="quick_gelu", layer_norm_eps=1e-5, attn_implementation="sdpa")


def _build_clip(shapes: VisualShapes, frames: int, generator: torch.Generator) -> tuple[nn.Module, Tensor, str]:
    from transformers import CLIPVisionModel

    size = shapes.vit_size
    module = CLIPVisionModel(clip_vision_config(shapes))
    pixels = torch.randn(frames, 3, size, size, generator=generator, device="cpu")
    return module, pixels, f"{frames} images at {size} (sdpa attention)"


def _build_teacher(shapes: VisualShapes, frames: int, generator: torch.Generator) -> tuple[nn.Module, Tensor, str]:
    from videopanda.train.teacher import LanguageBindVideoTower, TeacherConfig

    config = TeacherConfig(hidden_size=shapes.vit_width, intermediate_size=shapes.vit_mlp,
                           num_attention_heads=shapes.vit_heads, num_hidden_layers=shapes.vit_layers,
                           image_size=shapes.vit_size, patch_size=shapes.patch_size,
                           num_frames=shapes.teacher_frames_per_chunk)
    module = LanguageBindVideoTower(config)
    chunks, per_chunk = _chunks(frames, shapes.teacher_frames_per_chunk, TEACHER_ROW)
    size = shapes.vit_size
    return (module, random_video(chunks, per_chunk, size, generator)[:, :, :3],
            f"{frames} frames at {size} as C={chunks} x T={per_chunk}, {config.layers_to_run} of {config.num_hidden_layers} layers")


BUILDERS: dict[str, Callable[[VisualShapes, int, torch.Generator], tuple[nn.Module, Tensor, str]]] = {
    STAB_ROW: _build_stab,
    CLIP_ROW: _build_clip,
    TEACHER_ROW: _build_teacher,
}


def _output_tokens(output) -> int:
    """Tokens a front end hands on: rows of the STAB output, frames x positions of a ViT's."""
    tensor = output if isinstance(output, Tensor) else output[0]
    return int(tensor.shape[:-1].numel())


def prepare_row(name: str, config: VisualBenchConfig) -> tuple[dict, Callable[[], object]]:
    """Build one front end with random weights; one eager pass counts its FLOPs and peak memory (and warms
    it up). Returns the row so far and a no-argument call of the (compiled, with --compile) module."""
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    generator = torch.Generator().manual_seed(config.seed)
    meter = MemoryMeter(device)
    meter.baseline()
    with torch.device(device):
        module, inputs, layout = BUILDERS[name](config.shapes, config.frames, generator)
    # Frozen: no parameter asks for gradients (the flop counter's module tracker would hook them).
    module = module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    inputs = inputs.to(device=device, dtype=dtype)
    gc.collect()
    with torch.inference_mode(), meter.track():
        holder: list = []
        flops, flops_by_part = count_flops(lambda: holder.append(module(inputs)), depth=2)
        tokens = _output_tokens(holder[0])
        del holder
    row = {
        "name": name,
        "input": layout,
        "input_shape": list(inputs.shape),
        "output_tokens": tokens,
        "params_m": count_params(module) / 1e6,
        "gflops": flops / 1e9,
        "gmacs": flops / 2e9,
        "gflops_by_part": {part: f / 1e9 for part, f in flops_by_part.items()},
        "peak_mem_mb": None if meter.peak_bytes is None else meter.peak_bytes / 2**20,
    }
    runner = torch.compile(module) if config.compile else module
    return row, lambda: runner(inputs)


TABLE_COLUMNS = (
    ("name", "front end", ""),
    ("params_m", "params (M)", ".2f"),
    ("gflops", "GFLOPs", ".1f"),
    ("gmacs", "GMACs", ".1f"),
    ("latency_ms", "latency (ms)", ".1f"),
    ("peak_mem_mb", "peak mem (MB)", ".0f"),
    ("output_tokens", "tokens", "d"),
    ("stab_speedup", "STAB x faster", ".2f"),
)


def run_visual_bench(config: VisualBenchConfig) -> dict:
    """Measure every requested row; returns the JSON report (rows, device, dtype, environment, speedups)."""
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but torch.cuda.is_available() is False")
    threads = set_threads(device, config.threads)
    prepared = [prepare_row(name, config) for name in config.rows]
    rows = [row for row, _ in prepared]
    with torch.inference_mode():
        for _ in range(config.warmup):
            for _, call in prepared:
                call()
        synchronize(device)
        # Interleaved, in a rotating order: load from other processes falls on every row alike.
        times: list[list[float]] = [[] for _ in prepared]
        for it in range(config.iters):
            for k in range(len(prepared)):
                index = (k + it) % len(prepared)
                times[index].append(time_call(prepared[index][1], device))
        for (row, call), row_times in zip(prepared, times):
            row["latency_ms"] = median(row_times)
            row["latency_ms_all"] = row_times
            logger.info("%s: %.1f ms median of %d, %.1f GFLOPs, %.2fM params", row["name"], row["latency_ms"],
                        len(row_times), row["gflops"], row["params_m"])
            if config.profile:
                print_profile(row["name"], call, device, config.profile)
    del prepared
    gc.collect()
    speedups = {}
    stab = next((r for r in rows if r["name"] == STAB_ROW), None)
    for row in rows:
        row["stab_speedup"] = None if stab is None else row["latency_ms"] / stab["latency_ms"]
        if stab is not None and row is not stab:
            speedups[row["name"]] = row["stab_speedup"]
    report = {
        "rows": rows,
        **environment(device, threads),
        "dtype": config.dtype,
        "frames": config.frames,
        "warmup": config.warmup,
        "iters": config.iters,
        "compile": config.compile,
        "tiny": config.tiny,
        "shapes": asdict(config.shapes),
        "stab_speedup": speedups,
        "flops_convention": ("torch.utils.flop_counter: a multiply-add counts 2 FLOPs (gmacs = gflops / 2, the "
                             "convention of the paper's Table 3); matmul, conv and attention only"),
        "latency": ("median of iters timed calls after one counting pass and warmup untimed calls; "
                    "rows interleaved call by call"),
        "peak_mem": ("CUDA: torch.cuda.max_memory_allocated during one forward minus the allocation before building"
                     if device.type == "cuda" else
                     "CPU: peak RSS sampled every 1 ms during one forward minus RSS before building (after malloc_trim)"),
        "command": config.command,
    }
    return report


def format_report(report: dict) -> str:
    head = (f"device {report['device']} ({report.get('gpu') or report['cpu']}), dtype {report['dtype']}, "
            f"threads {report['threads']}, torch {report['torch']}, {report['frames']} frames, "
            f"median of {report['iters']} after {report['warmup']} warm-up"
            + (", torch.compile" if report["compile"] else "") + (", TINY shapes" if report["tiny"] else ""))
    return head + "\n" + format_table(report["rows"], TABLE_COLUMNS)
