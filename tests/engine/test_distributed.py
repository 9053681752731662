"""Two real processes over gloo give the run one process gives: the same per-step losses and
evaluation under DDP and under ZeRO-3 (student sharded, teacher replicated or a ZeRO-3 engine of
its own), with the sharding checked to be real.

Three `accelerate launch` runs and one in-process run of the same tiny recipe (global batch 16,
8 steps, a ViT student: no BatchNorm, so splitting a batch over processes changes nothing but
float summation order). The sampler seeds every sample's augmentation by its global position, so
all four runs see the same images and crops at every step.
"""

from __future__ import annotations

import json
import time

import pytest
import timm

from helpers.runs import launch_command, run, scalars, train_in_process

pytestmark = pytest.mark.multiprocess

STEPS = 8  # 64 images / batch 16 x 2 epochs
LAUNCHES = {  # name -> (DeepSpeed?, extra overrides)
    "ddp": (False, []),
    "zero3": (True, ["dist.zero_stage=3"]),
    "zero3_teacher": (True, ["dist.zero_stage=3", "teacher.placement=zero3"]),
}
TOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_run):
    """Run dirs of the single-process run and the three 2-process launches, with wall times."""
    base = tmp_path_factory.mktemp("distributed")
    dirs, seconds = {}, {}
    for name, (deepspeed, extra) in LAUNCHES.items():
        dirs[name] = base / name
        start = time.perf_counter()
        # a first DeepSpeed launch on a machine compiles its comm op (~65 s)
        run(launch_command(tiny_run(dirs[name], "run.log_every=1", *extra), deepspeed),
            base / f"{name}.log", timeout=600)
        seconds[name] = time.perf_counter() - start

    dirs["single"] = base / "single"
    start = time.perf_counter()
    train_in_process(tiny_run(dirs["single"], "run.log_every=1"))
    seconds["single"] = time.perf_counter() - start
    print("wall seconds per run:", {k: round(v, 1) for k, v in seconds.items()})
    return dirs


def sharding(run_dir, rank: int) -> dict:
    return json.loads((run_dir / "sharding" / f"rank{rank}.json").read_text())


def student_size() -> int:
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10,
                              img_size=32, patch_size=8, depth=2)
    return sum(p.numel() for p in model.parameters())


def assert_half(counts: dict, full: int) -> None:
    """Under ZeRO-3 a rank holds about half of every parameter (each partition is padded to a
    whole share: at most one element a parameter more), and nothing materialised."""
    assert counts["full"] == full
    assert counts["zero3_params"] == counts["params"] > 0
    assert full / 2 <= counts["local"] <= full / 2 + counts["params"], counts
    assert counts["materialised"] == 0, counts


@pytest.mark.parametrize("name", ["zero3", "zero3_teacher"])
def test_zero3_shards_the_student(runs, name):
    full = student_size()
    records = [sharding(runs[name], rank) for rank in (0, 1)]
    assert [r["rank"] for r in records] == [0, 1]  # not two processes that both think they are 0
    for r in records:
        assert r["world"] == 2 and r["distributed_type"] == "DistributedType.DEEPSPEED"
        assert r["engine"] == "DeepSpeedEngine"
        assert_half(r["student"], full)
        assert ("teacher" in r) == (name == "zero3_teacher")


def test_zero3_teacher_is_its_own_sharded_engine(runs):
    full = student_size()  # the teacher has the student's architecture here
    for rank in (0, 1):
        r = sharding(runs["zero3_teacher"], rank)
        assert r["teacher_engine"] == "DeepSpeedEngine"
        assert_half(r["teacher"], full)


def test_ddp_replicates(runs):
    full = student_size()
    for rank in (0, 1):
        r = sharding(runs["ddp"], rank)
        assert r["rank"] == rank and r["world"] == 2
        assert r["distributed_type"] == "DistributedType.MULTI_CPU"
        assert r["engine"] == "DistributedDataParallel"
        assert r["student"]["local"] == r["student"]["full"] == full


@pytest.mark.parametrize("name", list(LAUNCHES))
def test_losses_match_one_process(runs, name):
    ref, got = scalars(runs["single"]), scalars(runs[name])
    loss_tags = sorted(t for t in ref if t.startswith("loss/"))
    assert set(loss_tags) == {"loss/total", "loss/kd", "loss/hard"}
    assert loss_tags == sorted(t for t in got if t.startswith("loss/"))
    for tag in [*loss_tags, "lr"]:
        assert sorted(ref[tag]) == sorted(got[tag]) == list(range(1, STEPS + 1)), tag
        for step in ref[tag]:
            assert got[tag][step] == pytest.approx(ref[tag][step], abs=TOL, rel=TOL), (
                f"{name}: {tag} at step {step}: {got[tag][step]} vs one process "
                f"{ref[tag][step]}")


@pytest.mark.parametrize("name", list(LAUNCHES))
def test_evaluation_matches_one_process(runs, name):
    ref, got = scalars(runs["single"]), scalars(runs[name])
    for tag in ("eval/top1", "eval/top5", "teacher/top1"):
        assert got[tag] == ref[tag], tag  # per evaluation step, counts over the same 64 images
    final = json.loads((runs[name] / "metrics.json").read_text())
    assert final == json.loads((runs["single"] / "metrics.json").read_text())
    assert final["eval/top1"] == ref["eval/top1"][STEPS]
