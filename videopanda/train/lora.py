"""LoRA adapters on the LLM (peft), the adapter folder, and `videopanda merge-lora IN OUT`.

Training (`videopanda train` with `lora.enabled`, finetune stage): `add_adapters` puts peft LoRA layers
on the Llama decoder's projections (`lora.target_modules`, only inside `model.layers.*`, never in the
STAB or projector) in place, so the `VideoPandaForCausalLM` keeps its class and forward; `freeze_for_lora`
then leaves trainable only the adapters and, with `lora.visual: train`, the STAB, projector and
distillation head. With `lora.quantize: nf4` (QLoRA) the base LLM was loaded in 4-bit by `build_model`.

Adapter folder (every checkpoint and the stage's output of a LoRA run):
- `adapter_config.json`, `adapter_model.safetensors`: peft's own format (`PeftModel.save_pretrained`);
- `visual.safetensors`: STAB and projector (and the distillation head while training) in the released
  key names; the base folder's own visual weights are replaced by these;
- `config.json`, `generation_config.json`, tokenizer and processor files: the model's, so folder checks,
  the processor and the answer settings work as for a full folder;
- `videopanda_adapter.json`: {"base": the absolute base folder, "base_identity": the base's
  `eval.provenance.model_identity` (a checksum of its config, tokenizer and every weight byte) when the
  adapters were saved, "visual": which visual parts trained}.

Every path that answers with such a folder (`videopanda infer`, `chat`, `demo`, `eval qa/mc/benchmark`,
the lmms-eval plugin, `merge-lora`) loads it through `infer.load_model`, which first checks the base
(`checked_base_folder`: a base whose identity is not the recorded one is refused in one line; a folder
written before identities were recorded loads with a warning naming it), then loads the base, the visual
weights on top and `PeftModel.from_pretrained` (`attach_adapter`), adapters unmerged. `merge-lora` writes
the merged, self-contained model folder, never into the adapter folder, its base, or a folder that holds
anything.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from videopanda.log import get_logger

logger = get_logger(__name__)

ADAPTER_RECORD = "videopanda_adapter.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
VISUAL_WEIGHTS = "visual.safetensors"
ADAPTER_FILES = (ADAPTER_RECORD, ADAPTER_CONFIG, ADAPTER_WEIGHTS, VISUAL_WEIGHTS)
LLM_LAYERS_PATTERN = r"model\.layers\.\d+\.(?:self_attn|mlp)\.(?:{names})"
"""Where adapters go: peft matches a string `target_modules` against the whole module name, so only the
decoder layers' projections qualify, whatever the STAB names its own modules."""


class AdapterFolderError(ValueError):
    """An adapter folder that cannot be used; the message names the file."""


def is_adapter_folder(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_RECORD).is_file()


