"""Entry point of the plugin (group ``arlkit``, name ``probe``)."""

from __future__ import annotations

from arlkit.hookspecs import hookimpl
from arlkit.registry import Registrar
from arlkit_probe.conditioner import ProbeConditioner


@hookimpl
def arlkit_register_conditioners(register: Registrar) -> None:
    register.add("probe", ProbeConditioner)
