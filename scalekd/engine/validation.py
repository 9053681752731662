"""`validate`: every check of a recipe before anything is built, composed from the components'.

Each component owns the checks of its settings and says what it combines with: the student and
the teacher provider (models), the methods (distill, through its registry), the sources, the
loaders, the teacher cache and the mixed set (data, through the source registry), the probed
teacher, the optimiser, the trackers (logging: run.log_with) and the engine's own
run/checkpoint/ema/dist/eval settings (here). This module only looks the method and the source
up, hands each component what it combines with, and keeps the order in which users read the
problems. Tools add their own checks on top (scalekd.tools: `scalekd probe`, `scalekd
cache-teacher`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from scalekd.data.classes import known_classes, source_problems
from scalekd.data.loader import (batch_problems, data_setting_problems, labels_problems,
                                 train_data_problems, unlabelled_problems)
from scalekd.data.mix_folder import mixed_set_problems
from scalekd.data.teacher_cache import cache_problems
from scalekd.distill import DISTILLERS
from scalekd.distill.base import (Distiller, distill_setting_problems, distill_value_problems,
                                  logit_methods, unknown_method)
from scalekd.engine.logging import tracker_problems
from scalekd.engine.optimisation import (optim_range_problems, optim_value_problems,
                                         optimisation_problems, zero_optimiser_problems)
from scalekd.models import data_config
from scalekd.models.probed_teacher import probe_problems
from scalekd.models.student import (model_problems, student_name_problems, student_size_problems,
                                    student_value_problems, student_zero_problems)
from scalekd.models.teacher import (compile_problems, online_teacher_problems,
                                    teacher_input_size, teacher_setting_problems,
                                    teacher_size_problems, teachers_problems)
from scalekd.models.weights import weights_file_problems
from scalekd.recipe import (PER_STUDENT_SECTIONS, PRECISIONS, Recipe, RecipeError, TeacherCfg,
                            flat_items, grad_accum_steps, resolved_precision,
                            resolved_zero_stage, student_recipes, teacher_cfgs)


def validate(recipe: Recipe, world_size: int = 1) -> None:
    """Check the recipe before any compute; raise one RecipeError listing every problem."""
    r, problems = recipe, []
    student = student_name_problems(r.student)
    problems += student or student_size_problems(r.student, r.data.input_size)
    method = DISTILLERS.get(r.distill.method)
    distils = method is None or method.needs_teacher  # an unknown method is reported alone
    if method is None:
        problems.append(unknown_method(r.distill.method))
    elif method.needs_teacher:
        if method.reads_teachers:
            problems += _several_teachers_problems(r, method)
        elif r.teacher.mode != "cached":  # a cached teacher is the cache's (cache_problems)
            problems += online_teacher_problems(r.teacher, r.distill.method)
        problems += method.settings_problems(r)
        problems += compile_problems(r.teacher, r.distill.method, method.needs_features)
    if r.teachers and method is not None and method.needs_teacher and not method.reads_teachers:
        problems.append(f"teachers.* ({', '.join(r.teachers)}) is read by methods of several "
                        f"teachers (distill.method=multi_teacher), not by "
                        f"distill.method={r.distill.method!r}: use teacher.* for one teacher")
    if method is not None:
        problems += method.options_problems(r)
    # the probe's resolution is the teacher's own, known where timm resolves its name
    if (r.teacher.probe and method is not None and method.needs_teacher
            and not model_problems("teacher.name", r.teacher.name, r.teacher.kwargs)):
        problems += probe_problems(r.teacher, r.data,
                                   teacher_input_size(r.teacher, r.data.input_size),
                                   known_classes(r.data))
    problems += cache_problems(r, method is not None and method.needs_features, logit_methods(),
                               None if student else
                               lambda: data_config(r.student.name, r.student.kwargs))
    # a cached run never loads the teacher: its weights may stay where the cache was written
    problems += weights_file_problems({
        "teacher.checkpoint": r.teacher.checkpoint if r.teacher.mode != "cached" else "",
        "student.checkpoint": r.student.checkpoint})
    problems += source_problems(r.data)
    problems += batch_problems(r, world_size)
    problems += unlabelled_problems(r, distils)
    if method is not None:
        problems += labels_problems(r, method.needs_classes(r))
    per_step = world_size * max(grad_accum_steps(r, world_size), 1)
    problems += mixed_set_problems(r, distils, per_step)

    problems += _run_precision_problems(r)
    problems += optim_range_problems(r)
    problems += distill_setting_problems(r)
    problems += teacher_setting_problems(r.teacher)
    problems += _engine_setting_problems(r)
    problems += data_setting_problems(r)
    problems += _run_control_problems(r)
    problems += tracker_problems(r.run)

    problems += _engine_value_problems(r)
    problems += student_value_problems(r.student)
    problems += teacher_size_problems(r.teacher)
    problems += distill_value_problems(r)
    problems += optim_value_problems(r)
    problems += train_data_problems(r)
    problems += optimisation_problems(r)
    problems += _students_problems(r, world_size)
    stage = resolved_zero_stage(r)
    problems += zero_optimiser_problems(r, stage)
    problems += student_zero_problems(r.student, stage)
    problems += _engine_zero_problems(r, stage)
    if problems:
        raise RecipeError(problems)


# ---------------------------------------------------------------------------------------------
# the engine's own settings: run.*, checkpoint.*, ema.*, dist.*, eval.*


def _failed(checks: list[tuple[bool, str]]) -> list[str]:
    return [msg for ok, msg in checks if not ok]


def _run_precision_problems(r: Recipe) -> list[str]:
    return _failed([
        (r.run.epochs > 0, "run.epochs must be positive"),
        (r.run.precision in ("auto", *PRECISIONS),
         f"run.precision={r.run.precision!r} must be auto (the launcher's), no, bf16 or fp16"),
        (r.run.precision != "auto" or resolved_precision(r) in PRECISIONS,
         f"the launcher's mixed precision {resolved_precision(r)!r} (ACCELERATE_MIXED_PRECISION)"
         " is not supported: launch with --mixed_precision no, bf16 or fp16, or set "
         "run.precision"),
    ])


def _engine_setting_problems(r: Recipe) -> list[str]:
    return _failed([
        (0 <= r.ema.decay < 1, "ema.decay must be in [0, 1)"),
        (r.checkpoint.keep >= 1, "checkpoint.keep must be at least 1"),
        (r.dist.zero_stage in (-1, 0, 2, 3), "dist.zero_stage must be -1 (launcher), 0, 2 or 3"),
    ])


def _run_control_problems(r: Recipe) -> list[str]:
    return _failed([
        (r.checkpoint.resume in ("auto", "never", "overwrite")
         or Path(r.checkpoint.resume).is_dir(),
         f"checkpoint.resume={r.checkpoint.resume!r} must be auto, never, overwrite or a "
         "checkpoint folder"),
        (r.checkpoint.on_error in ("stop", "continue"),
         "checkpoint.on_error must be stop or continue"),
        (r.run.time_budget_s >= 0 and r.run.steps_per_job >= 0,
         "run.time_budget_s and run.steps_per_job must be >= 0 (0: off)"),
        (r.run.on_nonfinite in ("stop", "skip"),
         f"run.on_nonfinite={r.run.on_nonfinite!r} must be stop or skip"),
        (r.run.max_skipped_steps >= 0, "run.max_skipped_steps must be >= 0"),
        (r.run.threads >= 0, f"run.threads={r.run.threads} must be >= 0 (0: auto)"),
    ])


def _engine_value_problems(r: Recipe) -> list[str]:
    try:  # formatting run.dir with run.name fails on any placeholder but {name}
        run_dir_ok = bool(r.run.name and r.run.dir and str(r.run.path))
    except (KeyError, IndexError, ValueError):
        run_dir_ok = False
    return _failed([
        (run_dir_ok, f"run.dir={r.run.dir!r} with run.name={r.run.name!r}: both must be "
         "non-empty, and run.dir may hold only the placeholder {name}"),
        (0 <= r.run.seed < 2**32, f"run.seed={r.run.seed} must be in [0, 2**32)"),
        (r.run.log_every >= 1, f"run.log_every={r.run.log_every} must be >= 1 (steps between "
         "scalar writes)"),
        (r.run.max_steps >= 0, f"run.max_steps={r.run.max_steps} must be >= 0 (0: all epochs)"),
        (r.checkpoint.every_steps >= 0, f"checkpoint.every_steps={r.checkpoint.every_steps} "
         "must be >= 0 (0: only at epoch ends)"),
        (r.checkpoint.every_epochs >= 0, f"checkpoint.every_epochs="
         f"{r.checkpoint.every_epochs} must be >= 0 (0: none at epoch ends)"),
        (r.eval.every_epochs >= 0, f"eval.every_epochs={r.eval.every_epochs} must be >= 0 "
         "(0: only the final evaluation)"),
    ])


def _engine_zero_problems(r: Recipe, stage: int) -> list[str]:
    problems = []
    if stage > 0 and r.run.on_nonfinite == "skip":
        problems.append(
            "run.on_nonfinite=skip: under DeepSpeed (ZeRO) the engine applies the update "
            "inside backward, before the loss could be checked; use run.on_nonfinite=stop "
            "or dist.zero_stage=0 (DDP)")
    if stage == 3 and r.ema.decay > 0:
        problems.append(
            "ema.decay>0 with ZeRO-3: the EMA would need the full student gathered every step; "
            "use ZeRO-2 or DDP for EMA runs, or set ema.decay=0"
        )
    return problems


def _several_teachers_problems(r: Recipe, method: type[Distiller]) -> list[str]:
    """recipe.teachers for a method that reads several teachers: present, alone (teacher.*
    left at its defaults), and each teacher valid as teacher.* is for one."""
    if not r.teachers:
        return [f"distill.method={r.distill.method!r} reads several teachers: set "
                "teachers.<name>.name=<timm model> and teachers.<name>.checkpoint=<weights> for "
                "each (the first is the main teacher)"]
    problems = []
    beside = [f"teacher.{f.name}" for f in dataclasses.fields(TeacherCfg)
              if getattr(r.teacher, f.name) != getattr(TeacherCfg(), f.name)]
    if beside:
        problems.append(f"{', '.join(beside)} set beside teachers.*: with several "
                        "teachers each has its own fields; move them to teachers.<name>.*")
    try:
        cfgs = teacher_cfgs(r)
    except RecipeError as err:
        return problems + err.problems
    problems += teachers_problems(cfgs, r.distill.method, method.teacher_needs(r).embedding)
    return problems + weights_file_problems({f"teachers.{name}.checkpoint": cfg.checkpoint
                                             for name, cfg in cfgs.items()})


def _students_problems(recipe: Recipe, world_size: int) -> list[str]:
    """recipe.students: each student's own recipe validated, and what they must share."""
    problems = []
    for name, spec in recipe.students.items():
        label = f"students.{name}"
        if not name.replace("_", "").replace("-", "").isalnum():
            problems.append(f"{label}: a student name becomes a folder; use letters, digits, _ -")
        shared = [k for k, _ in flat_items(spec) if k.split(".")[0] not in PER_STUDENT_SECTIONS]
        if shared:
            problems.append(
                f"{label} sets {shared}, which all students of a run share (one batch, one "
                f"teacher pass); only {', '.join(s + '.*' for s in PER_STUDENT_SECTIONS)} differ"
            )
            continue
        try:
            own = student_recipes(recipe)[name]
            validate(own, world_size)
        except RecipeError as err:
            problems += [f"{label}: {p}" for p in err.problems]
            continue
        if own.distill.tpp_blocks != recipe.distill.tpp_blocks:
            problems.append(f"{label}: the students share the teacher's proxy path; keep the "
                            f"recipe's distill.tpp_blocks={recipe.distill.tpp_blocks}")
    if recipe.students and resolved_zero_stage(recipe) > 0:
        problems.append("several students need DDP (dist.zero_stage=0): accelerate drives one "
                        "DeepSpeed engine per run")
    return problems
