"""Findings rules on constructed histories, and the monitor's findings and summary."""

from __future__ import annotations

import math
from typing import Optional

import pytest
import torch
from torch import nn

import gradscope
from gradscope.findings import Finding, Thresholds, analyze, format_findings
from gradscope.history import History, LayerInfo
from gradscope.records import counted
from gradscope.writers import MemoryWriter

STEPS = list(range(0, 1000, 100))  # 10 recorded steps
DEPTH = 4


def healthy(steps: list[int] = STEPS) -> History:
    """A 4-layer MLP (ReLU, ReLU, sigmoid) history with nothing wrong in it."""
    h = History()
    for i in range(DEPTH):
        h.add_layer(LayerInfo(f"fc{i}", kind="layer", order=i, type="Linear"))
        h.add_layer(LayerInfo(f"fc{i}.weight", kind="parameter", order=i, type="Parameter",
                              module=f"fc{i}", shape=(16, 16)))
    fams = ["relu", "relu", "sigmoid"]
    for i, fam in enumerate(fams):
        h.add_layer(LayerInfo(f"act{i}", kind="activation", order=i, type=fam, family=fam))
    for s in steps:
        for i in range(DEPTH):
            h.add(s, f"fc{i}", "grad_norm", 0.5 + 0.1 * i)
            h.add(s, f"fc{i}", "grad_nonfinite", 0.0)
            h.add(s, f"fc{i}", "weight_norm", 4.0)
            h.add(s, f"fc{i}", "update_ratio", 1e-3)
        for i, fam in enumerate(fams):
            h.add(s, f"act{i}", "std", 0.6)
            h.add(s, f"act{i}", "nonfinite", 0.0)
            h.add(s, f"act{i}", "grad_out_nonfinite", 0.0)
            if fam == "relu":
                h.add(s, f"act{i}", "dead_units", 0.02)
            else:
                h.add(s, f"act{i}", "saturation", 0.05)
    return h


def set_series(h: History, layer: str, metric: str, fn: object) -> History:
    """Rebuild ``h`` with ``layer/metric`` at step ``s`` replaced by ``fn(s)``."""
    d = h.to_dict()
    steps, _ = d["data"][layer][metric]
    d["data"][layer][metric] = [steps, [fn(s) for s in steps]]  # type: ignore[operator]
    return History.from_dict(d)


def rules(found: list[Finding]) -> list[tuple[str, Optional[str], int]]:
    return [(f.rule, f.layer, f.first_step) for f in found]


def test_healthy_history_has_no_findings() -> None:
    assert analyze(healthy()) == []
    assert analyze(History()) == []


def test_vanishing_gradients() -> None:
    h = healthy()
    for i, g in enumerate([1e-6, 1e-4, 1e-2, 1.0]):
        h = set_series(h, f"fc{i}", "grad_norm", lambda s, g=g: g)
    found = analyze(h)
    assert rules(found) == [("vanishing_gradients", "fc0", 0)]
    assert found[0].severity == "warning" and "ReLU" in found[0].message
    assert found[0].value == pytest.approx(1e-6)


def test_exploding_gradients_with_depth() -> None:
    h = healthy()
    for i, g in enumerate([1e4, 1e2, 10.0, 1.0]):
        h = set_series(h, f"fc{i}", "grad_norm", lambda s, g=g: g)
    found = analyze(h)
    assert rules(found) == [("exploding_gradients", "fc0", 0)]
    assert found[0].severity == "error" and "clip" in found[0].message


