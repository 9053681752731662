"""The export's timm folder: what timm's save_for_hf writes, loaded by
`timm.create_model("local-dir:...", pretrained=True)` with the run's preprocessing, and uploaded
by `scalekd push` (the upload patched: the files it would send checked for real)."""

from __future__ import annotations

import errno
import json
import shutil

import pytest
import timm
import torch
from safetensors.torch import load_file

from scalekd.cli import main
from scalekd.engine.checkpoint import RunWriteError
from scalekd.engine.export import export_student
from scalekd.engine.saved_run import SavedRun
from scalekd.engine.timm_folder import load_timm_folder, timm_folder
from scalekd.models import data_config
from scalekd.recipe import Recipe, apply_overrides

TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2}


@pytest.mark.parametrize("name,kwargs", [("resnet18", {}), ("vit_tiny_patch16_224", TINY_VIT)])
def test_local_dir_loads_the_student_with_the_runs_preprocessing(tmp_path, name, kwargs):
    recipe = apply_overrides(Recipe(), [f"student.name={name}", "data.input_size=32",
                                        f"student.kwargs={kwargs}", "aug.crop_pct=0.9",
                                        "aug.interpolation=bilinear", "student.drop_path=0.1"])
    torch.manual_seed(0)
    student = timm.create_model(name, num_classes=7, **kwargs).eval()
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state["distiller.projector.weight"] = torch.ones(3)
    export_student(state, recipe, 7, tmp_path)

    folder = tmp_path / "student_timm"
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    cfg = config["pretrained_cfg"]
    assert config["architecture"] == name and config["num_classes"] == cfg["num_classes"] == 7
    assert cfg["input_size"] == [3, 32, 32] and cfg["crop_pct"] == 0.9
    assert cfg["interpolation"] == "bilinear" and cfg["crop_mode"] == "center"
    norm = data_config(name)  # the normalisation the run trained with
    assert cfg["mean"] == list(norm["mean"]) and cfg["std"] == list(norm["std"])
    assert "drop_path_rate" not in config.get("model_args", {})
    weights = load_file(folder / "model.safetensors")
    assert weights.keys() == student.state_dict().keys()

    loaded = load_timm_folder(folder)
    x = torch.randn(3, 3, 32, 32)
    assert torch.equal(loaded(x), student(x))
    data = timm.data.resolve_data_config(model=loaded)  # what a timm user's script would do
    assert data["input_size"] == (3, 32, 32) and data["crop_pct"] == 0.9
    assert data["interpolation"] == "bilinear"


def test_a_failed_write_keeps_the_previous_folder(tmp_path, monkeypatch):
    """A full disk while timm writes the folder: the error names it, the folder from before is
    still whole and no half folder is left beside it."""
    import scalekd.engine.timm_folder as timm_folder_module

    recipe = apply_overrides(Recipe(), ["student.name=resnet18", "data.input_size=32"])
    state = {f"student.{k}": v for k, v in timm.create_model("resnet18").state_dict().items()}
    export_student(state, recipe, 1000, tmp_path)
    before = (tmp_path / "student_timm" / "model.safetensors").read_bytes()

    def half_then_full(model, directory, **kwargs):
        (tmp_path / directory).mkdir(parents=True, exist_ok=True)
        (tmp_path / directory / "model.safetensors").write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(timm_folder_module, "save_for_hf", half_then_full)
    with pytest.raises(RunWriteError, match=r"could not write .*student_timm/ \(no space left"):
        export_student(state, recipe, 1000, tmp_path)
    assert (tmp_path / "student_timm" / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "student.json", "student.safetensors", "student_timm"]


def test_the_trained_runs_timm_folder_is_its_student(trained_tiny_run):
    """The folder a finished run wrote gives the run's student: same weights, same logits on
    the run's evaluation images; the EMA student gets its own folder."""
    run = SavedRun(trained_tiny_run)
    student = run.student()
    loaded = load_timm_folder(timm_folder(trained_tiny_run / "export"))
    weights = load_file(trained_tiny_run / "export" / "student_timm" / "model.safetensors")
    for k, v in student.state_dict().items():
        assert torch.equal(weights[k], v), k
    images, _ = next(iter(run.loader()))
    with torch.no_grad():
        assert torch.equal(loaded(images), student(images))

    alone = SavedRun(trained_tiny_run, student="alone")
    ema = load_timm_folder(timm_folder(trained_tiny_run / "export" / "alone", "student_ema"))
    with torch.no_grad():
        assert torch.equal(ema(images), alone.student(ema=True)(images))


def test_push_uploads_the_folder(trained_tiny_run, tmp_path, monkeypatch, capsys):
    """`scalekd push RUN REPO`: timm's push_to_hf_hub with the Hub calls patched; the files it
    would upload are the export's (the same config.json, the same tensors) plus a model card."""
    import huggingface_hub

    calls, uploaded = {}, tmp_path / "uploaded"

    def create_repo(self, repo_id, private=False, exist_ok=False, **kwargs):
        calls["create_repo"] = (repo_id, private)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, **kwargs):
        calls["upload_folder"] = repo_id
        shutil.copytree(folder_path, uploaded)
        return "https://huggingface.co/me/tiny-vit/commit/0"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "file_exists", lambda self, *a, **k: False)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    main(["push", str(trained_tiny_run), "me/tiny-vit", "--private"])
    assert calls == {"create_repo": ("me/tiny-vit", True), "upload_folder": "me/tiny-vit"}
    assert "commit/0" in capsys.readouterr().out

    folder = trained_tiny_run / "export" / "student_timm"
    assert sorted(p.name for p in uploaded.iterdir()) == [
        "README.md", "config.json", "model.safetensors"]
    assert (json.loads((uploaded / "config.json").read_text())
            == json.loads((folder / "config.json").read_text()))
    sent, ours = load_file(uploaded / "model.safetensors"), load_file(folder / "model.safetensors")
    assert sent.keys() == ours.keys() and all(torch.equal(sent[k], ours[k]) for k in ours)


def test_push_without_an_export_names_the_command(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["push", str(tmp_path), "me/x"])
    assert exit_.value.code == 2
    assert f"write it with `scalekd export {tmp_path}`" in capsys.readouterr().err
