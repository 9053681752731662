"""scalekd: distil frozen, very large vision models into small timm students."""

from scalekd.recipe import Recipe, RecipeError, apply_overrides, validate

__all__ = ["Recipe", "RecipeError", "apply_overrides", "validate"]
