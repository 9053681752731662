"""`scalekd mix` end to end on a tiny random Image Mixer saved as a diffusers folder (the way a
user's converted model is) and loaded through the same from_pretrained path; then training on
real + synthetic images, where the synthetic ones feed the KD term only."""

import json

import numpy as np
import pytest

from helpers.images import numbered_tree
from helpers.tiny_mixer import need_diffusers, write_tiny_mixer

need_diffusers()

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from scalekd.cli import main  # noqa: E402
from scalekd.data.mixing import (ImageMixerPipeline, MixError, MixOptions, load_pipeline,  # noqa: E402
                                 plan)
from scalekd.engine.validation import validate  # noqa: E402
from scalekd.recipe import Recipe, RecipeError, apply_overrides  # noqa: E402

pytestmark = pytest.mark.timeout(300)
FAST = ["--steps", "2", "--size", "64", "--batch-size", "4"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_mixer(tmp_path_factory.mktemp("mixer") / "image-mixer")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """6 training images in 2 class folders (c0, c1)."""
    return numbered_tree(tmp_path_factory.mktemp("tree"), {"train": 3, "val": 1}, classes=2)


def run_mix(out, model, tree, *extra, capsys=None):
    main(["mix", "--out", str(out), "--model", str(model), *FAST, *extra,
          f"data.path={tree}"])
    return capsys.readouterr().out if capsys else None


def manifest(out):
    return json.loads((out / "manifest.json").read_text())


def test_mix_writes_the_set_and_a_manifest_of_what_each_image_mixes(tmp_path, model, tree):
    out = tmp_path / "mix"
    run_mix(out, model, tree, "--multiplier", "2", "--seed", "7")
    rows = manifest(out)["images"]
    files = sorted(p.name for p in (out / "images").iterdir())
    assert len(rows) == len(files) == 12  # 2 x 6 training images
    assert [r["file"] for r in rows] == [f"images/{f}" for f in files]
    for r in rows:
        assert len(set(r["sources"])) == 2 and all(0 <= i < 6 for i in r["sources"])
        # imagefolder order: c0/0000..0002 are 0-2, c1/... 3-5; classes are not looked at
        assert r["names"] == [f"c{i // 3}/{i % 3:04d}.jpg" for i in r["sources"]]
        assert r["labels"] == [i // 3 for i in r["sources"]]
        assert r["weights"] == [1.0, 1.0]
        with Image.open(out / r["file"]) as image:
            assert image.size == (64, 64)
    assert any(len(set(r["labels"])) == 2 for r in rows)  # pairs across classes
    assert len({r["seed"] for r in rows}) == 12
    settings = manifest(out)["settings"]
    assert (settings["seed"], settings["steps"], settings["size"]) == (7, 2, 64)
    # the plan is a function of the seed: what was written is what the seed says
    again = plan(6, MixOptions(model="m", multiplier=2, seed=7))
    assert [(list(m.sources), m.seed) for m in again] == [(r["sources"], r["seed"]) for r in rows]
    other = plan(6, MixOptions(model="m", multiplier=2, seed=8))
    assert [m.sources for m in other] != [m.sources for m in again]


def test_resume_writes_only_what_is_missing(tmp_path, model, tree, capsys):
    out = tmp_path / "mix"
    assert "wrote 6 image(s)" in run_mix(out, model, tree, "--multiplier", "1", "--format",
                                         "png", capsys=capsys)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert "wrote 0 image(s)" in run_mix(out, model, tree, "--multiplier", "1", "--format",
                                         "png", capsys=capsys)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == before

    gone = out / "images" / "00000004.png"
    original = np.asarray(Image.open(gone), dtype=np.int16)
    gone.unlink()
    assert "wrote 1 image(s)" in run_mix(out, model, tree, "--multiplier", "1", "--format",
                                         "png", capsys=capsys)
    after = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    assert {k for k in after if after[k] != before.get(k)} == {gone.name}
    # same images, same noise: made alone, it is the image the batch of 4 made
    assert np.abs(np.asarray(Image.open(gone), dtype=np.int16) - original).max() <= 2
    assert len(manifest(out)["images"]) == 6

    # a larger multiplier extends the set; other content settings are refused
    assert "wrote 6 image(s)" in run_mix(out, model, tree, "--multiplier", "2", "--format",
                                         "png", capsys=capsys)
    with pytest.raises(SystemExit):
        run_mix(out, model, tree, "--multiplier", "2", "--format", "png", "--seed", "1")
    assert "other settings (seed: 0 -> 1)" in capsys.readouterr().err


def test_an_interrupted_run_leaves_no_half_image_counted_as_done(tmp_path, model, tree,
                                                                  monkeypatch):
    out = tmp_path / "mix"
    saved = []
    real_save = Image.Image.save

    def save_then_die(self, fp, *args, **kwargs):
        if len(saved) == 5:  # the 6th image: half its bytes, then the process is interrupted
            with open(fp, "wb") as f:
                f.write(b"\xff\xd8\xff")
            raise KeyboardInterrupt
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_mix(out, model, tree, "--multiplier", "2")
    done = sorted(p.name for p in (out / "images").glob("0*.jpg"))
    assert done == [f"{j:08d}.jpg" for j in range(5)]  # the half-written one is a temp file
    assert len(list((out / "images").glob(".tmp-*"))) == 1
    assert [r["file"] for r in manifest(out)["images"]] == [f"images/{n}" for n in done]

    monkeypatch.setattr(Image.Image, "save", real_save)
    run_mix(out, model, tree, "--multiplier", "2")
    assert not list((out / "images").glob(".tmp-*"))
    assert len(manifest(out)["images"]) == 12
    for p in (out / "images").iterdir():
        Image.open(p).load()


def test_k_images_weighted_into_one_conditioning_sequence(model, tree, tmp_path):
    pipe = load_pipeline(str(model))
    assert isinstance(pipe, ImageMixerPipeline)
    images = [Image.open(p).convert("RGB") for p in sorted((tree / "train").rglob("*.jpg"))]
    plain = pipe._encode_image([images[:3]], "cpu", 1, True)
    pipe._weights = torch.tensor([[1.0, 0.5, 0.0]])
    weighted = pipe._encode_image([images[:3]], "cpu", 1, True)
    pipe._weights = None
    assert plain.shape == (2, 3, 32)  # (uncond + cond, k images, CLIP projection dim)
    assert torch.equal(plain[0], torch.zeros(3, 32))  # unconditional: zeros
    alone = pipe.image_encoder(pipe.feature_extractor(images=images[:3], return_tensors="pt")
                               .pixel_values).image_embeds
    assert torch.allclose(plain[1], alone, atol=1e-5)  # one token per image, in order
    assert torch.allclose(weighted[1], alone * torch.tensor([[1.0], [0.5], [0.0]]), atol=1e-5)

    out = tmp_path / "triples"
    run_mix(out, model, tree, "--multiplier", "1", "--images-per-mix", "3", "--weights",
            "1,0.5,0.25")
    rows = manifest(out)["images"]
    assert len(rows) == 6
    assert all(len(set(r["sources"])) == 3 and r["weights"] == [1.0, 0.5, 0.25] for r in rows)


def test_a_model_that_cannot_be_loaded_names_the_fix(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    with pytest.raises(MixError, match="hf download someone/image-mixer --local-dir"):
        load_pipeline("someone/image-mixer")
    (tmp_path / "not_a_pipeline").mkdir()
    with pytest.raises(MixError, match="no model_index.json"):
        load_pipeline(str(tmp_path / "not_a_pipeline"))


def test_mixed_folder_is_validated(tmp_path, tiny_run):
    folder = tmp_path / "empty_mix"
    missing = apply_overrides(Recipe(), tiny_run(tmp_path / "run", f"data.mixed={folder}"))
    with pytest.raises(RecipeError, match="does not exist: write it with `scalekd mix"):
        validate(missing)
    (folder / "images").mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({"settings": {}, "images": []}))
    with pytest.raises(RecipeError, match="lists no image yet"):
        validate(missing)


@pytest.fixture(scope="module")
def mixed_64(tmp_path_factory, model):
    """64 mixes of the tiny runs' 64 synthetic training images, at their 32 px."""
    out = tmp_path_factory.mktemp("mixed") / "mix"
    main(["mix", "--out", str(out), "--model", str(model), "--multiplier", "1", "--steps", "1",
          "--size", "32", "--batch-size", "16", "data.source=synthetic", "data.num_samples=64",
          "data.input_size=32"])
    return out


def test_recipe_refuses_mixup_odd_batches_and_no_teacher(tmp_path, tiny_run, mixed_64):
    def problems(*extra):
        with pytest.raises(RecipeError) as err:
            validate(apply_overrides(Recipe(), tiny_run(tmp_path, f"data.mixed={mixed_64}",
                                                        *extra)))
        return str(err.value)

    validate(apply_overrides(Recipe(), tiny_run(tmp_path, f"data.mixed={mixed_64}")))
    assert "Mixup/CutMix would mix the labels of synthetic images" in problems("aug.mixup=0.2")
    assert "must be even" in problems("data.batch_size=14", "data.grad_accum=2")
    assert "only feed distillation terms" in problems("distill.method=supervised",
                                                      "distill.weights={}")


def test_training_takes_no_task_loss_on_synthetic_images(tmp_path, tiny_run, mixed_64,
                                                         monkeypatch):
    from helpers.runs import train_in_process
    from scalekd.data.mix_folder import MixedImages
    from scalekd.distill.kd import VanillaKD

    seen, read = [], []
    forward, image = VanillaKD.forward, MixedImages.image

    def spy(self, student_logits, teacher, targets):
        terms = forward(self, student_logits, teacher, targets)
        hard, = torch.autograd.grad(terms["hard"], student_logits, retain_graph=True)
        kd, = torch.autograd.grad(terms["kd"], student_logits, retain_graph=True)
        seen.append((targets.clone(), hard, kd))
        return terms

    monkeypatch.setattr(VanillaKD, "forward", spy)
    monkeypatch.setattr(MixedImages, "image", lambda self, i: read.append(i) or image(self, i))
    result = train_in_process(tiny_run(tmp_path / "run", f"data.mixed={mixed_64}",
                                       "run.max_steps=3", "eval.teacher=false"))
    assert result.steps == 3 and len(seen) == 3
    assert len(read) == 3 * 8  # half of each batch of 16 from the mix folder
    for targets, hard, kd in seen:
        synthetic = targets == -1
        assert synthetic.tolist() == [False] * 8 + [True] * 8  # 1:1 in every batch
        assert (hard[synthetic] == 0).all() and (hard[~synthetic] != 0).any()
        assert (kd[synthetic].abs().sum(1) > 0).all()  # the KD term learns from every one
