"""`scalekd` sub-commands, and the entry point recipe files call."""

from __future__ import annotations

import argparse
import runpy
import sys
from typing import Optional

from scalekd.recipe import Recipe, RecipeError, apply_overrides


def run_recipe(recipe: Recipe, argv: Optional[list[str]] = None):
    """Apply command-line overrides to `recipe` and train; a bad recipe exits with its
    problems listed (status 2) before anything is built."""
    from scalekd.engine.trainer import train

    try:
        return train(apply_overrides(recipe, sys.argv[1:] if argv is None else argv))
    except RecipeError as err:
        print(f"scalekd: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="scalekd", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="run a recipe file with dotted-key overrides")
    train.add_argument("recipe", help="a recipe file, e.g. recipes/in1k_a1.py")
    train.add_argument("overrides", nargs="*", help="section.field=value")
    args = parser.parse_args(argv)
    if args.command == "train":
        sys.argv = [args.recipe, *args.overrides]
        runpy.run_path(args.recipe, run_name="__main__")


if __name__ == "__main__":
    main()
