"""The ``segkit`` command line: argument parsing only.

Each subcommand parses its arguments and hands them to a function in the library. A
``SegkitError`` raised anywhere below is printed as one line on stderr (no traceback) and the
process exits with status 2; other exceptions are bugs and keep their traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from segkit import __version__
from segkit.errors import SegkitError

# name -> (help, function that adds the subcommand's arguments, function that runs it).
# Later subcommands (train, evaluate, predict, ...) register themselves here.
Command = tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]
COMMANDS: dict[str, Command] = {}


def _add_encoders_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--classifiers", action="store_true", help="list classifier names instead")


def _run_encoders(args: argparse.Namespace) -> int:
    from segkit.encoders import list_classifiers, list_encoders

    for name in list_classifiers() if args.classifiers else list_encoders():
        print(name)
    return 0


COMMANDS["list"] = ("list the encoder (or classifier) names segkit knows", _add_encoders_args, _run_encoders)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="segkit",
        description="Semantic segmentation with classic backbones: train, evaluate, predict.",
    )
    parser.add_argument("--version", action="version", version=f"segkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_args, _) in COMMANDS.items():
        add_args(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command][2](args)
    except SegkitError as err:
        print(f"segkit: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
