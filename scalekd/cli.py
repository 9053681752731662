"""`scalekd` sub-commands, and the entry point recipe files call."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
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

    evaluate = commands.add_parser(
        "eval", help="evaluate a run's student (and teacher): top-1/5, per class, agreement")
    evaluate.add_argument("run", type=Path, help="the run folder (run.dir)")
    evaluate.add_argument("overrides", nargs="*",
                          help="recipe overrides, e.g. data.path=/data/imagenet data.val_split=v2")
    evaluate.add_argument("--weights", type=Path,
                          help="an exported student .safetensors (default: the run's export, "
                          "else its latest checkpoint)")
    evaluate.add_argument("--student", default="", help="which student of a multi-student run")
    evaluate.add_argument("--ema", action="store_true", help="the student's EMA weights")
    evaluate.add_argument("--teacher", action="store_true",
                          help="evaluate the teacher too, and teacher-student agreement")
    evaluate.add_argument("--labels", type=Path, nargs="*", default=[],
                          help="re-labelled sets (ImageNet-ReaL real.json, or JSON/CSV of file "
                          "name -> labels)")
    evaluate.add_argument("--out", type=Path, help="JSON file (default: RUN/eval.json)")

    report = commands.add_parser("report", help="PNG figures of one or several runs' logs")
    report.add_argument("runs", type=Path, nargs="+", help="run folders, compared on each figure")
    report.add_argument("--out", type=Path, help="folder for the PNGs (default: RUN/report)")
    report.add_argument("--x", choices=["epoch", "step"], default="epoch",
                        help="the curves' x axis: epochs, or optimiser steps")

    diagnose = commands.add_parser(
        "diagnose", help="PNGs of the papers' diagnostics: teacher and student feature spectra "
        "(DCT), layer CKA, embedding PCA")
    diagnose.add_argument("run", type=Path, help="the run folder (run.dir)")
    diagnose.add_argument("overrides", nargs="*", help="recipe overrides, as for eval")
    diagnose.add_argument("--images", type=int, default=512, help="evaluation images to use")
    diagnose.add_argument("--out", type=Path, help="folder for the PNGs (default: RUN/report)")

    args = parser.parse_args(argv)
    if args.command == "train":
        sys.argv = [args.recipe, *args.overrides]
        runpy.run_path(args.recipe, run_name="__main__")
    elif args.command == "eval":
        _eval(args)
    elif args.command == "report":
        from scalekd.diagnostics.report import plot_report

        for path in plot_report(args.runs, args.out or args.runs[0] / "report", args.x):
            print(path)
    elif args.command == "diagnose":
        _diagnose(args)


def _eval(args) -> None:
    from scalekd.engine.eval_run import evaluate_run, format_report, write_json
    from scalekd.engine.saved_run import SavedRun

    run = SavedRun(args.run, args.overrides, args.student)
    metrics = evaluate_run(run, args.weights, args.ema, args.teacher, tuple(args.labels))
    print(format_report(metrics))
    print(write_json(metrics, args.out or args.run / "eval.json"))


def _diagnose(args) -> None:
    from scalekd.diagnostics import run_figures as figures
    from scalekd.engine.saved_run import SavedRun

    # fp32 teacher: the diagnostics compare features, not speed
    run = SavedRun(args.run, ["teacher.dtype=fp32", *args.overrides])
    out = args.out or args.run / "report"
    teacher, student = figures.both_features(run, args.images)
    print(figures.spectrum_figure(teacher, student, out / "spectrum.png"))
    print(figures.cka_figure(teacher, student, out / "cka.png"))
    print(figures.pca_figure(teacher, student, run.images.classes, out / "pca.png"))


if __name__ == "__main__":
    main()
