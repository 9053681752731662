"""`scalekd --help` and each command's help list every choice with its default (issue 20, item
6); the commands share one convention: run settings are section.field=value overrides, the
rest `--flags`."""

import argparse
import json
import re
from pathlib import Path

import pytest

from scalekd.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_scalekd_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert set(_commands()) == {"train", "eval", "export", "push", "report", "diagnose", "probe",
                                "make-beton", "mix", "cache-teacher"}
    assert all(re.search(rf"^\s+{name}\b", out, re.M) for name in _commands())


@pytest.mark.parametrize("name", sorted(_commands()))
def test_each_commands_help_shows_every_choice_and_default(name, capsys):
    parser = _commands()[name]
    with pytest.raises(SystemExit):
        main([name, "--help"])
    text = _flat(capsys.readouterr().out)
    assert text == _flat(parser.format_help())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name} {action.dest}: no help"
        help_text = _flat(action.help)
        assert help_text in text or help_text[:40] in text
        for choice in action.choices or ():
            assert choice in text, f"{name} {action.dest}: choice {choice!r} not shown"
        if action.default not in (None, "", []):
            assert f"(default: {action.default})" in text, f"{name} {action.dest}"
        elif action.option_strings and not action.required:  # said in words
            assert "default" in action.help, f"{name} {action.dest}: default not said"


@pytest.mark.parametrize("name", ["probe", "make-beton", "mix", "cache-teacher"])
def test_every_command_reading_settings_takes_overrides_and_a_recipe_file(name):
    dests = {a.dest: a for a in _commands()[name]._actions}
    assert dests["overrides"].metavar == "section.field=value"
    assert "recipe" in dests and dests["recipe"].option_strings == ["--recipe"]


def test_a_tool_reads_its_settings_from_the_recipe_file_then_the_overrides(tmp_path, capsys):
    """make-beton --recipe FILE data.path=...: the file's data settings, overridden (in any
    order with the flags); a bad override is named before anything is written."""
    recipe = tmp_path / "my_recipe.py"
    recipe.write_text("from scalekd.recipe import Recipe, apply_overrides\n"
                      "def recipe():\n"
                      "    return apply_overrides(Recipe(), ['data.source=synthetic',"
                      " 'data.num_samples=4', 'data.input_size=16'])\n")
    main(["make-beton", "data.num_samples=3", "--out", str(tmp_path / "out"), "--recipe",
          str(recipe), "data.input_size=16"])  # overrides on both sides of the flags
    assert "wrote" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "train.json").read_text())["num_images"] == 3
    with pytest.raises(SystemExit) as bad:
        main(["make-beton", "--out", str(tmp_path / "o2"), "--recipe", str(recipe),
              "data.num_sample=3"])
    assert bad.value.code == 2
    assert "did you mean 'num_samples'" in capsys.readouterr().err


def test_train_hands_the_recipe_files_own_flags_to_it(capsys):
    with pytest.raises(SystemExit) as done:
        main(["train", str(ROOT / "recipes" / "scalekd_in1k.py"), "--help"])
    assert done.value.code == 0
    assert "--pair" in capsys.readouterr().out
