"""run.log_with: accelerate's trackers, TensorBoard by default, W&B (offline, in the run folder)
and MLflow (a local file store) through the same call; every student of a run is a tracker run
of its own with the same tags. The values are read back from what each library wrote."""

from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import pytest

from helpers.extras import require_extra
from helpers.runs import launch_command, run, train_in_process
from scalekd.engine import logging as run_logging
from scalekd.engine.logging import read_scalars
from scalekd.engine.validation import validate
from scalekd.recipe import Recipe, RecipeError, apply_overrides

require_extra(None if all(importlib.util.find_spec(m) for m in ("wandb", "mlflow"))
              else f"wandb or mlflow is not installed: {run_logging.INSTALL}")

TWO_STUDENTS = ("students.alone.distill.method=supervised", "students.alone.distill.weights={}")


def wandb_records(path: Path):
    """The protobuf `Record`s of one offline run's .wandb file (LevelDB log records of wandb's
    protobuf `Record`s: 7-byte file header, 32 KiB blocks, 7-byte record headers; a record split
    over blocks comes in FIRST, MIDDLE.., LAST pieces)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pieces = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pieces += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST ends a record
            yield wandb_internal_pb2.Record.FromString(pieces)
            pieces = b""


def wandb_history(run_dir: Path) -> dict[str, dict[str, dict[int, float]]]:
    """W&B run name -> tag -> {step: value}, from the offline runs' .wandb files."""
    out = {}
    for path in (run_dir / "wandb").glob("offline-run-*/run-*.wandb"):
        history: dict[str, dict[int, float]] = {}
        name = None
        for record in wandb_records(path):
            if record.HasField("run"):
                name = record.run.display_name
            if record.HasField("history"):
                for item in record.history.item:
                    key = item.key or "/".join(item.nested_key)  # wandb nests "loss/total"
                    if not key.startswith("_"):  # wandb's own: _step, _runtime, ...
                        history.setdefault(key, {})[record.history.step.num] = json.loads(
                            item.value_json)
        assert name not in out, f"two W&B runs named {name}"
        out[name] = history
    return out


