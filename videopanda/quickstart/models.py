"""The quickstart's base models, made for a synthetic data folder: `videopanda quickstart-models --data DIR`.

```
DIR/models/base/      a SentencePiece Llama tokenizer trained on all the data's text + a small Llama
                      (LlamaForCausalLM, random weights; `--lm-steps` pre-trains it on that text)
DIR/models/teacher/   a tiny LanguageBind-layout video tower with random weights (the distillation teacher)
DIR/synth_meta.json   gains "models": what they were made with (the quickstart compares it with what it needs)
```

DIR is what `videopanda synth --out DIR` wrote. The models are a function of the data's seed (from its
metadata) and the settings below; the Llama's shape comes from a VideoPandaConfig JSON (`--model-config`,
the quickstart passes its experiment's `model.shape`, configs/model/tiny.json), and so does the teacher's frame
count (the model's `num_frames`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from videopanda.constants import NUM_FRAMES, TEACHER_IMAGE_SIZE
from videopanda.io import read_json, write_json_atomic
from videopanda.log import get_logger, setup_logging

logger = get_logger(__name__)

META_FILE = "synth_meta.json"
"""The data folder's metadata (`videopanda.data.synth`), where the models' record goes under "models"."""
DEFAULT_LLM = {"hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 4, "num_attention_heads": 4,
               "num_key_value_heads": 4, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5}
LLM_FIELDS = tuple(DEFAULT_LLM) + ("head_dim", "rope_theta", "tie_word_embeddings", "hidden_act")


class ModelsError(ValueError):
    """A data folder the models cannot be made for; the message names the file."""


@dataclass
class ModelsConfig:
    data: Path = Path("data/synth")
    model_config: Path | None = None     # VideoPandaConfig JSON whose Llama fields shape the base model
    vocab_size: int = 600
    lm_steps: int = 0                    # language-model pre-training steps on the synthetic text (0 = random init)
    teacher_width: int = 64
    teacher_layers: int = 2
    teacher_image_size: int | None = None  # None: the model config's teacher_image_size
    # A random teacher with CLIP-like weights (std 0.02) has features that say what colour a patch is but
    # hardly where it is; a real LanguageBind teacher's features say both. Larger position embeddings
    # give the quickstart teacher that second part, which the distillation loss then passes to the
    # student's visual hidden states (the Llama alone only sees token order, through RoPE). The patch
    # embedding is scaled up with them so that colour keeps an equal share of the features (position
    # std 0.5, patch std 0.1: position explains 41% of the feature directions, colour 48%). The patch
    # positions are smooth in 2D, like a trained ViT's (`smooth_position_embedding`, 2 frequencies per
    # axis), not independent per patch: with the same shares, the quickstart's colour questions went
    # from 46% (appearance) and 75% (temporal) to 98% and 99% (an earlier synthetic generator, on 112 px
    # frames; one run each, and another independent draw had also reached 97% and 99%, so independent
    # positions are a lottery).
    teacher_position_std: float = 0.5
    teacher_position_frequencies: int = 2
    teacher_patch_std: float = 0.1
    teacher_temporal_std: float | None = None


def teacher_image_size(config: ModelsConfig) -> int:
    """The teacher's frame size: `config.teacher_image_size`, else the model config's, else the 7B's."""
    if config.teacher_image_size is not None:
        return config.teacher_image_size
    return int(_model_config_fields(config.model_config).get("teacher_image_size", TEACHER_IMAGE_SIZE))


def teacher_num_frames(model_config: Path | None) -> int:
    """The frames the teacher's temporal attention spans: the model config's `num_frames` (the 7B's 8 without
    one), so the teacher takes the model's whole video as one group."""
    return int(_model_config_fields(model_config).get("num_frames", NUM_FRAMES))


def _model_config_fields(model_config: Path | None) -> dict:
    """The fields of a VideoPandaConfig JSON ({} without one)."""
    return read_json(model_config) if model_config is not None else {}


