"""One tiny teacher cache for the module tests of scalekd.data.teacher_cache."""

import pytest

from helpers.caches import cache_run, write_cache


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, tiny_teacher):
    """(cache folder, the overrides of the run it was written for)."""
    base = tmp_path_factory.mktemp("cache")
    overrides = cache_run(base / "run", tiny_teacher)
    write_cache(base / "cache", overrides)
    return base / "cache", overrides
