"""`scalekd` sub-commands, and the entry point recipe files call."""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path
from typing import Optional

from scalekd.data.beton import WRITE_MODES
from scalekd.recipe import Recipe, RecipeError, apply_overrides


def run_recipe(recipe: Recipe, argv: Optional[list[str]] = None, *,
               exit_when_stopped: bool = True):
    """Apply command-line overrides to `recipe` and train; a bad recipe exits with its
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
        result = train(apply_overrides(recipe, sys.argv[1:] if argv is None else argv))
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

    export = commands.add_parser(
        "export", help="(re)write a run's export/ (safetensors, timm folder; --onnx: ONNX)",
        description="Rewrite RUN/export/<student>/: student.safetensors and .json, and "
                    "student_timm/ (timm's save_for_hf folder: timm.create_model('local-dir:"
                    "FOLDER', pretrained=True)), from the run's export, else its latest "
                    "complete checkpoint; --onnx adds student.onnx (dynamic batch), checked "
                    "with onnxruntime against PyTorch on evaluation images.")
    export.add_argument("run", type=Path, help="the run folder (run.dir)")
    export.add_argument("overrides", nargs="*", help="recipe overrides, as for eval")
    export.add_argument("--onnx", action="store_true", help="also write student.onnx")
    export.add_argument("--student", default="", help="which student of a multi-student run")
    export.add_argument("--ema", action="store_true", help="the student's EMA weights")

    push = commands.add_parser(
        "push", help="upload a run's exported student to the Hugging Face Hub (timm's "
        "push_to_hf_hub)",
        description="Upload RUN/export/<student>/student_timm/ to the Hub repo REPO_ID with "
                    "timm's push_to_hf_hub (created if missing; the only network use of an "
                    "export); then anyone loads it with timm.create_model('hf-hub:REPO_ID', "
                    "pretrained=True).")
    push.add_argument("run", type=Path, help="the run folder (run.dir)")
    push.add_argument("repo_id", help="e.g. your-name/resnet18-scalekd")
    push.add_argument("--student", default="", help="which student of a multi-student run")
    push.add_argument("--ema", action="store_true", help="the student's EMA weights")
    push.add_argument("--private", action="store_true", help="create the repo private")

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

    beton = commands.add_parser(
        "make-beton", help="write FFCV .beton files (one per split) from a data source",
        description="Write <out>/<split>.beton and <split>.json for the train and val splits "
                    "of any source, e.g. `scalekd make-beton --out /data/in1k_ffcv "
                    "data.path=/data/imagenet`; train on them with data.source=ffcv "
                    "data.path=/data/in1k_ffcv.")
    beton.add_argument("--out", required=True, help="folder for the .beton and .json files")
    beton.add_argument("--write-mode", default="jpg", choices=WRITE_MODES,
                       help="raw pixels, JPEG, JPEG for a share of the images (proportion), "
                            "or JPEG when raw exceeds --smart-threshold bytes (default: jpg)")
    beton.add_argument("--max-side", type=int, default=512,
                       help="resize so that the longer side is at most this (0: keep; "
                            "default 512)")
    beton.add_argument("--jpeg-quality", type=int, default=90)
    beton.add_argument("--compress-probability", type=float, default=0.5,
                       help="--write-mode proportion: the share stored as JPEG")
    beton.add_argument("--smart-threshold", type=int, default=3 * 256 * 256)
    beton.add_argument("--workers", type=int, default=2, help="writer processes")
    beton.add_argument("overrides", nargs="*",
                       help="data.* fields of the source: data.source=imagefolder (default), "
                            "data.path=..., data.train_split=..., data.val_split=..., "
                            "data.bad_files=skip")

    mix = commands.add_parser(
        "mix", help="write a synthetic set of Image Mixer blends of random training images",
        description="Write OUT/images/ and OUT/manifest.json: multiplier x (training images) "
                    "Stable Diffusion Image Mixer blends of random k-tuples of training images "
                    "whatever their classes (the task-specific distillation paper's synthetic "
                    "set), e.g. `scalekd mix --out /data/cub_mix --model /models/image-mixer "
                    "data.path=/data/cub`; train with data.mixed=/data/cub_mix. Running it "
                    "again resumes: existing images are kept.")
    mix.add_argument("--out", type=Path, required=True, help="the synthetic set's folder")
    mix.add_argument("--model", required=True,
                     help="the Image Mixer as a diffusers pipeline folder or hub repo "
                          "(StableDiffusionImageVariationPipeline layout)")
    mix.add_argument("--multiplier", type=int, default=5,
                     help="outputs per training image (the paper: 5, or 10 for small sets)")
    mix.add_argument("--images-per-mix", type=int, default=2, help="k: 2 mixes pairs")
    mix.add_argument("--weights", type=lambda text: [float(w) for w in text.split(",")],
                     default=[], help="conditioning weights, one per mixed image, e.g. 1,0.5 "
                                      "(default 1 each)")
    mix.add_argument("--steps", type=int, default=50, help="DDIM steps")
    mix.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    mix.add_argument("--size", type=int, default=640, help="output height and width, pixels")
    mix.add_argument("--batch-size", type=int, default=4, help="outputs per pipeline call")
    mix.add_argument("--seed", type=int, default=0,
                     help="decides every output's images and noise")
    mix.add_argument("--device", default="", help="default: cuda if available, else cpu")
    mix.add_argument("--dtype", default="", choices=["", "fp32", "fp16", "bf16"],
                     help="default: fp16 on CUDA, fp32 elsewhere")
    mix.add_argument("--format", default="jpg", choices=["jpg", "png"])
    mix.add_argument("overrides", nargs="*",
                     help="data.* fields of the training images: data.source=imagefolder "
                          "(default), data.path=..., data.train_split=...")

    probe = commands.add_parser(
        "probe", help="train a linear or MLP head on a frozen teacher's features (lr grid "
        "searched); its output folder is a teacher: teacher.probe=DIR",
        description="e.g. `scalekd probe teacher.name=vit_giant_patch14_dinov2 "
                    "teacher.checkpoint=dinov2_g.safetensors data.path=/data/cub "
                    "probe.blocks=3 probe.patch_mean=false run.dir=runs/probe_cub`; writes "
                    "run.dir/probe.json and head.safetensors (scalekd/tools/probe_teacher.py)")
    probe.add_argument("overrides", nargs="*", help="section.field=value (teacher.*, data.*, "
                       "aug.interpolation/crop_pct, probe.*, run.dir, run.seed)")

    cache = commands.add_parser(
        "cache-teacher", help="store the teacher's top-k logits for K augmentation draws of "
        "every training image (teacher.mode=cached replays them)",
        description="Run the teacher once over --draws stored augmentation draws of each "
                    "training image and keep its --topk log-probabilities, in shards with an "
                    "index, e.g. `scalekd cache-teacher --recipe recipes/in1k_a1.py --out "
                    "/data/beitv2_cache data.path=/data/imagenet`; train on it with the same "
                    "recipe and teacher.mode=cached teacher.cache=/data/beitv2_cache. Running "
                    "the same command again finishes an interrupted cache; under `accelerate "
                    "launch` the processes share the shards.")
    cache.add_argument("--out", required=True, type=Path, help="folder for the cache")
    cache.add_argument("--recipe", type=Path,
                       help="the training recipe file (its augmentation is the cache's); "
                            "default: the library's defaults")
    cache.add_argument("--draws", type=int, default=10,
                       help="K, augmentation draws per image; epoch e replays draw e mod K")
    cache.add_argument("--topk", type=int, default=10, help="k, logits kept per crop")
    cache.add_argument("--shard-size", type=int, default=10_000, help="images per shard file")
    cache.add_argument("--batch-size", type=int, default=64,
                       help="crops per teacher forward, per process")
    cache.add_argument("overrides", nargs="*",
                       help="recipe overrides: teacher.*, data.*, aug.*, student.name (its "
                            "normalisation)")
    args = parser.parse_args(argv)
    if args.command == "train":
        sys.argv = [args.recipe, *args.overrides]
        runpy.run_path(args.recipe, run_name="__main__")
    elif args.command == "eval":
        _eval(args)
    elif args.command == "export":
        _export(args)
    elif args.command == "push":
        _push(args)
    elif args.command == "report":
        from scalekd.diagnostics.report import plot_report

        for path in plot_report(args.runs, args.out or args.runs[0] / "report", args.x):
            print(path)
    elif args.command == "diagnose":
        _diagnose(args)
    elif args.command == "probe":
        run_probe(Recipe(), args.overrides)
    elif args.command == "make-beton":
        from scalekd.data.beton import make_betons

        try:
            cfg = apply_overrides(Recipe(), args.overrides).data
            paths = make_betons(cfg, args.out, write_mode=args.write_mode,
                                max_side=args.max_side, jpeg_quality=args.jpeg_quality,
                                compress_probability=args.compress_probability,
                                smart_threshold=args.smart_threshold, workers=args.workers)
        except (RecipeError, ValueError) as err:
            print(f"scalekd make-beton: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        print("wrote " + ", ".join(str(p) for p in paths))
    elif args.command == "mix":
        _mix(args)
    elif args.command == "cache-teacher":
        _cache_teacher(args)

def _mix(args) -> None:
    import dataclasses

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
        cfg = apply_overrides(Recipe(), args.overrides).data
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
    import torch
    from accelerate import PartialState

    from scalekd.tools.cache_teacher import cache_teacher, writer_problems

    base = runpy.run_path(str(args.recipe))["recipe"]() if args.recipe else Recipe()
    try:
        recipe = apply_overrides(base, args.overrides)
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

    run = SavedRun(args.run, args.overrides, args.student)
    metrics = evaluate_run(run, args.weights, args.ema, args.teacher, tuple(args.labels))
    print(format_report(metrics))
    print(write_json(metrics, args.out or args.run / "eval.json"))


def _export(args) -> None:
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
