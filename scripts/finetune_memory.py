"""Per-GPU memory of a finetune, computed (not measured) from parameter and activation counts.

    python scripts/finetune_memory.py [--shape configs/model/videopanda-7b.json] [--gpus 8] [--seq-len 4096]
                                      [--rank 128]

Prints a Markdown table (docs/lora.md): full finetune under ZeRO-2 and ZeRO-3, LoRA and QLoRA (under
ZeRO-2), at micro batch 1 and 4, gradient checkpointing on. Parameters are counted on the meta device
from the shape (LLM, STAB, projector, distillation head; the teacher is left out). Bytes per parameter:
bf16 weights 2, bf16 gradients 2, AdamW fp32 master + two moments 12; QLoRA's NF4 weights 0.5 plus one
fp32 absmax per 64 weights, quantised again to 8-bit per 256 (double quantisation), for the decoder's
linear layers (embeddings, norms, lm_head stay bf16). Activations with checkpointing: each decoder
layer's bf16 input (2 b s h per layer), one layer recomputed at a time (34 b s h bytes, attention by a
fused kernel: no s^2 term), and the bf16 logits (2 b s V). Not counted: the CUDA context, allocator
fragmentation, DeepSpeed buckets, ZeRO-3's gathered working set, the STAB's own activations.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

GIB = 2**30


def count_parameters(shape: Path, rank: int) -> dict[str, int]:
    """Parameter counts of the model `shape` describes: llm, llm_linear (decoder projections), visual (STAB,
    projector, distillation head) and lora (rank `rank` on the 7 projections of every decoder layer)."""
    import torch

    from videopanda.model.videopanda import VideoPandaConfig, VideoPandaForCausalLM
    from videopanda.train.distillation import DistillationHead

    raw = {k: v for k, v in json.loads(shape.read_text()).items() if k not in ("model_type", "architectures")}
    with torch.device("meta"):
        model = VideoPandaForCausalLM(VideoPandaConfig(**raw))
        head = DistillationHead(model.config.hidden_size)
    parts = {name: sum(p.numel() for m in modules for p in m.parameters()) for name, modules in model.parts().items()}
    linear = sum(m.weight.numel() for name, m in model.model.layers.named_modules() if isinstance(m, torch.nn.Linear))
    lora = sum(rank * (m.in_features + m.out_features) for m in model.model.layers.modules()
               if isinstance(m, torch.nn.Linear))
    return {"llm": parts["llm"], "llm_linear": linear,
            "visual": parts["stab"] + parts["projector"] + sum(p.numel() for p in head.parameters()), "lora": lora,
            "hidden": model.config.hidden_size, "layers": model.config.num_hidden_layers,
            "vocab": model.config.vocab_size}


def activation_bytes(counts: dict, batch: int, seq_len: int) -> int:
    b, s, h = batch, seq_len, counts["hidden"]
    return 2 * b * s * h * counts["layers"] + 34 * b * s * h + 2 * b * s * counts["vocab"]


def model_state_bytes(counts: dict, method: str, gpus: int) -> int:
    """Weights, gradients and optimizer state per GPU for one method."""
    total = counts["llm"] + counts["visual"]
    if method == "full, ZeRO-2":
        return 2 * total + (2 + 12) * total // gpus
    if method == "full, ZeRO-3":
        return (2 + 2 + 12) * total // gpus
    trainable = counts["lora"] + counts["visual"]
    frozen = counts["llm"]
    if method == "QLoRA (NF4), ZeRO-2":
        linear = counts["llm_linear"]
        quantised = linear // 2 + linear // 64 + 4 * (linear // (64 * 256))
        frozen_bytes = quantised + 2 * (frozen - linear)
    else:
        frozen_bytes = 2 * frozen
    return frozen_bytes + 2 * trainable + (2 + 12) * trainable // gpus


METHODS = ("full, ZeRO-2", "full, ZeRO-3", "LoRA, ZeRO-2", "QLoRA (NF4), ZeRO-2")


def table(counts: dict, gpus: int, seq_len: int, batches=(1, 4)) -> str:
    lines = [f"| method ({gpus} GPUs, seq {seq_len}) | trainable params | "
             + " | ".join(f"per GPU, batch {b}" for b in batches) + " |",
             "|---|---|" + "---|" * len(batches)]
    for method in METHODS:
        trainable = counts["llm"] + counts["visual"] if method.startswith("full") else counts["lora"] + counts["visual"]
        cells = [f"{(model_state_bytes(counts, method, gpus) + activation_bytes(counts, b, seq_len)) / GIB:.1f} GiB"
                 for b in batches]
        lines.append(f"| {method} | {trainable / 1e6:,.0f}M | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=Path, default=Path(__file__).resolve().parents[1] / "configs/model/videopanda-7b.json")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=4096, help="tokens per sample (data.max_length: text and "
                                                                 "frame placeholders)")
    parser.add_argument("--rank", type=int, default=128)
    args = parser.parse_args()
    counts = count_parameters(args.shape, args.rank)
    print(table(counts, args.gpus, args.seq_len))
    print(f"\nLoRA adapters (rank {args.rank}, q k v o gate up down): {counts['lora'] / 1e6:.1f}M parameters, "
          f"{2 * counts['lora'] / 1e6:.0f} MB in bf16; visual parts {counts['visual'] / 1e6:.1f}M parameters, "
          f"{2 * counts['visual'] / 1e6:.0f} MB in bf16; base LLM {counts['llm'] / 1e9:.2f}B parameters")


if __name__ == "__main__":
    main()
