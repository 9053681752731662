"""`scalekd` sub-commands, and the entry point recipe files call."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import runpy
import sys
from pathlib import Path
from typing import Optional

from scalekd.data.beton import WRITE_MODES
from scalekd.recipe import Recipe, RecipeError, apply_overrides


def run_recipe(recipe: Recipe, argv: Optional[list[str]] = None, *,
               exit_when_stopped: bool = True):
    """Apply overrides to `recipe` and train: `argv`, else the command line's (where `--help`
    prints the recipe file's docstring and how to override); a bad recipe exits with its
    problems listed (status 2) before anything is built, a run folder that cannot be written
    or resumed from (disk full, damaged checkpoints) with what is intact and what to do (1), a
    diverged run with status 3. A stop request (a signal, the time budget, run.steps_per_job)
    ends the whole process (status 0) once the run has checkpointed, even one that came too
    late to stop it: a script training several runs in a row must not go on to the next
    (running it again resumes where it stopped)."""
    from scalekd.engine.checkpoint import RunFolderError
    from scalekd.engine.divergence import TrainingDiverged
    from scalekd.engine.trainer import train

    try:
        if argv is None:
            argv = recipe_parser().parse_intermixed_args(sys.argv[1:]).overrides
        result = train(apply_overrides(recipe, argv))
    except RecipeError as err:
        print(f"scalekd: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunFolderError as err:
        print(f"scalekd: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except TrainingDiverged as err:
        print(f"scalekd: training diverged: {err}", file=sys.stderr)
        raise SystemExit(3) from None
    if exit_when_stopped and (not result.finished or result.stop_requested):
        print(f"scalekd: stopped ({result.stop_requested or 'before the end of the schedule'})"
              f" after {result.run_dir} checkpointed; run the same command again to resume",
              file=sys.stderr)
        raise SystemExit(0)
    return result


def run_probe(recipe: Recipe, argv: Optional[list[str]] = None):
    """Apply command-line overrides to `recipe` and probe its teacher
    (scalekd/tools/probe_teacher.py); a bad recipe exits with its problems listed (status 2)
    before anything is built."""
    from scalekd.tools.probe_teacher import probe

    try:
        return probe(apply_overrides(recipe, sys.argv[1:] if argv is None else argv))
    except RecipeError as err:
        print(f"scalekd probe: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run_probe_first(distilled: Recipe, probe_command: str) -> None:
    """Probe the teacher of `distilled` into its teacher.probe folder (scalekd.tools.probe_teacher's
    probe_recipe), unless a probe is there already. The probe computes the teacher's features
    on one device, so a multi-process launch finding no probe stops and names `probe_command`,
    which probes on one process."""
    from scalekd.engine.distributed import launched_world_size
    from scalekd.models.probed_teacher import PROBE_FILE
    from scalekd.tools.probe_teacher import probe_recipe

    folder = distilled.teacher.probe
    if (Path(folder) / PROBE_FILE).is_file():
        print(f"reusing the probe in {folder}")
    elif launched_world_size() > 1:
        print(f"scalekd: teacher.probe={folder!r} holds no probe yet, and the probe runs on one "
              f"process: probe first with `{probe_command}`, then launch again", file=sys.stderr)
        raise SystemExit(2)
    else:
        run_probe(probe_recipe(distilled), [])


# ---------------------------------------------------------------------------------------------
# the command line: a setting of a run is a `section.field=value` override (any Recipe field, the
# same for every command and every recipe file); a `--flag` is what is not one (where to write,
# which weights to read, a tool's own knobs)


class HelpFormatter(argparse.HelpFormatter):
    """After each option's help its default, where it has one to show (a default that is None
    or empty is said in words in the help)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        shown = action.default not in (None, "", [], argparse.SUPPRESS)
        return (action.help or "") + (" (default: %(default)s)" if shown else "")


class RecipeHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """A recipe file's help: its docstring as written, then its options with their defaults."""


OVERRIDES_HELP = ("recipe overrides, any field of scalekd.recipe.Recipe: "
                  + ", ".join(f"{section.name}.*" for section in dataclasses.fields(Recipe))
                  + " (e.g. data.path=/data/imagenet optim.lr=3e-3)")


def add_overrides(parser: argparse.ArgumentParser, text: str = OVERRIDES_HELP) -> None:
    parser.add_argument("overrides", nargs="*", metavar="section.field=value", help=text)


