"""Typed registries of named component factories.

A registry maps a plain string name to a *factory*: a class or function whose typed
signature defines the component's parameters. Recipes name a component and give its
parameters; the registry derives a pydantic model from the signature to validate
them, so a plugin's component is validated exactly like a built-in one.

Some arguments of a factory are supplied by whoever builds the component (the
model width for a conditioner, the taxonomy, ...): each registry lists these
*injected* names, and they are left out of the parameters model.

Registries are filled by plugins (:mod:`arlkit.plugins`); the module-level
registries below load the plugins lazily on first read.
"""

from __future__ import annotations

import fnmatch
import inspect
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pydantic

from arlkit.errors import DuplicateComponentError, UnknownComponentError

__all__ = [
    "KINDS",
    "Entry",
    "Registrar",
    "Registries",
    "Registry",
    "default_registries",
    "params_model_from_signature",
]

T = TypeVar("T")

#: Every registry kind, with the arguments its builder injects into factories.
KINDS: dict[str, tuple[str, ...]] = {
    "conditioners": ("dim", "taxonomy"),
    "deform_ops": (),
    "offset_nets": ("dim", "num_points"),
    "losses": (),
    "balancers": (),
    "backbones": ("taxonomy", "conditioner", "deform_op", "offset_net"),
    "heads": ("in_dim",),
    "datasets": ("taxonomy",),
    "transforms": ("taxonomy",),
    "objectives": ("context",),
}


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered component.

    Attributes:
        name: the name recipes use.
        factory: builds the component; its typed signature defines the parameters.
        provider: the plugin that registered it (for built-ins, the module of their plugin,
            e.g. ``arlkit.conditioners.plugin``).
        params: pydantic model of the recipe-settable parameters.
        summary: first paragraph of the factory's docstring, on one line.
    """

    name: str
    factory: Callable[..., T]
    provider: str
    params: type[pydantic.BaseModel]
    summary: str = ""

    def validate_params(self, params: dict[str, Any] | None) -> dict[str, Any]:
        """Validated parameters with defaults filled in (raises pydantic.ValidationError)."""
        model = self.params.model_validate(params or {})
        return model.model_dump(mode="python")

    def build(self, params: dict[str, Any] | None = None, **injected: Any) -> T:
        """Validate ``params`` and call the factory with them and the injected arguments."""
        return self.factory(**injected, **self.validate_params(params))


def params_model_from_signature(
    name: str, factory: Callable[..., Any], injected: tuple[str, ...] = ()
) -> type[pydantic.BaseModel]:
    """A pydantic model (``extra="forbid"``) of the factory's keyword parameters.

    Parameters without annotation accept anything; ``*args``/``**kwargs`` and the
    injected names are not part of the model.
    """
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable forward references: fall back to Any
        hints = {}
    fields: dict[str, Any] = {}
    for pname, param in inspect.signature(factory).parameters.items():
        if pname in injected or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if pname == "self":
            continue
        annotation = hints.get(pname, Any)
        default = ... if param.default is param.empty else param.default
        fields[pname] = (annotation, default)
    model_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_"))
    return pydantic.create_model(
        f"{model_name}Params",
        __config__=pydantic.ConfigDict(extra="forbid", arbitrary_types_allowed=True),
        **fields,
    )


class Registry(Generic[T]):
    """Name → factory map for one kind of component.

    Args:
        kind: registry name, e.g. ``"losses"``.
        injected: factory arguments supplied by the builder, not by recipes.
        loader: called before every read, to fill the registry lazily (plugins).
    """

    def __init__(
        self,
        kind: str,
        injected: tuple[str, ...] = (),
        loader: Callable[[], None] | None = None,
    ) -> None:
        self.kind = kind
        self.injected = injected
        self._entries: dict[str, Entry[T]] = {}
        self._conflicts: dict[str, tuple[str, str]] = {}
        self._loader = loader
        self.notes: list[str] = []  # e.g. plugins that failed to load, shown on unknown names

    def add(
        self, name: str, factory: Callable[..., T], *, provider: str = "arlkit"
    ) -> Callable[..., T]:
        """Register ``factory`` under ``name``; returns the factory (usable as a decorator body).

        Raises:
            DuplicateComponentError: ``name`` is taken; the message names both providers.
            TypeError: ``name`` is not an identifier-like string or ``factory`` not callable.
        """
        if not isinstance(name, str) or not name or not name.replace("-", "_").isidentifier():
            raise TypeError(f"{self.kind}: component names are identifiers, got {name!r}")
        if not callable(factory):
            raise TypeError(f"{self.kind}: factory for {name!r} is not callable: {factory!r}")
        if name in self._entries:
            raise DuplicateComponentError(self.kind, name, self._entries[name].provider, provider)
        params = params_model_from_signature(name, factory, self.injected)
        doc = inspect.getdoc(factory) or ""
        summary = " ".join(doc.split("\n\n", 1)[0].split())  # the first paragraph
        self._entries[name] = Entry(name, factory, provider, params, summary)
        return factory

    def mark_conflict(self, name: str, first: str, second: str) -> None:
        """Make ``name`` unusable: two providers claim it. Reading it raises an error naming both."""
        self._conflicts[name] = (first, second)

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)
        self._conflicts.pop(name, None)

    def _load(self) -> None:
        if self._loader is not None:
            self._loader()

    def get(self, name: str) -> Entry[T]:
        """The entry for ``name``.

        Raises:
            UnknownComponentError: (a ``ValueError``) listing the known names and the closest.
            DuplicateComponentError: two plugins registered ``name``.
        """
        self._load()
        if name in self._conflicts:
            raise DuplicateComponentError(self.kind, name, *self._conflicts[name])
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(
                self.kind, name, self._entries, "; ".join(self.notes)
            ) from None

    def build(self, name: str, params: dict[str, Any] | None = None, **injected: Any) -> T:
        """Shortcut for ``get(name).build(params, **injected)``."""
        return self.get(name).build(params, **injected)

    def names(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style wildcard."""
        self._load()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def entries(self) -> list[Entry[T]]:
        self._load()
        return [self._entries[n] for n in sorted(self._entries)]

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._load()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"