def read_adapter_record(folder: str | Path) -> dict:
    """The folder's `videopanda_adapter.json` after checking that every adapter file is there."""
    folder = Path(folder)
    for name in ADAPTER_FILES:
        if not (folder / name).is_file():
            raise AdapterFolderError(f"{folder}: adapter folder without {name}")
    try:
        record = json.loads((folder / ADAPTER_RECORD).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise AdapterFolderError(f"{folder / ADAPTER_RECORD}: unreadable ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("base"), str):
        raise AdapterFolderError(f"{folder / ADAPTER_RECORD}: no `base` folder recorded")
    return record


def base_folder(folder: str | Path) -> Path:
    """The base model folder an adapter folder was trained on."""
    return Path(read_adapter_record(folder)["base"])


def checked_base_folder(folder: str | Path) -> Path:
    """The base folder of an adapter folder after checking that it is the model the adapters were trained
    on (its `model_identity` equals the recorded `base_identity`). Raises AdapterFolderError in one line;
    a record without `base_identity` (written before it was recorded) only warns, naming the folder."""
    from videopanda.eval.provenance import model_identity

    folder = Path(folder)
    record = read_adapter_record(folder)
    base = Path(record["base"])
    recorded = record.get("base_identity")
    if recorded is None:
        logger.warning("%s: %s records no identity of its base %s (written by an older version): cannot tell "
                       "whether the base is still the model the adapters were trained on", folder, ADAPTER_RECORD,
                       base)
        return base
    actual = model_identity(base)
    if actual != recorded:
        raise AdapterFolderError(f"{folder}: its base {base} is not the model the adapters were trained on "
                                 f"(identity {actual}, recorded {recorded} in {ADAPTER_RECORD}); restore that "
                                 f"base or point `base` at a copy of it")
    return base


# ---- training --------------------------------------------------------------------------------------


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


def save_adapter_folder(training_model, peft_model, folder: str | Path, base: str | Path, visual: str) -> None:
    """Write the adapter folder (module docstring) but for the processor files, which the caller writes."""
    from safetensors.torch import save_file

    from videopanda.eval.provenance import model_identity
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
    write_json_atomic(folder / ADAPTER_RECORD, {"base": str(base), "base_identity": model_identity(base),
                                                "visual": visual})


def _read_visual(folder: Path, include_training: bool) -> dict:
    """visual.safetensors in our model's key names (the head's under `model.video_tower_compressor.` only
    with `include_training`)."""
    from safetensors.torch import load_file

    from videopanda.model.checkpoint import released_key_to_model_key

    out = {}
    for key, tensor in load_file(folder / VISUAL_WEIGHTS).items():
        name = released_key_to_model_key(key, include_training=include_training)
        if name is not None:
            out[name] = tensor
    return out


def _load_visual_into(model, state: dict, source: Path) -> None:
    """Copy mapped visual tensors into a `VideoPandaForCausalLM`; every STAB / projector tensor must come."""
    from videopanda.model.checkpoint import PROJECTOR_PREFIX, STAB_PREFIX

    wanted = {k for k in model.state_dict() if k.startswith((STAB_PREFIX, PROJECTOR_PREFIX))}
    ours = {k: v for k, v in state.items() if k.startswith((STAB_PREFIX, PROJECTOR_PREFIX))}
    if ours.keys() != wanted:
        raise AdapterFolderError(f"{source / VISUAL_WEIGHTS}: missing {sorted(wanted - ours.keys())}, "
                                 f"unexpected {sorted(ours.keys() - wanted)}")
    model.load_state_dict(ours, strict=False)


def load_adapter_state(training_model, peft_model, folder: str | Path) -> None:
    """Resume: the adapters and visual weights (the head too, when distilling) of a checkpoint."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from videopanda.model.checkpoint import HEAD_PREFIX
    from videopanda.train.training_model import HEAD_KEY

    folder = Path(folder)
    read_adapter_record(folder)
    result = set_peft_model_state_dict(peft_model, load_file(folder / ADAPTER_WEIGHTS))
    if result.unexpected_keys:
        raise AdapterFolderError(f"{folder / ADAPTER_WEIGHTS}: unexpected {sorted(result.unexpected_keys)}")
    state = _read_visual(folder, include_training=training_model.distilling)
    _load_visual_into(training_model.model, state, folder)
    if training_model.distilling:
        head = {k[len(HEAD_PREFIX):]: v for k, v in state.items() if k.startswith(HEAD_PREFIX)}
        training_model.distill_head.load_state_dict(head)  # strict: the whole head


# ---- inference -------------------------------------------------------------------------------------


def attach_adapter(model, folder: str | Path):
    """The adapter folder's visual weights and adapters on `model` (its base, loaded; changed in place)
    -> the `PeftModel` (unmerged adapters, inference mode)."""
    from peft import PeftModel

    folder = Path(folder)
    _load_visual_into(model, _read_visual(folder, include_training=False), folder)
    return PeftModel.from_pretrained(model, folder, is_trainable=False)


def _check_merge_output(adapter: Path, output: Path) -> None:
    """AdapterFolderError unless `output` is a new (or empty) folder outside the adapter folder and its base
    (symlinks resolved): writing there would overwrite the weights the merge reads."""
    target = output.resolve()
    for name, folder in (("the adapter folder", adapter), ("its base folder", base_folder(adapter))):
        folder = folder.resolve()
        if target == folder or folder in target.parents:
            raise AdapterFolderError(f"{output}: the output is {name} {folder}"
                                     f"{'' if target == folder else ' or inside it'}; pick a new folder")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise AdapterFolderError(f"{output}: already exists and is not an empty folder; pick a new folder")


def merge_folder(adapter: str | Path, output: str | Path, device: str = "cpu") -> Path:
    """Adapter folder -> a full, self-contained model folder with the adapters merged into the LLM weights.

    The output must be new or empty, outside the adapter folder and its base; it is written beside itself
    and renamed into place when complete, so a failed merge leaves nothing. Raises AdapterFolderError for a
    folder that is not an adapter folder or such an output, InferError (ModelFolderError) from loading."""
    from videopanda.serve.infer import load_model

    adapter, output = Path(adapter), Path(output)
    if not is_adapter_folder(adapter):
        raise AdapterFolderError(f"{adapter}: not an adapter folder (no {ADAPTER_RECORD}); merge-lora takes the "
                                 "output (or a checkpoint) of a LoRA finetune")
    _check_merge_output(adapter, output)
    model, processor = load_model(adapter, device, keep_peft=True)
    merged = model.merge_and_unload()
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        merged.save_pretrained(partial)
        processor.save_pretrained(partial)
        if output.exists():
            output.rmdir()
        partial.rename(output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return output


def _parser() -> argparse.ArgumentParser:
    from videopanda.argparsing import CommandParser

    parser = CommandParser(
        prog="videopanda merge-lora",
        description="Merge a LoRA adapter folder (a LoRA finetune's output or checkpoint) into its base model and "
                    "write a full model folder that needs neither peft nor the base.")
    parser.add_argument("adapter", help="adapter folder (holds videopanda_adapter.json)")
    parser.add_argument("output", help="folder to write the merged model to")
    parser.add_argument("--device", default="cpu", help="where to merge")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from videopanda.serve.infer import InferError

    try:
        output = merge_folder(args.adapter, args.output, args.device)
    except (InferError, AdapterFolderError) as err:
        print(f"videopanda merge-lora: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(output)
    return 0


__all__ = ["ADAPTER_RECORD", "AdapterFolderError", "add_adapters", "attach_adapter", "base_folder",
           "checked_base_folder", "freeze_for_lora", "is_adapter_folder", "load_adapter_state", "lora_config", "merge_folder",
           "read_adapter_record", "save_adapter_folder"]
