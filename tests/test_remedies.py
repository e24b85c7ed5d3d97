"""Remedies that fit the run: what the run already applies is left out, and said."""

from __future__ import annotations

import math
from typing import Callable, Optional

import pytest
import torch
from torch import nn

import gradscope
from gradscope.findings import Finding
from gradscope.findings.remedies import (
    INIT_SCALES,
    REMEDIES,
    RunFacts,
    init_kind,
    remedy_text,
)

Init = Callable[[nn.Linear], object]


def _small(m: nn.Linear) -> object:
    return nn.init.normal_(m.weight, 0.0, 0.1)


def _xavier(m: nn.Linear) -> object:
    return nn.init.xavier_normal_(m.weight)


def _he(m: nn.Linear) -> object:
    return nn.init.kaiming_normal_(m.weight, nonlinearity="relu")


def _mlp(act: type[nn.Module], init: Init, bias: Optional[float] = None) -> nn.Sequential:
    """Five hidden layers of 16 (deep enough for sigmoid's gradients to vanish), 8 in, 4 out."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    d = 8
    for _ in range(5):
        lin = nn.Linear(d, 16)
        init(lin)
        if bias is not None:
            nn.init.constant_(lin.bias, bias)
        layers += [lin, act()]
        d = 16
    out = nn.Linear(d, 4)
    init(out)
    return nn.Sequential(*layers, out)


def _findings(model: nn.Module, opt: type[torch.optim.Optimizer], lr: float, rule: str
              ) -> list[Finding]:
    torch.manual_seed(0)
    o = opt(model.parameters(), lr=lr)
    with gradscope.watch(model, optimizer=o, flush_every=5, summary=False) as mon:
        for _ in range(12):
            o.zero_grad()
            nn.functional.cross_entropy(model(torch.randn(32, 8)), torch.randint(0, 4, (32,))
                                        ).backward()
            o.step()
    found = [f for f in mon.findings() if f.rule == rule and not f.resolved]
    assert found, [f.rule for f in mon.findings()]
    return found


@pytest.mark.parametrize("opt, lr, told", [(torch.optim.RMSprop, 0.01, False),
                                           (torch.optim.SGD, 0.1, True)], ids=["rmsprop", "sgd"])
def test_an_adaptive_optimizer_is_not_told_to_use_adam(opt: type[torch.optim.Optimizer],
                                                       lr: float, told: bool) -> None:
    (f,) = _findings(_mlp(nn.Sigmoid, _small), opt, lr, "vanishing_gradients")
    assert ("Adam/RMSProp" in f.remedy) is told
    assert ("already RMSprop" in f.remedy) is not told
    assert f.message.endswith(f.remedy)


@pytest.mark.parametrize("init, told", [(_xavier, False), (_small, True)], ids=["xavier", "small"])
def test_a_xavier_sigmoid_run_is_not_told_to_use_xavier(init: Init, told: bool) -> None:
    (f,) = _findings(_mlp(nn.Sigmoid, init), torch.optim.SGD, 0.1, "vanishing_gradients")
    assert ("Xavier/He initialisation" in f.remedy) is told
    assert ("Xavier initialisation (std·√fan_in" in f.remedy) is not told
    assert "ReLU/LeakyReLU instead of sigmoid/tanh" in f.remedy  # sigmoid is in use


@pytest.mark.parametrize("init, told", [(_he, False), (_xavier, True)], ids=["he", "xavier"])
def test_a_he_relu_run_with_dead_units_is_not_told_to_use_he(init: Init, told: bool) -> None:
    found = _findings(_mlp(nn.ReLU, init, bias=-3.0), torch.optim.SGD, 0.1, "dead_units")
    for f in found:
        assert ("He initialisation," in f.remedy) is told
        assert ("already He initialisation" in f.remedy) is not told


def test_relu_activations_and_batchnorm_are_said_not_suggested() -> None:
    facts = RunFacts(optimizer="SGD", norms=("BatchNorm1d",), families=("relu", "softmax"))
    text = remedy_text("vanishing_gradients", facts)
    assert text.startswith("already relu activations, BatchNorm1d; try ")
    assert "ReLU/LeakyReLU" not in text and "BatchNorm," not in text
    assert remedy_text("vanishing_gradients", RunFacts(families=("relu", "tanh"))) \
        == remedy_text("vanishing_gradients")  # one saturating site: ReLU is still a remedy


def test_every_remedy_keeps_an_option() -> None:
    everything = RunFacts(optimizer="Adam", norms=("LayerNorm",), families=("relu",),
                          init=(("fc", "He", math.sqrt(2), math.sqrt(2)),))
    for rule in REMEDIES:
        assert "try " in remedy_text(rule, everything), rule


def _weight(fan_in: int, fan_out: int, init: Callable[[torch.Tensor], object]) -> torch.Tensor:
    torch.manual_seed(0)
    w = torch.empty(fan_out, fan_in)
    init(w)
    return w


@pytest.mark.parametrize("init, want", [
    (lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu"), "He"),
    (nn.init.xavier_normal_, "Xavier"),
    (nn.init.xavier_uniform_, "Xavier"),
    (lambda w: nn.init.normal_(w, 0.0, 1.0 / math.sqrt(w.shape[1])), "LeCun"),
    (lambda w: nn.init.kaiming_uniform_(w, a=math.sqrt(5)), "PyTorch default"),
    (lambda w: nn.init.normal_(w, 0.0, 1.0), "large"),
    (lambda w: nn.init.normal_(w, 0.0, 1e-3), "small"),
], ids=["he", "xavier-normal", "xavier-uniform", "lecun", "default", "N(0,1)", "N(0,1e-6)"])
@pytest.mark.parametrize("fans", [(784, 100), (100, 100), (64, 512)], ids=str)
def test_init_kind_names_the_usual_initialisations(init: Callable[[torch.Tensor], object],
                                                   want: str, fans: tuple[int, int]) -> None:
    fan_in, fan_out = fans
    std = _weight(fan_in, fan_out, init).std().item()
    got = init_kind(std * math.sqrt(fan_in), std * math.sqrt((fan_in + fan_out) / 2))
    if want in ("LeCun", "Xavier") and fan_in == fan_out:
        assert got in ("LeCun", "Xavier")  # the same scale on a square layer
    else:
        assert got == want


def test_measure_reads_the_optimizer_norms_and_scales() -> None:
    model = nn.Sequential(nn.Linear(256, 256), nn.BatchNorm1d(256), nn.ReLU(),
                          nn.Embedding(10, 4), nn.Conv2d(3, 8, 3))
    nn.init.kaiming_normal_(model[0].weight, nonlinearity="relu")
    facts = RunFacts.measure(model, torch.optim.Adam(model.parameters()))
    assert facts.optimizer == "Adam" and facts.norms == ("BatchNorm1d",)
    names = {name: (kind, s_in) for name, kind, s_in, _ in facts.init}
    assert set(names) == {"0", "4"}  # the BatchNorm's 1-d weight and the embedding are not layers
    assert names["0"][0] == "He" and names["0"][1] == pytest.approx(INIT_SCALES["He"], rel=0.05)
    assert names["4"][0] == "PyTorch default"  # fan-in 3·3·3 for the convolution
