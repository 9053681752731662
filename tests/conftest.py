"""Fixtures shared by the test suite."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed on CPU, without the detection warning
sys.path.insert(0, str(Path(__file__).parent))  # `helpers` importable whatever the import mode

from helpers.runs import tiny_overrides, write_tiny_teacher  # noqa: E402


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """Random weights of the tiny ViT teacher (10 classes), as a safetensors file."""
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher") / "teacher.safetensors")


@pytest.fixture(scope="session")
def tiny_run(tiny_teacher):
    """`tiny_run(run_dir, *extra_overrides)`: the overrides of a KD run of seconds (see
    helpers.runs.tiny_overrides)."""
    return lambda run_dir, *extra: tiny_overrides(run_dir, tiny_teacher, *extra)

