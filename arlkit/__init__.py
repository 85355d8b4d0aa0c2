"""arlkit: anatomy-aware self-supervised pretraining for medical ultrasound.

Importing ``arlkit`` is cheap and loads no plugin: registries fill themselves on
first use (see :mod:`arlkit.plugins`).
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
