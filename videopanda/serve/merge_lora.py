"""`videopanda merge-lora ADAPTER OUTPUT`: a LoRA adapter folder merged into its base, written as a full model folder.

The adapter folder is loaded like any model folder (`model_folder.load_model` with `keep_peft`: the base,
checked against its recorded identity, then the visual weights and the adapters on top); peft's
`merge_and_unload` folds the adapters into the LLM weights, and the model and its processor are saved. The
output must be new or empty, outside the adapter folder and its base (symlinks resolved); it is written
beside itself and renamed into place when complete, so a failed merge leaves nothing; a folder that cannot be
written is a one-line error naming it (exit code 2, as for a folder that cannot be loaded).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from videopanda.io import OutputError, describe_os_error
from videopanda.serve.model_folder import ADAPTER_RECORD, AdapterFolderError, InferError, load_model, read_model_folder


def _check_merge_output(adapter: Path, base: Path, output: Path) -> None:
    """AdapterFolderError unless `output` is a new (or empty) folder outside the adapter folder and its base
    (symlinks resolved): writing there would overwrite the weights the merge reads."""
    target = output.resolve()
    for name, folder in (("the adapter folder", adapter), ("its base folder", base)):
        folder = folder.resolve()
        if target == folder or folder in target.parents:
            raise AdapterFolderError(f"{output}: the output is {name} {folder}"
                                     f"{'' if target == folder else ' or inside it'}; pick a new folder")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise AdapterFolderError(f"{output}: already exists and is not an empty folder; pick a new folder")


def merge_folder(adapter: str | Path, output: str | Path, device: str = "cpu") -> Path:
    """Adapter folder -> a full, self-contained model folder with the adapters merged into the LLM weights
    (module docstring). Raises AdapterFolderError for a folder that is not an adapter folder or such an
    output, InferError (ModelFolderError, MemoryBudgetError) from reading or loading it."""
    adapter, output = Path(adapter), Path(output).absolute()  # "." has no name to write beside
    if not (adapter / ADAPTER_RECORD).is_file():
        raise AdapterFolderError(f"{adapter}: not an adapter folder (no {ADAPTER_RECORD}); merge-lora takes the "
                                 "output (or a checkpoint) of a LoRA finetune")
    folder = read_model_folder(adapter)
    _check_merge_output(adapter, folder.weights, output)
    model, processor = load_model(folder, device, keep_peft=True)
    merged = model.merge_and_unload()
    partial = output.with_name(f".{output.name}.partial-{os.getpid()}")
    try:
        merged.save_pretrained(partial)
        processor.save_pretrained(partial)
        if output.exists():
            output.rmdir()
        partial.rename(output)
    except OSError as err:
        raise describe_os_error(err, output) from err
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
    try:
        output = merge_folder(args.adapter, args.output, args.device)
    except (InferError, OutputError) as err:
        print(f"videopanda merge-lora: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(output)
    return 0
