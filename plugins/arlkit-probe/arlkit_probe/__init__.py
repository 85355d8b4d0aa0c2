"""arlkit plugin: probe-type and imaging-depth conditioning."""

from arlkit_probe.conditioner import PROBE_TYPES, ProbeConditioner

__all__ = ["PROBE_TYPES", "ProbeConditioner"]
