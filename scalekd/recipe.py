"""The typed description of a run: a tree of dataclasses, dotted-key overrides, (de)serialisation.

A recipe file builds a `Recipe`, the command line overrides any leaf with `section.field=value`
(`optim.lr=3e-3`, `student.kwargs.img_size=32`). This module is data only and imports nothing
of the package (the bottom layer, pyproject.toml's import contracts): the checks of the values
belong to the components that use them, and `scalekd.engine.validation.validate` composes them.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional


class RecipeError(ValueError):
    """A recipe that cannot run; the message lists each problem and how to fix it."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("the recipe cannot run:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass
class RunCfg:
    name: str = "run"
    dir: str = "runs/{name}"  # `{name}` is replaced by run.name
    seed: int = 0
    epochs: int = 100
    # student mixed precision: auto (the launcher's: `accelerate launch --mixed_precision` or
    # its config file's mixed_precision; no without a launcher) | no | bf16 | fp16
    precision: str = "auto"
    # torch's intra-op threads in the training process; 0: auto: OMP_NUM_THREADS if set (as
    # `accelerate launch` sets it), else torch's count (the cores) less data.workers, at least 1
    threads: int = 0
    log_every: int = 10  # steps between scalar writes
    # where the scalars go: accelerate's trackers, comma-separated: tensorboard (in run.dir/tb),
    # wandb, mlflow (the `track` extra; docs/tracking.md)
    log_with: str = "tensorboard"
    max_steps: int = 0  # stop after this many optimiser steps (0: run all epochs); for smoke runs
    # end this job early, checkpointed, to be resumed by the next one (0: off): before this many
    # seconds of wall clock (a scheduler's time limit), or after this many steps (job chains)
    time_budget_s: float = 0.0
    steps_per_job: int = 0
    # a non-finite loss term: stop (an error naming the step and term; nothing non-finite is
    # saved) | skip (that optimiser step is not applied; more than max_skipped_steps in a job
    # stop the run). skip reads one boolean from the device per step (engine/divergence.py)
    on_nonfinite: str = "stop"
    max_skipped_steps: int = 10

    @property
    def path(self) -> Path:
        return Path(self.dir.format(name=self.name))


@dataclass
class DataCfg:
    source: str = "imagefolder"  # see scalekd.data.SOURCES
    path: str = ""  # root of the data set (imagefolder: holds train/ and val/)
    train_split: str = "train"
    val_split: str = "val"
    batch_size: int = 256  # global batch: summed over processes and accumulation steps
    grad_accum: int = 1  # micro-batches per optimiser step
    device_batch: int = 0  # the largest micro-batch a device holds: if set, grad_accum is derived
    #                        (the fewest micro-batches that keep each within it)
    eval_batch_size: int = 0  # per process; 0: the training per-process batch
    workers: int = 4
    input_size: int = 224  # the student's resolution
    labels_per_class: int = 0  # keep this many labelled training images per class (0: all)
    classes: tuple[int, ...] = ()  # only these classes of the source, relabelled 0..k-1 in this
    #                                order (e.g. (5, 6, 7, 8, 9)); (): all
    unlabelled: bool = False  # with labels_per_class: keep the other images, without labels,
    #                           as a transfer set that feeds only the distillation terms
    # false: train on the training images alone, every label dropped (an imagefolder source
    # reads every image under data.path/<train_split>, class folders or none), with a method
    # that reads no labels or class logits (distill.method=features); the student has no
    # classifier and nothing evaluates top-1 (`scalekd probe` the export instead)
    labels: bool = True
    num_samples: int = 0  # synthetic source: images per split
    # a folder written by `scalekd mix`: its images join training, unlabelled (-1, so only the
    # distillation terms see them), half of every micro-batch (sampler.MixedBatches)
    mixed: str = ""
    # a corrupt or truncated image, a non-image file: error (naming the file) | skip (leave it
    # out or replace it by the next readable image, warn, count in TensorBoard data/skipped)
    bad_files: str = "error"
    # ffcv source: read the .beton through the OS page cache (shared by the processes of a
    # node; right when it fits in RAM) or, false, FFCV's own process cache loading what each
    # epoch needs
    os_cache: bool = True
    # ffcv source: processes applying the per-sample augmentations FFCV's decoder cannot
    # (RandAugment, colour jitter) a batch ahead of the loop; 0: in the main process, -1: as
    # many as data.workers
    augment_workers: int = -1
    # imagefolder source: workers hand over uint8 crops (4x less to move), normalised per batch
    # in the main process, on the device (timm's prefetcher split of its transforms)
    uint8: bool = False


