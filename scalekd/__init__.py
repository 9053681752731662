"""scalekd: distil frozen, very large vision models into small timm students."""

from scalekd.recipe import Recipe, RecipeError, apply_overrides

__all__ = ["Recipe", "RecipeError", "apply_overrides", "validate"]


def __getattr__(name: str):
    # `scalekd.validate` composes every component's checks: imported on first use, so that
    # `import scalekd.recipe` stays light (the recipe is data; it imports nothing of the package)
    if name == "validate":
        from scalekd.engine.validation import validate

        return validate
    raise AttributeError(f"module 'scalekd' has no attribute {name!r}")
