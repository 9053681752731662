"""What a user sees: a progress bar (rate, ETA) and scalars, main process only.

The scalars go to accelerate's experiment trackers (`Accelerator(log_with=...)`): TensorBoard by
default, W&B and MLflow as `run.log_with` names them. Every student of a run is a tracker run of
its own, all logging the same tags, so that their curves overlay.
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
import resource
import sys
import uuid
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlparse

import torch
from accelerate import Accelerator, PartialState
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker
from tqdm.auto import tqdm

from scalekd.files import write_text_atomically
from scalekd.recipe import Recipe, RunCfg, flat_items, student_recipes

TRACKERS = {"tensorboard": "TensorBoard", "wandb": "W&B", "mlflow": "MLflow"}  # run.log_with
PROJECT = "scalekd"  # the W&B project and the MLflow experiment (WANDB_PROJECT and
#                      MLFLOW_EXPERIMENT_NAME override it)
INSTALL = ("pip install -c constraints.txt -e '.[track]' (or SCALEKD_EXTRAS=track bash "
           "scripts/setup.sh)")
# in the run folder: each student's W&B and MLflow run ids, so that the jobs of a resumed run
# log into the runs its first job opened
TRACKER_RUNS = "trackers.json"


def tracker_names(run: RunCfg) -> list[str]:
    """The trackers `run.log_with` names (comma-separated), each once, in its order."""
    return list(dict.fromkeys(n.strip() for n in run.log_with.split(",") if n.strip()))


def tracker_problems(run: RunCfg) -> list[str]:
    """run.log_with: known trackers, their packages installed, MLflow with a store it opens."""
    names = tracker_names(run)
    if not names:
        return [f"run.log_with={run.log_with!r} names no tracker: give one or more of "
                f"{', '.join(TRACKERS)}, comma-separated"]
    problems = [f"run.log_with: unknown tracker {n!r}; choose from {', '.join(TRACKERS)} "
                "(comma-separated, e.g. run.log_with=tensorboard,wandb)"
                for n in names if n not in TRACKERS]
    missing = [n for n in names if n in TRACKERS and importlib.util.find_spec(n) is None]
    problems += [f"run.log_with={run.log_with}: {n} is not installed: {INSTALL}" for n in missing]
    if "mlflow" in names and "mlflow" not in missing:
        problems += _mlflow_store_problems()
    if "wandb" in names and "wandb" not in missing:
        problems += _wandb_login_problems()
    return problems


def _wandb_login_problems() -> list[str]:
    """W&B online needs credentials, which it would otherwise ask for (or refuse without a
    terminal) when the trackers start, after the models are built: an API key or identity token
    in the environment, or the netrc entry `wandb login` writes for the server's host."""
    if (os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun")
            or os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE")):
        return []
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        if netrc.netrc(os.environ.get("NETRC")).authenticators(host):
            return []
    except (OSError, netrc.NetrcParseError):
        pass  # no netrc file (or one netrc cannot read): no login found there
    return [f"run.log_with has wandb, but no W&B login was found for {host}: run `wandb login` "
            "(or set WANDB_API_KEY), or log offline with WANDB_MODE=offline and `wandb sync` "
            "later"]


def _mlflow_store_problems() -> list[str]:
    """MLflow's store is named by MLFLOW_TRACKING_URI: a server, a database (the full mlflow
    package) or a local folder (which MLflow 3 opens only with MLFLOW_ALLOW_FILE_STORE=true)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    fix = ("set MLFLOW_TRACKING_URI to your tracking server (http://host:5000) or to a local "
           "file store (file:/path/mlruns, with MLFLOW_ALLOW_FILE_STORE=true)")
    if not uri:
        return [f"run.log_with has mlflow, but MLFLOW_TRACKING_URI is not set: {fix}"]
    scheme = urlparse(uri).scheme
    if (scheme in ("", "file")
            and os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("true", "1")):
        return [f"MLFLOW_TRACKING_URI={uri} is a file store, which MLflow opens only with "
                "MLFLOW_ALLOW_FILE_STORE=true: set it, or use a tracking server"]
    if (scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql")
            and importlib.util.find_spec("sqlalchemy") is None):
        return [f"MLFLOW_TRACKING_URI={uri} is a database, which needs the full mlflow package "
                f"(pip install mlflow; the track extra has mlflow-skinny): or {fix}"]
    return []


def run_trackers(recipe: Recipe, resuming: bool = False) -> list[GeneralTracker]:
    """accelerate's trackers of a run, for `Accelerator(log_with=...)`: for each student (in
    `student_recipes` order) one of each `run.log_with` tracker, in that order (RunLog groups
    them back by it). TensorBoard: the recipe's own student and the run-wide scalars in
    `<run.dir>/tb`, student NAME in `<run.dir>/tb/NAME`. W&B: runs `<run.name>` and
    `<run.name>/NAME` in the group `<run.name>`, their files in `<run.dir>/wandb`. MLflow: runs of
    those names, the students' nested in the recipe's student's. `resuming` (from a checkpoint):
    the W&B and MLflow runs of the run's earlier jobs (`TRACKER_RUNS`) are continued."""
    run, names = recipe.run, tracker_names(recipe.run)
    earlier = tracker_runs(run.path) if resuming else {}
    trackers: list[GeneralTracker] = []
    for student, own in student_recipes(recipe).items():
        title = f"{run.name}/{student}" if student else run.name
        ids = earlier.get(student, {})
        for name in names:
            if name == "tensorboard":
                trackers.append(TensorBoardTracker(student, run.path / "tb"))
            elif name == "wandb":
                # several runs open at once (reinit), each with its student's own recipe; an id
                # of our own, so that a later job resumes this very run
                trackers.append(WandBTracker(os.environ.get("WANDB_PROJECT", PROJECT), name=title,
                                             group=run.name, dir=str(run.path),
                                             config=own.to_dict(), reinit="create_new",
                                             id=ids.get("wandb") or uuid.uuid4().hex[:12],
                                             resume="allow"))
            else:
                trackers.append(_MLflowRun(own, PROJECT, run_name=title,
                                           nested_run=bool(student), run_id=ids.get("mlflow")))
    return trackers


