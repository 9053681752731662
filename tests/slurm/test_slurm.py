"""slurm/train.sbatch and slurm/chain.sh on a real Slurm: a single-host cluster of two emulated
nodes (scripts/slurm_local_cluster.sh), started once for the group and always stopped. The
project's own batch script is submitted unchanged, with only sbatch flags, environment variables
and recipe overrides, on the tiny KD run (2 CPU ranks, DDP over gloo):

1. 2 nodes x 1 process trains to completion: both node ranks start, world size 2, FINISHED,
   checkpoints, an export. This run is the uninterrupted reference of the others. The same
   across nodes under DeepSpeed ZeRO-3.
2. `scancel --signal=USR1 --batch` mid-run: the trainer checkpoints at the next step boundary,
   the job requeues itself, the rerun (SLURM_RESTART_COUNT=1) resumes and ends with the
   reference's exact weights; no step is lost. The same signal during start-up waits until the
   trainer handles it.
3. `scancel --signal=TERM` to every process of a 2-node step: every rank checkpoints at one
   step, the job ends COMPLETED 0:0 (not requeued) although the launchers exit non-zero; with
   rank 1 SIGKILLed at the same time, it ends FAILED.
4. slurm/chain.sh: 4 chained jobs of 1 node x 2 processes with run.steps_per_job a third of the
   schedule: three do the work, the fourth finds FINISHED and exits; the reference's weights.

The runs compared have a student with drop path and a loader worker (helpers.runs.STOCHASTIC).

    .venv/bin/python -m pytest -q -m slurm     # root on Linux; installs Slurm with apt-get if missing
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers.runs import REPO, STOCHASTIC, checkpoint_problems, complete_checkpoints, exported

pytestmark = pytest.mark.slurm

CLUSTER = REPO / "scripts" / "slurm_local_cluster.sh"
SBATCH = REPO / "slurm" / "train.sbatch"
CHAIN = REPO / "slurm" / "chain.sh"
RECIPE = "tests/helpers/distributed_run.py"  # runs the library's trainer, records world size
# 30 epochs of 4 steps: long enough to signal mid-run, seconds of training; a student with drop
# path and a loader worker, as real recipes have, so that the resumed runs' exact weights show
# that no random stream shifts where a job stops (every run compared has 2 processes: drop
# path's streams are per process)
SCHEDULE = ["run.epochs=30", "checkpoint.every_steps=10", "eval.every_epochs=10", *STOCHASTIC]
TOTAL_STEPS = 120
DONE = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY",
        "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
POLL_S = 0.5


@pytest.fixture(scope="session")
def report(pytestconfig):
    """`report(text)`: a line of measured numbers, shown whatever pytest's capture."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    terminal = pytestconfig.pluginmanager.getplugin("terminalreporter")

    def write(text: str) -> None:
        with capture.global_and_fixture_disabled():
            terminal.write_line(f"[slurm] {text}")

    return write