def test_exploding_gradients_over_time() -> None:
    h = healthy()
    for i in range(DEPTH):
        h = set_series(h, f"fc{i}", "grad_norm", lambda s: 0.5 * (10.0 ** (s // 100)))
    found = analyze(h)
    # 10x per record; the start is the median of the first 3 records (step 100's
    # value), so the norm is first more than 100x above it at step 400.
    assert rules(found) == [("exploding_gradients", None, 400)]


def test_dead_units_since_step() -> None:
    h = set_series(healthy(), "act1", "dead_units", lambda s: 0.71 if s >= 400 else 0.05)
    found = analyze(h)
    assert rules(found) == [("dead_units", "act1", 400)]
    assert "layer act1: 71% of ReLU units dead since step 400 (5% at step 0)" in found[0].message


def test_dead_units_growing_is_info() -> None:
    h = set_series(healthy(), "act0", "dead_units", lambda s: 0.02 + 0.03 * (s // 100))
    found = analyze(h)
    # 0.02 -> 0.29: up by >= 0.2 from step 700 (3 records), below the 0.3 dead threshold
    assert rules(found) == [("dead_units_growing", "act0", 700)]
    assert found[0].severity == "info"


def test_dead_units_prefers_the_windowed_metric() -> None:
    h = healthy()
    for s in STEPS:
        h.add(s, "act0", "dead_units_window", 0.9)
    assert rules(analyze(h)) == [("dead_units", "act0", 0)]


def test_saturation() -> None:
    h = set_series(healthy(), "act2", "saturation", lambda s: 0.8 if s >= 200 else 0.1)
    found = analyze(h)
    assert rules(found) == [("saturation", "act2", 200)]
    assert "80% of sigmoid outputs saturated" in found[0].message


@pytest.mark.parametrize("k", [0, 1, 2], ids=["site0", "site1", "site2"])
def test_nonfinite_forward_names_first_layer(k: int) -> None:
    h = healthy()
    for i in range(k, 3):  # a NaN propagates to every later call-site
        h = set_series(h, f"act{i}", "nonfinite", lambda s: 5.0 if s >= 700 else 0.0)
        h = set_series(h, f"act{i}", "std", lambda s: math.nan if s >= 700 else 0.6)
    for i in range(DEPTH):
        h = set_series(h, f"fc{i}", "grad_nonfinite", lambda s: 3.0 if s >= 700 else 0.0)
    found = analyze(h)
    assert rules(found) == [("nonfinite", f"act{k}", 700)]
    assert "forward pass" in found[0].message and found[0].severity == "error"


def test_nonfinite_backward_names_deepest_layer() -> None:
    h = healthy()
    for i in range(3):
        h = set_series(h, f"act{i}", "grad_out_nonfinite", lambda s: 1.0 if s >= 300 else 0.0)
    assert rules(analyze(h)) == [("nonfinite", "act2", 300)]


def test_activation_collapse_and_blowup() -> None:
    h = healthy()
    for i, sd in enumerate([1.0, 0.05, 1e-3]):
        h = set_series(h, f"act{i}", "std", lambda s, sd=sd: sd)
    assert rules(analyze(h)) == [("activation_collapse", "act2", 0)]
    h = healthy()
    for i, sd in enumerate([1.0, 30.0, 500.0]):
        h = set_series(h, f"act{i}", "std", lambda s, sd=sd: sd)
    assert rules(analyze(h)) == [("activation_blowup", "act2", 0)]


def test_update_ratios_grouped_per_direction() -> None:
    h = healthy()
    h = set_series(h, "fc0", "update_ratio", lambda s: 1e-7)
    h = set_series(h, "fc1", "update_ratio", lambda s: 1e-6 if s >= 500 else 1e-3)
    h = set_series(h, "fc3", "update_ratio", lambda s: 0.5)
    found = analyze(h)
    # same severity and first step (the first after update_settle): network order decides
    assert rules(found) == [("update_ratio_low", "fc0", 100), ("update_ratio_high", "fc3", 100)]
    assert "2 of 4 layers" in found[0].message and "fc1 (1.0e-06)" in found[0].message
    assert rules(analyze(h, Thresholds(update_settle=0)))[1] == ("update_ratio_high", "fc3", 0)


def test_update_ratio_is_judged_after_the_first_steps() -> None:
    """A high ratio that holds only in the first update_settle steps (the start: a resnet18
    conv1 before BatchNorm reads 0.62 at step 0) is no finding, one that lasts past it is."""
    steps = list(range(0, 300, 10))
    early = set_series(healthy(steps), "fc0", "update_ratio", lambda s: 0.6 if s < 80 else 1e-3)
    assert analyze(early) == []
    assert rules(analyze(early, Thresholds(update_settle=0))) == [("update_ratio_high", "fc0", 0)]
    late = set_series(healthy(steps), "fc0", "update_ratio", lambda s: 0.6 if s < 150 else 1e-3)
    found = analyze(late)
    assert rules(found) == [("update_ratio_high", "fc0", 100)] and found[0].resolved
    with pytest.raises(ValueError, match=r"update_settle=-1"):
        Thresholds(update_settle=-1)


def test_one_bad_record_is_not_a_finding() -> None:
    h = set_series(healthy(), "act1", "dead_units", lambda s: 0.9 if s == 900 else 0.02)
    assert analyze(h) == []
    assert rules(analyze(h, Thresholds(window=1))) == [("dead_units", "act1", 900)]


def test_thresholds_are_configurable_and_validated() -> None:
    h = set_series(healthy(), "act1", "dead_units", lambda s: 0.4)
    assert rules(analyze(h)) == [("dead_units", "act1", 0)]
    assert analyze(h, Thresholds(dead_units=0.5)) == []
    with pytest.raises(ValueError, match=r"Thresholds\(dead_units=1.5\)"):
        Thresholds(dead_units=1.5)
    with pytest.raises(ValueError, match="update_ratio_low"):
        Thresholds(update_ratio_low=1.0, update_ratio_high=0.1)
    with pytest.raises(TypeError, match="thresholds"):
        analyze(h, {"dead_units": 0.5})  # type: ignore[arg-type]


def test_format_findings_limits_lines() -> None:
    f = Finding("warning", "dead_units", "a", 0, "layer a: dead")
    text = format_findings([f] * 5, limit=2)
    assert text.count("dead_units") == 2 and "3 more" in text
    assert format_findings([]) == "no findings"


# ------------------------------------------------------------- the monitor
def _train(model: nn.Module, steps: int, lr: float, **options: object) -> gradscope.Monitor:
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with gradscope.watch(model, optimizer=opt, flush_every=5, **options) as mon:
        for _ in range(steps):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(32, 8)), torch.randint(0, 4, (32,))).backward()
            opt.step()
    return mon


def _mlp(act: type[nn.Module], init: str) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    d = 8
    for _ in range(4):
        lin = nn.Linear(d, 32)
        if init == "he":
            nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
        else:
            nn.init.normal_(lin.weight, 0.0, 3.0)
        layers += [lin, act()]
        d = 32
    return nn.Sequential(*layers, nn.Linear(32, 4))


def test_monitor_healthy_model_has_no_findings_and_prints_so(capsys: pytest.CaptureFixture[str]) -> None:
    mon = _train(_mlp(nn.ReLU, "he"), 12, lr=0.01)
    assert mon.findings() == []
    err = capsys.readouterr().err
    assert "gradscope: no findings over steps 0..11" in err


def test_monitor_saturated_model_findings_summary_and_sinks(capsys: pytest.CaptureFixture[str]) -> None:
    mem = MemoryWriter()
    mon = _train(_mlp(nn.Sigmoid, "normal"), 12, lr=0.1, sinks=[mem])
    found = mon.findings()
    assert {f.rule for f in found} >= {"saturation"}
    assert all(f.layer in mon.history.layers() for f in found if f.layer)
    err = capsys.readouterr().err
    assert f"gradscope: {counted(len(found), 'finding')} over" in err and "saturation" in err
    assert [s for s, _ in mem.findings] == [4, 9, 11, 11]  # one update per flush, the final at close
    assert [f.rule for f in mem.findings[-1][1]] == [f.rule for f in found]
    # Stricter thresholds through monitor.findings() and watch(findings=...)
    assert mon.findings(Thresholds(saturation=0.99)) != found


def test_monitor_findings_and_summary_opt_out(capsys: pytest.CaptureFixture[str]) -> None:
    mem = MemoryWriter()
    mon = _train(_mlp(nn.Sigmoid, "normal"), 6, lr=0.1, sinks=[mem], findings=False)
    err = capsys.readouterr().err
    assert mem.findings == [] and "finding" not in err  # only the coverage line is printed
    assert err.startswith("gradscope: 4 activation call-sites captured")
    assert mon.findings() != []  # still available on demand
    _train(_mlp(nn.Sigmoid, "normal"), 6, lr=0.1, summary=False)
    assert capsys.readouterr().err == ""
    with pytest.raises(TypeError, match=r"watch\(findings="):
        gradscope.watch(nn.Linear(2, 2), findings="yes")


def test_vanishing_with_layers_recorded_at_different_steps() -> None:
    """Layers sampled at different steps are compared at the steps they share."""
    h = healthy()
    for i, g in enumerate([1e-6, 1e-4, 1e-2, 1.0]):
        h = set_series(h, f"fc{i}", "grad_norm", lambda s, g=g: g)
    h.add(950, "fc3", "grad_norm", 1.0)  # only the last layer has step 950
    assert rules(analyze(h)) == [("vanishing_gradients", "fc0", 0)]
    assert analyze(h)[0].last_step == 900
