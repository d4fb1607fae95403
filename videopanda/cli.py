"""The `videopanda` command. Each subcommand lives in its own module with `main(argv) -> int`,
imported only when chosen, so `videopanda --help` stays fast and one broken tool cannot break the others."""
from __future__ import annotations

import importlib
import sys

from videopanda.log import setup_logging

COMMANDS: dict[str, tuple[str, str]] = {
    "infer": ("videopanda.infer", "answer a question about one video with a trained model"),
    "chat": ("videopanda.chat", "talk about a video in the terminal, answers streamed"),
    "demo": ("videopanda.demo", "web demo (Gradio): upload a clip, see its frames, chat about it"),
    "data": ("videopanda.data.cli", "data tools: `data check` opens every video a training JSON references"),
    "synth": ("videopanda.data.synth", "generate the synthetic video-QA dataset and the tiny model folders"),
    "train": ("videopanda.train.cli", "run one training stage (prealign, pretrain, finetune)"),
    "eval": ("videopanda.eval.cli", "evaluation: qa, merge, judge, benchmark, report, judge-agreement, mc"),
    "merge-lora": ("videopanda.lora", "merge a LoRA adapter folder into its base: a full model folder"),
    "bench": ("videopanda.bench.cli", "speed benchmarks: visual front ends, data path, time to first token"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: videopanda <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "Run `videopanda <command> --help` for the options of one command."]
    return "\n".join(lines)


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
