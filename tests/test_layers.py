"""The package's layers (pyproject.toml [tool.importlinter]): `lint-imports` keeps every contract,
so an import that climbs a layer or closes a cycle between packages fails the default test run."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    lint = shutil.which("lint-imports", path=str(BIN)) or "lint-imports"
    return subprocess.run([lint, "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": f"{BIN}:/usr/bin:/bin"})


def test_the_import_contracts_are_kept():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


# the kinds of import issue 19 found on main, each added to a copy of today's package
@pytest.mark.parametrize("module, line, broken", [
    # recipe.validate imported the components, which import the recipe
    ("recipe.py", "from scalekd.distill import DISTILLERS", "layers (docs/layout.md)"),
    # data/loader <-> teacher_cache
    ("data/teacher_cache/replay.py", "from scalekd.data.loader import build_train_data",
     "no cycle between packages"),
    # teacher_cache/writer -> engine.logging while the engine imported the teacher cache
    ("engine/trainer.py", "from scalekd.tools.cache_teacher import cache_teacher",
     "layers (docs/layout.md)"),
    # diagnostics/spectrum -> distill.dfm for the DCT
    ("diagnostics/spectrum.py", "from scalekd.distill.dfm import FrequencyMimicLoss",
     "diagnostics import no method"),
])
def test_each_kind_of_import_the_issue_found_breaks_a_contract(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "scalekd", tmp_path / "scalekd",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    path = tmp_path / "scalekd" / module
    path.write_text(path.read_text() + f"\n{line}  # noqa\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0
    assert f"{broken} BROKEN" in done.stdout, done.stdout[-3000:]