def free_port_block(count: int = 6) -> int:
    """A base port with `count` free ports above it (slurmctld and the two slurmd)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count > 65535:
            continue
        try:
            socks = []
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no block of free ports")


class Cluster:
    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of sbatch, which Slurm passes on to the job (and its requeues)."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_")) and k not in (
                   "WORLD_SIZE", "LOCAL_RANK", "RANK", "MASTER_ADDR", "MASTER_PORT")}
        env.update(
            SLURM_CONF=str(self.conf), PYTHON=sys.executable, DS_ACCELERATOR="cpu",
            PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
            LAUNCHER="launchers/cpu_2proc_ddp.yaml", RECIPE=RECIPE)
        env.update(extra)
        return env

    def run(self, *cmd: str, env: dict | None = None) -> str:
        out = subprocess.run(cmd, cwd=REPO, env=env or self.env(), capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, f"{' '.join(cmd)}: {out.returncode}\n{out.stdout}{out.stderr}"
        return out.stdout

    def job(self, job_id: str) -> dict[str, str]:
        out = subprocess.run(["scontrol", "show", "job", "-o", job_id], env=self.env(),
                             capture_output=True, text=True, timeout=30).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: str, log: Path, timeout: float = 300, restarts: int = 0,
             on_state=None) -> dict[str, str]:
        """Poll until the job has ended after `restarts` requeues; `on_state(state)` is called
        at every change of state."""
        deadline, last = time.monotonic() + timeout, None
        while True:
            info = self.job(job_id)
            state = (info.get("JobState"), int(info.get("Restarts", 0)))
            if state != last and on_state is not None:
                on_state(state)
            last = state
            if state[0] in DONE and state[1] >= restarts:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} not done after {timeout} s: {info}\n"
                                     + tail(log))
            time.sleep(POLL_S)


def tail(log: Path, chars: int = 8000) -> str:
    text = log.read_text(errors="replace") if log.exists() else "(no output file)"
    return text[-chars:]


@pytest.fixture(scope="session")
def cluster(request, report):
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("bash"):
        pytest.skip("the local Slurm cluster needs root on Linux")
    # munged wants every directory above its socket searchable by all: not pytest's tmp folders
    folder = Path(tempfile.mkdtemp(prefix="scalekd-slurm-", dir="/tmp"))
    folder.chmod(0o755)
    env = dict(os.environ, SLURM_LOCAL_PORT=str(free_port_block()))
    command = ["bash", str(CLUSTER)]

    def stop():
        out = subprocess.run(command + ["stop", str(folder)], env=env, capture_output=True,
                             text=True, timeout=120)
        left = _processes_of(folder)
        report(f"cluster stopped (exit {out.returncode}), {len(left)} of its processes left"
               + (f": {left}" if left else ""))
        assert out.returncode == 0 and not left, out.stdout + out.stderr

    request.addfinalizer(stop)  # before start: a half-started cluster is cleaned up too
    started = time.monotonic()
    out = subprocess.run(command + ["start", str(folder)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, f"cluster did not start:\n{out.stdout}\n{out.stderr}"
    assert f"export SLURM_CONF={folder}/slurm.conf" in out.stdout
    report(f"cluster up in {time.monotonic() - started:.1f} s ({folder}); "
           f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    return Cluster(folder)


def _processes_of(folder: Path) -> list[int]:
    """Live processes of the cluster in `folder`: its daemons carry a marker in their
    environment; slurmstepd, whose environment Slurm empties, works in the folder."""
    mark = f"SCALEKD_SLURM_LOCAL={folder}".encode()
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue  # exited, unreaped
            ours = mark in (proc / "environ").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
            ours = ours or cwd == str(folder) or cwd.startswith(f"{folder}/")
        except (OSError, IndexError):
            continue
        if ours:
            found.append(int(proc.name))
    return found


def sbatch(cluster: Cluster, log: Path, nodes: int, procs: int, overrides: list[str],
           **env: str) -> str:
    job = cluster.run(
        "sbatch", "--parsable", "-p", "debug", "--time=10", f"-N{nodes}",
        "--ntasks-per-node=1", f"--output={log}", str(SBATCH), *overrides,
        env=cluster.env(PROCS_PER_NODE=str(procs), **env)).strip()
    return job.split(";")[0]


def wait_for_a_checkpoint(cluster: Cluster, job: str, run_dir: Path, log: Path) -> None:
    """Until the run has a complete checkpoint, the job still running."""
    deadline = time.monotonic() + 240
    while not complete_checkpoints(run_dir):
        info = cluster.job(job)
        assert info.get("JobState") in ("PENDING", "CONFIGURING", "RUNNING"), \
            f"{info}\n{tail(log)}"
        assert time.monotonic() < deadline, tail(log)
        time.sleep(0.1)


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = exported(a), exported(b)
    return wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


@pytest.fixture(scope="session")
def reference(cluster, tmp_path_factory, tiny_run, report):
    """The uninterrupted run: 2 nodes x 1 process, one job."""
    folder = tmp_path_factory.mktemp("slurm_reference")
    run_dir, log = folder / "run", folder / "job.out"
    started = time.monotonic()
    job = sbatch(cluster, log, nodes=2, procs=1, overrides=tiny_run(run_dir, *SCHEDULE))
    info = cluster.wait(job, log)
    report(f"2-node job of {TOTAL_STEPS} steps: {time.monotonic() - started:.1f} s from sbatch "
           "to the end")
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", \
        f"the reference run failed: {info}\n{tail(log)}"
    return run_dir, log, info


def test_two_nodes_train_to_completion(reference):
    run_dir, log, info = reference
    out = tail(log, 10**6)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{out}"
    # one launcher per node, each with its own rank (the classic bug: both rank 0)
    assert "node 0 of 2" in out and "--machine_rank 0" in out, out
    assert "node 1 of 2" in out and "--machine_rank 1" in out, out
    # both ranks trained, in one world of 2 (recorded per rank by tests/helpers/distributed_run.py)
    for r in (0, 1):
        rec = json.loads((run_dir / "sharding" / f"rank{r}.json").read_text())
        assert (rec["rank"], rec["world"], rec["engine"]) == (r, 2, "DistributedDataParallel")
    assert (run_dir / "FINISHED").read_text() == f"{TOTAL_STEPS}\n"
    assert checkpoint_problems(run_dir, keep=3) == []
    assert complete_checkpoints(run_dir)[-1].name == f"step_{TOTAL_STEPS:09d}"
    assert (run_dir / "export" / "student.safetensors").is_file()
    assert "schedule finished" in out


def test_two_nodes_zero3(cluster, tmp_path, tiny_run):
    """DeepSpeed across nodes: each node's own launcher (not accelerate's pdsh default)."""
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(cluster, log, nodes=2, procs=1, overrides=tiny_run(run_dir),
                 LAUNCHER="launchers/cpu_2proc_zero3.yaml")
    # a hang guard, not a speed test: DeepSpeed JIT-builds its CPU comm op on a machine's first
    # ZeRO job (about a minute), which at load 5-6 took this job 66 s past the default 300 s
    info = cluster.wait(job, log, timeout=600)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{tail(log)}"
    for r in (0, 1):
        rec = json.loads((run_dir / "sharding" / f"rank{r}.json").read_text())
        assert (rec["rank"], rec["world"], rec["engine"]) == (r, 2, "DeepSpeedEngine"), rec
        assert rec["student"]["local"] < rec["student"]["full"], rec  # ZeRO-3 shards
    assert (run_dir / "FINISHED").is_file() and (run_dir / "export" / "student.safetensors").is_file()


def test_usr1_checkpoints_requeues_and_resumes_exactly(cluster, reference, tmp_path, tiny_run,
                                                     report):
    ref_dir = reference[0]
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(cluster, log, nodes=2, procs=1, overrides=tiny_run(run_dir, *SCHEDULE))
    wait_for_a_checkpoint(cluster, job, run_dir, log)  # some progress, the trainer running
    checkpoint_before = int(complete_checkpoints(run_dir)[-1].name.split("_")[1])
    signalled = time.monotonic()
    cluster.run("scancel", "--signal=USR1", "--batch", job)

    times: dict[tuple, float] = {}
    info = cluster.wait(job, log, restarts=1,
                        on_state=lambda s: times.setdefault(s, time.monotonic() - signalled))
    done = time.monotonic() - signalled
    out = tail(log, 10**6)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{out}"
    assert info["Restarts"] == "1", info  # requeued once, never again after FINISHED
    assert "SLURM_RESTART_COUNT=0" in out and "SLURM_RESTART_COUNT=1" in out, out
    assert "SLURM_RESTART_COUNT=2" not in out
    assert "forwarding SIGUSR1 to the trainer" in out and "requeueing job" in out, out

    stop = re.search(r"stopping at step (\d+) of (\d+) \(received SIGUSR1\)", out)
    resume = re.search(r"resumed from \S+step_(\d+) at step (\d+)", out)
    assert stop and resume, out
    stop_step, resume_step = int(stop.group(1)), int(resume.group(2))
    assert int(stop.group(2)) == TOTAL_STEPS and stop_step < TOTAL_STEPS
    lost = stop_step - resume_step
    assert lost == 0, f"{lost} steps re-done after the resume\n{out}"
    assert (run_dir / "FINISHED").read_text() == f"{TOTAL_STEPS}\n"
    assert checkpoint_problems(run_dir, keep=3) == []
    assert same_weights(run_dir, ref_dir), "the resumed run's weights differ from the reference"

    requeued = min((t for (s, r), t in times.items() if r >= 1), default=float("nan"))
    rerun = min((t for (s, r), t in times.items() if r >= 1 and s == "RUNNING"),
                default=float("nan"))
    report(f"USR1 sent after step {checkpoint_before} (the latest checkpoint then): stopped and "
           f"checkpointed at step {stop_step}, resumed at step {resume_step}, {lost} steps lost; "
           f"signal -> requeued {requeued:.1f} s -> running again {rerun:.1f} s -> schedule "
           f"done {done:.1f} s (the rerun trains {TOTAL_STEPS - resume_step} steps)")


def test_usr1_during_start_up_waits_for_the_trainer(cluster, reference, tmp_path, tiny_run,
                                                   report):
    """A signal before the trainer handles it (srun not started yet, imports, model build) is
    held back until rank 0 has its handler: forwarded at once it would kill the process."""
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(cluster, log, nodes=2, procs=1, overrides=tiny_run(run_dir, *SCHEDULE))
    deadline = time.monotonic() + 120
    while "SLURM_RESTART_COUNT=0" not in tail(log):  # printed once the traps are set
        assert time.monotonic() < deadline, f"{cluster.job(job)}\n{tail(log)}"
        time.sleep(0.05)
    signalled = time.monotonic()
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    info = cluster.wait(job, log, restarts=1)
    out = tail(log, 10**6)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{out}"
    assert info["Restarts"] == "1", info
    first = out.split("SLURM_RESTART_COUNT=1")[0]
    assert "received USR1" in first and "forwarding SIGUSR1 to the trainer" in first, first
    # it came during start-up: before the trainer's first output (its teacher evaluation)
    started = first.find("teacher vit_tiny_patch16_224: top-1")
    assert 0 <= first.index("received USR1") < started, first
    stop = re.search(r"stopping at step (\d+) of \d+ \(received SIGUSR1\)", first)
    assert stop, first
    assert "resumed from" in out and f"at step {stop.group(1)}" in out, out
    assert (run_dir / "FINISHED").read_text() == f"{TOTAL_STEPS}\n"
    assert same_weights(run_dir, reference[0])
    report(f"USR1 during start-up: held until the trainer's handler was up, stopped at step "
           f"{stop.group(1)}, requeued, done {time.monotonic() - signalled:.1f} s after the "
           "signal")


def test_term_to_every_process_with_loader_workers_checkpoints(cluster, tmp_path, tiny_run,
                                                                report):
    """SIGTERM to every process of the job's step (each node's launcher, the ranks and their
    loader workers), as `scancel --signal=TERM` sends it: the workers leave it to the trainer,
    which checkpoints at the next step boundary, and the job ends COMPLETED, not requeued,
    although torch's elastic agent (accelerate's launcher of several processes) exits 1 after
    forwarding the signal: train.sbatch finds the trainer's record of the clean stop. (A SIGTERM
    that reaches srun itself, `scancel --full` or the time limit's final kill, makes srun kill
    the step within seconds: train.sbatch asks Slurm for USR1 to the batch shell 300 s
    before.)"""
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(cluster, log, nodes=2, procs=1, overrides=tiny_run(run_dir, *SCHEDULE))
    wait_for_a_checkpoint(cluster, job, run_dir, log)
    signalled = time.monotonic()
    cluster.run("scancel", "--signal=TERM", job)
    info = cluster.wait(job, log)
    out = tail(log, 10**6)
    assert "killed by signal" not in out, out
    stop = re.search(r"stopping at step (\d+) of (\d+) \(received SIGTERM\)", out)
    assert stop and int(stop.group(1)) < TOTAL_STEPS, out
    step = int(stop.group(1))
    assert out.count(f"distributed_run: done, {step} steps") == 2, out  # both ranks
    checkpoint = complete_checkpoints(run_dir)[-1]
    assert checkpoint.name == f"step_{step:09d}", out
    assert not (run_dir / "FINISHED").exists()
    record = json.loads((run_dir / "STOPPED").read_text())
    assert record == {"step": step, "total_steps": TOTAL_STEPS, "reason": "received SIGTERM",
                      "signal": "SIGTERM", "checkpoint": f"checkpoints/{checkpoint.name}"}
    # the launcher's status was not 0 (the agent re-raises the signal), the job's is
    launcher = re.search(r"the launcher exited with status (\d+) after every rank had stopped "
                         r"cleanly \(received SIGTERM, checkpoint (\S+)\)", out)
    # (should torch's agent one day exit 0 here, this test no longer tests the check)
    assert launcher and int(launcher.group(1)) != 0 and launcher.group(2) == str(checkpoint), out
    assert "SignalException" in out, out  # the agent's exception, as the script's comment says
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", f"{info}\n{out}"
    assert info["Restarts"] == "0" and "requeueing" not in out, info
    assert "stopped early (received SIGTERM" in out, out
    report(f"SIGTERM to every process of a 2-node job step with loader workers: checkpointed at "
           f"step {step}, launcher status {launcher.group(1)}, job {info['JobState']} "
           f"{info['ExitCode']} {time.monotonic() - signalled:.1f} s after the signal")


def _trainer_of_rank(job: str, rank: int) -> int:
    """The pid of training process `rank` of `job` (not one of its loader workers, which carry
    the same environment): the emulated nodes are processes of this host."""
    def environ(pid: str) -> list[bytes]:
        try:
            return Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return []

    mine = [f"SLURM_JOB_ID={job}".encode(), f"RANK={rank}".encode()]
    for proc in Path("/proc").glob("[0-9]*"):
        env = environ(proc.name)
        if all(m in env for m in mine):
            try:
                parent = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            if f"RANK={rank}".encode() not in environ(parent):
                return int(proc.name)
    raise AssertionError(f"no process of rank {rank} in job {job}")


def test_a_rank_killed_during_a_term_stop_fails_the_job(cluster, tmp_path, tiny_run, report):
    """The clean-stop check hides no crash: rank 1 killed (SIGKILL) as the step gets its
    SIGTERM, after a complete checkpoint exists, leaves no stop record, and the job FAILS."""
    run_dir, log = tmp_path / "run", tmp_path / "job.out"
    job = sbatch(cluster, log, nodes=2, procs=1, overrides=tiny_run(run_dir, *SCHEDULE))
    wait_for_a_checkpoint(cluster, job, run_dir, log)
    os.kill(_trainer_of_rank(job, 1), signal.SIGKILL)
    cluster.run("scancel", "--signal=TERM", job)
    info = cluster.wait(job, log)
    out = tail(log, 10**6)
    assert not (run_dir / "STOPPED").exists(), out
    assert complete_checkpoints(run_dir), out  # a checkpoint is there: it is not proof enough
    assert re.search(r"the launcher exited with status [1-9]\d*: failed, not requeued", out), out
    assert "stopped cleanly" not in out, out
    assert info["JobState"] == "FAILED" and info["ExitCode"] != "0:0", f"{info}\n{out}"
    assert info["Restarts"] == "0", info
    report(f"rank 1 SIGKILLed with the SIGTERM: job {info['JobState']} {info['ExitCode']}")


def test_chain_of_jobs_completes_the_schedule(cluster, reference, tmp_path, tiny_run, report):
    ref_dir = reference[0]
    run_dir = tmp_path / "run"
    per_job = TOTAL_STEPS // 3
    started = time.monotonic()
    ids = cluster.run(
        "bash", str(CHAIN), "4", "-p", "debug", "--time=10", "-N1", "--ntasks-per-node=1",
        f"--job-name=chain-{tmp_path.name}", f"--output={tmp_path}/job-%j.out", str(SBATCH),
        *tiny_run(run_dir, *SCHEDULE, f"run.steps_per_job={per_job}"),
        env=cluster.env(PROCS_PER_NODE="2")).split()
    assert len(ids) == 4 and all(i.isdigit() for i in ids), ids
    deps = [cluster.job(i).get("Dependency", "") for i in ids]
    assert deps[0] in ("", "(null)") and all(
        f"afterany:{prev}" in dep for prev, dep in zip(ids, deps[1:])), deps

    outs = []
    for i in ids:
        log = tmp_path / f"job-{i}.out"
        info = cluster.wait(i, log)
        outs.append(tail(log, 10**6))
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", \
            f"{info}\n{outs[-1]}"
    wall = time.monotonic() - started
    for n, out in enumerate(outs[:3]):
        assert "node 0 of 1" in out and "2 process(es)" in out, out
        if n:
            assert "resumed from" in out and f"at step {n * per_job}" in out, out
        if n < 2:
            assert f"stopping at step {(n + 1) * per_job} of {TOTAL_STEPS}" in out, out
            assert "requeueing" not in out
    assert "schedule finished" in outs[2]
    assert "nothing to run" in outs[3] and "accelerate launch" not in outs[3], outs[3]
    assert (run_dir / "FINISHED").read_text() == f"{TOTAL_STEPS}\n"
    assert checkpoint_problems(run_dir, keep=3) == []
    # 1 node x 2 processes ends where 2 nodes x 1 process did: the same 2-rank DDP
    assert same_weights(run_dir, ref_dir), "the chain's weights differ from the reference"
    report(f"chain of 3 jobs x {per_job} steps (+1 that found FINISHED): {wall:.1f} s from "
           f"chain.sh to the last job's end; load average {os.getloadavg()[0]:.2f}")
