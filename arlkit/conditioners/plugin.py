"""Registers arlkit's built-in conditioners through the same hooks a third-party plugin uses."""

from __future__ import annotations

from arlkit.hookspecs import hookimpl  # noqa: F401