@dataclass
class AugCfg:
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    color_jitter: float = 0.0
    auto_augment: str = ""  # timm string, e.g. rand-m7-mstd0.5
    re_prob: float = 0.0  # random erasing
    repeated_aug: int = 1  # timm-style repeated augmentation count (3 in DeiT/A1/A2)
    mixup: float = 0.0
    cutmix: float = 0.0
    smoothing: float = 0.0  # label smoothing of the hard-label target
    # the resize of training crops: a timm name, or random (bilinear or bicubic per crop);
    # evaluation uses it too, or for random the student's own (scalekd.data.loader)
    interpolation: str = "bicubic"
    crop_pct: float = 0.875  # evaluation centre crop


@dataclass
class StudentCfg:
    name: str = "resnet50"
    pretrained: bool = False
    checkpoint: str = ""  # initial weights from a file (safetensors or torch)
    drop_path: float = 0.0
    kwargs: dict[str, Any] = field(default_factory=dict)  # passed to timm.create_model
    channels_last: bool = False  # NHWC weights and inputs (faster convolutions: CNN students)
    compile: bool = False  # torch.compile the student's forward with the distiller's loss terms


@dataclass
class TeacherCfg:
    name: str = ""  # any timm model name; empty: no teacher
    checkpoint: str = ""  # weights file on disk (safetensors, or a torch checkpoint)
    pretrained: bool = False  # load timm's weights for `name` from the Hugging Face hub
    kwargs: dict[str, Any] = field(default_factory=dict)
    # the teacher's resolution; 0: its own if its model takes one only (timm's data config:
    # ViT, Swin, Mixer at their img_size), else the student's (models.teacher.teacher_input_size)
    input_size: int = 0
    dtype: str = "bf16"  # bf16 | fp32 for the teacher's forward
    # sdpa | eager | xformers, for the teacher's and CAP's attention (scalekd/models/attention.py)
    attention: str = "sdpa"
    channels_last: bool = False  # NHWC weights and inputs (faster convolutions: CNN teachers)
    compile: bool = False  # torch.compile the teacher's forward (logit methods)
    placement: str = "replicated"  # replicated | zero3 (its own ZeRO-3 inference engine)
    # a `scalekd probe` output folder: the teacher is this encoder (name, checkpoint) with the
    # head trained there on its frozen features; logit methods only
    probe: str = ""
    # online: run the teacher on every batch | cached: replay the crops and top-k logits that
    # `scalekd cache-teacher` stored in `cache` (logit methods; scalekd.data.teacher_cache)
    mode: str = "online"
    cache: str = ""
    # function matching (Beyer et al. 2022; recipes/function_matching.py): the students match
    # the teacher's outputs on the very pixels they see, Mixup'd ones included, so the teacher
    # must be asked about each mixed image. A teacher cache cannot be: it mixes its stored
    # outputs on the two unmixed crops instead, so teacher.mode=cached (and `scalekd
    # cache-teacher`) refuse this; the online teacher always gets the student's batch
    function_matching: bool = False