def mlflow_metrics(uri: str) -> dict[str, dict[str, dict[int, float]]]:
    """MLflow run name -> tag -> {step: value}, read through MLflow's client."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(run_logging.PROJECT)
    out = {}
    for run in client.search_runs([experiment.experiment_id]):
        assert run.info.run_name not in out, f"two MLflow runs named {run.info.run_name}"
        out[run.info.run_name] = {
            key: {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
            for key in run.data.metrics}
    return out


@pytest.fixture
def stores(tmp_path, monkeypatch) -> str:
    """W&B offline (its files in the run folder), MLflow on a file store in tmp_path: its URI."""
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return uri


def all_trackers(tiny_run, run_dir: Path) -> list[str]:
    """A two-student tiny run (`pair`) logging every second step to the three trackers."""
    return tiny_run(run_dir, "run.name=pair", "run.log_with=tensorboard,wandb,mlflow",
                    "run.log_every=2", *TWO_STUDENTS)


def assert_trackers_hold_tensorboards_values(run_dir: Path, uri: str) -> None:
    """One W&B run and one MLflow run per student, each with its student's TensorBoard tags
    (unprefixed) and values, step for step."""
    tb = read_scalars(run_dir)
    own = {t: v for t, v in tb.items() if not t.startswith("alone/")}
    alone = {t[len("alone/"):]: v for t, v in tb.items() if t.startswith("alone/")}
    assert own["loss/total"].keys() == {2, 4, 6, 8} and "eval/top1" in alone
    wandb, mlflow = wandb_history(run_dir), mlflow_metrics(uri)
    assert set(wandb) == set(mlflow) == {"pair", "pair/alone"}
    for name, tags in (("pair", own), ("pair/alone", alone)):
        for got in (wandb[name], mlflow[name]):
            assert got.keys() == tags.keys()
            for tag, values in tags.items():
                assert got[tag] == pytest.approx(values, rel=1e-6), (name, tag)
    assert alone["loss/total"] != own["loss/total"]  # two students, two curves


def test_wandb_and_mlflow_log_what_tensorboard_logs_one_run_per_student(tiny_run, tmp_path,
                                                                         stores):
    train_in_process(all_trackers(tiny_run, tmp_path / "run"))
    assert_trackers_hold_tensorboards_values(tmp_path / "run", stores)


def test_a_resumed_run_logs_into_the_runs_its_first_job_opened(tiny_run, tmp_path, stores):
    """A run stopped after 4 of its 8 steps and resumed: its second job continues each
    student's W&B run (same id) and MLflow run (same run, every step once, the recipe's
    parameters logged by the first job), rather than opening new ones."""
    from mlflow import MlflowClient

    run_dir = tmp_path / "run"
    train_in_process([*all_trackers(tiny_run, run_dir), "run.steps_per_job=4"])
    first = json.loads((run_dir / "trackers.json").read_text())
    assert first.keys() == {"", "alone"}
    train_in_process(all_trackers(tiny_run, run_dir))
    assert json.loads((run_dir / "trackers.json").read_text()) == first
    metrics = mlflow_metrics(stores)  # one run per name, or it fails
    assert set(metrics) == {"pair", "pair/alone"}
    assert metrics["pair"]["loss/total"].keys() == {2, 4, 6, 8}
    assert metrics["pair"]["loss/total"] == pytest.approx(read_scalars(run_dir)["loss/total"])
    client = MlflowClient(stores)
    assert client.get_run(first[""]["mlflow"]).data.params["distill.method"] == "kd"
    assert client.get_run(first["alone"]["mlflow"]).data.params["distill.method"] == "supervised"
    jobs = sorted(record.run.run_id
                  for path in (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
                  for record in wandb_records(path) if record.HasField("run"))
    assert jobs == sorted([first[""]["wandb"], first["alone"]["wandb"]] * 2)  # 2 jobs each


def test_wandb_online_without_a_login_is_refused_before_compute(tmp_path, monkeypatch):
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine example.org login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    recipe = apply_overrides(Recipe(), [f"run.dir={tmp_path}", "run.log_with=wandb"])
    with pytest.raises(RecipeError, match="no W&B login was found for api.wandb.ai: run `wandb "
                                          "login`"):
        validate(recipe)
    netrc.write_text("machine api.wandb.ai login user password " + "0" * 40 + "\n")
    assert run_logging.tracker_problems(recipe.run) == []  # `wandb login`'s entry
    netrc.write_text("")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert run_logging.tracker_problems(recipe.run) == []


@pytest.mark.multiprocess
def test_only_the_main_process_logs(tiny_run, tmp_path, stores):
    """Two processes (DDP over gloo): still one events file per student, one W&B run and one
    MLflow run per student, holding the same values."""
    run_dir = tmp_path / "run"
    run(launch_command(all_trackers(tiny_run, run_dir), deepspeed=False), tmp_path / "log",
        timeout=900)
    for folder in (run_dir / "tb", run_dir / "tb" / "alone"):
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2
    assert_trackers_hold_tensorboards_values(run_dir, stores)


def test_a_two_student_run_gives_each_student_a_writer_with_the_same_tags(tiny_run, tmp_path):
    """Two KD students that differ by their learning rate: one folder each under tb/, the same
    tags in both (so TensorBoard overlays their curves), the run-wide ones in tb/ only."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    train_in_process(tiny_run(run_dir, "run.log_every=1", "students.slow.optim.lr=1e-4"))

    def curves(folder: Path) -> dict[str, list[float]]:
        (events,) = folder.glob("events.out.tfevents.*")
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        return {t: [e.value for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}

    own, slow = curves(run_dir / "tb"), curves(run_dir / "tb" / "slow")
    run_wide = {"memory/peak_gb", "progress/epoch", "teacher/top1", "teacher/top5"}
    assert run_wide <= own.keys()
    assert own.keys() - run_wide == slow.keys()
    assert {"loss/total", "loss/kd", "lr", "eval/top1", "throughput/images_per_s"} <= slow.keys()
    assert len(slow["loss/total"]) == 8 and slow["lr"] != own["lr"]
    assert [p.name for p in (run_dir / "tb").iterdir() if p.is_dir()] == ["slow"]


@pytest.mark.parametrize("log_with, message", [
    ("comet", "run.log_with: unknown tracker 'comet'; choose from tensorboard, wandb, mlflow"),
    (",", "names no tracker"),
])
def test_an_unknown_tracker_is_refused_before_compute(tmp_path, log_with, message):
    recipe = apply_overrides(Recipe(), [f"run.dir={tmp_path}", f"run.log_with={log_with}"])
    with pytest.raises(RecipeError, match=message):
        validate(recipe)


def test_a_tracker_not_installed_is_refused_with_the_install_command(tmp_path, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else find_spec(name, *a))
    recipe = apply_overrides(Recipe(), [f"run.dir={tmp_path}",
                                        "run.log_with=tensorboard,wandb"])
    with pytest.raises(RecipeError) as err:
        validate(recipe)
    assert ("run.log_with=tensorboard,wandb: wandb is not installed: pip install -c "
            "constraints.txt -e '.[track]' (or SCALEKD_EXTRAS=track bash scripts/setup.sh)"
            in err.value.problems)


@pytest.mark.parametrize("env, message", [
    ({}, "MLFLOW_TRACKING_URI is not set"),
    ({"MLFLOW_TRACKING_URI": "file:/tmp/mlruns"}, "MLFLOW_ALLOW_FILE_STORE=true"),
])
def test_mlflow_without_a_store_it_can_open_is_refused(tmp_path, monkeypatch, env, message):
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    recipe = apply_overrides(Recipe(), [f"run.dir={tmp_path}", "run.log_with=mlflow"])
    with pytest.raises(RecipeError, match=message):
        validate(recipe)
