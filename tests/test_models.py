"""Real models (random weights, tiny inputs): every activation call-site is captured.

For each model one training step runs under :func:`gradscope.watch` and one without
it, from the same weights and seed. The captured call-sites must equal the count of
activation ops the forward runs (``tests/fixtures/counting.py``: a
``TorchDispatchMode`` below autograd, sharing no code with gradscope), every
recorded value must be finite, and the two trainings must give bitwise-identical
weights. ``benchmarks/model_coverage.py`` prints the same counts as a table.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import gradscope
from tests.fixtures.counting import true_call_sites
from tests.fixtures.zoo import ZOO

pytest.importorskip("torchvision")

#: name -> call-sites per forward (googlenet: its conv blocks call F.relu; swin_t: 12 GELU
#: modules and 12 F.softmax; densenet121: its final F.relu; mixed: 3 modules, 20 functions)
SITES = {"googlenet": 57, "mobilenet_v3_small": 42, "swin_t": 24, "densenet121": 121,
         "vit": 2, "transformer_relu": 2, "transformer_gelu": 2, "mixed": 23}


def _step(model: nn.Module, x: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    torch.manual_seed(1)  # dropout, RReLU
    model(x).float().pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize("name", list(SITES))
def test_every_call_site_is_captured_and_training_is_unchanged(name: str) -> None:
    make, shape = ZOO[name]
    sites = SITES[name]
    torch.manual_seed(0)
    model = make().train()
    x = torch.randn(shape)
    plain, counted = copy.deepcopy(model), copy.deepcopy(model)
    assert true_call_sites(counted, x) == sites

    with gradscope.watch(model, summary=False, findings=False) as mon:
        _step(model, x)
    _step(plain, x)

    captured = mon.history.layers("activation")
    assert len(captured) == sites, captured
    cov = mon.coverage()
    assert cov.captured == sites and not cov.unknown
    assert not any("_orig_mod" in n for n in captured)
    for layer in captured:
        for metric in mon.history.metrics(layer):
            value = mon.history.series(layer, metric)[1][-1]
            assert math.isfinite(value), (layer, metric, value)
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        assert torch.equal(p, q), n
