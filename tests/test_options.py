"""watch()'s options: one signature, validated, grouped, with the closest name on a typo."""

from __future__ import annotations

import inspect
from dataclasses import fields
from typing import Any

import pytest
import torch
from torch import nn

import gradscope
from gradscope import Definitions, watch
from gradscope.options import Options
from tests.fixtures.models import mlp


def test_signature_shows_every_option_with_its_default() -> None:
    params = inspect.signature(watch).parameters
    options = {f.name: f.default for f in fields(Options) if f.init}
    definitions = {f.name: f.default for f in fields(Definitions)}
    shown = {n: p.default for n, p in params.items()
             if p.kind == p.KEYWORD_ONLY and n not in ("optimizer", "definitions")}
    assert shown == {k: v for k, v in {**options, **definitions}.items() if k != "definitions"}
    assert params["definitions"].default is None
    assert all(p.kind == p.KEYWORD_ONLY for n, p in params.items()
               if n not in ("model", "unknown"))
    doc = watch.__doc__ or ""
    for name in shown:
        assert f"{name}:" in doc, f"watch's docstring does not document {name}"


@pytest.mark.parametrize("typo,closest", [("flush_evry", "flush_every"), ("histogram_evry", "histogram_every"),
                                          ("dead_windows", "dead_window"), ("sink", "sinks")])
def test_unknown_option_names_the_closest_valid_one(typo: str, closest: str) -> None:
    with pytest.raises(TypeError, match=rf"watch\(\) got an unexpected option '{typo}'; "
                                        rf"did you mean '{closest}'\?"):
        watch(mlp(), **{typo: 3})


def test_an_option_nothing_like_any_lists_them_all() -> None:
    with pytest.raises(TypeError, match="the options are: every, flush_every"):
        watch(mlp(), zzzzzzzz=1)


def test_definitions_grouped_or_flat_but_not_both() -> None:
    model = mlp()
    with watch(model, definitions=Definitions(eps=0.05, dead_window=7), summary=False) as mon:
        assert mon.options.definitions == Definitions(eps=0.05, dead_window=7)
    with watch(model, eps=0.05, dead_window=7, summary=False) as mon:
        assert mon.options.definitions == Definitions(eps=0.05, dead_window=7)
    with pytest.raises(TypeError, match="eps given both flat and in definitions"):
        watch(model, definitions=Definitions(delta=0.1), eps=0.2)
    with pytest.raises(ValueError, match=r"watch\(eps=2\)"):
        Definitions(eps=2)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"activations": "no"}, r"activations='no'\): pass True or False"),
     ({"summary": 1}, r"summary=1\): pass True or False"),
     ({"sinks": None}, r"sinks=None\): pass a list of sinks"),
     ({"include": 42}, r"include=42\): pass fnmatch patterns"),
     ({"definitions": {"eps": 0.1}}, r"definitions=.*gradscope\.Definitions"),
     ({"histogram_bins": 0}, r"histogram_bins=0\): must be an int >= 1"),
     ({"unit_dim": 1.5}, r"unit_dim=1\.5\): pass an int"),
     ({"check_nonfinite": "yes"}, r"check_nonfinite='yes'\): pass True .*'all' .* or False"),
     ({"check_nonfinite": 1}, r"check_nonfinite=1\): pass True")],
    ids=["bool_as_string", "bool_as_int", "sinks_none", "include_int", "definitions_dict",
         "histogram_bins", "unit_dim_float", "check_nonfinite_string", "check_nonfinite_int"])
def test_bad_values_name_the_option_and_the_fix(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        watch(mlp(), **kwargs)


def test_monitor_takes_the_same_flat_options() -> None:
    mon = gradscope.Monitor(mlp(), every=3, eps=0.2)
    assert mon.options.every == 3 and mon.options.definitions.eps == 0.2
    with pytest.raises(TypeError, match="flush_evry"):
        gradscope.Monitor(mlp(), flush_evry=3)


def test_every_option_changes_what_is_recorded() -> None:
    """The options reach the captures: a spot check of each concern."""
    torch.manual_seed(0)
    model = mlp(nn.Sigmoid, depth=2, width=6)
    x = torch.randn(8, 8)
    with watch(model, every=2, eps=0.49, activations=True, backprop=False, summary=False) as mon:
        for _ in range(4):
            model(x).sum().backward()
    h = mon.history
    assert h.steps() == [0, 2]
    assert "grad_out_norm" not in h.metrics("1")
    y = torch.sigmoid(model[0](x))
    assert h.value("1", "saturation") == pytest.approx(((y < 0.49) | (y > 0.51)).float().mean().item())
