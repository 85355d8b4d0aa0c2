"""The ``arlkit`` command line.

Each command lives in a module of this package that defines
``register(subparsers) -> None``; a command's handler takes the parsed
``argparse.Namespace`` and returns the exit code. User errors are
:class:`~arlkit.errors.ArlkitError` s: printed without a traceback, with their exit
code (2 for bad recipes and arguments).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from arlkit import __version__

__all__ = ["COMMAND_MODULES", "build_parser", "main"]

#: Modules that add sub-commands, in the order they appear in ``arlkit --help``.
COMMAND_MODULES: tuple[str, ...] = (
    "arlkit.cli.core",
    "arlkit.cli.data",
    "arlkit.cli.eval",
    "arlkit.cli.organ",
    "arlkit.cli.viz",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's own usage errors: exit code 2
        self.print_usage(sys.stderr)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="arlkit",
        description="Anatomy-aware self-supervised pretraining for medical ultrasound.",
    )
    parser.add_argument("--version", action="version", version=f"arlkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (also used by the console script)."""
    from arlkit.cli.output import print_error

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        # argparse stops filling a ``nargs="*"`` positional at the first option, so
        # ``arlkit run R --dry-run a.b=1`` would leave ``a.b=1`` unparsed: take such
        # KEY=VALUE words as overrides; anything else is still a usage error.
        if isinstance(getattr(args, "overrides", None), list) and all(
            "=" in word and not word.startswith("-") for word in extra
        ):
            args.overrides.extend(extra)
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    from arlkit.errors import ArlkitError

    try:
        return int(handler(args) or 0)
    except ArlkitError as exc:
        print_error(str(exc))
        return exc.exit_code
    except BrokenPipeError:
        return 0
    except OSError as exc:  # a path the user gave cannot be read or written
        where = f"{exc.filename}: " if exc.filename else ""
        print_error(f"{where}{exc.strerror or exc}; check the path and its permissions")
        return 1
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130
