"""Registers the ``organ_classifier`` auxiliary objective (hook ``arlkit_register_objectives``)."""

from __future__ import annotations

from typing import Any

from arlkit.hookspecs import hookimpl


@hookimpl
def arlkit_register_objectives(register: Any) -> None:
    from arlkit.organ.objective import OrganClassifierObjective

    register.add("organ_classifier", OrganClassifierObjective)
