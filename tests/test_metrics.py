"""Metrics by name: the specs drive the hot path, the decoders, the layout and the report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradscope import metrics, watch
from gradscope.activations import FAMILIES
from gradscope.metrics import METRICS, Metric
from gradscope.plan import Plan
from gradscope.reductions import ActivationCall
from gradscope.report import ACTIVATION_COLUMNS, COMPARE, LAYER_COLUMNS
from gradscope.writers.layout import (
    RUN_SECTION,
    SECTION_TITLES,
    custom_scalars_layout,
    health_title,
    run_chart_title,
)
from tests.fixtures.models import SmallCNN, mlp


def test_every_recorded_metric_is_a_documented_spec() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 6), nn.Tanh(),
                          nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 3), nn.Softmax(dim=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")  # the scaler's "skipped" and "scale"
    with watch(model, optimizer=opt, scaler=scaler, summary=False) as mon:
        opt.zero_grad()
        scaler.scale(model(torch.randn(5, 4)).sum()).backward()
        scaler.step(opt)
        scaler.update()
    recorded = set(mon.history.metrics())
    # every per-layer spec is recorded by some family of this model (recurrent layers'
    # specs: tests/test_recurrent.py::test_every_recurrent_spec_is_recorded)
    per_layer = {m.name for m in METRICS.values() if m.kind not in ("run", "gates", "through_time")}
    assert recorded == per_layer
    for m in METRICS.values():
        assert len(m.doc) > 10 and not m.doc.endswith("."), m.name


def test_which_families_get_which_metrics() -> None:
    names = {f.name: f for f in FAMILIES.values()}
    relu = [m.name for m in metrics.for_family(names["relu"], "activation")]
    assert relu == ["mean", "std", "min", "max", "nonfinite", "small_deriv", "mean_deriv",
                    "zero_frac", "dead_units", "nonfinite_units"]
    assert [m.name for m in metrics.for_family(names["gelu"], "window")] == ["neg_units_window"]
    assert [m.name for m in metrics.for_family(names["softmax"], "activation")][-1] == "saturation"


def test_layout_and_report_are_derived_from_the_specs() -> None:
    layout = custom_scalars_layout({m.name: ["fc1"] for m in METRICS.values() if m.kind != "run"})
    health = [m for m in METRICS.values() if m.health is not None]
    assert list(layout)[:1 + len(health)] == [RUN_SECTION, *map(health_title, metrics.health())]
    assert list(layout[RUN_SECTION]) == [run_chart_title(m.name) for m in metrics.by_kind("run")]
    for m in METRICS.values():
        if m.kind == "run":
            assert m.section == "run" and m.health is None
        elif m.health is None:
            assert f"{m.name} · fc1" in layout[SECTION_TITLES[m.section]], m.name
        else:
            assert list(layout[health_title(m)]) == [f"{m.name} · fc1"]
    assert ACTIVATION_COLUMNS[0] == ("saturation", ("saturation",))
    assert dict(LAYER_COLUMNS)["grad/weight"] == ("grad_weight_ratio",)
    assert ("layer", "update_ratio") in COMPARE and ("activation", "dead_units") in COMPARE


def test_a_new_metric_is_one_spec(tmp_path: Path) -> None:
    """Registering one spec (with its own reduction) records it, charts it and reports it."""
    spec = metrics.register(Metric(
        "abs_mean", "activation", "mean of |y|", ("abs_mean",),
        lambda v, s: v["abs_mean"] / s.numel, section="forward", report=6.0,
        reduce=lambda c: c.y.abs().sum()))
    try:
        torch.manual_seed(0)
        model = mlp(nn.Tanh, depth=1, width=5)
        x = torch.randn(7, 8)
        with watch(model, logdir=tmp_path, summary=False) as mon:
            model(x).sum().backward()
        y = torch.tanh(model[0](x))
        assert mon.history.value("1", "abs_mean") == pytest.approx(y.abs().mean().item(), rel=1e-6)
        layout = custom_scalars_layout({"abs_mean": ["1"]})
        assert "abs_mean · 1" in layout[SECTION_TITLES["forward"]]
        assert ("abs_mean", ("abs_mean",)) in metrics.columns("activation")
    finally:
        del METRICS[spec.name]


def test_decoders_are_told_their_layout_and_check_it() -> None:
    fam = FAMILIES[nn.ReLU]
    y = torch.tensor([[1.0, -1.0], [2.0, -3.0]])
    tensors, decode = Plan(fam, "activation").run(
        ActivationCall(fam, nn.ReLU(), None, y, eps=0.01, delta=0.01, unit_dim=None), "r")
    values = torch.stack([t.float() for t in tensors]).tolist()
    got = {r.metric: r.value for r in decode(0, values)}
    assert got["zero_frac"] == 0.5 and got["dead_units"] == 0.5
    assert got["mean_deriv"] == 0.5 and got["small_deriv"] == 0.5
    with pytest.raises(ValueError, match=r"expected .* values, got"):
        decode(0, [*values, 0.0])


def test_layer_values_combine_parameters_as_the_specs_say() -> None:
    got = metrics.layer_values({"grad_norm": [3.0, 4.0], "weight_norm": [6.0, 8.0],
                                "grad_nonfinite": [1.0, 2.0], "update_norm": [0.0, 0.1]})
    assert got["grad_norm"] == 5.0 and got["weight_norm"] == 10.0 and got["grad_nonfinite"] == 3.0
    assert got["grad_weight_ratio"] == 0.5 and got["update_ratio"] == pytest.approx(0.01)
    assert math.isnan(metrics.ratio(0.0, 0.0)) and metrics.ratio(1.0, 0.0) == math.inf
    # an infinite denominator is a norm that overflowed float32: unknown, never 0
    assert math.isnan(metrics.ratio(1.0, math.inf)) and math.isnan(metrics.ratio(math.inf, math.inf))


def test_bad_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        Metric("x", "bogus", "d", (), lambda v, s: 0.0)
    with pytest.raises(ValueError, match="section"):
        Metric("x", "activation", "d", (), lambda v, s: 0.0, section="sideways")
    with pytest.raises(ValueError, match="section 'run' is for kind 'run'"):
        Metric("x", "run", "d", ("saturation",), lambda v, s: 0.0, aggregate="max")
    with pytest.raises(ValueError, match="aggregate"):
        Metric("x", "run", "d", ("saturation",), lambda v, s: 0.0, section="run", aggregate="norm")
    with pytest.raises(TypeError, match=r"pass a gradscope\.metrics\.Metric"):
        metrics.register("x")  # type: ignore[arg-type]


def test_cnn_records_the_same_metric_set_per_family() -> None:
    torch.manual_seed(0)
    model = SmallCNN()
    with watch(model, summary=False) as mon:
        model(torch.randn(2, 1, 12, 12)).sum().backward()
    expected = {m.name for m in metrics.for_family(FAMILIES[nn.ReLU], "activation")}
    expected |= {m.name for m in metrics.by_kind("backprop")} | {"dead_units_window"}
    expected |= {m.name for m in metrics.by_kind("grad_in")}
    assert set(mon.history.metrics("features.2")) == expected