@dataclass
class DistillCfg:
    method: str = "kd"  # see scalekd.distill.DISTILLERS
    temperature: float = 1.0  # T of kd, bkd, bkl, dkd; tau of dist
    hard_loss: str = "bce"  # ce | bce | none
    bce_target_thresh: Optional[float] = None
    # every binary cross-entropy over classes (the bce label loss, bkd/bkl): mean (over batch x
    # classes: timm's BinaryCrossEntropy and VanillaKD's released BinaryKLDiv) | sum_classes
    # (summed over classes, averaged over the batch: mmcls's CrossEntropyLoss(use_sigmoid=True)
    # with avg_factor=batch, ScaleKD's label loss; VanillaKD's eq. 3). On ImageNet the two
    # differ by 1000x, which moves the term's weight against the others as much
    bce_reduction: str = "mean"
    weights: dict[str, float] = field(default_factory=dict)  # per loss term; method defaults
    # the method's own settings (its Distiller.Options), e.g. distill.options.margin=0.5 for a
    # method that declares a `margin`: a new method needs no field here
    options: dict[str, Any] = field(default_factory=dict)
    # dkd: ramp its TCKD/NCKD weights by min(e / this, 1) in the e-th epoch (1-based, per
    # epoch, as mdistiller); 0: off (VanillaKD's; mdistiller's ImageNet setting of 1 is no ramp)
    dkd_warmup_epochs: float = 0.0
    # scalekd: feature mimicking weight w, split beta*w spatial / (1-beta)*w frequency view
    # (w=0.14, beta=4/7: the authors' 0.08 / 0.06); beta=1 drops the frequency view
    dfm_weight: float = 0.14
    dfm_beta: float = 4 / 7
    tpp: bool = True  # scalekd: teacher parameter perception (the proxy path)
    # scalekd: the proxy path's depth in teacher blocks: an isotropic teacher's last N blocks
    # (the authors: 2 of EVA-L's 24); a hierarchical teacher's proxy is its last stage (Swin-L:
    # 2 blocks), N must be that stage's count; 0: the last stage, or the last quarter of blocks
    tpp_blocks: int = 0
    cap_heads: tuple[int, int] = (0, 0)  # scalekd: CAP heads at stage 3, 4; 0: authors' values
    # scalekd: extra factor on CAP's attention logits (the authors' per pair: 5, 1 or 0.2)
    cap_softmax_scale: float = 5.0
    # scalekd: the norm after CAP's 3x3 conv: auto (the authors': layernorm for Swin students,
    # batchnorm for every other) | batchnorm | layernorm
    cap_norm: str = "auto"


@dataclass
class OptimCfg:
    name: str = "lamb"  # any timm optimiser name
    lr: float = 5e-3  # for the global batch
    weight_decay: float = 0.01
    momentum: float = 0.9
    clip_grad: float = 0.0  # max global grad norm; 0: off
    sched: str = "cosine"  # any timm scheduler name
    decay_epochs: float = 30  # sched=step: multiply the rate by decay_rate every this many epochs
    decay_rate: float = 0.1
    warmup_epochs: float = 5
    warmup_lr: float = 1e-6
    min_lr: float = 1e-6


@dataclass
class EmaCfg:
    decay: float = 0.0  # 0: no EMA of the student


@dataclass
class CheckpointCfg:
    every_steps: int = 0  # 0: only at epoch ends
    every_epochs: int = 1  # 0: none at epoch ends (every_steps, a stop and the end still save)
    keep: int = 3
    # auto: the newest intact checkpoint of run.dir (checkpoints but none intact: refused) |
    # never (refused in a used run.dir) | overwrite (delete a previous run's outputs, then
    # start) | a checkpoint folder (verified likewise)
    resume: str = "auto"
    on_error: str = "stop"  # a checkpoint that cannot be written (disk full): stop | continue


@dataclass
class DistributedCfg:  # the recipe's `dist` section (its name in recipes and checkpoints)
    zero_stage: int = -1  # -1: as the launcher configures (DDP unless --use_deepspeed); 0, 2 or 3


@dataclass
class EvalCfg:
    every_epochs: int = 1  # 0: only the final evaluation
    teacher: bool = True  # evaluate the teacher once at the start


@dataclass
class ProbeCfg:
    """`scalekd probe`: a head trained on the frozen teacher's features
    (scalekd/tools/probe_teacher.py)."""

    head: str = "mlp"  # linear | mlp (one hidden layer)
    hidden: int = 0  # the MLP's width; 0: the teacher's embedding width
    blocks: int = 4  # class-token encoders: the class tokens of the last 1..4 blocks
    patch_mean: bool = True  # and the mean of the last block's patch tokens
    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # AdamW, grid searched
    epochs: int = 30
    batch_size: int = 256
    weight_decay: float = 0.0
    # share of the training images held out (stratified, seeded) to pick the lr; 0: pick on
    # data.val_split (a data set with a validation split of its own)
    val_fraction: float = 0.1
    refit: bool = True  # retrain the chosen lr on every training image (held-out ones too)


