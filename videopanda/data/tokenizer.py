"""Train a small Llama-style SentencePiece tokenizer and save it as a Hugging Face folder.

The released Video-Panda tokenizer is a Llama SentencePiece `tokenizer.model` (vocab 32000) that
transformers converts on load. Tests and the synthetic benchmark need the same kind of file without a
download, so this trains one on local text and writes it in the released layout: `tokenizer.model`
plus `tokenizer_config.json`. Loading it with `AutoTokenizer.from_pretrained` goes through exactly the
conversion a released folder goes through.
"""
from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from videopanda.constants import FRAME_PLACEHOLDER, VIDEO_TOKEN

MIN_VOCAB_SIZE = 320
"""Byte fallback reserves 256 pieces plus the specials, so smaller vocabularies cannot be built."""


def train_llama_tokenizer(
    texts: Iterable[str], out_dir: str | Path, vocab_size: int = 512, model_max_length: int = 4096
) -> Path:
    """Train a BPE SentencePiece model with byte fallback (unk=0, bos=1, eos=2) on `texts`.

    Writes `out_dir/tokenizer.model` and `out_dir/tokenizer_config.json` (LlamaTokenizer, pad = unk,
    right padding) and returns `out_dir`. The placeholder strings `<image>` and `<video>` are never
    learned as pieces: the conversation code splits them out before tokenising.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (byte fallback), got {vocab_size}")
    sentences = [t.replace(FRAME_PLACEHOLDER, " ").replace(VIDEO_TOKEN, " ") for t in texts]
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise ValueError("no text to train the tokenizer on")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        split_digits=True,
        add_dummy_prefix=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "tokenizer.model").write_bytes(model.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": model_max_length,
        "padding_side": "right",
        "legacy": False,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out
