"""Core commands: ``run``, ``validate``, ``list``, ``plugins``, ``export``, ``schema``."""

from __future__ import annotations

import argparse
import json
import typing
from typing import Any

from arlkit.cli.output import console

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="train from a recipe")
    run.add_argument("recipe", help="recipe YAML (local path or fsspec URL)")
    run.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE", help="recipe overrides")
    run.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="PATH",
        help="resume from the latest checkpoint of the run directory, or from PATH",
    )
    run.add_argument("--dry-run", action="store_true", help="validate and build, do not train")
    run.set_defaults(handler=_run)
    _overrides_anywhere(run)

    val = sub.add_parser("validate", help="check a recipe without running it")
    val.add_argument("recipe")
    val.add_argument("overrides", nargs="*", metavar="KEY.PATH=VALUE")
    val.add_argument("--show", action="store_true", help="print the resolved recipe")
    val.add_argument(
        "--schema-only",
        action="store_true",
        help="check types and names only; by default the components are built too, so values "
        "only a component checks (e.g. mask_ratio, view sizes) are caught",
    )
    val.set_defaults(handler=_validate)
    _overrides_anywhere(val)

    lst = sub.add_parser("list", help="registered components with their provider and parameters")
    lst.add_argument("kind", nargs="?", help="a registry kind (default: all)")
    lst.add_argument("--pattern", default="*", help="shell-style filter on names")
    lst.add_argument("--json", action="store_true", help="machine-readable output")
    lst.set_defaults(handler=_list)

    plg = sub.add_parser("plugins", help="loaded plugins: name, version, hooks, status")
    plg.add_argument("--json", action="store_true")
    plg.set_defaults(handler=_plugins)

    exp = sub.add_parser("export", help="export a run's backbone to one safetensors file")
    exp.add_argument("run_dir", help="a run directory (uses its latest checkpoint)")
    exp.add_argument("--out", required=True, help="output .safetensors path (or fsspec URL)")
    exp.add_argument("--student", action="store_true", help="export the student, not the teacher")
    exp.add_argument("--checkpoint", help="a specific checkpoint directory of the run")
    exp.set_defaults(handler=_export)

    sch = sub.add_parser("schema", help="JSON Schema of recipes (for editors)")
    sch.add_argument("--out", help="write to this file instead of stdout")
    sch.set_defaults(handler=_schema)


def _overrides_anywhere(parser: argparse.ArgumentParser) -> None:
    """Let the ``overrides`` words come before, between or after the options.

    argparse stops filling a ``nargs="*"`` positional at the first option, so in
    ``arlkit validate R --show data.batch_size`` the malformed override would be an
    "unrecognized argument" with the top-level usage, while before ``--show`` it reaches the
    recipe loader, which says "expected KEY.PATH=VALUE". Parsing the command's words
    intermixed sends every positional word to ``overrides`` wherever it stands; unknown
    options are still left over, and reported as unrecognized.
    """
    for action in parser._actions:
        if action.dest == "overrides":  # else an intermixed parse names it as missing too
            action.required = False
    base = type(parser)

    class _Intermixed(base):  # type: ignore[misc,valid-type]
        _intermixing = False

        def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
            if self._intermixing:  # parse_known_intermixed_args calls back in here
                return super().parse_known_args(args, namespace)
            self._intermixing = True
            try:
                return self.parse_known_intermixed_args(args, namespace)
            finally:
                self._intermixing = False

    parser.__class__ = _Intermixed


def _validate(args: argparse.Namespace) -> int:
    from arlkit.recipe import dump_recipe, load_recipe

    recipe = load_recipe(args.recipe, args.overrides)
    if args.show:
        console().print(dump_recipe(recipe), markup=False)
    if not args.schema_only:  # what `run` would reject before its first step
        from arlkit.engine.build import build_components

        build_components(recipe, source=args.recipe)
    console().print(
        f"{args.recipe}: valid ({len(recipe.objectives)} objective(s): "
        f"{', '.join(o.name for o in recipe.objectives)}; run dir {recipe.resolved_run_dir()})",
        markup=False,
    )
    return 0


def _run(args: argparse.Namespace) -> int:
    import os

    from arlkit.engine.run import run_recipe

    resume, overrides = args.resume, list(args.overrides)
    if resume not in (None, "latest") and "=" in resume and not os.path.exists(resume):
        # `--resume a.b=1`: the optional PATH swallowed an override; resume the latest
        overrides.insert(0, resume)
        resume = "latest"
    return run_recipe(args.recipe, overrides, resume=resume, dry_run=args.dry_run)


def _type_text(annotation: Any) -> str:
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _export(args: argparse.Namespace) -> int:
    from arlkit.engine.export import export_from_run

    path, which, step = export_from_run(args.run_dir, args.out, args.student, args.checkpoint)
    console().print(f"exported the {which} backbone of step {step} to {path}", markup=False)
    return 0


def _params_text(entry: Any) -> str:
    parts = []
    for name, field in entry.params.model_fields.items():
        annotation = _type_text(field.annotation)
        default = "required" if field.is_required() else repr(field.default)
        parts.append(f"{name}: {annotation} = {default}")
    return ", ".join(parts)


def _list(args: argparse.Namespace) -> int:
    from arlkit.registry import default_registries as registries

    kind = args.kind
    if kind and kind not in registries and f"{kind}s" in registries:  # `list conditioner`
        kind = f"{kind}s"
    kinds = [kind] if kind else list(registries)
    for kind in kinds:
        registries[kind]  # unknown kind → UnknownComponentError with suggestions
    rows = [
        {
            "kind": kind,
            "name": entry.name,
            "provider": entry.provider,
            "params": _params_text(entry),
            "summary": entry.summary,
        }
        for kind in kinds
        for entry in registries[kind].entries()
        if entry.name in registries[kind].names(args.pattern)
    ]
    if args.json:
        console().print_json(json.dumps(rows))
        return 0
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="arlkit components", show_lines=False)
    for column in ("kind", "name", "provider", "params", "summary"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(row[c]) for c in ("kind", "name", "provider", "params", "summary")))
    console().print(table)
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from arlkit import plugins

    host = plugins.load()
    infos = list(host.plugins.values())
    if args.json:
        console().print_json(
            json.dumps(
                [
                    {
                        "name": p.name,
                        "distribution": p.dist,
                        "version": p.version,
                        "source": p.source,
                        "status": p.status,
                        "hooks": p.hooks,
                        "registered": p.registered,
                        "error": p.error,
                    }
                    for p in infos
                ]
            )
        )
        return 0
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="arlkit plugins")
    for column in ("name", "distribution", "version", "source", "status", "hooks", "registered"):
        table.add_column(column, overflow="fold")
    for p in infos:
        registered = "; ".join(f"{k}: {', '.join(v)}" for k, v in p.registered.items())
        hooks = ", ".join(h.removeprefix("arlkit_") for h in p.hooks)
        cells = (p.name, p.dist, p.version, p.source, p.status, hooks, p.error or registered)
        table.add_row(*map(escape, cells))  # third-party text is not rich markup
    console().print(table)
    return 0


def _schema(args: argparse.Namespace) -> int:
    from arlkit.recipe import Recipe

    text = json.dumps(Recipe.model_json_schema(), indent=2)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            handle.write(text + "\n")
        console().print(f"wrote {args.out}", markup=False)
    else:
        print(text)
    return 0
