"""Processes, devices, precision and ZeRO, all through accelerate (DeepSpeed under it)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from accelerate import Accelerator, DeepSpeedPlugin
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs

from scalekd.engine.logging import run_trackers
from scalekd.models.teacher import FrozenTeacher
from scalekd.recipe import (Recipe, grad_accum_steps, launcher_precision, per_process_batch,
                            resolved_precision, resolved_zero_stage)


def several_processes() -> bool:
    """Whether torch.distributed runs more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def any_rank(flag: bool, group=None, device: torch.device = torch.device("cpu")) -> bool:
    """Whether `flag` is set on any process (a max all-reduce over `group`, with a tensor on
    `device`); in a single process, `flag` itself. Every process must call it (a collective)."""
    if not several_processes():
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
    return bool(value.item())


def launched_world_size() -> int:
    """The process count `accelerate launch` / torchrun set up, readable before any setup."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_accelerator(recipe: Recipe, load_universal: bool = False,
                      resuming: bool = False) -> Accelerator:
    """`load_universal`: the run resumes from a DeepSpeed universal checkpoint; `resuming`: from
    a checkpoint (its trackers continue the earlier jobs' W&B and MLflow runs)."""
    stage = resolved_zero_stage(recipe)
    on_cpu = not torch.cuda.is_available()
    handlers, plugin = [], None
    if stage > 0:
        # The DeepSpeed config is derived from the recipe; of a launcher's DeepSpeed fields only
        # the stage counts, and resolved_zero_stage has read it. accelerate refuses a full
        # config beside launcher fields it would ignore, so those are dropped here.
        os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
        config = deepspeed_config(recipe, stage)
        if load_universal:
            config["checkpoint"] = {"load_universal": True}
        plugin = DeepSpeedPlugin(hf_ds_config=config,
                                 zero3_init_flag=False)
        if on_cpu and "LOCAL_RANK" in os.environ:
            # DeepSpeed on CPU: without it every rank believes it is rank 0
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
    if not recipe.data.labels:
        # without labels no method reads the class logits: a headless ViT student's final norm
        # (feeding only its pooled output) gets no gradient, which plain DDP refuses (issue 21)
        handlers.append(DistributedDataParallelKwargs(find_unused_parameters=True))
    return Accelerator(
        # without cpu=True accelerate sees no GPU and silently runs each CPU process alone
        # (no DDP, no reductions); with it, DeepSpeed would be ignored, hence stage == 0
        cpu=on_cpu and stage == 0,
        mixed_precision=resolved_precision(recipe),
        gradient_accumulation_steps=grad_accum_steps(recipe, launched_world_size()),
        deepspeed_plugin=plugin,
        kwargs_handlers=handlers,
        log_with=run_trackers(recipe, resuming),  # run.log_with, one run per student
    )


def precision_note(recipe: Recipe) -> str:
    """Where the student's mixed precision comes from, said when the run starts; a recipe's
    explicit run.precision beats the launcher's, and says so."""
    precision, launcher = resolved_precision(recipe), launcher_precision()
    if recipe.run.precision == "auto":
        source = "the launcher's" if launcher else "no launcher setting"
        return f"mixed precision: {precision} (run.precision=auto: {source})"
    if launcher and launcher != precision:
        return (f"mixed precision: {precision}: run.precision={precision} overrides the "
                f"launcher's mixed_precision={launcher}")
    return f"mixed precision: {precision} (run.precision)"


def release_accelerate_state() -> None:
    """Forget accelerate's process-wide state (precision, device, DeepSpeed plugin), which
    otherwise pins every later Accelerator of this process to the first run's choices. The
    process group itself stays up."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def deepspeed_config(recipe: Recipe, stage: int) -> dict:
    world, precision = launched_world_size(), resolved_precision(recipe)
    return {
        "train_batch_size": recipe.data.batch_size,
        "train_micro_batch_size_per_gpu": per_process_batch(recipe, world),
        "gradient_accumulation_steps": grad_accum_steps(recipe, world),
        "gradient_clipping": recipe.optim.clip_grad,
        "zero_optimization": {
            "stage": stage,
            # export gathers the full student from the shards
            "stage3_gather_16bit_weights_on_model_save": True,
        },
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": precision == "fp16"},
        # our optimisers come from timm; element-wise ones are exact under ZeRO (see validate)
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**9,
    }


def shard_teacher(teacher: FrozenTeacher, recipe: Recipe) -> None:
    """Give the teacher its own ZeRO-3 inference engine, apart from the student's."""
    import deepspeed

    config = {
        "train_micro_batch_size_per_gpu": per_process_batch(recipe, launched_world_size()),
        "zero_optimization": {"stage": 3},
        "bf16": {"enabled": teacher.dtype == torch.bfloat16},
    }
    engine, *_ = deepspeed.initialize(model=teacher.model, config=config)
    engine.eval()
    teacher.engine = engine
