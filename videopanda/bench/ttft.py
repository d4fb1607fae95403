"""`videopanda bench ttft`: time to first token of the whole model with random weights.

The model is `VideoPandaForCausalLM` from `VideoPandaConfig()` (the 7B defaults: 32 Llama layers of
width 4096), initialised directly on the device in the requested dtype. The prompt is one 8-frame
448x448 video (square content: 8 x 273 = 2184 visual tokens) between two short stretches of random
text token ids (`--text-tokens`, 32 by default, ids in [3, vocab)). Reported, each the median of
`iters` timed calls after `warmup` untimed ones:

- `ttft_ms`: `model.generate(..., max_new_tokens=1)`: STAB, projector, prefill of the whole prompt
  and picking the first token (greedy), with generate's own overhead: what a user waits for.
- `visual_ms`: STAB + projector alone (the packed STAB output through the projector).
- `prefill_ms`: one `model(...)` forward over the prompt with the video (STAB included), KV cache on,
  logits of the last position only, and its argmax.
- `decode_ms_per_token`: (generate of 1 + K tokens - generate of 1 token) / K, K = `--decode-tokens`.

`--layers/--hidden/...` and `--tiny` shrink the model for a CPU smoke test only.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass

import torch

from videopanda.bench.timing import BenchError, MemoryMeter, environment, median, set_threads, time_calls
from videopanda.bench.visual import DTYPES, random_video
from videopanda.log import get_logger

logger = get_logger(__name__)


@dataclass
class TTFTBenchConfig:
    device: str = "cuda"
    dtype: str = "bfloat16"
    frames: int = 8
    image_size: int = 448
    layers: int | None = None          # None: the config's default (32)
    hidden: int | None = None
    intermediate: int | None = None
    heads: int | None = None
    vocab: int | None = None
    stab_width: int | None = None
    text_tokens: int = 32
    decode_tokens: int = 8
    warmup: int | None = None           # default 3 on CUDA, 1 on CPU
    iters: int | None = None            # default 10 on CUDA, 3 on CPU
    threads: int | None = 2
    tiny: bool = False
    seed: int = 0
    command: str = ""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        if self.tiny:
            defaults = {"layers": 2, "hidden": 256, "intermediate": 512, "heads": 4, "vocab": 1000,
                        "stab_width": 128}
            for key, value in defaults.items():
                if getattr(self, key) is None:
                    setattr(self, key, value)
            self.image_size = 112 if self.image_size == 448 else self.image_size
        cuda = torch.device(self.device).type == "cuda"
        self.warmup = self.warmup if self.warmup is not None else (3 if cuda else 1)
        self.iters = self.iters if self.iters is not None else (10 if cuda else 3)


def build_model(config: TTFTBenchConfig):
    """VideoPandaForCausalLM with random weights, built on the device in the bench dtype."""
    from videopanda.model.videopanda import VideoPandaConfig, VideoPandaForCausalLM

    overrides = {"num_hidden_layers": config.layers, "hidden_size": config.hidden,
                 "intermediate_size": config.intermediate, "num_attention_heads": config.heads,
                 "num_key_value_heads": config.heads, "vocab_size": config.vocab,
                 "video_hidden_size": config.stab_width, "mm_hidden_size": config.stab_width}
    model_config = VideoPandaConfig(num_frames=config.frames, image_size=config.image_size,
                                    **{k: v for k, v in overrides.items() if v is not None})
    with torch.device(config.device):
        model = VideoPandaForCausalLM._from_config(model_config, dtype=DTYPES[config.dtype])
    return model.eval(), model_config


def _prompt(config: TTFTBenchConfig, vocab_size: int, image_token_id: int, visual_tokens: int,
            generator: torch.Generator) -> torch.Tensor:
    """(1, S): random text ids, the video's `visual_tokens` placeholder ids, random text ids (the processor's layout)."""
    half = config.text_tokens // 2
    text = torch.randint(3, vocab_size, (config.text_tokens,), generator=generator, device="cpu")
    frames = torch.full((visual_tokens,), image_token_id, dtype=torch.long)
    return torch.cat([text[:half], frames, text[half:]]).unsqueeze(0)


def run_ttft_bench(config: TTFTBenchConfig) -> dict:
    device, dtype = torch.device(config.device), DTYPES[config.dtype]
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but torch.cuda.is_available() is False")
    threads = set_threads(device, config.threads)
    generator = torch.Generator().manual_seed(config.seed)
    meter = MemoryMeter(device)
    meter.baseline()
    model, model_config = build_model(config)
    params = sum(p.numel() for p in model.parameters())
    chunk = model_config.frames_per_chunk
    video = random_video(config.frames // chunk, chunk, config.image_size, generator).to(device=device, dtype=dtype)
    pixels = video.unsqueeze(0)
    stab = model.model.video_tower

    def visual():
        tokens, _ = stab(video, packed=True)
        return model.model.video_projector(tokens)

    with torch.inference_mode():
        visual_tokens = int(visual().shape[0])
    input_ids = _prompt(config, model_config.vocab_size, model_config.image_token_id, visual_tokens,
                        generator).to(device)
    attention_mask = torch.ones_like(input_ids)

    def generate(new_tokens: int):
        return model.generate(input_ids, attention_mask=attention_mask, pixel_values_videos=pixels,
                              max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    def prefill():
        out = model(input_ids=input_ids, pixel_values_videos=pixels, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1].argmax(-1)

    with torch.inference_mode():
        with meter.track():
            prefill()
        w, k = config.warmup, config.iters
        results = {
            "visual_ms": median(time_calls(visual, device, w, k)),
            "prefill_ms": median(time_calls(prefill, device, w, k)),
            "ttft_ms": median(time_calls(lambda: generate(1), device, w, k)),
        }
        longer = median(time_calls(lambda: generate(1 + config.decode_tokens), device, w, k))
        results["decode_ms_per_token"] = (longer - results["ttft_ms"]) / config.decode_tokens
    report = {
        **environment(device, threads),
        "dtype": config.dtype,
        **results,
        "visual_tokens": visual_tokens,
        "prompt_tokens": int(input_ids.shape[1]),
        "params_b": params / 1e9,
        "layers": model_config.num_hidden_layers,
        "hidden": model_config.hidden_size,
        "peak_mem_mb": None if meter.peak_bytes is None else meter.peak_bytes / 2**20,
        "warmup": config.warmup,
        "iters": config.iters,
        "smoke_shape": config.tiny or any(v is not None for v in (config.layers, config.hidden, config.stab_width)),
        "command": config.command,
    }
    del model
    gc.collect()
    return report


def format_report(report: dict) -> str:
    where = report.get("gpu") or report["cpu"]
    return "\n".join([
        f"time to first token: {report['layers']} layers x {report['hidden']}, {report['params_b'] * 1e3:.1f}M params, "
        f"{report['dtype']} on {report['device']} ({where}); {report['prompt_tokens']} prompt tokens "
        f"({report['visual_tokens']} visual)" + ("  [SMOKE SHAPE, not the 7B]" if report["smoke_shape"] else ""),
        f"  ttft (generate, 1 token)  {report['ttft_ms']:.1f} ms",
        f"  STAB + projector          {report['visual_ms']:.1f} ms",
        f"  prefill forward           {report['prefill_ms']:.1f} ms",
        f"  decode per token          {report['decode_ms_per_token']:.1f} ms",
        f"  peak memory               {report['peak_mem_mb'] or 0:.0f} MB",
    ])
