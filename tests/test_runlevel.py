"""Run-level health values: each run metric against a plain loop, and the records path."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from torch import nn

import gradscope
from gradscope import metrics
from gradscope.runlevel import run_records, run_values
from gradscope.writers import MemoryWriter


def _reference(values: dict[str, list[float]]) -> dict[str, float]:
    """The definitions of docs/metrics.md, written out with loops."""
    out: dict[str, float] = {}
    sat = values.get("saturation", [])
    if sat:
        worst = -math.inf
        for v in sat:
            if math.isnan(v):
                worst = math.nan
                break
            worst = v if v > worst else worst
        out["worst_saturation"] = worst
    norm = values.get("grad_out_norm", [])
    if len(norm) >= 2:
        out["backprop_log10_ratio"] = math.log10(norm[0] / norm[-1])
    upd = values.get("update_ratio", [])
    if upd:
        lo, hi = upd[0], upd[0]
        for v in upd:
            lo, hi = min(lo, v), max(hi, v)
        out["min_update_ratio"], out["max_update_ratio"] = lo, hi
    counts = [values[k] for k in ("nonfinite", "grad_out_nonfinite", "grad_nonfinite") if k in values]
    if counts:
        total = 0.0
        for vs in counts:
            for v in vs:
                total += v
        out["nonfinite_count"] = total
    return out


def test_run_values_match_a_loop_on_random_values() -> None:
    rng = random.Random(0)
    for _ in range(50):
        n = rng.randint(1, 8)
        values = {"saturation": [rng.random() for _ in range(n)],
                  "grad_out_norm": [10 ** rng.uniform(-6, 2) for _ in range(n)],
                  "update_ratio": [10 ** rng.uniform(-6, 0) for _ in range(n)],
                  "nonfinite": [float(rng.randint(0, 3)) for _ in range(n)],
                  "grad_nonfinite": [float(rng.randint(0, 3)) for _ in range(n + 1)]}
        got, want = run_values(values), _reference(values)
        assert set(got) == set(want)
        for k in want:
            assert got[k] == pytest.approx(want[k], rel=1e-12), k


def test_run_values_edge_cases() -> None:
    # A NaN in any layer makes the worst value NaN: never a plausible number.
    assert math.isnan(run_values({"saturation": [0.1, math.nan, 0.2]})["worst_saturation"])
    assert math.isnan(run_values({"update_ratio": [math.nan, 1e-3]})["min_update_ratio"])
    # One call-site has no first/last ratio; a vanished gradient is -inf, 0/0 NaN.
    assert "backprop_log10_ratio" not in run_values({"grad_out_norm": [0.5]})
    assert run_values({"grad_out_norm": [0.0, 1.0]})["backprop_log10_ratio"] == -math.inf
    assert run_values({"grad_out_norm": [1.0, 0.0]})["backprop_log10_ratio"] == math.inf
    assert math.isnan(run_values({"grad_out_norm": [0.0, 0.0]})["backprop_log10_ratio"])
    # the per-element RMS alone is not read: it depends on the layers' shapes
    assert "backprop_log10_ratio" not in run_values({"grad_out_rms": [0.5, 1.0]})
    assert run_values({}) == {}
    assert run_values({"grad_out_nonfinite": [2.0, 1.0]}) == {"nonfinite_count": 3.0}


def test_run_metrics_are_specs_with_documented_definitions() -> None:
    run = metrics.by_kind("run")
    assert [m.name for m in run] == ["worst_saturation", "worst_dead_units",
                                     "backprop_log10_ratio", "min_update_ratio",
                                     "max_update_ratio", "nonfinite_count"]
    page = (Path(__file__).parents[1] / "docs" / "metrics.md").read_text(encoding="utf-8")
    # defined in docs/metrics.md next to the per-layer metrics
    section = page.split("## Per run (kind `run`)")[1].split("\n## ")[0]
    for m in run:
        assert m.section == "run" and m.aggregate in metrics.RUN_AGGREGATES
        assert f"| `{m.name}`" in section or f", `{m.name}` |" in section, m.name
        assert all(metrics.series_kind(n) in ("activation", "layer") for n in m.needs)


def test_run_records_read_each_need_from_its_own_kind_in_network_order() -> None:
    kinds = {"a1": "activation", "a2": "activation", "fc1": "layer", "fc1.weight": "parameter",
             "fc2": "layer"}
    records = [  # backprop records arrive in backward order (a2 first)
        (3, "a2", "grad_out_norm", 1.0), (3, "a1", "grad_out_norm", 0.01),
        (3, "fc1", "grad_nonfinite", 1.0), (3, "fc1.weight", "grad_nonfinite", 1.0),
        (3, "fc1", "update_ratio", 1e-3), (3, "fc1.weight", "update_ratio", 5.0),
        (3, "fc2", "update_ratio", 1e-2), (4, "fc2", "update_ratio", 2e-2),
    ]
    got = {(s, m): v for s, m, v in run_records(records, kinds)}
    assert got[(3, "backprop_log10_ratio")] == pytest.approx(-2.0)
    assert got[(3, "nonfinite_count")] == 1.0  # the layer's count, not again its parameter's
    assert got[(3, "max_update_ratio")] == 1e-2 and got[(3, "min_update_ratio")] == 1e-3
    assert got[(4, "max_update_ratio")] == 2e-2 and (4, "backprop_log10_ratio") not in got


def test_run_records_of_a_real_flush_match_the_history() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    mem = MemoryWriter()
    with gradscope.watch(model, optimizer=opt, sinks=[mem], summary=False) as mon:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 6)).pow(2).mean().backward()
            opt.step()
    h = mon.history
    kinds = {n: h.info(n).kind for n in h.layers()}
    got = {(s, m): v for s, m, v in run_records(mem.records, kinds)}
    for step in h.steps():
        sat = h.at(step, "saturation", "activation")
        assert got[(step, "worst_saturation")] == max(sat.values())
        assert got[(step, "worst_dead_units")] == max(h.at(step, "dead_units_window").values())
        norm = list(h.at(step, "grad_out_norm", "activation").values())
        assert got[(step, "backprop_log10_ratio")] == pytest.approx(math.log10(norm[0] / norm[-1]))
        upd = h.at(step, "update_ratio", "layer").values()
        assert got[(step, "max_update_ratio")] == max(upd)
        assert got[(step, "nonfinite_count")] == 0.0


def _ratios(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, list[float]]:
    """(backprop_log10_ratio, the per-element RMS ratio it replaced, grad_out_rms) after 3 SGD steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    mem = MemoryWriter()
    with gradscope.watch(model, optimizer=opt, sinks=[mem], summary=False) as mon:
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    h = mon.history
    kinds = {n: h.info(n).kind for n in h.layers()}
    step = h.steps()[-1]
    got = {(s, m): v for s, m, v in run_records(mem.records, kinds)}
    rms = list(h.at(step, "grad_out_rms", "activation").values())
    return got[(step, "backprop_log10_ratio")], math.log10(rms[0] / rms[-1]), rms


