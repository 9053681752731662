"""Tests of optional extras (ffcv, mix): skipped where the extra is missing, except under CI
(CI=...), where its absence is a failure: CI installs every extra (.ci/run) and must not skip
their tests silently."""

from __future__ import annotations

import os
from typing import Optional

import pytest


def require_extra(problem: Optional[str]) -> None:
    """Skip (or, under CI, fail) the calling test module when `problem` says what is missing."""
    if problem and os.environ.get("CI"):
        pytest.fail(f"CI is set and {problem}", pytrace=False)
    if problem:
        pytest.skip(problem, allow_module_level=True)