def recipe_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """The command line of a recipe file: the overrides, and the file's own `--flags` (the
    caller adds them; parse with parse_intermixed_args). `--help` prints `description`
    (default: the running file's docstring) and every flag with its choices and default."""
    if description is None:
        description = getattr(sys.modules.get("__main__"), "__doc__", None)
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=RecipeHelpFormatter)
    add_overrides(parser)
    return parser


def _recipe_option(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("--recipe", type=Path,
                        help=f"a recipe file whose recipe() the overrides apply to ({text}; "
                             "default: the library's defaults, scalekd.recipe.Recipe())")


def _base_recipe(args: argparse.Namespace) -> Recipe:
    """--recipe's recipe() with the command's overrides (a RecipeError if one does not fit)."""
    base = runpy.run_path(str(args.recipe))["recipe"]() if args.recipe else Recipe()
    return apply_overrides(base, args.overrides)


def _options(parser: argparse.ArgumentParser, options: tuple) -> None:
    """(flag, type, default, help) rows: a tool's own knobs."""
    for flag, kind, default, text in options:
        parser.add_argument(flag, type=kind, default=default, help=text)


def _command(commands, name: str, runner, help: str) -> argparse.ArgumentParser:
    """Sub-command `name`: `help` in `scalekd --help`; its own help opens with the runner's
    docstring (what it does, an example, which recipe settings it reads)."""
    parser = commands.add_parser(name, help=help, formatter_class=HelpFormatter,
                                 description=inspect.cleandoc(runner.__doc__ or help))
    parser.set_defaults(handler=runner, command_parser=parser)
    return parser


def _run_folder_command(commands, name: str, runner, help: str,
                        overrides: bool = True) -> argparse.ArgumentParser:
    """A command reading a run folder: RUN, its overrides, which student, and its EMA."""
    parser = _command(commands, name, runner, help)
    parser.add_argument("run", type=Path, help="the run folder (run.dir)")
    if overrides:
        add_overrides(parser, "recipe overrides of the saved run, e.g. data.path=/data/imagenet "
                              "data.val_split=v2")
    parser.add_argument("--student", default="",
                        help="which student of a multi-student run (default: the recipe's own)")
    parser.add_argument("--ema", action="store_true", help="the student's EMA weights")
    return parser


def _add_train(commands) -> None:
    parser = _command(commands, "train", _train, "run a recipe file with dotted-key overrides")
    parser.add_argument("recipe", help="a recipe file, e.g. recipes/in1k_a1.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="section.field=value overrides and the recipe file's own flags")


def _add_eval(commands) -> None:
    parser = _run_folder_command(
        commands, "eval", _eval,
        "evaluate a run's student (and teacher): top-1/5, per class, agreement")
    parser.add_argument("--weights", type=Path,
                        help="an exported student .safetensors (default: the run's export, "
                        "else its latest checkpoint)")
    parser.add_argument("--teacher", action="store_true",
                        help="evaluate the teacher too, and teacher-student agreement")
    parser.add_argument("--labels", type=Path, nargs="*", default=[],
                        help="re-labelled sets (ImageNet-ReaL real.json, or JSON/CSV of file "
                        "name -> labels; default: none)")
    parser.add_argument("--out", type=Path, help="JSON file (default: RUN/eval.json)")


def _add_export(commands) -> None:
    parser = _run_folder_command(
        commands, "export", _export,
        "(re)write a run's export/ (safetensors, timm folder; --onnx: ONNX)")
    parser.add_argument("--onnx", action="store_true", help="also write student.onnx")


def _add_push(commands) -> None:
    parser = _run_folder_command(
        commands, "push", _push,
        "upload a run's exported student to the Hugging Face Hub (timm's push_to_hf_hub)",
        overrides=False)
    parser.add_argument("repo_id", help="e.g. your-name/resnet18-scalekd")
    parser.add_argument("--private", action="store_true", help="create the repo private")


def _add_report(commands) -> None:
    parser = _command(commands, "report", _report, "PNG figures of one or several runs' logs")
    parser.add_argument("runs", type=Path, nargs="+", help="run folders, compared on each figure")
    parser.add_argument("--out", type=Path,
                        help="folder for the PNGs (default: the first run's RUN/report)")
    parser.add_argument("--x", choices=["epoch", "step"], default="epoch",
                        help="the curves' x axis: epochs, or optimiser steps")


def _add_diagnose(commands) -> None:
    parser = _command(
        commands, "diagnose", _diagnose,
        "PNGs of the papers' diagnostics: teacher and student feature spectra (DCT), layer "
        "CKA, embedding PCA")
    parser.add_argument("run", type=Path, help="the run folder (run.dir)")
    add_overrides(parser, "recipe overrides of the saved run, e.g. data.path=/data/imagenet")
    parser.add_argument("--images", type=int, default=512, help="evaluation images to use")
    parser.add_argument("--out", type=Path, help="folder for the PNGs (default: RUN/report)")


def _add_probe(commands) -> None:
    parser = _command(
        commands, "probe", _probe,
        "train a linear or MLP head on a frozen teacher's features (lr grid searched); its "
        "output folder is a teacher: teacher.probe=DIR")
    _recipe_option(parser, "its teacher, data and probe.* settings")
    add_overrides(parser)


def _add_make_beton(commands) -> None:
    parser = _command(commands, "make-beton", _make_beton,
                      "write FFCV .beton files (one per split) from a data source")
    parser.add_argument("--out", required=True, help="folder for the .beton and .json files")
    parser.add_argument("--write-mode", default="jpg", choices=WRITE_MODES,
                        help="raw pixels, JPEG, JPEG for a share of the images (proportion), "
                             "or JPEG when raw exceeds --smart-threshold bytes (smart)")
    _options(parser, (
        ("--max-side", int, 512, "resize so that the longer side is at most this (0: keep)"),
        ("--jpeg-quality", int, 90, "JPEG quality, 1-100"),
        ("--compress-probability", float, 0.5, "--write-mode proportion: the share stored "
                                               "as JPEG"),
        ("--smart-threshold", int, 3 * 256 * 256, "--write-mode smart: raw bytes above "
                                                  "which an image is stored as JPEG"),
        ("--workers", int, 2, "writer processes")))
    _recipe_option(parser, "its data.* settings")
    add_overrides(parser)


def _add_mix(commands) -> None:
    parser = _command(commands, "mix", _mix,
                      "write a synthetic set of Image Mixer blends of random training images")
    parser.add_argument("--out", type=Path, required=True, help="the synthetic set's folder")
    parser.add_argument("--model", required=True,
                        help="the Image Mixer as a diffusers pipeline folder or hub repo "
                             "(StableDiffusionImageVariationPipeline layout)")
    parser.add_argument("--weights", type=lambda text: [float(w) for w in text.split(",")],
                        default=[], help="conditioning weights, one per mixed image, e.g. 1,0.5 "
                                         "(default: 1 each)")
    _options(parser, (
        ("--multiplier", int, 5, "outputs per training image (the paper: 5, or 10 for small "
                                 "sets)"),
        ("--images-per-mix", int, 2, "k: 2 mixes pairs"),
        ("--steps", int, 50, "DDIM steps"),
        ("--guidance", float, 3.0, "classifier-free guidance scale"),
        ("--size", int, 640, "output height and width, pixels"),
        ("--batch-size", int, 4, "outputs per pipeline call"),
        ("--seed", int, 0, "decides every output's images and noise"),
        ("--device", str, "", "default: cuda if available, else cpu")))
    parser.add_argument("--dtype", default="", choices=["", "fp32", "fp16", "bf16"],
                        help="default: fp16 on CUDA, fp32 elsewhere")
    parser.add_argument("--format", default="jpg", choices=["jpg", "png"],
                        help="the images' file format")
    _recipe_option(parser, "its data.* settings")
    add_overrides(parser)


def _add_cache_teacher(commands) -> None:
    parser = _command(commands, "cache-teacher", _cache_teacher,
                      "store the teacher's top-k logits for K augmentation draws of every "
                      "training image (teacher.mode=cached replays them)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the cache")
    _options(parser, (
        ("--draws", int, 10, "K, augmentation draws per image; epoch e replays draw e mod K"),
        ("--topk", int, 10, "k, logits kept per crop"),
        ("--shard-size", int, 10_000, "images per shard file"),
        ("--batch-size", int, 64, "crops per teacher forward, per process")))
    _recipe_option(parser, "the training recipe: its augmentation is the cache's")
    add_overrides(parser)


COMMANDS = (_add_train, _add_eval, _add_export, _add_push, _add_report, _add_diagnose,
            _add_probe, _add_make_beton, _add_mix, _add_cache_teacher)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scalekd", description=__doc__,
                                     formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:  # overrides on both sides of a --flag: the command takes them in any order
        args = args.command_parser.parse_intermixed_args(argv[argv.index(args.command) + 1:])
    args.handler(args)


def _train(args: argparse.Namespace) -> None:
    """Run RECIPE as `python RECIPE ARGS` would: ARGS are its overrides and its own flags
    (`scalekd train RECIPE --help` lists them), e.g. `scalekd train recipes/in1k_a1.py
    data.path=/data/imagenet run.epochs=1200`."""
    sys.argv = [args.recipe, *args.args]
    runpy.run_path(args.recipe, run_name="__main__")


def _report(args: argparse.Namespace) -> None:
    from scalekd.diagnostics.report import plot_report

    for path in plot_report(args.runs, args.out or args.runs[0] / "report", args.x):
        print(path)


def _probe(args: argparse.Namespace) -> None:
    """e.g. `scalekd probe teacher.name=vit_giant_patch14_dinov2 teacher.checkpoint=
    dinov2_g.safetensors data.path=/data/cub probe.blocks=3 probe.patch_mean=false
    run.dir=runs/probe_cub`; writes run.dir/probe.json and head.safetensors
    (scalekd/tools/probe_teacher.py). Its settings: teacher.*, data.*,
    aug.interpolation/crop_pct, probe.*, run.dir, run.seed."""
    try:
        base = _base_recipe(args)
    except RecipeError as err:
        print(f"scalekd probe: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    run_probe(base, [])


def _make_beton(args: argparse.Namespace) -> None:
    """Write <out>/<split>.beton and <split>.json for the train and val splits of any source,
    e.g. `scalekd make-beton --out /data/in1k_ffcv data.path=/data/imagenet`; train on them
    with data.source=ffcv data.path=/data/in1k_ffcv. Its settings: data.* (data.source,
    data.path, data.train_split, data.val_split, data.bad_files)."""
    from scalekd.data.beton import make_betons

    try:
        paths = make_betons(_base_recipe(args).data, args.out, write_mode=args.write_mode,
                            max_side=args.max_side, jpeg_quality=args.jpeg_quality,
                            compress_probability=args.compress_probability,
                            smart_threshold=args.smart_threshold, workers=args.workers)
    except (RecipeError, ValueError) as err:
        print(f"scalekd make-beton: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print("wrote " + ", ".join(str(p) for p in paths))


def _mix(args) -> None:
    """Write OUT/images/ and OUT/manifest.json: multiplier x (training images) Stable Diffusion
    Image Mixer blends of random k-tuples of training images whatever their classes (the
    task-specific distillation paper's synthetic set), e.g. `scalekd mix --out /data/cub_mix
    --model /models/image-mixer data.path=/data/cub`; train with data.mixed=/data/cub_mix.
    Running it again resumes: existing images are kept. Its settings: data.* of the training
    images (data.source, data.path, data.train_split)."""

    import torch

    from scalekd.data import SOURCES

    try:
        from scalekd.data.mixing import MixError, MixOptions, mix
    except ModuleNotFoundError as err:
        if err.name != "diffusers":
            raise
        print("scalekd mix: diffusers is not installed: pip install -e '.[mix]' (or "
              "SCALEKD_EXTRAS=mix bash scripts/setup.sh)", file=sys.stderr)
        raise SystemExit(2) from None
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    options = MixOptions(
        model=args.model, multiplier=args.multiplier, images_per_mix=args.images_per_mix,
        weights=tuple(args.weights), steps=args.steps, guidance=args.guidance, size=args.size,
        seed=args.seed, batch_size=args.batch_size, device=device,
        dtype=args.dtype or ("fp16" if device.startswith("cuda") else "fp32"),
        format=args.format)
    try:
        cfg = _base_recipe(args).data
        source = SOURCES.get(cfg.source)
        problems = source.check(cfg) if source else [f"data.source={cfg.source!r} is unknown"]
        if problems:
            raise RecipeError(problems)
        images = source.load(cfg, cfg.train_split)
        fields = ("source", "path", "train_split", "num_samples", "input_size")
        written, total = mix(images, args.out, options,
                             {k: v for k, v in dataclasses.asdict(cfg).items() if k in fields})
    except (RecipeError, MixError, ValueError) as err:
        print(f"scalekd mix: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"wrote {written} image(s); {args.out} holds {total}: train with data.mixed={args.out}")


def _cache_teacher(args) -> None:
    """Run the teacher once over --draws stored augmentation draws of each training image and
    keep its --topk log-probabilities, in shards with an index, e.g. `scalekd cache-teacher
    --recipe recipes/in1k_a1.py --out /data/beitv2_cache data.path=/data/imagenet`; train on
    it with the same recipe and teacher.mode=cached teacher.cache=/data/beitv2_cache. Running
    the same command again finishes an interrupted cache; under `accelerate launch` the
    processes share the shards. Its settings: teacher.*, data.*, aug.*, student.name (its
    normalisation)."""
    import torch
    from accelerate import PartialState

    from scalekd.tools.cache_teacher import cache_teacher, writer_problems

    try:
        recipe = _base_recipe(args)
        problems = writer_problems(recipe)
        if problems:
            raise RecipeError(problems)
        # cpu=True off CUDA: else accelerate sees no GPU and runs each process as rank 0
        state = PartialState(cpu=not torch.cuda.is_available())
        index = cache_teacher(recipe, args.out, args.draws, args.topk, args.shard_size,
                              args.batch_size, state.process_index, state.num_processes,
                              state.device, state.wait_for_everyone)
    except (RecipeError, ValueError) as err:
        print(f"scalekd cache-teacher: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    if state.is_main_process:
        print(f"wrote {args.out} ({len(index['shards'])} shards"
              + ("" if index["complete"] else ", not complete") + ")")


def _eval(args) -> None:
    from scalekd.engine.eval_run import evaluate_run, format_report, write_json
    from scalekd.engine.saved_run import SavedRun

    try:
        run = SavedRun(args.run, args.overrides, args.student)
        metrics = evaluate_run(run, args.weights, args.ema, args.teacher, tuple(args.labels))
    except ValueError as err:  # e.g. a run without labels (data.labels=false)
        print(f"scalekd eval: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(format_report(metrics))
    print(write_json(metrics, args.out or args.run / "eval.json"))


def _export(args) -> None:
    """Rewrite RUN/export/<student>/: student.safetensors and .json, and student_timm/ (timm's
    save_for_hf folder: timm.create_model('local-dir:FOLDER', pretrained=True)), from the
    run's export, else its latest complete checkpoint; --onnx adds student.onnx (dynamic
    batch), checked with onnxruntime against PyTorch on evaluation images."""
    from scalekd.engine.checkpoint import RunFolderError
    from scalekd.engine.export_run import export_run
    from scalekd.engine.onnx_export import onnx_missing
    from scalekd.engine.saved_run import SavedRun

    missing = onnx_missing() if args.onnx else ""
    if missing:
        print(f"scalekd export --onnx: {missing}", file=sys.stderr)
        raise SystemExit(2)
    try:  # no run, no weights (neither export nor checkpoint), a ZeRO-sharded checkpoint
        done = export_run(SavedRun(args.run, args.overrides, args.student), args.ema, args.onnx)
    except (FileNotFoundError, ValueError, RecipeError) as err:
        print(f"scalekd export: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunFolderError as err:  # a write that failed (disk full): what is intact
        print(f"scalekd export: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    for path in done.files:
        print(path)
    if done.onnx_max_abs_diff is not None:
        print(f"onnxruntime vs PyTorch on {done.onnx_images} evaluation images: max abs diff "
              f"{done.onnx_max_abs_diff:.3g} (fp32 logits)")


def _push(args) -> None:
    """Upload RUN/export/<student>/student_timm/ to the Hub repo REPO_ID with timm's
    push_to_hf_hub (created if missing; the only network use of an export); then anyone loads
    it with timm.create_model('hf-hub:REPO_ID', pretrained=True)."""
    from scalekd.engine.timm_folder import push_timm_folder, timm_folder

    folder = timm_folder(args.run / "export" / args.student,
                         "student_ema" if args.ema else "student")
    if not (folder / "config.json").is_file():
        print(f"scalekd push: {folder} holds no timm export; write it with `scalekd export "
              f"{args.run}`", file=sys.stderr)
        raise SystemExit(2)
    print(push_timm_folder(folder, args.repo_id, args.private))


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
