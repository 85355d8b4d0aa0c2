"""Loading recipes: YAML (``safe_load`` only) → overrides → validated :class:`Recipe`.

All problems of a recipe are collected and raised together as one
:class:`RecipeError`, each with its YAML path, what is wrong and a suggestion::

    recipes/paper.yaml: objectives[1].name: unknown objective 'speckle_gn'; did you mean 'speckle_gan'?
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import pydantic
import yaml
from pydantic import BaseModel

from arlkit.errors import ArlkitError, UnknownComponentError, closest
from arlkit.recipe.schema import ParamsError, Recipe
from arlkit.registry import Registries

__all__ = [
    "RecipeError",
    "RecipeIssue",
    "apply_overrides",
    "dump_recipe",
    "load_recipe",
    "parse_override",
    "validate_recipe",
]


@dataclass(frozen=True)
class RecipeIssue:
    """One problem: the YAML path (``objectives[1].name``) and what is wrong."""

    path: str
    message: str


class RecipeError(ArlkitError, ValueError):
    """A recipe failed to load or validate; lists every problem found."""

    exit_code = 2

    def __init__(self, source: str, issues: Sequence[RecipeIssue]) -> None:
        self.source, self.issues = source, list(issues)
        lines = [f"{source}: {i.path}: {i.message}" if i.path else f"{source}: {i.message}"
                 for i in self.issues]
        n = len(self.issues)
        header = f"recipe {source} is invalid ({n} problem{'s' if n != 1 else ''}):"
        super().__init__("\n".join([header, *("  " + line for line in lines)]))


# --------------------------------------------------------------------------- paths


def format_path(loc: Iterable[str | int]) -> str:
    """``("objectives", 1, "name")`` → ``objectives[1].name``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_EXPONENT_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")
_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def _split_key(key: str) -> list[str | int]:
    tokens: list[str | int] = []
    pos = 0
    for match in _TOKEN.finditer(key):
        between = key[pos : match.start()]
        if between not in ("", "."):
            raise ValueError(f"cannot parse key {key!r}")
        name, index = match.groups()
        tokens.append(int(index) if index is not None else (int(name) if name.isdigit() else name))
        pos = match.end()
    if not tokens or key[pos:]:
        raise ValueError(f"cannot parse key {key!r}")
    return tokens


# --------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[list[str | int], Any]:
    """``"optim.lr=3e-4"`` → ``(["optim", "lr"], 0.0003)``; the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ValueError("expected KEY.PATH=VALUE, e.g. train.steps=100")
    tokens = _split_key(key.strip())
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ValueError(f"value is not valid YAML: {exc}") from None
    if isinstance(value, str) and _EXPONENT_FLOAT.match(value):
        value = float(value)  # YAML 1.1 reads 3e-4 as a string; users mean a number
    return tokens, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> list[RecipeIssue]:
    """Apply ``key.path=value`` overrides in place; return the problems found.

    A list element may be addressed by index (``objectives[1]`` or ``objectives.1``)
    or, for lists of components, by name (``objectives.mim.weight=2``).
    """
    issues = []
    for text in overrides:
        try:
            tokens, value = parse_override(text)
            _set_path(data, tokens, value)
        except ValueError as exc:
            issues.append(RecipeIssue(f"override {text!r}", str(exc)))
    return issues


def _set_path(node: Any, tokens: list[str | int], value: Any) -> None:
    for depth, token in enumerate(tokens):
        last = depth == len(tokens) - 1
        where = format_path(tokens[: depth + 1])
        if isinstance(node, list):
            if isinstance(token, str):
                named = [i for i, item in enumerate(node)
                         if isinstance(item, dict) and item.get("name") == token]
                if not named:
                    names = [str(item.get("name")) for item in node if isinstance(item, dict)]
                    hint = closest(token, names)
                    raise ValueError(
                        f"{where}: no list element named {token!r}"
                        + (f"; did you mean {hint!r}?" if hint else "")
                        + (f" (names: {', '.join(names)})" if names else "")
                    )
                token = named[0]
            if not -len(node) <= token < len(node):
                raise ValueError(f"{where}: index {token} is out of range (list has {len(node)})")
            if last:
                node[token] = value
                return
            node = node[token]
        elif isinstance(node, dict):
            if isinstance(token, int):
                token = str(token)
            if last:
                node[token] = value
                return
            if token not in node or node[token] is None:
                node[token] = {}
            node = node[token]
        else:
            raise ValueError(f"{where}: cannot set a key inside a {type(node).__name__} value")


# --------------------------------------------------------------------------- errors


def _field_names_at(root: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Field names of the model found by following ``loc`` from ``root`` (for suggestions)."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            args = typing.get_args(tp)
            tp = args[0] if args else Any
        elif isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
            tp = tp.model_fields[part].annotation
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _unwrap(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    if origin is typing.Annotated:
        return typing.get_args(tp)[0]
    return tp


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def issues_from_validation(
    error: pydantic.ValidationError, root: type[BaseModel], prefix: Sequence[str | int] = ()
) -> list[RecipeIssue]:
    """Turn pydantic's errors into recipe issues with YAML paths and suggestions."""
    issues: list[RecipeIssue] = []
    for err in error.errors(include_url=False):
        loc = [*prefix, *err["loc"]]
        rel = list(err["loc"])
        kind = err["type"]
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ParamsError):
            issues += issues_from_validation(cause.error, cause.model, [*loc, "params"])
            continue
        if isinstance(cause, UnknownComponentError):
            issues.append(RecipeIssue(format_path([*loc, "name"]), str(cause)))
            continue
        if isinstance(cause, ValueError):
            issues.append(RecipeIssue(format_path(loc), str(cause)))
            continue
        if kind == "extra_forbidden":
            known = _field_names_at(root, rel[:-1])
            hint = closest(str(rel[-1]), known)
            msg = f"unknown key {rel[-1]!r}"
            msg += f"; did you mean {hint!r}?" if hint else ""
            msg += f" (allowed: {', '.join(known)})" if known else ""
        elif kind == "missing":
            msg = "required field is missing"
        else:
            msg = f"{err['msg']} (got {_short(err.get('input'))})"
        issues.append(RecipeIssue(format_path(loc), msg))
    return issues


