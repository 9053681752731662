"""Recipe cards (recipes/cards.toml): every recipe file, every --pair of scalekd_in1k.py and
every --objective of label_free.py, resolved as a user runs it, holds each value its card states
and cites; changing any card value, or the recipe's value, fails. docs/recipes.md's card table
is printed from the cards: `python tests/test_recipe_cards.py`."""

import functools
import math
import runpy
import tomllib
from pathlib import Path
from typing import Any

import pytest

from scalekd.distill import DISTILLERS
from scalekd.recipe import Recipe, apply_overrides

ROOT = Path(__file__).resolve().parents[1]
CARDS: dict[str, dict] = tomllib.loads((ROOT / "recipes" / "cards.toml").read_text())
CHOICES = ("pair", "objective")  # a recipe file's argument that picks the recipe
META = ("recipe", *CHOICES, "deliberate")


def entries(card: dict) -> dict[str, tuple[Any, str]]:
    return {key: tuple(entry) for key, entry in card.items() if key not in META}


@functools.cache
def resolve(name: str) -> Recipe:
    card = CARDS[name]
    build = runpy.run_path(str(ROOT / card["recipe"]))["recipe"]
    return build(**{key: card[key] for key in CHOICES if key in card})


def recipe_value(recipe: Recipe, key: str) -> Any:
    """A recipe field by its dotted key; weights.<term>: the weight the method gives the term."""
    if key.startswith("weights."):
        d = recipe.distill
        method = DISTILLERS.get(d.method)
        defaults = method.loss_terms if method else {}
        return {**defaults, **d.weights}.get(key.split(".", 1)[1])
    node = recipe
    for part in key.split("."):
        node = getattr(node, part)
    return list(node) if isinstance(node, tuple) else node


def same(want: Any, got: Any) -> bool:
    if isinstance(want, bool) or isinstance(got, bool):
        return want is got
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return math.isclose(want, got, rel_tol=1e-12, abs_tol=0.0)
    return want == got


def mismatches(card: dict, recipe: Recipe) -> list[str]:
    return [f"{key}: card says {value!r} ({source}); the recipe runs {recipe_value(recipe, key)!r}"
            for key, (value, source) in entries(card).items()
            if not same(value, recipe_value(recipe, key))]


def test_every_recipe_file_and_pair_has_a_card():
    files = {f"recipes/{p.name}" for p in (ROOT / "recipes").glob("*.py")}
    assert files == {card["recipe"] for card in CARDS.values()}
    pairs = runpy.run_path(str(ROOT / "recipes" / "scalekd_in1k.py"))["PAIRS"]
    assert set(pairs) == {card["pair"] for card in CARDS.values() if "pair" in card}
    objectives = runpy.run_path(str(ROOT / "recipes" / "label_free.py"))["OBJECTIVES"]
    assert set(objectives) == {card["objective"] for card in CARDS.values() if "objective" in card}


@pytest.mark.parametrize("name", CARDS)
def test_every_value_is_cited_and_every_deliberate_difference_is_a_value(name):
    card = CARDS[name]
    for key, entry in entries(card).items():
        assert len(entry) == 2 and isinstance(entry[1], str) and entry[1].strip(), key
    assert set(card.get("deliberate", {})) <= set(entries(card))
    assert all(reason.strip() for reason in card.get("deliberate", {}).values())


@pytest.mark.parametrize("name", CARDS)
def test_recipe_matches_its_card(name):
    assert mismatches(CARDS[name], resolve(name)) == []


def changed(value: Any) -> Any:
    """A value of the same kind that differs."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value * 2 + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, 1]
    return {**value, "changed": 1}


ALL_ENTRIES = [(name, key) for name, card in CARDS.items() for key in entries(card)]


@pytest.mark.parametrize("name, key", ALL_ENTRIES)
def test_a_changed_card_value_fails(name, key):
    card = {**CARDS[name], key: [changed(CARDS[name][key][0]), CARDS[name][key][1]]}
    assert [m.split(":")[0] for m in mismatches(card, resolve(name))] == [key]


@pytest.mark.parametrize("name, key", ALL_ENTRIES)
def test_a_changed_recipe_value_fails(name, key):
    value = changed(CARDS[name][key][0])
    field = (f"distill.weights.{key.split('.', 1)[1]}" if key.startswith("weights.") else key)
    text = value if isinstance(value, str) else repr(tuple(value) if isinstance(value, list)
                                                     else value)
    recipe = apply_overrides(resolve(name), [f"{field}={text}"])
    assert key in [m.split(":")[0] for m in mismatches(CARDS[name], recipe)]


COLUMNS = [  # docs/recipes.md: (heading, keys joined in the cell)
    ("card", None), ("teacher -> student", ("teacher.name", "student.name")),
    ("epochs", ("run.epochs",)), ("batch", ("data.batch_size",)),
    ("optimiser, lr, wd", ("optim.name", "optim.lr", "optim.weight_decay")),
    ("warm-up (from lr)", ("optim.warmup_epochs", "optim.warmup_lr")),
    ("clip", ("optim.clip_grad",)),
    ("augmentation", ("aug.auto_augment", "aug.re_prob", "aug.mixup", "aug.cutmix",
                      "aug.smoothing", "aug.repeated_aug")),
    ("label loss", ("distill.hard_loss", "distill.bce_reduction")),
    ("T; weights label, KD", ("distill.temperature", "weights.hard", "weights.kd")),
    ("DFM w, beta", ("distill.dfm_weight", "distill.dfm_beta")),
    ("softmax scale", ("distill.cap_softmax_scale",)), ("heads", ("distill.cap_heads",)),
    ("CAP norm", ("distill.cap_norm",)), ("proxy blocks", ("distill.tpp_blocks",)),
    ("EMA", ("ema.decay",)), ("deliberate differences", None)]


LABELS = {"aug.re_prob": "erase ", "aug.mixup": "mixup ", "aug.cutmix": "cutmix ",
          "aug.smoothing": "smooth ", "aug.repeated_aug": "repeat "}


def cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.5g}"  # 5 digits: an EMA decay of 0.99996 is not 1
    if isinstance(value, list):
        return "/".join(map(str, value))
    return str(value).replace("|", "\\|") if value != "" else "none"


def card_table() -> str:
    """The cards as one Markdown row per recipe (every value's source is in cards.toml)."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |",
             "|" + " --- |" * len(COLUMNS)]
    for name, card in CARDS.items():
        values = entries(card)
        row = [name]
        for heading, keys in COLUMNS[1:-1]:
            got = [LABELS.get(k, "") + cell(values[k][0]) for k in keys if k in values]
            row.append((" -> " if heading.startswith("teacher") else ", ").join(got) or "-")
        row.append(", ".join(card.get("deliberate", {})) or "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def test_the_recipes_page_shows_the_cards():
    assert card_table() in (ROOT / "docs" / "recipes.md").read_text()


if __name__ == "__main__":
    print(card_table())
