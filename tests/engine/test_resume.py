"""A run killed with SIGKILL at a random moment and restarted with the same command ends with the
student an uninterrupted run ends with, bit for bit; only complete checkpoints are left, at most
checkpoint.keep of them; and the resume reads every pickled file with weights_only=True.

One process and two processes under ZeRO-3 (sharded student and optimiser state, DeepSpeed's
checkpoint files), both with a student that draws random numbers (drop path) and a data-loader
worker process (helpers.runs.STOCHASTIC), as real recipes have. The
kill comes a random short delay after a randomly chosen checkpoint appears, so it may land in a
training step, an evaluation or in the middle of writing the next checkpoint. Set
SCALEKD_TEST_SEED to replay a failing choice.
"""

from __future__ import annotations

import json
import os
import random
import re
import time

import pytest

from helpers.runs import (STOCHASTIC, checkpoint_problems, complete_checkpoints, exported, free_port,
                          kill_group, launch_command, run, single_command, start, tail,
                          wait_group_gone)

pytestmark = pytest.mark.slow

KEEP = 2
# not a divisor of the 4 steps an epoch: most checkpoints lie inside an epoch, where a resumed
# job's loader starts mid-epoch (a checkpoint at an epoch's end resumed exactly even with the
# loaders' seed drawn from the student's RNG, because the evaluation there made the same draw)
EVERY = 3
STEPS = 20  # 64 images / batch 16 x 5 epochs
RUN_TIMEOUT = 600


def resume_overrides(tiny_run, run_dir) -> list[str]:
    return tiny_run(run_dir, "run.epochs=5", f"checkpoint.every_steps={EVERY}",
                    f"checkpoint.keep={KEEP}", *STOCHASTIC)


def kill_after_checkpoint(cmd, run_dir, log, rng: random.Random) -> dict:
    """Start `cmd`, wait for the checkpoint of a randomly chosen step (6, 9 or 12 of 20), then for a
    random part of the shortest time seen between two checkpoints (so the kill lands in one of
    the next steps, an evaluation or the next checkpoint's write, however fast or loaded the
    machine is), and SIGKILL the whole process group (launcher, ranks, data-loader workers)."""
    target = rng.choice(range(2 * EVERY, 12 + 1, EVERY))
    fraction = rng.random()
    seen: dict[int, float] = {}  # checkpoint step -> when it was first seen complete
    proc = start(cmd, log)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not seen or max(seen) < target:
            assert proc.poll() is None, (
                f"the run ended (status {proc.returncode}) before checkpoint {target}\n{tail(log)}")
            assert time.monotonic() < deadline, f"no checkpoint {target} in time\n{tail(log)}"
            time.sleep(0.01)
            now = time.monotonic()
            for path in complete_checkpoints(run_dir):
                seen.setdefault(int(path.name[len("step_"):]), now)
        times = [seen[step] for step in sorted(seen)]
        gaps = [b - a for a, b in zip(times, times[1:])]
        delay = fraction * min(gaps, default=0.05)
        time.sleep(delay)
        assert proc.poll() is None, f"the run ended before the kill\n{tail(log)}"
    finally:
        kill_group(proc)
        wait_group_gone(proc.pid)
    return {"target": target, "seen": sorted(seen), "delay": round(delay, 3),
            "left": sorted(p.name for p in (run_dir / "checkpoints").iterdir())}


@pytest.mark.parametrize("mode", ["single", "zero3"])
def test_sigkill_and_restart_is_bit_exact(tmp_path, tiny_run, mode):
    seed = int(os.environ.get("SCALEKD_TEST_SEED", time.time_ns() % 2**31))
    rng = random.Random(seed)
    port = free_port()  # the killed launch and its restart use the same command, port included

    def launch(run_dir):
        if mode == "single":
            return single_command(resume_overrides(tiny_run, run_dir))
        return launch_command(resume_overrides(tiny_run, run_dir) + ["dist.zero_stage=3"],
                              deepspeed=True, port=port)

    times = {}
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    start_s = time.perf_counter()
    run(launch(reference), tmp_path / "reference.log", RUN_TIMEOUT)
    times["uninterrupted"] = time.perf_counter() - start_s

    start_s = time.perf_counter()
    killed = kill_after_checkpoint(launch(interrupted), interrupted,
                                   tmp_path / "interrupted.log", rng)
    times["until_kill"] = time.perf_counter() - start_s
    context = f"{mode}, SCALEKD_TEST_SEED={seed}, killed {killed}"
    assert not (interrupted / "export").exists(), f"the kill came after the run finished: {context}"

    start_s = time.perf_counter()
    restart_log = tmp_path / "restart.log"
    run(launch(interrupted), restart_log, RUN_TIMEOUT)  # the same command: auto-resume
    times["restart"] = time.perf_counter() - start_s
    print(f"{context}; wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))

    # the restart resumed (from one checkpoint, at or after the one awaited before the kill)
    # and read every pickled file with weights_only=True, DeepSpeed's ones included
    loads = [entry for rank_file in sorted((interrupted / "loads").glob("rank*.json"))
             for entry in json.loads(rank_file.read_text())
             if "/checkpoints/" in entry["file"]]
    assert loads, f"the restart read no checkpoint: {context}\n{tail(restart_log)}"
    resumed = {int(re.search(r"/step_(\d+)/", entry["file"]).group(1)) for entry in loads}
    assert len(resumed) == 1 and resumed.pop() >= killed["target"], (loads, context)
    unsafe = [entry for entry in loads if entry["weights_only"] is not True]
    assert not unsafe, f"read without weights_only=True: {unsafe}"
    names = {os.path.basename(entry["file"]) for entry in loads}
    if mode == "single":
        assert {"optimizer.bin", "random_states_0.pkl"} <= names, names
    else:
        for rank in (0, 1):
            assert f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt" in names, names
            assert f"zero_pp_rank_{rank}_mp_rank_00_optim_states.pt" in names, names
            assert f"random_states_{rank}.pkl" in names, names

    ref, got = exported(reference), exported(interrupted)
    assert sorted(got) == sorted(ref)
    differ = [k for k in ref if not (got[k].dtype == ref[k].dtype and got[k].equal(ref[k]))]
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}: {context}"
    assert ((interrupted / "export" / "student.safetensors").read_bytes()
            == (reference / "export" / "student.safetensors").read_bytes()), context

    assert checkpoint_problems(interrupted, KEEP) == [], context
    assert checkpoint_problems(reference, KEEP) == []
    assert complete_checkpoints(interrupted)[-1].name == f"step_{STEPS:09d}"