@dataclass
class Registries:
    """One :class:`Registry` per kind in :data:`KINDS`; attribute access by kind."""

    loader: Callable[[], None] | None = None
    by_kind: dict[str, Registry[Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind, injected in KINDS.items():
            self.by_kind.setdefault(kind, Registry(kind, injected, self.loader))

    def __getitem__(self, kind: str) -> Registry[Any]:
        try:
            return self.by_kind[kind]
        except KeyError:
            raise UnknownComponentError("registry kinds", kind, self.by_kind) from None

    def __getattr__(self, kind: str) -> Registry[Any]:
        by_kind = self.__dict__.get("by_kind", {})
        if kind in by_kind:
            return by_kind[kind]
        raise AttributeError(kind)

    def __iter__(self) -> Iterator[str]:
        return iter(self.by_kind)


class Registrar:
    """What a registration hook receives: ``register.add(name, factory)``.

    It records which plugin registered each component, so errors and
    ``arlkit list`` can name the provider.
    """

    def __init__(self, registry: Registry[Any], provider: str) -> None:
        self._registry = registry
        self.provider = provider
        self.kind = registry.kind
        self.added: list[str] = []

    def add(self, name: str, factory: Callable[..., Any]) -> Callable[..., Any]:
        """Register ``factory`` as ``name`` in this hook's registry."""
        self._registry.add(name, factory, provider=self.provider)
        self.added.append(name)
        return factory


def _load_default_plugins() -> None:
    from arlkit import plugins

    plugins.load()


#: The process-wide registries, filled by :func:`arlkit.plugins.load` on first read.
default_registries = Registries(loader=_load_default_plugins)
