"""The command line's help texts and errors, and ``watch()``'s positional-argument error."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import gradscope
from gradscope import cli
from gradscope.experiments.models import ACTIVATIONS, INITS
from gradscope.experiments.optimizers import OPTIMIZERS
from gradscope.experiments.presets import PRESETS
from tests.fixtures.models import mlp

COMMANDS = list(cli.COMMANDS)


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def _sub(name: str) -> argparse.ArgumentParser:
    return cli._parsers(cli.build_parser())[name]


def test_top_level_help_counts_the_presets_from_the_registry(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help(capsys).split())  # argparse wraps lines
    assert f"one of {len(PRESETS)} classic results" in text
    for name in PRESETS:
        assert name in text
    preset = " ".join(_help(capsys, "preset").split())
    assert f"one of {len(PRESETS)} classic results" in preset


@pytest.mark.parametrize("argv", [[], *([c] for c in COMMANDS)], ids=["gradscope", *COMMANDS])
def test_every_help_ends_with_an_examples_block_of_real_commands(
        capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    text = _help(capsys, *argv)
    block = text[text.index("\nexamples:\n"):].splitlines()[2:]
    lines = [line.split("#")[0].split() for line in block if line.strip()]
    ours = [words[1:] for words in lines if words[0] == "gradscope"]  # not tensorboard, torchrun
    parser = cli.build_parser()
    commands = [parser.parse_args(words).command for words in ours]  # each parses as written
    assert commands and (not argv or argv[0] in commands)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_a_help_text(name: str) -> None:
    for action in _sub(name)._actions:
        assert action.help, f"gradscope {name} {action.option_strings or action.dest}: no help"


def test_compare_axis_flags_list_their_values_from_the_registries(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help(capsys, "compare").split())
    for values in (ACTIVATIONS, INITS, OPTIMIZERS):
        assert ", ".join(values) in text
    assert "--batchnorm {off,on}" in text


def test_demo_seed_is_explained_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(_help(capsys, "demo").split())
    assert "--seed INT seed of the weights, the synthetic data and the batch order" in text
    with pytest.raises(SystemExit, match=r"--seed -1: use an integer >= 0"):
        cli.main(["demo", "--seed", "-1", "--logdir", "unused"])


def test_preset_list_is_user_facing_text(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["preset", "--list"]) == 0
    text = capsys.readouterr().out
    for name in PRESETS:
        assert f"{name}\n  claim: " in text
    for internal in ("the issue", "issue's", "the lead", "TODO"):
        assert internal not in text, internal


@pytest.mark.parametrize("argv,owner,closest", [
    (["report", "runs", "--fromat", "json"], "gradscope report", "--format"),
    (["report", "runs", "--fromat=json"], "gradscope report", "--format"),
    (["compare", "--quick", "--activation-s", "relu"], "gradscope compare", "--activations"),
    (["demo", "--sed", "3"], "gradscope demo", "--seed"),
    (["preset", "glorot2010", "--quikc"], "gradscope preset", "--quick"),
    (["--verison"], "gradscope", "--version"),
], ids=["report", "report=", "compare", "demo", "preset", "top"])
def test_unknown_flag_names_the_closest_option_of_its_command(
        capsys: pytest.CaptureFixture[str], argv: list[str], owner: str, closest: str) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"usage: {owner} " in err  # the command's usage, not the top-level one
    assert f"{owner}: error: unrecognized arguments:" in err
    assert f"did you mean {closest}?" in err


def test_unknown_flag_like_no_option_lists_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.main(["demo", "--zzzzzzzz"])
    err = capsys.readouterr().err
    assert "the options are: --help, --logdir, --steps, --seed" in err


def test_watch_with_a_positional_optimizer_says_to_pass_it_by_name() -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"only positional argument; got 1 more \(SGD\)\. Every option "
                                        r"is keyword-only: pass the optimizer by name: "
                                        r"watch\(model, optimizer=opt\)"):
        gradscope.watch(model, opt)
    with pytest.raises(TypeError, match=r"got 2 more \(SGD, int\).*optimizer=opt"):
        gradscope.watch(model, opt, 10)
    with pytest.raises(TypeError, match=r"scaler=scaler"):
        gradscope.watch(model, torch.amp.GradScaler("cpu"))
    # nothing was attached by the failed calls: a correct call works
    with gradscope.watch(model, optimizer=opt, summary=False) as mon:
        assert mon.options.every == 1


def test_demo_table_writes_a_missing_value_as_report_does() -> None:
    """Issue 25.7: ``gradscope demo``'s table prints ``-`` where a value is missing (as
    ``gradscope report`` does), not ``nan``; the values it has are formatted."""
    from gradscope.demo import _table
    from gradscope.history import History, LayerInfo

    h = History()
    h.add_layer(LayerInfo("1", kind="activation", order=0, type="ReLU"))
    h.add_layer(LayerInfo("0", kind="layer", order=0, type="Linear"))
    h.add(3, "1", "saturation", 0.25)
    h.add(3, "0", "grad_norm", 0.5)
    (_, row) = _table(h).splitlines()
    assert "nan" not in row
    assert row.split() == ["1", "0.25", "-", "-", "|", "0", "5.00e-01", "-"]


def test_counts_in_messages_agree_with_their_noun() -> None:
    """Issue 25.7: "1 activation call-site", "1 finding"; plurals from 0 and 2."""
    from gradscope.records import Coverage, counted

    assert Coverage(step=0, by_module=1, by_function=0).line() == (
        "gradscope: 1 activation call-site captured (1 by module, 0 by function)")
    assert Coverage(step=0, by_module=1, by_function=0).markdown().startswith(
        "**1 activation call-site** captured at step 0")
    assert [counted(n, "finding") for n in (0, 1, 2)] == ["0 findings", "1 finding",
                                                          "2 findings"]


def test_demo_rerun_replaces_its_runs(tmp_path: Path) -> None:
    """``gradscope demo`` twice into one directory: still one run per model there."""
    from gradscope.demo import run_demo
    from gradscope.events import runs_in

    for _ in range(2):
        run_demo(logdir=str(tmp_path), steps=2, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relu_he", "sigmoid_normal"]
    assert all(len(runs_in(p)) == 1 for p in tmp_path.iterdir())
