"""The accelerate configs in launchers/: each loads with accelerate's own config loader and
holds what docs/recipes.md's table says; zero2.yaml launches a real 2-process ZeRO-2 run."""

import json
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from helpers.runs import RUN_SCRIPT, free_port, run

LAUNCHERS = Path(__file__).resolve().parents[1] / "launchers"
# file -> (distributed type, machines, processes, ZeRO stage, mixed precision)
EXPECTED = {
    "single_gpu.yaml": ("NO", 1, 1, None, "bf16"),
    "multi_gpu.yaml": ("MULTI_GPU", 1, 8, None, "bf16"),
    "multi_node.yaml": ("MULTI_GPU", 2, 16, None, "bf16"),
    "zero2.yaml": ("DEEPSPEED", 1, 8, 2, "bf16"),
    "zero3.yaml": ("DEEPSPEED", 1, 8, 3, "bf16"),
    "cpu_2proc_ddp.yaml": ("MULTI_GPU", 1, 2, None, "no"),
    "cpu_2proc_zero3.yaml": ("DEEPSPEED", 1, 2, 3, "no"),
}


def test_every_launcher_is_described():
    assert {p.name for p in LAUNCHERS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_launcher_loads_with_accelerate_and_says_what_readme_says(name):
    cfg = load_config_from_file(str(LAUNCHERS / name))
    kind, machines, processes, stage, precision = EXPECTED[name]
    assert cfg.distributed_type.value == kind
    assert (cfg.num_machines, cfg.num_processes, str(cfg.mixed_precision)) == (machines,
                                                                                processes,
                                                                                precision)
    if stage is None:
        assert not cfg.deepspeed_config
    else:  # scalekd's ZeRO-3 path needs zero3_init_flag off (its teacher stays replicated)
        assert cfg.deepspeed_config == {"zero_stage": stage, "zero3_init_flag": False}


@pytest.mark.multiprocess
def test_zero2_launcher_trains_a_zero2_student(tmp_path, tiny_run):
    """launchers/zero2.yaml as a user launches it (2 CPU processes, no bf16 on this CPU): the
    stage comes from the launcher, the student is a ZeRO-2 DeepSpeed engine, the run ends with
    an export."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(LAUNCHERS / "zero2.yaml"), "--num_processes", "2", "--mixed_precision", "no",
           "--main_process_port", str(free_port()), str(RUN_SCRIPT),
           *tiny_run(run_dir, "run.epochs=1")]
    run(cmd, tmp_path / "zero2.log", 900)
    for rank in (0, 1):
        rec = json.loads((run_dir / "sharding" / f"rank{rank}.json").read_text())
        assert (rec["engine"], rec["zero_stage"], rec["world"]) == ("DeepSpeedEngine", 2, 2), rec
    assert (run_dir / "FINISHED").is_file() and (run_dir / "export" / "student.safetensors").is_file()
