"""Console output: rich on a terminal, plain text otherwise (logs, pipes, CI)."""

from __future__ import annotations

import sys
from functools import cache

from rich.console import Console

__all__ = ["console", "err_console", "print_error"]


@cache
def console() -> Console:
    return Console(highlight=False, soft_wrap=True)


@cache
def err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def print_error(message: str) -> None:
    """Print a user error on stderr: ``error: ...`` (red on a terminal)."""
    con = err_console()
    if con.is_terminal:
        con.print(f"[bold red]error:[/] {message}", markup=True, highlight=False)
    else:
        sys.stderr.write(f"error: {message}\n")
