"""`--help` of the command and of every subcommand: exits 0, prints usage, shows defaults, and imports
neither torch nor transformers; `import videopanda` still registers the Auto classes for library users,
and the command, which skips that registration, still runs a model."""
import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.media import make_frames, write_video
from helpers.released import build_released_folder

import videopanda_command
from videopanda.argparsing import CommandParser
from videopanda.cli import COMMANDS, help_command_lines

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers")
LINES = help_command_lines()

# In a fresh interpreter: the console script's main on ARGV, then what it printed and imported, as JSON.
_RUN_AND_REPORT = """
import contextlib, io, json, sys
import videopanda_command
out, err = io.StringIO(), io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
        code = videopanda_command.main(sys.argv[1:])
    except SystemExit as stop:
        code = stop.code
print(json.dumps({"code": code or 0, "out": out.getvalue(), "err": err.getvalue(),
                  "imported": sorted(m for m in %r if m in sys.modules)}))
""" % (HEAVY,)


def run_help(line: list[str]) -> dict:
    result = subprocess.run([sys.executable, "-c", _RUN_AND_REPORT, *line, "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("line", LINES, ids=lambda line: " ".join(["videopanda", *line]))
def test_help_is_light(line):
    report = run_help(line)
    assert report["code"] == 0, report["err"]
    assert "usage:" in report["out"] and "videopanda" in report["out"]
    assert report["imported"] == [], f"videopanda {' '.join(line)} --help imported {report['imported']}"


def test_every_command_and_subcommand_is_covered():
    """Each command is in the list; a command's SUBCOMMANDS are exactly the ones its own help names."""
    assert [line[0] for line in LINES if len(line) == 1] == list(COMMANDS)
    for name in COMMANDS:
        subcommands = {line[1] for line in LINES if len(line) == 2 and line[0] == name}
        if not subcommands:
            continue
        usage = run_help([name])["out"]
        listed = re.search(r"\{([\w,-]+)\}", usage)
        if listed:  # an argparse parent names its subcommands as {a,b,c}
            assert set(listed.group(1).split(",")) == subcommands
        assert all(re.search(rf"\b{re.escape(sub)}\b", usage) for sub in subcommands), usage


def test_help_shows_defaults():
    out = run_help(["bench", "visual"])["out"]
    assert re.search(r"--threads THREADS\s+CPU intra-op threads \(default: 2\)", out)
    assert re.search(r"--frames FRAMES\s+\(default: 8\)", out)  # an option without help text
    assert "default: None" not in out and "default: False" not in out
    from videopanda.quickstart.run import QuickstartConfig

    quickstart = run_help(["quickstart"])["out"]
    assert re.search(rf"--num-train NUM_TRAIN\s+training clips \(default: {QuickstartConfig.num_train}\)", quickstart)
    assert "default: None" not in quickstart and "default: []" not in quickstart
    train = run_help(["train"])["out"]
    assert re.search(r"such as videopanda-7b/no-lste \(default:\s+videopanda-7b\)", train)
    assert "default: None" not in train and "default: []" not in train


def test_console_script_enters_through_the_light_module():
    """The installed `videopanda` script is `videopanda_command:main` (reinstall after pulling this change)."""
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="videopanda")
    assert script.value == "videopanda_command:main"
    assert script.load() is videopanda_command.main


def help_text(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())


def test_formatter_shows_what_is_set_and_nothing_else():
    parser = CommandParser(prog="videopanda test")
    parser.add_argument("--size", type=int, default=3, help="how big")
    plain = parser.add_argument("--plain", type=int, default=7)
    parser.add_argument("--maybe", default=None, help="unset unless given")
    parser.add_argument("--flag", action="store_true", help="switch on")
    parser.add_argument("--both", action=argparse.BooleanOptionalAction, default=False, help="on or off")
    parser.add_argument("--many", nargs="+", default=[], help="a list")
    parser.add_argument("--zero", type=int, default=0, help="zero is a value")
    parser.add_argument("--given", default="x", help="already says so (default %(default)s)")
    text = help_text(parser)
    assert "how big (default: 3)" in text
    assert "--plain PLAIN (default: 7)" in text
    assert "unset unless given --flag" in text
    assert "switch on --both" in text
    assert "on or off (default: False)" in text
    assert "a list --zero" in text
    assert "zero is a value (default: 0)" in text
    assert "already says so (default x)" in text and "(default: x)" not in text
    assert parser.parse_args([]).plain == 7
    assert plain.help is None  # formatting leaves the parser's own action as it was


def test_subcommand_parsers_show_defaults_too():
    parser = CommandParser(prog="videopanda test")
    sub = parser.add_subparsers(dest="tool", required=True).add_parser("tool")
    sub.add_argument("--workers", type=int, default=4, help="processes")
    assert type(sub) is CommandParser
    assert "processes (default: 4)" in help_text(sub)


def test_command_parsers_are_command_parsers():
    """Every `videopanda` parser shows its defaults: no module builds a plain ArgumentParser."""
    plain = [str(path.relative_to(REPO)) for path in sorted((REPO / "videopanda").rglob("*.py"))
             if "argparse.ArgumentParser(" in path.read_text(encoding="utf-8")]
    assert plain == []


def run_python(code: str) -> list[str]:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_import_videopanda_registers_the_auto_classes():
    out = run_python(
        "import videopanda\n"
        "from transformers import AutoConfig\n"
        "from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING\n"
        "from transformers.models.auto.processing_auto import PROCESSOR_MAPPING\n"
        "config = AutoConfig.for_model('videopanda')\n"
        "print(type(config).__name__, MODEL_FOR_CAUSAL_LM_MAPPING[type(config)].__name__,\n"
        "      PROCESSOR_MAPPING[type(config)].__name__)")
    assert out == ["VideoPandaConfig", "VideoPandaForCausalLM", "VideoPandaProcessor"]


def test_command_mode_imports_the_package_without_registering():
    """The command's package import leaves the model unimported and the variable unset (children register);
    importing the processor module then registers the config, the model and the processor."""
    out = run_python(
        "import os, sys, videopanda_command\n"
        "videopanda_command._import_package_in_command_mode()\n"
        "print('videopanda' in sys.modules, 'videopanda.model' in sys.modules, 'torch' in sys.modules,\n"
        f"      os.environ.get({videopanda_command.COMMAND_MODE_VARIABLE!r}))\n"
        "import videopanda.data.processor\n"
        "from transformers import AutoConfig\n"
        "from transformers.models.auto.processing_auto import PROCESSOR_MAPPING\n"
        "config = AutoConfig.for_model('videopanda')\n"
        "print(type(config).__name__, PROCESSOR_MAPPING[type(config)].__name__)")
    assert out == ["True", "False", "False", "None", "VideoPandaConfig", "VideoPandaProcessor"]


def test_the_command_runs_a_model(tmp_path, tiny_tokenizer_dir):
    """`videopanda infer` through the console script's entry (no registration at import) answers like
    `python -m videopanda infer` (registered at import)."""
    folder = tmp_path / "model"
    build_released_folder(folder, tiny_tokenizer_dir, seed=3)
    clip = write_video(tmp_path / "clip.mp4", make_frames(24, height=48, width=64), fps=8)
    args = ["infer", "--model", str(folder), "--video", str(clip), "--question", "what colour is the circle?",
            "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    answers = [subprocess.run([sys.executable, "-m", entry, *args], capture_output=True, text=True, env=env,
                              timeout=300) for entry in ("videopanda_command", "videopanda")]
    for result in answers:
        assert result.returncode == 0, result.stderr
    assert answers[0].stdout == answers[1].stdout and answers[0].stdout.strip()


def test_bench_cli_times_every_help(tmp_path, capsys):
    output = tmp_path / "bench_cli.json"
    assert videopanda_command.main(["bench", "cli", "--repeats", "2", "--warmup", "0", "--output", str(output)]) == 0
    report = json.loads(output.read_text())
    commands = [row["command"] for row in report["rows"]]
    assert commands[1:] == [" ".join(["videopanda", *line, "--help"]) for line in LINES]
    for row in report["rows"]:
        assert len(row["all_s"]) == 2 and row["min_s"] <= row["median_s"] <= row["max_s"] and row["min_s"] > 0
    table = capsys.readouterr().out
    assert "videopanda eval qa --help" in table and "slowest: videopanda" in table


def test_bench_cli_reports_a_failing_command():
    from videopanda.bench.cli_help import _time_once
    from videopanda.bench.timing import BenchError

    with pytest.raises(BenchError, match="exited 3: broken"):
        _time_once([sys.executable, "-c", "import sys; print('broken', file=sys.stderr); raise SystemExit(3)"])