class _MLflowRun(MLflowTracker):
    """accelerate's MLflow tracker, with the student's recipe as the run's parameters. MLflow's
    own parameter call (what accelerate's `store_init_configuration` makes) logs to the innermost
    open run, and a multi-student run has several open: these go to this run, by its id."""

    def __init__(self, recipe: Recipe, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.params = {key: str(value)[:6000] for key, value in flat_items(recipe.to_dict())}

    def start(self) -> None:
        resumed = self.run_id is not None
        super().start()
        if resumed:  # logged by the first job; MLflow refuses a parameter's second value
            return
        from mlflow import MlflowClient
        from mlflow.entities import Param

        params = [Param(key, value) for key, value in self.params.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 per call
            MlflowClient().log_batch(self.active_run.info.run_id, params=params[i:i + 100])


def tracker_runs(run_dir: Path) -> dict[str, dict[str, str]]:
    """Student -> {"wandb": id, "mlflow": run id} of the run's earlier jobs ({}: none)."""
    path = run_dir / TRACKER_RUNS
    return json.loads(path.read_text()) if path.is_file() else {}


def _save_tracker_runs(run_dir: Path, runs: dict[str, list[GeneralTracker]]) -> None:
    ids = {student: {t.name: (t.run.id if t.name == "wandb" else t.active_run.info.run_id)
                     for t in trackers if t.name in ("wandb", "mlflow")}
           for student, trackers in runs.items()}
    if any(ids.values()):
        write_text_atomically(run_dir / TRACKER_RUNS, json.dumps(ids, indent=1) + "\n")


class RunLog:
    """The progress bar and the scalars. `accelerator`: its trackers (`run_trackers`), one group
    of them per name in `students` ("" first: the recipe's own student); without one (a tool),
    TensorBoard in `folder`. `scalars` sends the run-wide tags and the recipe student's to the
    first group, and a tag `NAME/...` of student NAME, less the prefix, to NAME's: every
    student's curves carry the same tags. (accelerator.log would send every value to every
    tracker: RunLog calls each tracker's `log`, the call accelerator.log makes.)"""

    def __init__(self, folder: Path, total_steps: int, start_step: int, enabled: bool,
                 accelerator: Optional[Accelerator] = None, students: Sequence[str] = ("",)):
        self.enabled = enabled
        self.runs: dict[str, list[GeneralTracker]] = {}
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not enabled,
                        unit="step", dynamic_ncols=True, smoothing=0.1,
                        # a terminal redraws; a log file (SLURM, CI) gets a line a minute
                        mininterval=0.5 if sys.stderr.isatty() else 60)
        if not enabled:
            return
        if accelerator is None:
            PartialState()  # accelerate's trackers log through its logger, which needs it
            trackers: list[GeneralTracker] = [TensorBoardTracker("", folder)]
            trackers[0].start()
        else:
            accelerator.init_trackers(PROJECT)
            trackers = accelerator.trackers
        per = len(trackers) // len(students)
        self.runs = {s: trackers[i * per:(i + 1) * per] for i, s in enumerate(students)}
        if accelerator is not None:
            _save_tracker_runs(folder.parent, self.runs)  # folder is the run folder's tb/

    def scalars(self, step: int, values: dict[str, float]) -> None:
        parts: dict[str, dict[str, float]] = {}
        for tag, value in values.items():
            first, _, rest = tag.partition("/")
            student = first if first and rest and first in self.runs else ""
            parts.setdefault(student, {})[rest if student else tag] = value
        for student, part in parts.items():
            for tracker in list(self.runs.get(student, [])):
                try:
                    # several MLflow runs are open at once: name the student's
                    tracker.log(part, step, **({"run_id": tracker.active_run.info.run_id}
                                               if isinstance(tracker, MLflowTracker) else {}))
                except OSError as err:  # disk full: TensorBoard's writer thread has died
                    self._lost(student, tracker, err)

    def _lost(self, student: str, tracker: GeneralTracker, err: OSError) -> None:
        """Stop logging to that tracker, say so, and train on: checkpoints report their own
        failures (checkpoint.on_error), and losing curves must not lose the run."""
        self.runs[student].remove(tracker)
        self.print(f"warning: {TRACKERS[tracker.name]} logging stopped, its folder cannot be "
                   f"written ({err}); training goes on")

    def advance(self, postfix: Optional[dict[str, str]] = None) -> None:
        """One step on the bar; `postfix` (if given) replaces the values shown beside it."""
        self.bar.update(1)
        if postfix is not None:
            self.bar.set_postfix(postfix, refresh=False)

    def print(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        """Finish every tracker run, the students' before the recipe student's (MLflow ends
        the innermost open run)."""
        self.bar.close()
        for student, trackers in reversed(self.runs.items()):
            for tracker in list(trackers):
                try:
                    tracker.finish()
                except OSError as err:
                    self._lost(student, tracker, err)
        self.runs = {}


def read_scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """Every TensorBoard scalar a run wrote: tag -> {step: value}. A student's own folder
    (`tb/NAME`) reads as tags `NAME/...`, as runs that wrote every student into `tb` prefixed
    them. Over several jobs of one run (resumes), a later write of a step wins."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = Path(run_dir) / "tb"
    out: dict[str, dict[int, float]] = {}
    for events in sorted([*tb.glob("events.out.tfevents.*"), *tb.glob("*/events.out.tfevents.*")]):
        prefix = "" if events.parent == tb else f"{events.parent.name}/"
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(prefix + tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


def memory_gb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak on GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
