"""The `videopanda` command. Each subcommand lives in its own module with `main(argv) -> int`,
imported only when chosen, so `videopanda --help` stays fast and one broken tool cannot break the others.
A module whose command has subcommands of its own lists them in `SUBCOMMANDS`. Every parser is a
`videopanda.argparsing.CommandParser`: its help shows each option's default.

The console script enters through `videopanda_command`, which imports the package without registering the
Auto classes; the command modules import torch, transformers and the model only inside the functions
that need them, so `--help` anywhere imports neither.
"""
from __future__ import annotations

import importlib
import sys

from videopanda.log import setup_logging

COMMANDS: dict[str, tuple[str, str]] = {
    "infer": ("videopanda.serve.infer", "answer a question about one video with a trained model"),
    "chat": ("videopanda.serve.chat", "talk about a video in the terminal, answers streamed"),
    "demo": ("videopanda.serve.demo", "web demo (Gradio): upload a clip, see its frames, chat about it"),
    "data": ("videopanda.data.cli", "data tools: `data check` opens every video a training JSON references"),
    "synth": ("videopanda.data.synth", "generate the synthetic video-QA dataset"),
    "quickstart": ("videopanda.quickstart.run", "the recipe on the synthetic benchmark on CPU: data, models, three "
                                                "stages, evaluation"),
    "quickstart-models": ("videopanda.quickstart.models", "the quickstart's tokenizer, base Llama and random teacher "
                                                          "for a synthetic data folder"),
    "train": ("videopanda.train.cli", "run one training stage (prealign, pretrain, finetune)"),
    "eval": ("videopanda.eval.cli", "evaluation: qa, merge, judge, benchmark, report, judge-agreement, mc"),
    "merge-lora": ("videopanda.serve.merge_lora", "merge a LoRA adapter folder into its base: a full model folder"),
    "bench": ("videopanda.bench.cli", "speed benchmarks: visual front ends, data path, time to first token"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: videopanda <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `videopanda <command> --help` for the options of one command."]
    return "\n".join(lines)


def help_command_lines() -> list[list[str]]:
    """Every command line (without `--help`) that has a help of its own: [], [command] for each command, and
    [command, subcommand] for each of a command's `SUBCOMMANDS`. Imports the command modules (light)."""
    lines: list[list[str]] = [[]]
    for name, (module_name, _) in COMMANDS.items():
        lines.append([name])
        lines += [[name, sub] for sub in getattr(importlib.import_module(module_name), "SUBCOMMANDS", ())]
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"videopanda: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    setup_logging()
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
