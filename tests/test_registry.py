from __future__ import annotations

from typing import Literal

import pydantic
import pytest

from arlkit.errors import DuplicateComponentError, UnknownComponentError
from arlkit.registry import KINDS, Registries, Registry


class Widget:
    """A test component."""

    def __init__(self, dim: int, size: int = 3, mode: Literal["a", "b"] = "a", scale=1.0):
        self.dim, self.size, self.mode, self.scale = dim, size, mode, scale


def make_thing(depth: int, name: str = "x") -> dict:
    """Build a thing."""
    return {"depth": depth, "name": name}


def test_add_get_names_and_build():
    reg: Registry[Widget] = Registry("conditioners", injected=("dim",))
    reg.add("widget", Widget)
    reg.add("gadget", Widget, provider="someplugin")
    assert reg.names() == ["gadget", "widget"]
    assert reg.names("w*") == ["widget"]
    entry = reg.get("gadget")
    assert entry.provider == "someplugin"
    assert entry.summary == "A test component."
    built = reg.build("widget", {"size": 5}, dim=8)
    assert (built.dim, built.size, built.mode, built.scale) == (8, 5, "a", 1.0)
    assert "widget" in reg and len(reg) == 2


def test_params_model_from_signature_excludes_injected_and_validates_types():
    reg = Registry("conditioners", injected=("dim",))
    reg.add("widget", Widget)
    model = reg.get("widget").params
    assert set(model.model_fields) == {"size", "mode", "scale"}
    assert model.model_validate({}).model_dump() == {"size": 3, "mode": "a", "scale": 1.0}
    with pytest.raises(pydantic.ValidationError) as info:
        model.model_validate({"size": "big", "mode": "c", "sise": 1})
    kinds = sorted(e["type"] for e in info.value.errors())
    assert kinds == ["extra_forbidden", "int_parsing", "literal_error"]


def test_required_parameters_of_functions():
    reg = Registry("losses")
    reg.add("thing", make_thing)
    with pytest.raises(pydantic.ValidationError):
        reg.build("thing", {})
    assert reg.build("thing", {"depth": 2}) == {"depth": 2, "name": "x"}


def test_unknown_name_is_value_error_with_known_names_and_suggestion():
    reg = Registry("losses")
    reg.add("speckle_gan", make_thing)
    reg.add("mim", make_thing)
    with pytest.raises(ValueError) as info:
        reg.get("speckle_gn")
    assert isinstance(info.value, UnknownComponentError)
    assert str(info.value) == (
        "unknown loss 'speckle_gn'; did you mean 'speckle_gan'? (known: mim, speckle_gan)"
    )
    with pytest.raises(UnknownComponentError, match=r"unknown loss 'zzz' \(known: mim"):
        reg.get("zzz")


def test_duplicate_names_name_both_providers():
    reg = Registry("losses")
    reg.add("mim", make_thing, provider="arlkit")
    with pytest.raises(DuplicateComponentError) as info:
        reg.add("mim", make_thing, provider="other-plugin")
    assert "'arlkit'" in str(info.value) and "'other-plugin'" in str(info.value)
    reg.mark_conflict("mim", "arlkit", "other-plugin")
    with pytest.raises(DuplicateComponentError):
        reg.get("mim")


def test_bad_names_and_factories_are_rejected():
    reg = Registry("losses")
    with pytest.raises(TypeError):
        reg.add("not a name", make_thing)
    with pytest.raises(TypeError):
        reg.add("ok", 42)  # type: ignore[arg-type]


def test_registries_have_every_kind_and_lazy_loader_runs_on_read():
    calls = []
    regs = Registries(loader=lambda: calls.append(1))
    assert set(regs) == set(KINDS)
    assert {"conditioners", "deform_ops", "losses", "balancers"} <= set(regs)
    assert calls == []
    regs.losses.names()
    assert calls == [1]
    with pytest.raises(UnknownComponentError, match="did you mean 'losses'"):
        regs["loses"]


def test_summary_is_the_whole_first_paragraph_of_the_docstring():
    def wrapped(x: int = 1) -> int:
        """A summary that wraps
        onto a second line [with brackets].

        Details that are not part of it.
        """
        return x

    reg: Registry = Registry("losses")
    reg.add("wrapped", wrapped)
    assert reg.get("wrapped").summary == "A summary that wraps onto a second line [with brackets]."


def test_list_shows_bracketed_text_literally(capsys, monkeypatch):
    from arlkit.cli import main

    monkeypatch.setenv("COLUMNS", "400")  # one table row per line

    assert main(["list", "objectives", "--pattern", "speckle_gan"]) == 0
    out = "".join(capsys.readouterr().out.split()).replace("│", "")
    assert "-E[logD(x̂)]" in out  # rich markup would have eaten the bracketed part
