"""Fixtures shared by the test suite."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed on CPU, without the detection warning
sys.path.insert(0, str(Path(__file__).parent))  # `helpers` importable whatever the import mode

from helpers.caches import cache_run, write_cache  # noqa: E402
from helpers.runs import tiny_overrides, train_in_process, write_tiny_teacher  # noqa: E402

pytest_plugins = ["helpers.ci_skips"]  # under CI, a skip fails


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """Random weights of the tiny ViT teacher (10 classes), as a safetensors file."""
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher") / "teacher.safetensors")


@pytest.fixture(scope="session")
def tiny_run(tiny_teacher):
    """`tiny_run(run_dir, *extra_overrides)`: the overrides of a KD run of seconds (see
    helpers.runs.tiny_overrides)."""
    return lambda run_dir, *extra: tiny_overrides(run_dir, tiny_teacher, *extra)



@pytest.fixture(scope="session")
def trained_tiny_run(tmp_path_factory, tiny_run):
    """A finished tiny KD run with a second student (`alone`, no teacher, with an EMA) beside
    the KD one, logged every step: what the evaluation and diagnostics commands read."""
    run_dir = tmp_path_factory.mktemp("trained") / "kd_run"
    train_in_process(tiny_run(run_dir, "run.log_every=1",
                              "students.alone.distill.method=supervised",
                              "students.alone.distill.weights={}",
                              "students.alone.ema.decay=0.9"))
    return run_dir


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, tiny_teacher):
    """A tiny teacher cache (scalekd.data.teacher_cache): (its folder, the overrides of the run
    it was written for)."""
    base = tmp_path_factory.mktemp("cache")
    overrides = cache_run(base / "run", tiny_teacher)
    write_cache(base / "cache", overrides)
    return base / "cache", overrides
