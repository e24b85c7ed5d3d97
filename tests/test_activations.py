"""Activation families: derivative formulas against autograd, rules, registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from gradscope.activations import (
    FAMILIES,
    ActivationFamily,
    Params,
    family_of,
    register_family,
)
from gradscope.plan import summarize

ELEMENTWISE = [
    nn.Sigmoid(), nn.Tanh(), nn.Softsign(), nn.Hardtanh(-0.5, 1.5), nn.ReLU(), nn.ReLU6(),
    nn.LeakyReLU(0.2), nn.PReLU(3, init=0.3), nn.ELU(alpha=0.7), nn.GELU(),
    nn.GELU(approximate="tanh"), nn.SiLU(), nn.Hardswish(), nn.Hardsigmoid(), nn.Mish(),
    nn.SELU(), nn.CELU(alpha=0.7), nn.Softplus(beta=2.0), nn.Softplus(beta=0.5, threshold=3.0),
    nn.RReLU(0.1, 0.3).train(), nn.RReLU(0.1, 0.3).eval(),
]
IDS = [
    "sigmoid", "tanh", "softsign", "hardtanh", "relu", "relu6", "leaky_relu", "prelu", "elu",
    "gelu", "gelu_tanh", "silu", "hardswish", "hardsigmoid", "mish", "selu", "celu", "softplus",
    "softplus_threshold", "rrelu_train", "rrelu_eval",
]


@pytest.mark.parametrize("module", ELEMENTWISE, ids=IDS)
def test_derivative_matches_autograd(module: nn.Module) -> None:
    """f'(x) as gradscope computes it = the gradient autograd back-propagates (random
    RReLU slopes included: the derivative is read from this call's own output)."""
    torch.manual_seed(0)
    # Keep clear of kinks (0, the hardtanh/hardswish/hardsigmoid limits) where one-sided
    # conventions differ.
    x = torch.randn(64, 3) * 4
    x = x[(x.abs() > 1e-3).all(1)]
    for k in (-0.5, 1.5, 6.0, -3.0, 3.0):
        x = x[((x - k).abs() > 1e-3).all(1)]
    x.requires_grad_(True)
    y = module(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    fam = family_of(module)
    assert fam is not None and fam.derivative is not None
    d = fam.derivative(x.detach() if fam.needs_input else None, y.detach(), module)
    torch.testing.assert_close(d.expand_as(g), g, rtol=1e-4, atol=1e-5)


PARAMS = [  # (module, the same activation's Params, as a functional call would give them)
    (nn.LeakyReLU(0.2), Params(negative_slope=0.2)),
    (nn.ELU(alpha=0.7), Params(alpha=0.7)),
    (nn.CELU(alpha=2.0), Params(alpha=2.0)),
    (nn.Hardtanh(-2.0, 0.5), Params(min_val=-2.0, max_val=0.5)),
    (nn.ReLU6(), Params(min_val=0.0, max_val=6.0)),
    (nn.GELU(approximate="tanh"), Params(approximate="tanh")),
    (nn.Softplus(beta=3.0), Params(beta=3.0, threshold=20.0)),
    (nn.PReLU(init=0.3), Params(weight=torch.tensor([0.3]))),
    (nn.Softmax(dim=0), Params(dim=0)),
]


@pytest.mark.parametrize("module,params", PARAMS, ids=[type(m).__name__ for m, _ in PARAMS])
def test_a_calls_params_stand_for_its_module(module: nn.Module, params: Params) -> None:
    """One family serves modules and functional calls: the summary is the same for both."""
    fam = family_of(module)
    assert fam is not None
    torch.manual_seed(3)
    x = torch.randn(16, 5) * 3
    y = module(x).detach()
    by_module = summarize(fam, module, x, y, eps=0.05, delta=0.05, unit_dim=None)
    by_params = summarize(fam, params, x, y, eps=0.05, delta=0.05, unit_dim=None)
    assert by_params == pytest.approx(by_module, nan_ok=True)


PIECEWISE = [(m, i) for m, i in zip(ELEMENTWISE, IDS) if family_of(m).piecewise is not None]


@pytest.mark.parametrize("module", [m for m, _ in PIECEWISE], ids=[i for _, i in PIECEWISE])
def test_piecewise_derivative_agrees_with_the_elementwise_one(module: nn.Module) -> None:
    """Families summarised from one mask record what f'(x) computed elementwise gives."""
    fam = family_of(module)
    assert fam is not None and fam.piecewise is not None and fam.derivative is not None
    torch.manual_seed(1)
    x = torch.randn(200, 7) * 4
    x[0, :3] = torch.tensor([0.0, -1.0, 6.0])  # the limits themselves
    y = module(x)
    low, high, d_in, d_out = fam.piecewise(module)
    d = fam.derivative(None, y, module)
    assert torch.equal(torch.where((y > low) & (y < high), d_in, d_out), d)
    got = stats_dict(module, x, delta=0.5)
    assert got["mean_deriv"] == pytest.approx(d.mean().item(), rel=1e-6)
    assert got["small_deriv"] == pytest.approx((d < 0.5).float().mean().item(), rel=1e-6)


def stats_dict(module: nn.Module, x: torch.Tensor, **kw: float) -> dict[str, float]:
    fam = family_of(module)
    assert fam is not None
    y = module(x)
    return summarize(fam, module, x, y.detach(), eps=kw.get("eps", 0.01),
                     delta=kw.get("delta", 0.01), unit_dim=None)


@pytest.mark.parametrize("offset,spread", [(0.0, 1.0), (3.0, 1.0), (5.0, 1e-3), (1e4, 1.0)])
def test_std_is_accurate_however_the_mean_compares_to_it(offset: float, spread: float) -> None:
    """One-pass variance when well conditioned, the two-pass one otherwise: both accurate."""
    torch.manual_seed(0)
    x = offset + spread * torch.randn(64, 50)
    s = stats_dict(nn.ReLU(), x)
    ref = np.maximum(x.numpy().astype(np.float64), 0)
    assert s["std"] == pytest.approx(ref.std(), rel=1e-4)
    assert s["mean"] == pytest.approx(ref.mean(), rel=1e-5)


@pytest.mark.parametrize("module", [*ELEMENTWISE, nn.ReLU(), nn.Softmax(dim=1)],
                         ids=[*IDS, "relu_again", "softmax"])
def test_blockwise_scratch_evaluation_matches_whole_tensor(
        module: nn.Module, monkeypatch: pytest.MonkeyPatch) -> None:
    """Counts and derivative sums taken a few rows at a time in CPU scratch = whole tensor."""
    import dataclasses

    from gradscope import stats

    torch.manual_seed(2)
    x = torch.randn(37, 3, 4) * 3  # (batch, channels, positions): PReLU(3) fits
    fam = family_of(module)
    assert fam is not None
    plain = dataclasses.replace(fam, derivative_out=False, piecewise=None)
    y = module(x).detach()  # once: RReLU draws its slopes at random

    def run(family: ActivationFamily) -> list[float]:
        values = summarize(family, module, x, y, eps=0.05, delta=0.05, unit_dim=None)
        return list(values.values())

    whole = run(plain)
    monkeypatch.setattr(stats, "SCRATCH_ELEMENTS", 50)  # 4 rows of 12 per block
    monkeypatch.setattr(stats, "SCRATCH_MIN_ELEMENTS", 0)  # the scratch path, even this small
    monkeypatch.setattr(stats, "_scratch", type(stats._scratch)())
    blocked = run(fam)
    assert blocked == pytest.approx(whole, rel=1e-5, abs=1e-6)


def test_sigmoid_summary_definitions() -> None:
    x = torch.tensor([[-10.0, 0.0, 10.0, 2.0]])
    s = stats_dict(nn.Sigmoid(), x)
    y = torch.sigmoid(x)
    assert s["saturation"] == pytest.approx(0.5)  # -10 and 10
    d = y * (1 - y)
    assert s["mean_deriv"] == pytest.approx(d.mean().item())
    assert s["small_deriv"] == pytest.approx(0.5)
    assert s["mean"] == pytest.approx(y.mean().item())
    assert "dead_units" not in s


def test_relu_summary_zero_and_dead() -> None:
    x = torch.tensor([[1.0, -1.0, -2.0], [2.0, -1.0, 3.0]])
    s = stats_dict(nn.ReLU(), x)
    assert s["zero_frac"] == pytest.approx(3 / 6)
    assert s["dead_units"] == pytest.approx(1 / 3)  # unit 1 never positive
    assert s["mean_deriv"] == pytest.approx(3 / 6)


def test_negative_regime_is_labelled_for_leaky_and_gelu() -> None:
    x = torch.tensor([[1.0, -1.0], [-2.0, -3.0]])
    for mod in (nn.LeakyReLU(), nn.GELU(), nn.ELU()):
        s = stats_dict(mod, x)
        assert "dead_units" not in s and "zero_frac" not in s
        assert s["neg_frac"] == pytest.approx(3 / 4)
        assert s["neg_units"] == pytest.approx(1 / 2)  # unit 1 negative for every sample


def test_softmax_has_saturation_but_no_derivative() -> None:
    x = torch.tensor([[10.0, 0.0, 0.0], [0.1, 0.0, 0.0]])
    s = stats_dict(nn.Softmax(dim=1), x)
    assert s["saturation"] == pytest.approx(0.5)
    assert "mean_deriv" not in s


def test_hardsigmoid_and_softplus_saturate_at_their_limits() -> None:
    s = stats_dict(nn.Hardsigmoid(), torch.tensor([[-4.0, 4.0, 0.0, -2.99]]))
    assert s["saturation"] == pytest.approx(3 / 4)  # 0, 1, and 0.0017 (x = -2.99) < eps
    assert s["small_deriv"] == pytest.approx(2 / 4)  # f' = 0 outside (-3, 3), 1/6 inside
    s = stats_dict(nn.Softplus(), torch.tensor([[-10.0, 0.0, 3.0, -4.0]]))
    assert s["saturation"] == pytest.approx(1 / 4)  # softplus(-10) = 4.5e-5 < eps, -4: 0.018


def test_relu6_saturates_at_six() -> None:
    s = stats_dict(nn.ReLU6(), torch.tensor([[7.0, 3.0, -1.0, 5.995]]))
    assert s["saturation"] == pytest.approx(2 / 4)
    assert s["zero_frac"] == pytest.approx(1 / 4)


def test_half_precision_inputs_are_summarised_in_fp32() -> None:
    x = torch.randn(32, 8)
    s32 = stats_dict(nn.Tanh(), x)
    s16 = stats_dict(nn.Tanh(), x.bfloat16())
    for k in s32:
        assert s16[k] == pytest.approx(s32[k], abs=2e-2)


def test_empty_batch_gives_nan_not_an_error() -> None:
    s = stats_dict(nn.ReLU(), torch.empty(0, 4))
    assert all(v != v for k, v in s.items() if k != "nonfinite")  # nan
    assert s["nonfinite"] == 0


def test_family_lookup_exact_subclass_and_unknown() -> None:
    assert family_of(nn.ReLU6()).name == "relu6"  # ReLU6 subclasses Hardtanh
    assert family_of(nn.Hardtanh()).name == "hardtanh"

    class MyReLU(nn.ReLU):
        pass

    assert family_of(MyReLU()).name == "relu"
    assert family_of(nn.Linear(2, 2)) is None
    assert family_of(nn.LogSigmoid()) is None  # not guessed at
    assert family_of(nn.Softmin(dim=1)).name == "softmax"
    assert {f.name for f in FAMILIES.values()} >= {
        "sigmoid", "tanh", "relu", "relu6", "leaky_relu", "prelu", "elu", "gelu", "silu",
        "softsign", "hardtanh", "softmax", "hardswish", "hardsigmoid", "mish", "selu", "celu",
        "softplus", "rrelu"}


def test_register_family_validates_and_registers() -> None:
    class Swish(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * torch.sigmoid(x)

    with pytest.raises(TypeError, match=r"nn\.Module subclass"):
        register_family(int, FAMILIES[nn.SiLU])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ActivationFamily"):
        register_family(Swish, "silu")  # type: ignore[arg-type]
    register_family(Swish, FAMILIES[nn.SiLU])
    try:
        assert family_of(Swish()).name == "silu"
    finally:
        del FAMILIES[Swish]
    with pytest.raises(ValueError, match="regime"):
        ActivationFamily("x", "bogus")
