"""LoRA adapters on the LLM (peft): adding them for training, saving and resuming the adapter folder.

Training (`videopanda train` with `lora.enabled`, finetune stage): `add_adapters` puts peft LoRA layers
on the Llama decoder's projections (`lora.target_modules`, only inside `model.layers.*`, never in the
STAB or projector) in place, so the `VideoPandaForCausalLM` keeps its class and forward; `freeze_for_lora`
then leaves trainable only the adapters and, with `lora.visual: train`, the STAB, projector and
distillation head. With `lora.quantize: nf4` (QLoRA) the base LLM was loaded in 4-bit by `build_model`.

Adapter folder (every checkpoint and the stage's output of a LoRA run), written by `save_adapter_folder`:
- `adapter_config.json`, `adapter_model.safetensors`: peft's own format (`PeftModel.save_pretrained`);
- `visual.safetensors`: STAB and projector (and the distillation head while training) in the released
  key names; the base folder's own visual weights are replaced by these;
- `config.json`, `generation_config.json`, tokenizer and processor files: the model's, so folder checks,
  the processor and the answer settings work as for a full folder;
- `videopanda_adapter.json`: {"base": the absolute base folder, "base_identity": the base's
  `model_identity` (a checksum of its config, tokenizer and every weight byte) when the run started
  (computed once, in preflight), "visual": which visual parts trained}. A run resumed from a checkpoint whose
  recorded identity is not its base's now is refused before training (`train.preflight`).

Reading and loading such a folder (`videopanda infer`, `chat`, `demo`, `eval`, the lmms-eval plugin,
`merge-lora`) is the model-folder reader's (`videopanda.serve.model_folder`): the base is checked against
its recorded identity, loaded, and the visual weights and adapters go on top, unmerged.
`videopanda merge-lora` (`videopanda.serve.merge_lora`) writes the merged, self-contained folder.
"""
from __future__ import annotations

from pathlib import Path

from videopanda.log import get_logger
from videopanda.serve.model_folder import (
    ADAPTER_RECORD,
    ADAPTER_WEIGHTS,
    VISUAL_WEIGHTS,
    AdapterFolderError,
    load_visual_into,
    model_identity,
    read_adapter_record,
    read_visual,
)

logger = get_logger(__name__)

LLM_LAYERS_PATTERN = r"model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{names})"
"""Where adapters go: peft matches a string `target_modules` against the whole module name, so only the
decoder layers' projections qualify, whatever the STAB names its own modules."""


def lora_config(settings):
    """peft `LoraConfig` for the experiment's `LoraSettings` (adapters on the LLM's decoder projections)."""
    import re

    from peft import LoraConfig

    names = "|".join(re.escape(name) for name in settings.target_modules)
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, bias="none",
                      target_modules=LLM_LAYERS_PATTERN.format(names=names), task_type="CAUSAL_LM")


def add_adapters(model, settings):
    """Put LoRA adapters on `model` (a `VideoPandaForCausalLM`, changed in place) -> the `PeftModel` that
    saves and loads them. Raises ValueError when no module matches the target names."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config(settings))
    adapters = sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    if not adapters:
        raise ValueError(f"lora.target_modules {settings.target_modules} match no module of the LLM")
    logger.info("LoRA: rank %d, alpha %d, dropout %g on %s: %.2fM adapter parameters", settings.rank, settings.alpha,
                settings.dropout, ", ".join(settings.target_modules), adapters / 1e6)
    return peft_model


def freeze_for_lora(training_model, visual: str) -> None:
    """Trainable: the adapters, and the visual parts (STAB, projector, distillation head) when `visual` is
    "train"; everything else (every base LLM weight, the teacher) frozen."""
    from videopanda.train.stages import VISUAL_GROUPS, parameter_parts

    parts = parameter_parts(training_model)
    if visual != "train":  # frozen means unchanged: BatchNorm running statistics included
        training_model.keep_eval = [m for part, modules in training_model.parts().items() if part in VISUAL_GROUPS
                                    for m in modules]
    for name, param in training_model.named_parameters():
        if parts[name] == "llm":
            param.requires_grad_("lora_" in name)
        else:
            param.requires_grad_(parts[name] in VISUAL_GROUPS and visual == "train")
    logger.info("LoRA: LLM base weights frozen; visual parts %s", "train" if visual == "train" else "frozen")


def _visual_state(training_model) -> dict:
    """STAB, projector and distillation-head tensors of a `TrainingModel` in the released key names."""
    from videopanda.model.checkpoint import PROJECTOR_PREFIX, STAB_PREFIX
    from videopanda.train.training_model import HEAD_KEY, MODEL_KEY

    visual_prefixes = (MODEL_KEY + STAB_PREFIX, MODEL_KEY + PROJECTOR_PREFIX, HEAD_KEY)
    state = {k: v for k, v in training_model.state_dict().items() if k.startswith(visual_prefixes)}
    return training_model.released_state_dict(state)


def save_adapter_folder(training_model, peft_model, folder: str | Path, base: str | Path, visual: str,
                        base_identity: str | None = None) -> str:
    """Write the adapter folder (module docstring) but for the processor files, which the caller writes; returns
    the base identity it records: `base_identity`, the base's when the run started (computed here when None). A run
    records the identity it started with at every save, so a base that changes during the run is not taken for
    the one the adapters were trained on."""
    from safetensors.torch import save_file

    from videopanda.io import write_json_atomic
    from videopanda.model.videopanda import project_generation_config

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in _visual_state(training_model).items()}
    save_file(state, str(folder / VISUAL_WEIGHTS), metadata={"format": "pt"})
    config = training_model.model.config
    config.save_pretrained(folder)
    project_generation_config(config).save_pretrained(folder)
    base = Path(base).resolve()
    base_identity = base_identity or model_identity(base)
    write_json_atomic(folder / ADAPTER_RECORD, {"base": str(base), "base_identity": base_identity, "visual": visual})
    return base_identity


def load_adapter_state(training_model, peft_model, folder: str | Path) -> None:
    """Resume: the adapters and visual weights (the head too, when distilling) of a checkpoint."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from videopanda.model.checkpoint import HEAD_PREFIX
    from videopanda.train.training_model import HEAD_KEY

    folder = Path(folder)
    read_adapter_record(folder)
    result = set_peft_model_state_dict(peft_model, load_file(folder / ADAPTER_WEIGHTS))
    missing = sorted(key for key in result.missing_keys if "lora_" in key)  # the base's own keys are not stored
    if result.unexpected_keys or missing:
        raise AdapterFolderError(f"{folder / ADAPTER_WEIGHTS}: unexpected {sorted(result.unexpected_keys)}, "
                                 f"missing {missing}")
    state = read_visual(folder, include_training=training_model.distilling)
    load_visual_into(training_model.model, state, folder)
    if training_model.distilling:
        head = {k[len(HEAD_PREFIX):]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
        training_model.distill_head.load_state_dict(head)  # strict: the whole head
