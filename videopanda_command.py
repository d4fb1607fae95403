"""Entry module of the `videopanda` console script.

`import videopanda` registers the model and the processor with transformers' Auto classes, which needs
torch and transformers (seconds). The command only needs them once a subcommand runs a model, and the
modules that define those classes register themselves when imported, so the command imports the package in
"command mode": `VIDEOPANDA_COMMAND_MODE` is set for the package import only (and removed right after, so
child processes register as usual), and `videopanda --help` and every `videopanda X --help` stay fast.
"""
from __future__ import annotations

import os
import sys

COMMAND_MODE_VARIABLE = "VIDEOPANDA_COMMAND_MODE"


def _import_package_in_command_mode() -> None:
    os.environ[COMMAND_MODE_VARIABLE] = "1"
    try:
        import videopanda  # noqa: F401
    finally:
        os.environ.pop(COMMAND_MODE_VARIABLE, None)


def main(argv: list[str] | None = None) -> int:
    """Run `videopanda ARGV` (default: sys.argv[1:]) -> exit status."""
    _import_package_in_command_mode()
    from videopanda.cli import main as run_command

    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main())
