"""Sequence models, the optimisers of the grid, and dropout's training mode (synthetic data)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

import gradscope
from gradscope.experiments.data import synthetic_dataset
from gradscope.experiments.grid import format_table
from gradscope.experiments.optimizers import DEFAULT_LR, OPTIMIZERS, make_optimizer
from gradscope.experiments.sequence import FORGET_BIAS, SequenceClassifier
from gradscope.experiments.train import RunConfig, train_run


@pytest.mark.parametrize("sequence,features,steps", [("rows", 784, 28), ("pixels", 784, 100),
                                                     ("rows", 16, 4), ("pixels", 16, 16)],
                         ids=["mnist-rows", "mnist-pixels", "flat-rows", "flat-pixels"])
def test_sequence_lengths(sequence: str, features: int, steps: int) -> None:
    m = SequenceClassifier("gru", hidden=4, sequence=sequence, in_features=features)
    assert m.steps(features) == steps
    assert m(torch.rand(3, features)).shape == (3, 10)


def test_pixels_sequence_is_the_pooled_image_in_reading_order() -> None:
    m = SequenceClassifier("rnn", hidden=2, sequence="pixels")
    img = torch.zeros(1, 28, 28)
    img[0, :14, :14] = 1.0  # top-left quarter
    seq = m._as_sequence(img.reshape(1, 784))[0, :, 0].view(10, 10)
    assert seq[0, 0] == 1.0 and seq[9, 9] == 0.0 and seq[0, 9] == 0.0 and seq[9, 0] == 0.0


def test_lstm_forget_bias() -> None:
    m = SequenceClassifier("lstm", hidden=3)
    f = m.rnn.bias_ih_l0[3:6] + m.rnn.bias_hh_l0[3:6]
    assert torch.allclose(f, torch.full((3,), FORGET_BIAS))


@pytest.mark.parametrize("kw,match", [
    (dict(model="cnn"), "model='cnn'"),
    (dict(model="lstm", dropout=0.2), "no BatchNorm or dropout"),
    (dict(model="gru", sequence="columns"), "sequence='columns'"),
    (dict(optimizer="lbfgs"), "adagrad"),
], ids=["model", "recurrent-dropout", "sequence", "optimizer"])
def test_run_config_errors(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RunConfig(**kw)


def test_recurrent_run_records_the_gradient_through_time() -> None:
    data = synthetic_dataset(n_train=128, n_test=32, features=64)
    cfg = RunConfig(model="lstm", sequence="rows", depth=2, width=8, optimizer="adam", lr=1e-2,
                    steps=6, eval_every=3, monitor_every=2)
    assert cfg.name == "lstm-rows-2x8-adam-lr0.01-bs64-6steps-seed0"
    r = train_run(cfg, data, progress=False)
    assert math.isnan(r.grad_ratio)
    assert r.time_ratio is not None and r.time_ratio > 0
    table = format_table([r])
    assert "∂L/∂h first/last step" in table and f"{r.time_ratio:.3g}" in table


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_trains_a_grid_run(name: str) -> None:
    opt = make_optimizer(name, [nn.Parameter(torch.ones(2))], lr=DEFAULT_LR[name])
    assert opt.param_groups[0]["lr"] == DEFAULT_LR[name]
    data = synthetic_dataset(n_train=64, n_test=16, features=8)
    r = train_run(RunConfig(depth=2, width=4, optimizer=name, lr=DEFAULT_LR[name], steps=3,
                            eval_every=3, monitor_every=1), data, progress=False)
    assert math.isfinite(r.final_train_loss)


def test_unknown_optimizer_names_the_choices() -> None:
    with pytest.raises(ValueError, match=r"optimizer='nadamw'.*adamax"):
        make_optimizer("nadamw", [], lr=0.1)


def test_dropout_statistics_are_taken_in_training_mode() -> None:
    """Activations after a dropout are recorded as the training forward saw them (half zeroed),
    and the run's eval-mode test passes (dropout off) are not recorded."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 256), nn.Dropout(0.5), nn.ReLU())
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.fill_(1.0)  # every pre-activation is 1: only dropout makes zeros
    with gradscope.watch(model, summary=False) as mon:
        for _ in range(3):
            model.train()
            model(torch.rand(32, 4)).sum().backward()
            model.eval()
            with torch.no_grad():
                model(torch.rand(32, 4))
    steps, zero = mon.history.series("2", "zero_frac")
    assert steps == [0, 1, 2]  # the eval forwards are not steps
    assert all(0.4 < z < 0.6 for z in zero), zero


def test_recurrent_grid_writes_its_plots(tmp_path: Path) -> None:
    from gradscope.experiments.grid import run_grid

    data = synthetic_dataset(n_train=64, n_test=16, features=16)
    cfgs = [RunConfig(model=m, width=4, optimizer="adam", lr=1e-2, steps=4, eval_every=2,
                      monitor_every=1) for m in ("rnn", "gru")]
    cfgs.append(RunConfig(depth=1, width=4, steps=4, eval_every=2, monitor_every=1))
    results = run_grid(cfgs, data, results_dir=tmp_path, progress=False, plots=True,
                       dashboard_images=False)
    assert [r.time_ratio is not None for r in results] == [True, True, False]
    plots = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"test_accuracy.png", "gradient_through_time.png", "gradients_per_layer.png"} <= plots
    assert "∂L/∂h first/last step" in (tmp_path / "summary.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_sequential_mnist_gradient_vanishes_more_over_100_steps_than_28() -> None:
    """Real MNIST, CI size: at initialisation ‖∂L/∂h_0‖/‖∂L/∂h_T‖ over 100 pixels is orders
    of magnitude below that over 28 rows, for each of the three nets."""
    from gradscope.experiments.data import Dataset, load_mnist

    full = load_mnist()
    data = Dataset(full.x_train[:2048], full.y_train[:2048], full.x_test[:256], full.y_test[:256])
    for model in ("rnn", "lstm", "gru"):
        ratio = {}
        for seq in ("rows", "pixels"):
            cfg = RunConfig(model=model, sequence=seq, width=32, optimizer="adam", lr=2e-3,
                            steps=1, eval_every=1, monitor_every=1)
            r = train_run(cfg, data, progress=False)
            assert r.time_ratio is not None
            ratio[seq] = r.time_ratio
        assert ratio["pixels"] < 1e-2 * ratio["rows"], (model, ratio)
