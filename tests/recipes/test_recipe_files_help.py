"""Every recipe file prints its help (its docstring, its own flags with their choices and
defaults, the overrides) instead of failing on `--help`; recipes/scalekd_in1k.py's pair is the
`--pair` argument, not a pseudo-field (issue 20, item 6); recipes/label_free.py's loss its
`--objective`."""

import runpy
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.py")))
def test_every_recipe_file_prints_its_help(name, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(RECIPES / name), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(RECIPES / name), run_name="__main__")
    assert done.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    doc = runpy.run_path(str(RECIPES / name))["__doc__"]
    assert " ".join(doc.split()[:8]) in out  # the file's docstring
    assert "section.field=value" in out


def test_scalekd_pair_is_an_argument_help_shows_with_every_choice(capsys):
    recipe = runpy.run_path(str(RECIPES / "scalekd_in1k.py"))
    with pytest.raises(SystemExit):
        recipe["command_line"](["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(pair in out for pair in recipe["PAIRS"])
    assert "(default: swinl_r50)" in out and "--probe-only" in out
    args = recipe["command_line"](["run.epochs=1", "--pair", "beitl_r50", "data.path=/d"])
    assert (args.pair, args.overrides, args.probe_only) == ("beitl_r50",
                                                            ["run.epochs=1", "data.path=/d"],
                                                            False)


def test_the_old_pair_form_and_an_unknown_pair_say_what_to_do(capsys):
    command_line = runpy.run_path(str(RECIPES / "scalekd_in1k.py"))["command_line"]
    with pytest.raises(SystemExit) as old:
        command_line(["pair=beitl_r50"])
    assert old.value.code == 2
    assert "pick the pair with --pair NAME" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        command_line(["--pair", "beitl"])
    assert "invalid choice: 'beitl'" in capsys.readouterr().err


def test_an_unknown_flag_of_a_recipe_file_is_an_error_not_an_override(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["in1k_a1.py", "--epochs", "3"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(RECIPES / "in1k_a1.py"), run_name="__main__")
    assert done.value.code == 2
    assert "unrecognized arguments: --epochs" in capsys.readouterr().err


def test_label_free_objective_is_an_argument_help_shows_with_every_choice(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(RECIPES / "label_free.py"), "--help"])
    with pytest.raises(SystemExit):
        runpy.run_path(str(RECIPES / "label_free.py"), run_name="__main__")
    out = " ".join(capsys.readouterr().out.split())
    assert "--objective {features,scalekd}" in out and "(default: features)" in out
