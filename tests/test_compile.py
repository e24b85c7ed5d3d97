"""torch.compile: gradscope adds no graph break, names have no ``_orig_mod.``, parameter
statistics equal eager ones, and the coverage says that compiled activations are not seen."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradscope
from gradscope.capture.coverage import TRACED

counters = pytest.importorskip("torch._dynamo.utils").counters


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.relu(self.act(self.fc1(x))))


def _train(how: str) -> tuple[gradscope.Monitor, int, int]:
    torch._dynamo.reset()
    torch.manual_seed(0)
    net, x = Net(), torch.randn(4, 8)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no activation call-site was captured"
        if how == "watch(compile(model))":
            model: nn.Module = torch.compile(net)
            mon = gradscope.watch(model, optimizer=opt, summary=False)
        elif how == "compile(watched)":
            mon = gradscope.watch(net, optimizer=opt, summary=False)
            model = torch.compile(net)
        else:
            model, mon = net, gradscope.watch(net, optimizer=opt, summary=False)
        counters.clear()
        for _ in range(3):
            model(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        mon.detach()
    return mon, sum(counters["graph_break"].values()), counters["stats"]["unique_graphs"]


@pytest.mark.parametrize("how", ["watch(compile(model))", "compile(watched)"])
def test_compiled_model_has_no_graph_break_and_eager_parameter_statistics(how: str) -> None:
    eager, _, _ = _train("eager")
    mon, breaks, graphs = _train(how)
    assert (breaks, graphs) == (0, 1)
    assert mon.history.layers("layer") == eager.history.layers("layer") == ["fc1", "fc2"]
    for layer in ["fc1", "fc2", "fc1.weight", "fc2.bias"]:
        for metric in ("grad_norm", "weight_norm", "update_ratio"):
            got = mon.history.series(layer, metric)
            want = eager.history.series(layer, metric)
            assert got[0] == want[0]
            assert got[1] == pytest.approx(want[1], rel=1e-5, abs=1e-7), (layer, metric)
    cov = mon.coverage()
    assert cov.captured == 0 and TRACED in cov.unseen