def llm_fields(model_config: Path | None) -> dict:
    """The base Llama's shape: DEFAULT_LLM updated with the LLM_FIELDS of a VideoPandaConfig JSON."""
    raw = _model_config_fields(model_config)
    return {**DEFAULT_LLM, **{k: raw[k] for k in LLM_FIELDS if k in raw}}


def read_meta(data: Path) -> dict:
    """DATA/synth_meta.json; a `ModelsError` naming it when the folder holds no synthetic data."""
    path = Path(data) / META_FILE
    if not path.is_file():
        raise ModelsError(f"{path}: no synthetic data there (write it first: videopanda synth --out {data})")
    try:
        return read_json(path)
    except ValueError as err:
        raise ModelsError(str(err)) from None


def training_texts(data: Path) -> list[str]:
    """Every training conversation of the data folder (captions, then QA) as the prompt template writes it."""
    from videopanda.data.synth import SYSTEM_TEXTS

    train_json = Path(data) / "train" / "train_json"
    samples = []
    for name in ("valley_.json", "videochatgpt_tune_.json"):
        path = train_json / name
        try:
            samples += read_json(path, list)
        except ValueError as err:
            raise ModelsError(str(err)) from None

    def chat_text(conversations: list[dict[str, str]], index: int) -> str:
        # the two system texts alternate, so the tokenizer learns the pieces in the proportions training sees
        # them: a long system text in few tokens
        rounds = [f"USER: {h['value'].replace('<video>', '').strip()} ASSISTANT: {g['value']}"
                  for h, g in zip(conversations[::2], conversations[1::2])]
        return " ".join([SYSTEM_TEXTS[index % 2], *rounds])

    return [chat_text(s["conversations"], i) for i, s in enumerate(samples)]


