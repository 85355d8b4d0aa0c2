"""``arlkit.models`` re-exports its main classes, each imported from its submodule on use."""

from __future__ import annotations

import importlib

import pytest

import arlkit.models as models


@pytest.mark.parametrize("name", models.__all__)
def test_every_export_is_its_submodule_s_object(name):
    module = importlib.import_module(f"arlkit.models.{models._EXPORTS[name]}")
    assert getattr(models, name) is getattr(module, name)
    assert name in dir(models)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'AVit'"):
        _ = models.AVit
    with pytest.raises(ImportError):
        from arlkit.models import AVit  # noqa: F401