@dataclass
class Recipe:
    run: RunCfg = field(default_factory=RunCfg)
    data: DataCfg = field(default_factory=DataCfg)
    aug: AugCfg = field(default_factory=AugCfg)
    student: StudentCfg = field(default_factory=StudentCfg)
    teacher: TeacherCfg = field(default_factory=TeacherCfg)
    distill: DistillCfg = field(default_factory=DistillCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    ema: EmaCfg = field(default_factory=EmaCfg)
    checkpoint: CheckpointCfg = field(default_factory=CheckpointCfg)
    dist: DistributedCfg = field(default_factory=DistributedCfg)  # processes, ZeRO
    eval: EvalCfg = field(default_factory=EvalCfg)
    probe: ProbeCfg = field(default_factory=ProbeCfg)
    # More students trained beside this one on the same batches and the same teacher forward
    # (VanillaKD trains students this way to pay the teacher once): name -> overrides of this
    # recipe's student.*, distill.*, optim.* and ema.* fields, e.g.
    # {"dkd": {"distill.method": "dkd"}} or, on the command line, students.dkd.distill.method=dkd
    students: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Several frozen teachers at once, for a method that reads them all (distill.method=
    # multi_teacher): name -> overrides of TeacherCfg's defaults (not of `teacher`, which stays
    # empty), e.g. {"vit": {"name": "vit_small_patch16_224", "checkpoint": "vit.safetensors"}}
    # or, on the command line, teachers.vit.name=vit_small_patch16_224. The first is the main one
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# overrides


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """Return a copy of `recipe` with each `dotted.key=value` applied; values typed by the field."""
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise RecipeError([f"override {item!r} is not of the form section.field=value"])
        _set(recipe, key.strip().split("."), raw.strip(), key.strip())
    return recipe


def recipe_from_dict(spec: dict[str, Any]) -> Recipe:
    """The Recipe a run recorded (`Recipe.to_dict()`, as in a run's recipe.json)."""
    # JSON turns tuples into lists; every sequence field of a recipe is a tuple
    return apply_overrides(Recipe(), [
        f"{key}={_as_text(tuple(value) if isinstance(value, list) else value)}"
        for key, value in flat_items(spec)])


def _set(node: Any, parts: list[str], raw: str, full_key: str) -> None:
    head, rest = parts[0], parts[1:]
    if isinstance(node, dict):
        if rest:
            node = node.setdefault(head, {})
            return _set(node, rest, raw, full_key)
        node[head] = _literal(raw)
        return
    names = [f.name for f in dataclasses.fields(node)]
    if head not in names:
        hint = difflib.get_close_matches(head, names, n=1)
        where = full_key[: -len(".".join(parts))] or "the recipe"
        raise RecipeError(
            [f"unknown key {full_key!r}: {where} has no field {head!r}"
             + (f"; did you mean {hint[0]!r}?" if hint else f"; fields are {', '.join(names)}")]
        )
    hints = typing.get_type_hints(type(node))
    value = getattr(node, head)
    if rest:
        if not (dataclasses.is_dataclass(value) or isinstance(value, dict)):
            raise RecipeError([f"unknown key {full_key!r}: {head!r} is a value, not a section"])
        return _set(value, rest, raw, full_key)
    try:
        setattr(node, head, coerce(raw, hints[head]))
    except (ValueError, SyntaxError) as err:
        raise RecipeError([f"{full_key}={raw!r}: {err}"]) from None


def _literal(raw: str) -> Any:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw


def coerce(raw: str, hint: Any) -> Any:
    """The command-line text `raw` as a value of the type `hint` (ValueError if it is not)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if raw.lower() in ("none", "null", ""):
            return None
        return coerce(raw, next(a for a in args if a is not type(None)))
    if hint is bool:
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if hint in (int, float):
        try:
            value = float(raw) if hint is float else int(raw)
        except ValueError:
            raise ValueError(f"expected {hint.__name__}") from None
        return value
    if hint is str:
        return raw
    if origin in (tuple, dict, list):
        value = ast.literal_eval(raw)
        if not isinstance(value, origin):
            raise ValueError(f"expected a {origin.__name__} literal such as {_example(origin)}")
        return value
    raise ValueError(f"cannot parse a value of type {hint}")


def _example(kind: type) -> str:
    return {tuple: "(0.08,1.0)", dict: "{'img_size':32}", list: "[1,2]"}[kind]


# ---------------------------------------------------------------------------------------------
# several students


# what may differ between the students of one run (the rest is one batch, one teacher pass)
PER_STUDENT_SECTIONS = ("student", "distill", "optim", "ema")


def student_recipes(recipe: Recipe) -> dict[str, Recipe]:
    """Each student's own recipe: "" for the recipe's student, then `recipe.students` by name."""
    base = dataclasses.replace(recipe, students={})
    out = {"": base}
    for name, spec in recipe.students.items():
        out[name] = apply_overrides(base, [f"{key}={_as_text(value)}"
                                           for key, value in flat_items(spec)])
    return out


def teacher_cfgs(recipe: Recipe) -> dict[str, TeacherCfg]:
    """Each of `recipe.teachers` as a TeacherCfg, by name, in the recipe's order (the first is
    the main teacher). A key TeacherCfg does not have is a RecipeError naming it."""
    out = {}
    for name, spec in recipe.teachers.items():
        if not isinstance(spec, dict):
            raise RecipeError([f"teachers.{name}={spec!r}: give the teacher's fields, e.g. "
                               f"teachers.{name}.name=resnet18 teachers.{name}.checkpoint=..."])
        cfg = TeacherCfg()
        for key, value in flat_items(spec):
            _set(cfg, key.split("."), _as_text(value), f"teachers.{name}.{key}")
        out[name] = cfg
    return out


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else repr(value)


def flat_items(spec: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """(dotted key, value) for every leaf of a nested dict of overrides."""
    items = []
    for key, value in spec.items():
        if isinstance(value, dict) and value:
            items += flat_items(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def recipe_changes(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> list[str]:
    """`key: old -> new` for every leaf that differs between two `Recipe.to_dict()` trees. A
    field the earlier recipe does not have (added to scalekd since it was written) is not a
    change: that run had its default."""
    changes = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if prefix and key not in before:
            continue
        if isinstance(old, dict) and isinstance(new, dict) and prefix.count(".") < 1:
            changes += recipe_changes(old, new, f"{prefix}{key}.")
        elif old != (list(new) if isinstance(new, tuple) else new):
            changes.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return changes


def grad_accum_steps(recipe: Recipe, world_size: int) -> int:
    """Micro-batches per optimiser step: data.grad_accum, or with data.device_batch set the
    fewest whose equal micro-batches fit in it (0 where none does), so that a global batch keeps
    its size whatever the process count."""
    d = recipe.data
    if not d.device_batch:
        return d.grad_accum
    for accum in range(1, max(d.batch_size // world_size, 0) + 1):
        per_step = world_size * accum
        if d.batch_size % per_step == 0 and d.batch_size // per_step <= d.device_batch:
            return accum
    return 0


def per_process_batch(recipe: Recipe, world_size: int) -> int:
    """The micro-batch of one process."""
    return recipe.data.batch_size // (world_size * grad_accum_steps(recipe, world_size))


PRECISIONS = ("no", "bf16", "fp16")


def launcher_precision() -> Optional[str]:
    """The mixed precision `accelerate launch` configured (its --mixed_precision, else its config
    file's mixed_precision; it hands either over as ACCELERATE_MIXED_PRECISION, which a user may
    also set by hand), or None without one."""
    value = os.environ.get("ACCELERATE_MIXED_PRECISION")
    return value.lower() if value else None


def resolved_precision(recipe: Recipe) -> str:
    """The student's mixed precision in force: run.precision if set, else the launcher's, else
    no."""
    if recipe.run.precision != "auto":
        return recipe.run.precision
    return launcher_precision() or "no"


def resolved_zero_stage(recipe: Recipe) -> int:
    """The ZeRO stage in force: the recipe's if set, else what `accelerate launch` configured."""
    if recipe.dist.zero_stage >= 0:
        return recipe.dist.zero_stage
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return int(os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2"))
    return 0
