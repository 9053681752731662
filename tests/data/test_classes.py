"""data.classes: a class subset of any source, relabelled in the order given, validated."""

import pytest

from scalekd.data.classes import load_split
from scalekd.engine.validation import validate
from scalekd.recipe import DataCfg, Recipe, RecipeError, apply_overrides


def test_keeps_the_classes_relabelled_in_order():
    cfg = DataCfg(source="synthetic", num_samples=50, input_size=8)
    full = load_split(cfg, "train")
    subset = load_split(DataCfg(source="synthetic", num_samples=50, input_size=8,
                                classes=(7, 2)), "train")
    assert subset.classes == ["class7", "class2"]
    assert sorted(set(subset.targets)) == [0, 1] and len(subset) == 10
    for i in range(len(subset)):
        original = subset.keep[i]
        assert full.targets[original] == (7, 2)[subset.targets[i]]
        assert subset.image(i).tobytes() == full.image(original).tobytes()


def test_bad_classes_are_refused_before_compute():
    base = apply_overrides(Recipe(), ["data.source=synthetic", "data.num_samples=8",
                                      "distill.method=supervised"])
    for value, message in (("(1,1)", "distinct"), ("(3,10)", "has 10 classes")):
        with pytest.raises(RecipeError, match=message):
            validate(apply_overrides(base, [f"data.classes={value}"]))
    validate(apply_overrides(base, ["data.classes=(5,6,7,8,9)"]))