def build_models(config: ModelsConfig, texts: list[str], seed: int) -> dict:
    """Tokenizer + base Llama folder (DATA/models/base) and random LanguageBind teacher (DATA/models/teacher)
    -> their record (folders, vocabulary size, the Llama's fields and the teacher's initialisation)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from videopanda.data.tokenizer import train_llama_tokenizer
    from videopanda.train.teacher import LanguageBindVideoTower, TeacherConfig, init_teacher_weights
    from videopanda.model.videopanda import project_generation_config

    base = Path(config.data) / "models" / "base"
    train_llama_tokenizer(texts, base, vocab_size=config.vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(base)
    llm = llm_fields(config.model_config)
    torch.manual_seed(seed)
    llama_config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **llm)
    model = LlamaForCausalLM(llama_config)
    if config.lm_steps > 0:
        _pretrain_lm(model, tokenizer, texts, config.lm_steps, seed)
    model.generation_config = project_generation_config(llama_config)
    model.save_pretrained(base)

    teacher_frames = teacher_num_frames(config.model_config)
    teacher_config = TeacherConfig(hidden_size=config.teacher_width, intermediate_size=4 * config.teacher_width,
                                   num_attention_heads=max(1, config.teacher_width // 32),
                                   num_hidden_layers=config.teacher_layers, image_size=teacher_image_size(config),
                                   num_frames=teacher_frames)
    teacher_dir = Path(config.data) / "models" / "teacher"
    init_teacher_weights(LanguageBindVideoTower(teacher_config), seed=seed,
                         position_std=config.teacher_position_std,
                         patch_std=config.teacher_patch_std,
                         position_frequencies=config.teacher_position_frequencies,
                         temporal_std=config.teacher_temporal_std).save_pretrained(teacher_dir)
    return {"base": str(base), "teacher": str(teacher_dir), "vocab_size": len(tokenizer), "llm": llm,
            "lm_steps": config.lm_steps, "teacher_position_std": config.teacher_position_std,
            "teacher_patch_std": config.teacher_patch_std,
            "teacher_position_frequencies": config.teacher_position_frequencies,
            "teacher_temporal_std": config.teacher_temporal_std,
            "teacher_num_frames": teacher_frames,
            "model_config": str(Path(config.model_config).resolve()) if config.model_config else None}


def _pretrain_lm(model, tokenizer, texts: list[str], steps: int, seed: int) -> None:
    """A short next-token pre-training of the base model on the synthetic sentences (batch 32)."""
    import torch
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    for step in tqdm(range(steps), desc="base LM", unit="step"):
        pick = torch.randint(len(texts), (32,), generator=generator).tolist()
        batch = tokenizer([texts[i] + tokenizer.eos_token for i in pick], return_tensors="pt", padding=True)
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        for group in opt.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    logger.info("base LM pre-trained for %d steps, final loss %.3f", steps, loss.item())


def make_models(config: ModelsConfig) -> dict:
    """Build the models for the data folder (seeded with its seed) and record them in its metadata; returns
    the record."""
    meta = read_meta(config.data)
    if config.model_config is not None:
        try:
            llm_fields(config.model_config)
        except ValueError as err:
            raise ModelsError(f"--model-config {err}") from None
    texts = training_texts(config.data)
    meta_path = Path(config.data) / META_FILE
    if "models" in meta:  # a build stopped half-way must leave no record that matches its settings
        write_json_atomic(meta_path, {k: v for k, v in meta.items() if k != "models"})
    record = build_models(config, texts, int(meta["seed"]))
    write_json_atomic(meta_path, {**meta, "models": record})
    logger.info("base models in %s: tokenizer of %d pieces, Llama of %d layers %d wide, teacher on %d px frames",
                Path(config.data) / "models", record["vocab_size"], record["llm"]["num_hidden_layers"],
                record["llm"]["hidden_size"], teacher_image_size(config))
    return record


# ---- command line ------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    from videopanda.argparsing import CommandParser

    parser = CommandParser(prog="videopanda quickstart-models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ModelsConfig.data,
                        help="synthetic data folder (`videopanda synth --out`); the models go to DATA/models")
    parser.add_argument("--model-config", type=Path,
                        help="VideoPandaConfig JSON (e.g. configs/model/tiny.json) for the base Llama's shape "
                             f"(default: {', '.join(f'{k} {v}' for k, v in DEFAULT_LLM.items())})")
    parser.add_argument("--vocab-size", type=int, default=ModelsConfig.vocab_size)
    parser.add_argument("--lm-steps", type=int, default=ModelsConfig.lm_steps,
                        help="pre-train the base Llama on the synthetic text for this many steps")
    parser.add_argument("--teacher-image-size", type=int, default=None,
                        help="the teacher's frame size (default: the --model-config's teacher_image_size)")
    parser.add_argument("--teacher-position-std", type=float, default=ModelsConfig.teacher_position_std,
                        help="std of the random teacher's position embeddings (its other weights: 0.02)")
    parser.add_argument("--teacher-patch-std", type=float, default=ModelsConfig.teacher_patch_std,
                        help="std of the random teacher's patch embedding")
    parser.add_argument("--teacher-temporal-std", type=float, default=ModelsConfig.teacher_temporal_std,
                        help="std of the random teacher's temporal embeddings and temporal attention (default: its "
                             "other weights' 0.02)")
    parser.add_argument("--teacher-position-frequencies", type=int,
                        default=ModelsConfig.teacher_position_frequencies,
                        help="smooth 2D position embeddings with this many cosine frequencies per axis (0: "
                             "independent per patch)")
    args = parser.parse_args(argv)
    config = ModelsConfig(data=args.data, model_config=args.model_config, vocab_size=args.vocab_size,
                          lm_steps=args.lm_steps, teacher_image_size=args.teacher_image_size,
                          teacher_position_std=args.teacher_position_std, teacher_patch_std=args.teacher_patch_std,
                          teacher_position_frequencies=args.teacher_position_frequencies,
                          teacher_temporal_std=args.teacher_temporal_std)
    setup_logging()
    try:
        record = make_models(config)
    except ModelsError as err:
        logger.error("%s", err)
        return 1
    print(json.dumps({k: record[k] for k in ("base", "teacher", "vocab_size")}))
    return 0
