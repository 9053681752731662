"""A scalekd training run as a test sees it: `python distributed_run.py OVERRIDES...`, alone or
under `accelerate launch`. Before training it patches two seams of the engine to record, per
process, how many parameter elements the student engine and the teacher engine hold locally
(`ds_tensor`, the ZeRO-3 shard) against the full count (`ds_numel`), in
RUN_DIR/sharding/rank{R}.json; and it records every torch.load call (file, weights_only) in
RUN_DIR/loads/rank{R}.json when the run ends, so a test can check how a resume read its
checkpoint. With SCALEKD_TEST_NONFINITE=STEP:RANK:TERM, loss term TERM of the recipe's student
turns NaN at optimiser step STEP on rank RANK (the only seam into training itself: a divergence
injected on one rank)."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.nn as nn

import scalekd.engine.teachers as teachers
import scalekd.engine.trainer as trainer
from scalekd.cli import run_recipe
from scalekd.recipe import Recipe


def param_counts(module: nn.Module) -> dict:
    params = list(module.parameters())
    sharded = [p for p in params if hasattr(p, "ds_tensor")]
    return {
        "params": len(params),
        "zero3_params": len(sharded),
        "local": sum(p.ds_tensor.numel() if hasattr(p, "ds_tensor") else p.numel()
                     for p in params),
        "full": sum(p.ds_numel if hasattr(p, "ds_numel") else p.numel() for p in params),
        # outside a gather, a ZeRO-3 parameter's own data is an empty placeholder
        "materialised": sum(p.numel() for p in params),
    }


def main(argv: list[str]) -> None:
    record: dict = {}
    build_accelerator, shard_teacher = trainer.build_accelerator, teachers.shard_teacher

    def recording_build_accelerator(recipe, **kwargs):
        accelerator = build_accelerator(recipe, **kwargs)
        prepare = accelerator.prepare

        def recording_prepare(*args, **kwargs):
            prepared = prepare(*args, **kwargs)
            model = prepared[0] if isinstance(prepared, tuple) else prepared
            record.update(rank=accelerator.process_index, world=accelerator.num_processes,
                          distributed_type=str(accelerator.distributed_type),
                          engine=type(model).__name__, student=param_counts(model),
                          zero_stage=getattr(model, "zero_optimization_stage", lambda: None)())
            _write(recipe, record)
            return prepared

        accelerator.prepare = recording_prepare
        return accelerator

    def recording_shard_teacher(teacher, recipe):
        shard_teacher(teacher, recipe)  # before the students are prepared
        record.setdefault("rank", torch.distributed.get_rank())
        record.update(teacher_engine=type(teacher.engine).__name__,
                      teacher=param_counts(teacher.engine.module))
        _write(recipe, record)

    loads: list[dict] = []
    torch_load = torch.load

    def recording_load(f, *args, **kwargs):
        loads.append({"file": str(f), "weights_only": kwargs.get("weights_only", "default")})
        return torch_load(f, *args, **kwargs)

    if os.environ.get("SCALEKD_TEST_NONFINITE"):
        inject_nonfinite(*os.environ["SCALEKD_TEST_NONFINITE"].split(":"))
    trainer.build_accelerator = recording_build_accelerator
    teachers.shard_teacher = recording_shard_teacher
    torch.load = recording_load
    result = run_recipe(Recipe(), argv, exit_when_stopped=False)  # records a stopped run too
    folder = result.run_dir / "loads"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{record['rank']}.json").write_text(json.dumps(loads, indent=2))
    print(f"distributed_run: done, {result.steps} steps, {result.metrics}", flush=True)


def inject_nonfinite(step: str, rank: str, term: str) -> None:
    """Term `term` of every student becomes NaN in optimiser step `step` (1-based; one
    micro-batch a step) on process `rank`."""
    from scalekd.distill.base import Distiller

    total, calls = Distiller.total, {}

    def total_with_nan(self, terms):
        calls[id(self)] = calls.get(id(self), 0) + 1
        here = int(os.environ.get("RANK", "0")) == int(rank)
        if here and calls[id(self)] == int(step):
            terms[term] = terms[term] * float("nan")  # the dict the trainer checks
        return total(self, terms)

    Distiller.total = total_with_nan


def _write(recipe, record: dict) -> None:
    folder = recipe.run.path / "sharding"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"rank{record['rank']}.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
