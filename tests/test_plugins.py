from __future__ import annotations

import subprocess
import sys
import types

import pytest

from arlkit.hookspecs import hookimpl
from arlkit.plugins import BUILTIN_PLUGINS, PluginHost, PluginWarning
from arlkit.registry import Registries


def make_plugin(name: str, **components) -> types.SimpleNamespace:
    """A plugin object registering ``components`` as losses."""

    @hookimpl
    def arlkit_register_losses(register):
        for comp_name, factory in components.items():
            register.add(comp_name, factory)

    return types.SimpleNamespace(arlkit_register_losses=arlkit_register_losses)


def fresh_host(**kwargs) -> tuple[PluginHost, Registries]:
    regs = Registries()
    return PluginHost(regs, entry_points=False, **kwargs), regs


def test_builtins_register_through_the_hooks():
    host, regs = fresh_host()
    host.load()
    assert [p.name for p in host.plugins.values()] == list(BUILTIN_PLUGINS)
    assert all(p.source == "builtin" and p.status == "loaded" for p in host.plugins.values())
    for plugin in host.plugins.values():
        for kind, names in plugin.registered.items():
            for name in names:
                assert regs[kind].get(name).provider == plugin.name


def test_plugin_defined_in_test_registers_with_provider():
    host, regs = fresh_host(builtins=())

    def my_loss(scale: float = 1.0) -> float:
        return scale

    info = host.register(make_plugin("mine", my_loss=my_loss), name="mine")
    assert info.status == "loaded"
    assert info.hooks == ["arlkit_register_losses"]
    assert info.registered == {"losses": ["my_loss"]}
    assert regs.losses.get("my_loss").provider == "mine"
    assert regs.losses.build("my_loss", {"scale": 2}) == 2.0


def test_duplicate_between_plugins_names_both_and_other_plugins_still_load():
    host, regs = fresh_host(builtins=())
    host.register(make_plugin("a", dup=lambda: 1, only_a=lambda: 2), name="a")
    info_b = host.register(make_plugin("b", also_b=lambda: 3, dup=lambda: 4), name="b")
    info_c = host.register(make_plugin("c", only_c=lambda: 5), name="c")
    assert info_b.status == "failed"
    assert "'a'" in info_b.error and "'b'" in info_b.error and "dup" in info_b.error
    assert "also_b" not in regs.losses  # a failed plugin's registrations are rolled back
    assert info_c.status == "loaded" and "only_c" in regs.losses
    with pytest.raises(ValueError, match="registered twice: by 'a' and by 'b'"):
        regs.losses.get("dup")


def test_plugin_with_unknown_hook_is_rejected_with_its_name():
    host, regs = fresh_host(builtins=())

    @hookimpl
    def arlkit_register_lossez(register):  # typo in the hook name
        pass

    bad = types.SimpleNamespace(arlkit_register_lossez=arlkit_register_lossez)
    info = host.register(bad, name="typo-plugin", dist="typo-dist")
    assert info.status == "failed"
    assert info.error.startswith("plugin 'typo-plugin' (distribution typo-dist)")
    assert "arlkit_register_lossez" in info.error


def test_plugin_registering_invalid_component_fails_cleanly():
    host, regs = fresh_host(builtins=())
    info = host.register(make_plugin("bad", **{"no spaces allowed": lambda: 1}), name="bad")
    assert info.status == "failed" and "arlkit_register_losses raised TypeError" in info.error
    with pytest.raises(ValueError, match="plugin 'bad' failed to load"):
        regs.losses.get("anything")


def test_load_is_idempotent():
    host, regs = fresh_host()
    host.load()
    before = {k: regs[k].names() for k in regs}
    host.load()
    assert {k: regs[k].names() for k in regs} == before


def test_disable_environment_variable_parsing():
    host = PluginHost(Registries(), environ={"ARLKIT_DISABLE_PLUGINS": "a, b,,c"})
    assert host.disabled_names() == {"a", "b", "c"}


def test_a_disable_entry_that_names_no_plugin_is_a_warning():
    # the probe plugin (plugins/arlkit-probe) is installed beside arlkit
    host = PluginHost(Registries(), builtins=(),
                      environ={"ARLKIT_DISABLE_PLUGINS": "prob,arlkit.losses.plugin,probe"})
    host.builtins = ("arlkit.losses.plugin",)  # named, so that disabling it is explained
    with pytest.warns(PluginWarning) as caught:
        host._load_entry_points()
    messages = sorted(str(w.message) for w in caught)
    assert messages == [
        "arlkit: ARLKIT_DISABLE_PLUGINS names 'arlkit.losses.plugin', but it is built in, "
        "and built-ins always load",
        "arlkit: ARLKIT_DISABLE_PLUGINS names 'prob', but no installed plugin or distribution "
        "has that name (did you mean 'probe'?); `arlkit plugins` lists them",
    ]
    assert host.plugins["probe"].disabled  # the correct name still works


def test_import_arlkit_loads_no_plugin():
    code = (
        "import sys, arlkit, arlkit.registry, arlkit.recipe\n"
        "assert 'arlkit.plugins' not in sys.modules, 'plugins module imported'\n"
        "assert not any(m.startswith('arlkit_probe') for m in sys.modules)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_failures_warn_once_on_load():
    host, regs = fresh_host(builtins=())
    host._add(make_plugin("x", **{"bad name": lambda: 1}), "x", "xdist", "1.0", "entry point")
    host._loaded = False
    with pytest.warns(PluginWarning, match="plugin 'x' \\(distribution xdist\\)"):
        host.load()


def test_hook_function_without_hookimpl_marker_fails_the_plugin_with_the_fix():
    host, regs = fresh_host(builtins=())

    def arlkit_register_losses(register):  # forgot @hookimpl: pluggy would ignore it
        register.add("forgotten", lambda: 0)

    info = host.register(types.SimpleNamespace(arlkit_register_losses=arlkit_register_losses),
                         name="unmarked")
    assert info.status == "failed"
    assert "arlkit_register_losses not marked as hook implementation" in info.error
    assert "@hookimpl" in info.error
    assert "forgotten" not in regs.losses


def test_trace_writes_each_registration_call(capsys):
    host, _ = fresh_host(builtins=(), environ={"ARLKIT_TRACE_PLUGINS": "1"})
    host.register(make_plugin("traced", a=lambda: 1, b=lambda: 2), name="traced")
    assert "arlkit plugins: traced.arlkit_register_losses() added a, b" in capsys.readouterr().err
    quiet, _ = fresh_host(builtins=(), environ={})
    quiet.register(make_plugin("quiet", c=lambda: 1), name="quiet")
    assert capsys.readouterr().err == ""


def test_plugin_reusing_a_built_in_name_fails_and_the_built_in_stays_usable():
    host, regs = fresh_host()
    host.load()
    builtin = regs.losses.get("mim")
    info = host.register(make_plugin("shadow", mim=lambda: 0, extra=lambda: 1), name="shadow")
    assert info.status == "failed" and "'mim' is registered twice" in info.error
    assert regs.losses.get("mim") is builtin and "extra" not in regs.losses
