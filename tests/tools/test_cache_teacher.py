"""`scalekd cache-teacher`: the index and shards it writes, its size estimate, and its resume
(finished shards are skipped, the result is the uninterrupted one)."""

import json

import pytest
import torch
from safetensors.torch import load_file

import scalekd.tools.cache_teacher as writer
from helpers.caches import DRAWS, SHARD, TOPK, cache_run, cached, write_cache
from helpers.runs import write_tiny_teacher
from scalekd.cli import main
from scalekd.data.teacher_cache.store import entry_bytes, size_estimate


def test_index_and_shards(tiny_cache, tiny_teacher):
    cache, _ = tiny_cache
    index = json.loads((cache / "index.json").read_text())
    assert index["complete"] and index["format"] == 1
    assert (index["k"], index["draws"], index["num_images"], index["num_classes"]) == (
        TOPK, DRAWS, 64, 10)
    assert index["teacher"]["name"] == "vit_tiny_patch16_224"
    assert index["teacher"]["checkpoint"] == str(tiny_teacher)
    assert len(index["teacher"]["sha256"]) == 64
    assert index["augmentation"]["input_size"] == 32 and index["augmentation"]["hflip"] == 0.5
    assert index["shards"] == [f"shard_0000{s}.safetensors" for s in range(3)]
    for s, count in enumerate([24, 24, 16]):
        shard = load_file(str(cache / index["shards"][s]))
        assert shard["draws"].shape == (count, DRAWS, 6) and shard["draws"].dtype == torch.int32
        assert shard["log_probs"].shape == (count, DRAWS, TOPK)
        assert shard["log_probs"].dtype == torch.float16
        assert shard["classes"].dtype == torch.int16
        assert (shard["log_probs"] <= 0).all()
        assert (shard["log_probs"][..., :-1] >= shard["log_probs"][..., 1:]).all()  # sorted
        assert (shard["log_probs"].float().exp().sum(-1) <= 1.001).all()
        # the K draws of an image differ (crop boxes), and each row is a valid box
        top, left, height, width, flip, _ = shard["draws"].unbind(-1)
        assert (height > 0).all() and (width > 0).all() and (top + height <= 32).all()
        assert set(flip.unique().tolist()) <= {0, 1}
        assert (shard["draws"][:, 0] != shard["draws"][:, 1]).any(-1).all()


def test_size_estimate_is_printed_before_writing(tmp_path, tiny_teacher, capsys):
    out = tmp_path / "cache"
    main(["cache-teacher", "--out", str(out), "--draws", "2", "--topk", "3",
          "--shard-size", "32", *cache_run(tmp_path / "run", tiny_teacher)])
    printed = capsys.readouterr().out
    # 64 images x 2 draws x (3 x (2 + 2) + 24) bytes; ImageNet-1k the same per image
    assert entry_bytes(3, 10) == 36
    assert "64 images x 2 draws x (3 x (2 + 2) + 24) bytes = 4.6 KB" in printed
    assert "ImageNet-1k (1,281,167 images) at the same K and k: 92.2 MB" in printed
    assert printed.index("ImageNet-1k") < printed.index("wrote")
    assert json.loads((out / "index.json").read_text())["complete"]


def test_classes_take_int16_up_to_32767_classes_then_int32():
    assert "(5 x (2 + 2) + 24) bytes" in size_estimate(10, 1, 5, 21_841)  # ImageNet-21k
    assert "(5 x (2 + 4) + 24) bytes" in size_estimate(10, 1, 5, 40_000)


def test_resume_skips_finished_shards(tmp_path, tiny_cache, tiny_teacher, monkeypatch):
    reference, _ = tiny_cache
    out = tmp_path / "cache"
    overrides = cache_run(tmp_path / "run", tiny_teacher)
    write_shard = writer.write_shard

    def killed_after_first(folder, shard, *args):
        if shard > 0:
            raise KeyboardInterrupt  # the job is killed while shard 1 is computed
        return write_shard(folder, shard, *args)

    monkeypatch.setattr(writer, "write_shard", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        write_cache(out, overrides)
    assert not json.loads((out / "index.json").read_text())["complete"]
    first = (out / "shard_00000.safetensors").stat().st_mtime_ns

    written = []
    monkeypatch.setattr(writer, "write_shard",
                        lambda folder, shard, *a: written.append(shard) or write_shard(
                            folder, shard, *a))
    index = write_cache(out, overrides)
    assert written == [1, 2] and index["complete"]
    assert (out / "shard_00000.safetensors").stat().st_mtime_ns == first
    for name in index["shards"]:  # the same tensors as the uninterrupted write
        got, want = load_file(str(out / name)), load_file(str(reference / name))
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in got)


def test_a_folder_of_another_configuration_is_refused(tmp_path, tiny_cache):
    cache, overrides = tiny_cache
    with pytest.raises(ValueError, match=r"another configuration \(its k, shard_size, shards differ\)"):
        write_cache(cache, overrides, k=5, shard_size=SHARD * 2)


def test_cli_refuses_a_recipe_without_teacher_weights(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["cache-teacher", "--out", str(tmp_path / "c"), "data.source=synthetic",
              "data.num_samples=8", "teacher.name=resnet18", "teacher.checkpoint="])
    assert exit_.value.code == 2
    assert "has no weights" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_two_processes_share_the_shards(tmp_path, tiny_cache, tiny_teacher):
    import sys

    from helpers.runs import free_port, run

    reference, _ = tiny_cache
    out = tmp_path / "cache"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--main_process_port",
           str(free_port()), "--multi_gpu", "-m", "scalekd.cli", "cache-teacher",
           "--out", str(out), "--draws", str(DRAWS), "--topk", str(TOPK),
           "--shard-size", str(SHARD), "--batch-size", "32",
           *cache_run(tmp_path / "run", tiny_teacher)]
    run(cmd, tmp_path / "launch.log", timeout=600)
    log = (tmp_path / "launch.log").read_text()
    assert log.count("ImageNet-1k") == 1  # the estimate, from the main process only
    # rank 0's bar: shards 0 and 2, 72 + 48 crops in batches of 32 (alone: 8 batches)
    assert "5/5" in log and "8/8" not in log
    index = json.loads((out / "index.json").read_text())
    assert index["complete"]
    for name in index["shards"]:  # rank r wrote shards r, r + 2: the tensors of one process
        got, want = load_file(str(out / name)), load_file(str(reference / name))
        assert all(torch.equal(got[k], want[k]) for k in want)


def test_a_class_subset_is_cached_as_training_reads_it(tmp_path):
    """data.classes: the cache holds the subset's images and classes, so a cached run on the
    same subset replays it."""
    from scalekd.data import build_train_data
    from scalekd.data.classes import load_split
    from scalekd.recipe import Recipe, apply_overrides

    teacher = write_tiny_teacher(tmp_path / "teacher5.safetensors", num_classes=5)
    overrides = cache_run(tmp_path / "run", teacher, "data.classes=(0,1,2,3,4)")
    index = write_cache(tmp_path / "cache", overrides)
    subset = load_split(apply_overrides(Recipe(), overrides).data, "train")
    assert (index["num_images"], index["num_classes"]) == (len(subset), 5) == (34, 5)
    recipe = apply_overrides(Recipe(), overrides + cached(tmp_path / "cache"))
    data = build_train_data(recipe, subset, (0.5,) * 3, (0.5,) * 3, 0, 1)
    _, targets, soft = next(iter(data.epoch(0)))
    assert soft.shape == (len(targets), 5) and int(targets.max()) < 5
