"""scripts/setup.sh and .ci/run: CI proves a fresh start, and setup installs what a minimal
machine lacks for the default path (a C/C++ compiler and Python's headers, python3-venv)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("leftover", [".venv", "runs"])
def test_ci_refuses_a_checkout_that_is_not_fresh(tmp_path, leftover):
    (tmp_path / ".ci").mkdir()
    shutil.copy(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "setup.sh").write_text("echo SETUP RAN\n")
    (tmp_path / leftover).mkdir()
    out = subprocess.run(["bash", str(tmp_path / ".ci" / "run")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and "SETUP RAN" not in out.stdout
    assert f"{tmp_path}/{leftover} exists; CI runs on a fresh clone" in out.stderr


def stub(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(0o755)


def setup_calls(tmp_path: Path, **env: str) -> str:
    """Run setup.sh on a machine with bash and apt-get but no compiler, no Python headers, no
    venv module (apt-get and python3 are stand-ins recording what they are asked): the calls."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    (tmp_path / "constraints.txt").write_text("")
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "id", "mkdir", "chmod"):  # what a minimal machine has
        os.symlink(shutil.which(tool), bin_dir / tool)
    stub(bin_dir / "apt-get", f'echo "apt-get $*" >> {calls}')
    stub(bin_dir / "sudo", '"$@"')
    venv_pip = f'mkdir -p "$3/bin"; printf "#!/bin/bash\\necho pip \\"\\$*\\" >> {calls}\\n" > "$3/bin/pip"; chmod +x "$3/bin/pip"'
    stub(bin_dir / "python3", f'if [ "$1" = -m ] && [ "$2" = venv ]; then {venv_pip}; '
                              'else exit 1; fi  # -c checks: no headers, no ensurepip')
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "VENV": str(tmp_path / "venv"), **env}
    out = subprocess.run([str(bin_dir / "bash"), str(tmp_path / "scripts" / "setup.sh")],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return calls.read_text()


def test_setup_installs_compiler_headers_and_venv_on_a_minimal_machine(tmp_path):
    log = setup_calls(tmp_path)
    assert "apt-get install -y -qq gcc g++ python3-dev python3-venv" in log, log
    assert "pip install -q -c constraints.txt -e .[dev]" in log, log


def test_setup_installs_every_extra_asked_for(tmp_path):
    log = setup_calls(tmp_path, SCALEKD_EXTRAS="mix,onnx,track")
    assert "pip install -q -c constraints.txt -e .[dev,mix,onnx,track]" in log, log


SKIPPING = '''
import pytest

def test_skips():
    pytest.skip("Slurm needs root")

@pytest.mark.ci_may_skip
def test_skip_ci_accepts():
    pytest.skip("runs in a child process")

@pytest.mark.xfail(reason="known")
def test_known_failure():
    assert False
'''


MODULE_SKIP = "import pytest\npytest.importorskip('no_such_module_here')\n"


@pytest.mark.parametrize("ci", ["true", ""])
@pytest.mark.parametrize("source, failed_under_ci", [
    (SKIPPING, "1 failed, 1 skipped, 1 xfailed"), (MODULE_SKIP, "1 error")])
def test_a_skip_under_ci_fails(tmp_path, ci, source, failed_under_ci):
    """tests/helpers/ci_skips.py: under CI a skip (the Slurm group without root, a missing
    Triton or Debian data set) fails the run; a skip marked ci_may_skip and xfail do not."""
    (tmp_path / "test_it.py").write_text(source)
    env = {**os.environ, "CI": ci, "PYTHONPATH": str(ROOT / "tests")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "helpers.ci_skips",
                          "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir",
                          str(tmp_path), str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=120)
    if not ci:  # 5: pytest's "no test ran", for the skipped module
        assert out.returncode in (0, 5) and "skipped" in out.stdout, out.stdout + out.stderr
        return
    assert out.returncode != 0 and failed_under_ci in out.stdout, out.stdout + out.stderr
    assert "skipped under CI (" in out.stdout, out.stdout
