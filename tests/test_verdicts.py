"""The presets' verdict logic on constructed runs (no training): what each judges, and
that its text says the setting that ran."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pytest

from gradscope.experiments import verdicts
from gradscope.experiments.presets import PRESETS
from gradscope.experiments.train import RunConfig, RunResult
from gradscope.history import History, LayerInfo

Fill = Callable[[RunConfig, History], None]


def fake_runs(tmp_path: Path, configs: list[RunConfig], fill: Fill,
              result: Callable[[RunConfig], dict] = lambda c: {}) -> list[RunResult]:
    """One result per config, its history written where the verdicts read it."""
    out = []
    for c in configs:
        kw = {"test_acc": 0.9, "test_loss": 0.3, "final_train_loss": 0.3, "steps_to_90": None,
              "grad_ratio": 1.0, "peak_saturation": None, "peak_dead": None, "wall_s": 0.0,
              "device": "cpu", **result(c)}
        r = RunResult(config=c, **kw)
        h = History()
        fill(c, h)
        path = tmp_path / "runs" / r.name
        path.mkdir(parents=True)
        h.save(path / "history.json")
        out.append(r)
    return out


def sites(h: History, n: int) -> None:
    for i in range(1, n + 1):
        h.add_layer(LayerInfo(f"act{i}", kind="activation", order=i, type="ReLU", family="relu"))


# ---- dying_relu -------------------------------------------------------------------
def dying(tmp_path: Path, dead: Callable[[RunConfig], float],
          diverged: Callable[[RunConfig], bool] = lambda c: False) -> verdicts.Verdict:
    def fill(c: RunConfig, h: History) -> None:
        sites(h, 3)
        metric = "dead_units_window" if c.activation == "relu" else "neg_units_window"
        for i in range(1, 4):
            h.add(c.steps - 1, f"act{i}", metric, dead(c))

    results = fake_runs(tmp_path, PRESETS["dying_relu"].configs(quick=True), fill,
                        lambda c: {"final_train_loss": math.nan if diverged(c) else 0.3})
    return verdicts.dying_relu(results, tmp_path)


def test_dying_relu_holds_when_the_high_rate_kills_a_large_share(tmp_path: Path) -> None:
    v = dying(tmp_path, lambda c: 0.6 if c.lr == 3e-2 else 0.02)
    assert v.held and "at least 40% of ReLU units are dead (0.6)" in v.lines[-1]
    v = dying(tmp_path / "few", lambda c: 0.3 if c.lr == 3e-2 else 0.02)
    assert not v.held  # 30% is not "as much as 40%"
    v = dying(tmp_path / "always", lambda c: 0.6)
    assert not v.held  # as many dead at the usual rate: the rate did not kill them


def test_a_diverged_run_reads_a_dash_not_zero_stuck(tmp_path: Path) -> None:
    """NaN units are neither dead nor stuck: a diverged LeakyReLU is "–", not "0 stuck"."""
    v = dying(tmp_path, lambda c: 0.0 if c.activation == "leaky_relu" else c.lr * 20,
              diverged=lambda c: c.activation == "leaky_relu" and c.lr == 3e-2)
    line = next(x for x in v.lines if x.startswith("leaky_relu lr 0.03"))
    assert "regime (mean over layers) –;" in line and "diverged" in line
    assert "–" in v.lines[-2] and v.held  # LeakyReLU is reported, not judged
    v = dying(tmp_path / "relu", lambda c: 0.6 if c.lr == 3e-2 else 0.02,
              diverged=lambda c: c.activation == "relu" and c.lr == 3e-2)
    assert not v.held and "dead (–)" in v.lines[-1]


# ---- glorot2010 ---------------------------------------------------------------------
def glorot(tmp_path: Path, steps: int, top_mean: Callable[[int], float]) -> verdicts.Verdict:
    configs = [RunConfig(activation=c.activation, init=c.init, depth=c.depth, width=8,
                         steps=steps, eval_every=steps, monitor_every=100)
               for c in PRESETS["glorot2010"].configs(quick=True)]

    def fill(c: RunConfig, h: History) -> None:
        sites(h, c.depth)
        even = 0.8 if c.init == "xavier_uniform" else 0.2
        for s in range(0, steps, 100):
            for i in range(1, c.depth + 1):
                h.add(s, f"act{i}", "mean", top_mean(s) if i == c.depth else 0.5)
                h.add(s, f"act{i}", "saturation", 0.0)
                h.add(s, f"act{i}", "grad_out_rms", even if i == 1 else 1.0)

    return verdicts.glorot2010(fake_runs(tmp_path, configs, fill), tmp_path)


def test_glorot_verdict_names_the_updates_it_read(tmp_path: Path) -> None:
    v = glorot(tmp_path, 600, lambda s: 0.05 if s >= 300 else 0.5)
    assert v.held and "in all 600 updates: top layer 0.050" in v.lines[0]
    assert "1000" not in v.lines[0]
    # a longer run: only the first EARLY updates are "early"
    v = glorot(tmp_path / "long", 2000, lambda s: 0.05 if s >= 1500 else 0.5)
    assert not v.held and f"in the first {verdicts.EARLY} updates: top layer 0.500" in v.lines[0]


# ---- optimizers ---------------------------------------------------------------------
def optimizers(tmp_path: Path, spread: dict[str, float]) -> verdicts.Verdict:
    def fill(c: RunConfig, h: History) -> None:
        for s in range(0, c.steps, 10):
            h.add(s, "fc1.weight", "update_ratio", 1e-3 * spread[c.optimizer])
            h.add(s, "out.weight", "update_ratio", 1e-3)

    return verdicts.optimizers(
        fake_runs(tmp_path, PRESETS["optimizers"].configs(quick=True), fill), tmp_path)


@pytest.mark.parametrize("slow, held", [("adadelta", True), ("rmsprop", False)],
                         ids=["adadelta-reported", "rmsprop-judged"])
def test_optimizers_judges_the_gradient_history_optimisers(tmp_path: Path, slow: str,
                                                           held: bool) -> None:
    spread = {"sgd": 1e-3, "momentum": 3e-3, "adam": 1.0, "rmsprop": 1.0, "adagrad": 1.0,
              "adadelta": 1.0, "adamax": 1.0, slow: 2e-3}
    v = optimizers(tmp_path, spread)
    assert v.held is held
    assert "adadelta, not judged" in v.lines[-1]


def test_optimizers_runs_rmsprop_at_its_preset_rate() -> None:
    lrs = {c.optimizer: c.lr for c in PRESETS["optimizers"].configs(quick=True)}
    assert lrs["rmsprop"] == verdicts.PRESET_LR["rmsprop"] == 1e-3


def test_every_preset_says_what_quick_gives() -> None:
    for p in PRESETS.values():
        assert p.quick, p.name
        assert "at --quick:" in p.describe()
