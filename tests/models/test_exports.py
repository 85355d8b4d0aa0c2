"""``arlkit.models`` re-exports its main classes, each imported from its submodule on use."""

from __future__ import annotations

import importlib
import json

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


def test_an_export_whose_weights_do_not_fit_its_metadata_is_named(tmp_path, heart_liver_export):
    from safetensors.torch import save_file

    from arlkit.engine import export
    from arlkit.errors import ArlkitError

    path, _ = heart_liver_export
    assert export.load_backbone(path).taxonomy.organs == ("heart", "liver")
    # the metadata edited to name a third organ: the conditioner's table no longer fits
    tensors, recorded, meta = export.read_export(path)
    edited = str(tmp_path / "edited.safetensors")
    save_file(tensors, edited, metadata={
        **meta, "config": json.dumps({**recorded, "taxonomy": ["heart", "liver", "lung"]})})
    with pytest.raises(ArlkitError, match=r"edited.safetensors: its weights do not fit the "
                                          r"architecture its metadata records \(.*size mismatch"):
        export.load_backbone(edited)


def test_an_export_killed_while_writing_leaves_the_previous_file(heart_liver_export, tmp_path,
                                                                 monkeypatch):
    """The file is written beside its destination and renamed over it: a run killed during
    the write leaves the earlier export whole (and no stray temporary file)."""
    import os

    import torch

    from arlkit.engine import export

    _, config = heart_liver_export
    model = export.build_backbone(config)
    path = str(tmp_path / "sub" / "backbone.safetensors")  # the folder is made, as before
    export.export_backbone(model, config, path)
    before = open(path, "rb").read()

    def killed(fd):
        raise KeyboardInterrupt  # the process dies before the data is on disk

    monkeypatch.setattr(os, "fsync", killed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        export.export_backbone(model, config, path)
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path / "sub") == ["backbone.safetensors"]
    export.read_export(path)  # still a complete export
