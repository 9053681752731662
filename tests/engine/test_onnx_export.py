"""`scalekd export RUN --onnx`: the student as ONNX with a dynamic batch axis, whose
onnxruntime logits match PyTorch's on the run's evaluation images (real Fashion-MNIST JPEGs),
for a CNN and a ViT student."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from helpers.extras import require_extra
from helpers.images import jpeg_tree
from helpers.runs import train_in_process
from scalekd.cli import main
from scalekd.engine.onnx_export import onnx_missing
from scalekd.engine.saved_run import SavedRun

require_extra(onnx_missing())

STUDENTS = {  # a CNN (BatchNorm, max pool) and a ViT (attention, LayerNorm, GELU)
    "cnn": ["student.name=resnet18"],
    "vit": ["student.name=vit_tiny_patch16_224",
            "student.kwargs={'img_size':32,'patch_size':8,'depth':2}"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A finished supervised run (one epoch on 40 real images) of each student."""
    base = tmp_path_factory.mktemp("onnx")
    tree = jpeg_tree(base / "fmnist", {"train": 4, "val": 2})
    dirs = {}
    for name, student in STUDENTS.items():
        dirs[name] = base / name
        train_in_process([
            "data.source=imagefolder", f"data.path={tree}", "data.input_size=32",
            "data.batch_size=20", "data.workers=0", *student, "distill.method=supervised",
            "distill.weights={}", "run.epochs=1", f"run.dir={dirs[name]}",
            "optim.name=adamw", "optim.lr=1e-3", "optim.warmup_epochs=0"])
    return dirs


@pytest.mark.parametrize("name", list(STUDENTS))
def test_onnx_matches_pytorch_on_evaluation_images(runs, name, capsys):
    import onnx
    import onnxruntime

    main(["export", str(runs[name]), "--onnx"])
    out = capsys.readouterr().out
    diff = float(re.search(r"on 20 evaluation images: max abs diff (\S+)", out).group(1))
    print(f"{name}: onnxruntime vs PyTorch max abs diff {diff:.3g}")
    assert diff < 1e-4

    path = runs[name] / "export" / "student.onnx"
    (image,) = onnx.load(str(path)).graph.input
    assert image.name == "image" and image.type.tensor_type.shape.dim[0].dim_param  # symbolic
    # any batch size, and the same logits as the run's student on its evaluation images
    run = SavedRun(runs[name])
    student = run.student()
    images = torch.cat([batch for batch, _ in run.loader()])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        (logits,) = session.run(None, {"image": images[:n].numpy()})
        with torch.no_grad():
            expected = student(images[:n]).numpy()
        assert logits.shape == (n, 10)
        assert np.abs(logits - expected).max() < 1e-4


def test_a_missing_onnxruntime_names_the_install_command(runs, monkeypatch, capsys):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a))
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(runs["cnn"]), "--onnx"])
    assert exit_.value.code == 2
    assert ("onnxruntime not installed: pip install -e '.[onnx]' (or SCALEKD_EXTRAS=onnx bash "
            "scripts/setup.sh)") in capsys.readouterr().err