# --------------------------------------------------------------------------- loading


def read_yaml(source: str) -> dict[str, Any]:
    """Read a YAML mapping from a local path or fsspec URL (``yaml.safe_load`` only)."""
    try:
        with fsspec.open(source, "r", encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise RecipeError(source, [RecipeIssue("", "file not found")]) from None
    except IsADirectoryError:
        raise RecipeError(source, [RecipeIssue("", "is a folder; pass a recipe YAML file, "
                                                   "e.g. recipes/quickstart.yaml")]) from None
    except UnicodeDecodeError as exc:
        raise RecipeError(source, [RecipeIssue("", f"not a text file ({exc.reason} at byte "
                                                   f"{exc.start}); pass a recipe YAML file, "
                                                   "e.g. recipes/quickstart.yaml")]) from None
    except (OSError, ValueError) as exc:
        raise RecipeError(source, [RecipeIssue("", f"cannot read: {exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise RecipeError(source, [RecipeIssue(where, f"invalid YAML: {problem}")]) from None
    if data is None:  # else the schema's first complaint ("objectives: ...") hides the cause
        raise RecipeError(source, [RecipeIssue("", "the file is empty (or only comments); a recipe "
                                   "needs at least an objectives list: start from a copy of "
                                   "recipes/quickstart.yaml")])
    if not isinstance(data, dict):
        raise RecipeError(
            source, [RecipeIssue("", f"a recipe is a YAML mapping, got {type(data).__name__}")]
        )
    return data


def validate_recipe(
    data: dict[str, Any],
    source: str = "<recipe>",
    registries: Registries | None = None,
) -> Recipe:
    """Validate a recipe mapping against the schema and the registries.

    Args:
        data: the parsed YAML (not modified).
        source: file name used in messages.
        registries: where component names are looked up; default: the process-wide
            registries with all plugins loaded. ``False``-y values other than None are
            not accepted: pass a :class:`Registries` to use another set.

    Raises:
        RecipeError: every problem at once.
    """
    if registries is None:
        from arlkit.registry import default_registries

        registries = default_registries
    try:
        return Recipe.model_validate(data, context={"registries": registries})
    except pydantic.ValidationError as exc:
        raise RecipeError(source, issues_from_validation(exc, Recipe)) from None


def load_recipe(
    source: str,
    overrides: Sequence[str] = (),
    registries: Registries | None = None,
) -> Recipe:
    """Read, override and validate a recipe; all problems are raised together.

    The recipe's ``name`` defaults to the file's stem.
    """
    data = read_yaml(source)
    data.setdefault("name", re.sub(r"\.ya?ml$", "", source.rstrip("/").rsplit("/", 1)[-1]))
    issues = apply_overrides(data, overrides)
    try:
        recipe = validate_recipe(data, source, registries)
    except RecipeError as exc:
        raise RecipeError(source, [*issues, *exc.issues]) from None
    if issues:
        raise RecipeError(source, issues)
    return recipe


def dump_recipe(recipe: Recipe) -> str:
    """The resolved recipe (defaults filled in) as YAML, for the run directory."""
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
