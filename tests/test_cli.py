import subprocess
import sys

from videopanda.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_unknown_command_fails_with_usage(capsys):
    assert main(["no-such-command"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_console_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "videopanda", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "usage: videopanda" in result.stdout
