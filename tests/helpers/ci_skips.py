"""A pytest plugin: under CI (CI set, not 0/false), a skipped test or module fails.

CI runs the default group, `-m slow` and `-m slurm` on a machine set up for all of them; a skip
there means something CI is meant to prove (Slurm, Triton, Debian's Fashion-MNIST, an extra)
was not proved, while pytest would still exit 0. A skip CI accepts (the test runs elsewhere,
e.g. in a child process) is marked `@pytest.mark.ci_may_skip`. Tests marked xfail are left
alone."""

from __future__ import annotations

import os

import pytest


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def _reason(report) -> str:
    longrepr = report.longrepr
    return longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)


def _fail(report) -> None:
    report.outcome = "failed"
    report.longrepr = (f"skipped under CI ({_reason(report)}): CI must run every test of the "
                       "groups it runs (mark a skip it accepts with @pytest.mark.ci_may_skip)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and under_ci() and not hasattr(report, "wasxfail")
            and item.get_closest_marker("ci_may_skip") is None):
        _fail(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and under_ci():  # pytest.skip(allow_module_level=True), importorskip
        _fail(report)
