"""Recipes: YAML files validated by pydantic that assemble a run from registered components."""

from arlkit.recipe.load import (
    RecipeError,
    RecipeIssue,
    apply_overrides,
    dump_recipe,
    load_recipe,
    validate_recipe,
)
from arlkit.recipe.schema import ComponentSpec, ObjectiveSpec, Recipe

__all__ = [
    "ComponentSpec",
    "ObjectiveSpec",
    "Recipe",
    "RecipeError",
    "RecipeIssue",
    "apply_overrides",
    "dump_recipe",
    "load_recipe",
    "validate_recipe",
]
