"""The central effect on real MNIST, at CI size (gets the data through the fallback chain)."""

from __future__ import annotations

import pytest
import torch

from gradscope.experiments.data import load_mnist
from gradscope.experiments.train import RunConfig, train_run

# ---- settings ---------------------------------------------------------------
# Nielsen's 784-30-30-30-30-30-10 setup, 5 hidden layers; 60 SGD steps.
DEPTH, WIDTH, STEPS, LR, BATCH = 5, 30, 60, 0.1, 64
#: "much smaller": the sigmoid/N(0,1) ratio must be below ReLU/He's divided by this.
FACTOR = 5.0
# ------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigmoid_normal_gradient_vanishes_toward_input_relu_he_does_not():
    data = load_mnist()  # $GRADSCOPE_DATA or ~/.cache/gradscope: reused between runs
    ratio = {}
    for act, init in (("sigmoid", "normal"), ("relu", "he")):
        cfg = RunConfig(activation=act, init=init, depth=DEPTH, width=WIDTH, lr=LR,
                        batch_size=BATCH, steps=STEPS, eval_every=STEPS, monitor_every=1)
        r = train_run(cfg, data, progress=False)
        ratio[act] = r.grad_ratio
        assert r.test_acc > 0.1 or act == "sigmoid"  # ReLU/He learns in 60 steps
    assert ratio["sigmoid"] < ratio["relu"] / FACTOR, ratio


#: CI-sized runs of the quick grid's settings (5x100, 300 SGD steps at lr 0.1): four that
#: fail to learn and two that learn.
CALIBRATION = [("tanh", "normal"), ("relu", "normal"), ("sigmoid", "xavier_normal"),
               ("leaky_relu", "normal"), ("relu", "he"), ("tanh", "xavier_normal")]


@pytest.mark.slow
def test_findings_are_calibrated_on_ci_sized_runs():
    """Every run that fails to learn (test accuracy < 0.5) carries a finding, every run that
    learns (>= 0.9 at this size; the README's 0.95 is at full size) carries none."""
    data = load_mnist()
    failed, learned = {}, {}
    for act, init in CALIBRATION:
        cfg = RunConfig(activation=act, init=init, depth=5, width=100, lr=0.1, batch_size=64,
                        steps=300, eval_every=300, monitor_every=10)
        r = train_run(cfg, data, progress=False)
        if r.test_acc < 0.5:
            failed[(act, init)] = r.findings
        elif r.test_acc >= 0.9:
            learned[(act, init)] = r.findings
    assert len(failed) >= 3 and len(learned) >= 2, (failed, learned)  # both sides are tested
    assert all(failed.values()), failed
    assert not any(learned.values()), learned


def _calibration_bench():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "calibration.py"
    spec = importlib.util.spec_from_file_location("calibration_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def calibration():
    return _calibration_bench()


@pytest.fixture(scope="module")
def mnist():
    return load_mnist(quiet=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "vit", "transformer"])
def test_no_findings_on_healthy_models_at_ci_size(calibration, mnist, name):
    """benchmarks/calibration.py at CI size (narrow models, 10 steps of 8 MNIST images at
    32x32x3, each model's usual recipe): no finding, while every rule had its series."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small convolutions: one thread is ~10x faster on a shared CPU
    try:
        r = calibration.train(name, mnist, steps=calibration.CI_STEPS,
                              batch=calibration.CI_BATCH, recipe=calibration.RECIPES[name],
                              ci=True)
    finally:
        torch.set_num_threads(threads)
    assert r.findings == [], [f.message for f in r.findings]
    h = r.history
    assert all(len(h.series(n, "update_ratio")[0]) == calibration.CI_STEPS
               for n in h.layers("layer") if "update_ratio" in h.metrics(n))
    assert any("grad_norm" in h.metrics(n) for n in h.layers("layer"))
    assert any("std" in h.metrics(n) for n in h.layers("activation"))
