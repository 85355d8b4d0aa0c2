"""Plugin manager: built-in components and third-party plugins, loaded lazily and once.

Built-in components live in ordinary plugin modules (:data:`BUILTIN_PLUGINS`) that
implement the same ``arlkit_register_<kind>`` hooks a third party would. External
plugins are found through the entry-point group ``arlkit``.

Nothing is loaded when ``arlkit`` is imported: the first read of a registry (or an
explicit :func:`load`) loads everything once.

Environment:
    ARLKIT_DISABLE_PLUGINS: comma-separated plugin (entry-point) or distribution names
        not to load; ``all`` blocks every external plugin. Built-ins always load. A name
        that matches no installed plugin is a :class:`PluginWarning` (a misspelt entry
        would otherwise leave its plugin loaded unnoticed).
    ARLKIT_TRACE_PLUGINS: when set to ``1``, every registration hook call is written to
        stderr (plugin, hook, the names it added).

A plugin that fails to import, does not match the hook specifications, or registers
something invalid is reported (warning + ``arlkit plugins``) with its name and
distribution; its registrations are rolled back and the other plugins still load.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from arlkit import hookspecs
from arlkit.errors import DuplicateComponentError, PluginError, closest
from arlkit.registry import Registrar, Registries, default_registries

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginHost",
    "PluginInfo",
    "PluginWarning",
    "host",
    "load",
]

ENTRY_POINT_GROUP = "arlkit"

#: Modules that register arlkit's own components, in load order.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "arlkit.conditioners.plugin",
    "arlkit.ops.plugin",
    "arlkit.ops.plugin_triton",
    "arlkit.models.plugin",
    "arlkit.models.heads_plugin",
    "arlkit.losses.plugin",
    "arlkit.balancers.plugin",
    "arlkit.data.plugin",
    "arlkit.data.synthetic.plugin",
    "arlkit.engine.plugin",
    "arlkit.eval.plugin",
    "arlkit.organ.plugin",
)


class PluginWarning(UserWarning):
    """A plugin could not be loaded; the rest of arlkit still works."""


@dataclass
class PluginInfo:
    """What ``arlkit plugins`` shows about one plugin."""

    name: str
    dist: str
    version: str
    source: str  # "builtin", "entry point" or "direct"
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    disabled: bool = False

    @property
    def status(self) -> str:
        if self.disabled:
            return "disabled"
        return "failed" if self.error else "loaded"


def _arlkit_version() -> str:
    try:
        return md.version("arlkit")
    except md.PackageNotFoundError:
        return "0+unknown"


class PluginHost:
    """Owns a pluggy manager and fills a :class:`~arlkit.registry.Registries` from it.

    Args:
        registries: where components go.
        builtins: modules with arlkit's own hook implementations.
        entry_points: whether to discover external plugins (group ``arlkit``).
        environ: environment to read ``ARLKIT_*`` variables from.
    """

    def __init__(
        self,
        registries: Registries,
        *,
        builtins: tuple[str, ...] = BUILTIN_PLUGINS,
        entry_points: bool = True,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.registries = registries
        self.builtins = builtins
        self.entry_points = entry_points
        self.environ = os.environ if environ is None else environ
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self._loaded = False
        self._lock = threading.RLock()
        # registration hooks are called one implementation at a time (to attribute and roll
        # back what each plugin adds), which pluggy's own tracing does not see
        self.trace = self.environ.get("ARLKIT_TRACE_PLUGINS") == "1"

    @property
    def failures(self) -> list[PluginInfo]:
        return [p for p in self.plugins.values() if p.error]

    def disabled_names(self) -> set[str]:
        raw = self.environ.get("ARLKIT_DISABLE_PLUGINS", "")
        return {part.strip() for part in raw.split(",") if part.strip()}

    def load(self) -> None:
        """Load built-ins and external plugins; does nothing after the first call."""
        with self._lock:
            if self._loaded:
                return
            self._loaded = True  # set first: registries read during loading must not recurse
            version = _arlkit_version()
            for module_name in self.builtins:
                module = importlib.import_module(module_name)  # a failing built-in is a bug: raise
                self._add(module, module_name, "arlkit", version, "builtin")
            for plugin in self.plugins.values():
                if plugin.error and plugin.source == "builtin":
                    raise RuntimeError(f"built-in plugin failed: {plugin.error}")
            if self.entry_points:
                self._load_entry_points()
            for plugin in self.failures:
                warnings.warn(
                    f"arlkit: {plugin.error} (disable it with ARLKIT_DISABLE_PLUGINS={plugin.name})",
                    PluginWarning,
                    stacklevel=3,
                )

    def _load_entry_points(self) -> None:
        disabled = self.disabled_names()
        installed: set[str] = set()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "?"
            installed |= {ep.name, dist}
            if "all" in disabled or ep.name in disabled or dist in disabled:
                self.plugins[ep.name] = PluginInfo(
                    ep.name, dist, version, "entry point", disabled=True
                )
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # any import-time failure of third-party code
                self._fail(
                    PluginInfo(ep.name, dist, version, "entry point"),
                    f"failed to import {ep.value!r}: {type(exc).__name__}: {exc}",
                )
                continue
            self._add(obj, ep.name, dist, version, "entry point")
        self._warn_unknown_disabled(disabled - {"all"} - installed, installed)

    def _warn_unknown_disabled(self, unknown: set[str], installed: set[str]) -> None:
        """A misspelt ``ARLKIT_DISABLE_PLUGINS`` entry would leave its plugin loaded unnoticed."""
        for name in sorted(unknown):
            if name in self.builtins:
                why = "it is built in, and built-ins always load"
            else:
                hint = closest(name, sorted(installed))
                why = (f"no installed plugin or distribution has that name"
                       f"{f' (did you mean {hint!r}?)' if hint else ''}; "
                       "`arlkit plugins` lists them")
            warnings.warn(f"arlkit: ARLKIT_DISABLE_PLUGINS names {name!r}, but {why}",
                          PluginWarning, stacklevel=4)

    def register(self, plugin: Any, name: str, dist: str = "(direct)") -> PluginInfo:
        """Register a plugin object or module directly (tests, notebooks).

        Loads the default plugins first, so that duplicate names are detected.
        """
        self.load()
        with self._lock:
            return self._add(plugin, name, dist, "", "direct")

    def _add(self, obj: Any, name: str, dist: str, version: str, source: str) -> PluginInfo:
        info = PluginInfo(name, dist, version, source)
        if name in self.plugins and not self.plugins[name].disabled:
            return self._fail(info, f"a plugin named {name!r} is already loaded")
        try:
            self.pm.register(obj, name=name)
        except (pluggy.PluginValidationError, ValueError) as exc:
            return self._fail(info, f"does not match arlkit's hook specifications: {exc}")
        info.hooks = sorted(
            hook
            for hook, caller in vars(self.pm.hook).items()
            if any(i.plugin_name == name for i in caller.get_hookimpls())
        )
        unmarked = sorted(
            attr for attr in dir(obj)
            if attr.startswith("arlkit_") and callable(getattr(obj, attr, None))
            and not hasattr(getattr(obj, attr), f"{hookspecs.PROJECT}_impl")
        )  # fmt: skip
        if unmarked:
            return self._fail(
                info,
                f"{', '.join(unmarked)} not marked as hook implementation(s), so arlkit would "
                "never call them; decorate each with @hookimpl (from arlkit.hookspecs import "
                "hookimpl)",
            )
        unknown = [hook for hook in info.hooks if getattr(self.pm.hook, hook).spec is None]
        if unknown:
            known = sorted(h for h, c in vars(self.pm.hook).items() if c.spec is not None)
            hints = [f"{h} (did you mean {closest(h, known)}?)" if closest(h, known) else h
                     for h in unknown]
            return self._fail(info, f"implements unknown hook(s): {', '.join(hints)}")
        self.plugins[name] = info
        self._run_registrations(info)
        return info

    def _run_registrations(self, info: PluginInfo) -> None:
        added: list[tuple[str, str]] = []
        for kind in self.registries:
            caller = getattr(self.pm.hook, f"arlkit_register_{kind}")
            for impl in caller.get_hookimpls():
                if impl.plugin_name != info.name:
                    continue
                registry = self.registries[kind]
                registrar = Registrar(registry, provider=info.name)
                try:
                    impl.function(*[{"register": registrar}[arg] for arg in impl.argnames])
                except DuplicateComponentError as exc:
                    # between two plugins neither is preferred: the name stays unusable until
                    # one is disabled; a plugin reusing a built-in name fails and the
                    # built-in stays (one bad plugin must not break the shipped recipes)
                    if exc.providers[0] not in self.builtins:
                        registry.mark_conflict(exc.name, *exc.providers)
                    added += [(kind, n) for n in registrar.added]
                    self._rollback(added)
                    self._fail(info, str(exc))
                    return
                except Exception as exc:  # third-party registration code
                    added += [(kind, n) for n in registrar.added]
                    self._rollback(added)
                    self._fail(
                        info, f"arlkit_register_{kind} raised {type(exc).__name__}: {exc}"
                    )
                    return
                added += [(kind, n) for n in registrar.added]
                if self.trace:
                    sys.stderr.write(
                        f"arlkit plugins: {info.name}.arlkit_register_{kind}() added "
                        f"{', '.join(registrar.added) or 'nothing'}\n"
                    )
                if registrar.added:
                    info.registered.setdefault(kind, []).extend(registrar.added)

    def _rollback(self, added: list[tuple[str, str]]) -> None:
        for kind, name in added:
            self.registries[kind].remove(name)

    def _fail(self, info: PluginInfo, reason: str) -> PluginInfo:
        info.error = str(PluginError(info.name, info.dist, reason))
        info.registered = {}
        self.plugins[info.name] = info
        if self.pm.get_plugin(info.name) is not None:
            self.pm.unregister(name=info.name)
        for kind in self.registries:
            self.registries[kind].notes.append(
                f"plugin {info.name!r} failed to load (see 'arlkit plugins')"
            )
        return info


_HOST: PluginHost | None = None
_HOST_LOCK = threading.Lock()


def host() -> PluginHost:
    """The process-wide plugin host (created on first use, nothing loaded yet)."""
    global _HOST
    with _HOST_LOCK:
        if _HOST is None:
            _HOST = PluginHost(default_registries)
        return _HOST


def load() -> PluginHost:
    """Load all plugins into the default registries (once) and return the host."""
    h = host()
    h.load()
    return h