def test_backprop_ratio_reads_a_healthy_cnn_near_zero_whatever_the_shapes() -> None:
    # He-initialised convolutions 3→8→16 (8×32×32 elements per example at the first
    # call-site) and a 32-wide hidden layer before the head (32 at the last): the
    # per-element RMS ratio reads it as vanishing, the per-example norms do not.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(16 * 32 * 32, 32), nn.ReLU(), nn.Linear(32, 10))
    for m in model:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    new, old, _ = _ratios(model, torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    assert old < -1.0 and abs(new) < 0.5, (old, new)


@pytest.mark.parametrize("depth", [3, 8])
def test_backprop_ratio_of_an_equal_width_sigmoid_mlp_is_the_rms_ratio(depth: int) -> None:
    # Equal per-example sizes at both ends: the per-example norm ratio is the RMS ratio
    # of the earlier definition (Glorot's figures unchanged); a deep sigmoid MLP with
    # small weights still reads strongly vanishing.
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(20, 50), nn.Sigmoid()]
    for _ in range(depth - 1):
        layers += [nn.Linear(50, 50), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(50, 10))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.1)
    new, old, rms = _ratios(model, torch.randn(60, 20), torch.randint(0, 10, (60,)))
    assert len(rms) == depth and new == pytest.approx(old, rel=1e-9, abs=1e-12)
    if depth == 8:
        assert new < -3.0, new
