"""The argument parser every `videopanda` command uses: its help shows each option's default. It sits below
every command module (it imports only argparse), so `data/` and the other layers can build their command lines
without importing the `videopanda` command itself."""
from __future__ import annotations

import argparse
import copy


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: X)" to an option's help, also to an option without help text, unless there is no
    default to show: None, an empty list, or False for an on/off flag (`--flag` alone)."""

    def add_argument(self, action: argparse.Action) -> None:
        if not action.help and _shows_default(action):
            action = copy.copy(action)  # the parser's own action keeps its help
            action.help = "(default: %(default)s)"
        super().add_argument(action)

    def _get_help_string(self, action: argparse.Action) -> str:
        return super()._get_help_string(action) if _shows_default(action) else action.help or ""


def _shows_default(action: argparse.Action) -> bool:
    default = action.default
    if default is None or default is argparse.SUPPRESS or (isinstance(default, (list, tuple)) and not default):
        return False
    if default is False and not isinstance(action, argparse.BooleanOptionalAction):
        return False
    return bool(action.option_strings) or action.nargs in (argparse.OPTIONAL, argparse.ZERO_OR_MORE)


class CommandParser(argparse.ArgumentParser):
    """The parser of every `videopanda` command: `DefaultsHelpFormatter` unless told otherwise, and the same
    for its subcommands' parsers (`add_subparsers` makes them of the parser's own class)."""

    def __init__(self, *args, formatter_class: type[argparse.HelpFormatter] = DefaultsHelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)
