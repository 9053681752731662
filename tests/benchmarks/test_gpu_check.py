"""benchmarks/gpu_check.py --dry-run: every section of the GPU check runs on the CPU at tiny
sizes through the same code, and its JSON says so; a failing section is recorded, not fatal."""

import json
import subprocess
import sys

import pytest

from helpers.runs import REPO, subprocess_env

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def run_check(tmp_path, *args: str):
    out = tmp_path / "check.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(out), *args],
                          env=subprocess_env(), capture_output=True, text=True, timeout=1800)
    return proc, json.loads(out.read_text())


@pytest.mark.slow  # a dozen tiny training runs and a DeepSpeed engine: minutes on 2 cores
@pytest.mark.timeout(2400)  # 19 minutes measured on the 2 shared cores at load 30-45
def test_dry_run_runs_every_section(tmp_path):
    proc, report = run_check(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sections = report["sections"]
    assert list(sections) == ["kd_kernel", "sdpa", "kd_step", "zero3"]
    assert all(s["ok"] for s in sections.values()), {n: s.get("error") for n, s in
                                                     sections.items()}
    assert report["dry_run"] is True
    kernel = sections["kd_kernel"]["rows"]
    assert [r["classes"] for r in kernel] == [1000, 21841] and all(r["values_ok"] for r in kernel)
    assert {r["teacher"]: r["kernel_taken"] for r in sections["sdpa"]["rows"]} == {
        "beitv2-l": "flash", "vit-g/14": "flash"}  # torch's CPU kernel is a flash kernel
    steps = sections["kd_step"]["rows"]
    assert {(r["pair"], r["row"]) for r in steps} == {
        (p, row) for p in ("beitv2-l", "vit-g/14")
        for row in ("no teacher", "online teacher", "cached teacher", "hand-written loop")}
    assert all(r["images_per_s"] > 0 for r in steps + sections["zero3"]["rows"])
    assert "kd_step" in proc.stdout and "sections passed" in proc.stdout


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # it imports kd_step beside it
    import gpu_check

    return gpu_check


def test_a_failing_section_is_recorded_and_the_others_run(gpu_check, monkeypatch, tmp_path):
    def broken(rows, sizes, device):
        rows.append({"classes": 1000, "values_ok": False})
        raise gpu_check.CheckFailed("the fused KD loss differs from its reference")

    monkeypatch.setattr(gpu_check, "kd_kernel", broken)
    out = tmp_path / "check.json"
    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--dry-run", "--out", str(out),
                                      "--sections", "kd_kernel", "sdpa"])
    assert gpu_check.main() == 1
    sections = json.loads(out.read_text())["sections"]
    assert sections["kd_kernel"]["ok"] is False
    assert sections["kd_kernel"]["error"] == ("CheckFailed: the fused KD loss differs from its "
                                              "reference")
    assert "Traceback" in sections["kd_kernel"]["traceback"]
    assert sections["kd_kernel"]["rows"] == [{"classes": 1000, "values_ok": False}]
    assert sections["sdpa"]["ok"] and len(sections["sdpa"]["rows"]) == 2
