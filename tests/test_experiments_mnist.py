"""The central effect on real MNIST, at CI size (gets the data through the fallback chain)."""

from __future__ import annotations

import pytest

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
