"""The few exception types arlkit raises for problems a user can fix.

Every error meant for a user derives from :class:`ArlkitError`. The command line
prints its message (no traceback) and exits with :attr:`ArlkitError.exit_code`.
Errors about a *name* or a *value* also derive from :class:`ValueError`, so that
pydantic reports them as validation errors with the offending recipe path.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ArlkitError",
    "ConfigError",
    "DataError",
    "DuplicateComponentError",
    "PluginError",
    "UnknownComponentError",
    "UnknownOrganError",
    "closest",
]


class ArlkitError(Exception):
    """Base class of user-facing errors: the message says where, what and what to do."""

    exit_code: int = 1


class ConfigError(ArlkitError, ValueError):
    """A bad option or argument value."""

    exit_code = 2


class UnknownComponentError(ConfigError):
    """A registry was asked for a name it does not hold."""

    def __init__(self, kind: str, name: str, known: Iterable[str], note: str = "") -> None:
        known = sorted(known)
        self.kind, self.name, self.known = kind, name, known
        hint = closest(name, known)
        msg = f"unknown {_singular(kind)} {name!r}"
        if hint:
            msg += f"; did you mean {hint!r}?"
        msg += f" (known: {', '.join(known) if known else 'none registered'})"
        if note:
            msg += f"; {note}"
        super().__init__(msg)


class DuplicateComponentError(ConfigError):
    """Two providers registered the same name in one registry."""

    def __init__(self, kind: str, name: str, first: str, second: str) -> None:
        self.kind, self.name, self.providers = kind, name, (first, second)
        super().__init__(
            f"{_singular(kind)} {name!r} is registered twice: by {first!r} and by {second!r}; "
            f"uninstall or disable one of them (ARLKIT_DISABLE_PLUGINS={second})"
        )


class UnknownOrganError(ConfigError):
    """An organ label outside the taxonomy."""

    def __init__(self, label: str, known: Iterable[str], where: str = "") -> None:
        known = list(known)
        self.label, self.known = label, known
        hint = closest(label, known)
        msg = f"{where}: " if where else ""
        msg += f"unknown organ {label!r}"
        if hint:
            msg += f"; did you mean {hint!r}?"
        msg += f" (taxonomy: {', '.join(known)})"
        super().__init__(msg)


class PluginError(ArlkitError):
    """A plugin failed to import or registered something invalid."""

    def __init__(self, plugin: str, dist: str, reason: str) -> None:
        self.plugin, self.dist, self.reason = plugin, dist, reason
        super().__init__(f"plugin {plugin!r} (distribution {dist}): {reason}")


class DataError(ArlkitError, ValueError):
    """Bad input data: a manifest row, a file, a label. The message names the place."""

    exit_code = 2


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


_SINGULAR = {
    "conditioners": "conditioner",
    "deform_ops": "deformable operator",
    "offset_nets": "offset network",
    "losses": "loss",
    "balancers": "balancer",
    "backbones": "backbone",
    "heads": "head",
    "datasets": "dataset",
    "transforms": "transform",
    "objectives": "objective",
}


def _singular(kind: str) -> str:
    return _SINGULAR.get(kind, kind.rstrip("s"))
