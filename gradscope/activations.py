"""Activation families: the registry of what each activation is, for the statistics.

Each supported activation module maps to an :class:`ActivationFamily` that says

* its **regime**: ``"saturating"`` (sigmoid, tanh, softsign, hardtanh, hardsigmoid,
  softplus), ``"relu"`` (ReLU, ReLU6: zero output and dead units), ``"negative"``
  (LeakyReLU, PReLU, RReLU, ELU, SELU, CELU, GELU, SiLU, Mish, Hardswish: outputs in the
  negative regime, labelled as such) or ``"softmax"`` (Softmax, Softmin, Softmax2d);
* its **saturation rule** (an output is saturated when it lies within ``eps`` of the
  family's limits; see :data:`SATURATION_RULES`);
* its **local derivative** ``f'(x)``, computed from the output where the function is
  invertible enough (sigmoid ``y(1-y)``, tanh ``1-y²``, ...) and from the input
  otherwise (GELU, SiLU, Mish, Hardswish, PReLU, RReLU).

Which metrics a family gets follows from these fields (:mod:`gradscope.metrics`).
Modules whose type (or a base class) is not registered are not monitored:
gradscope does not guess. Register your own with :func:`register_family`.

The family functions read an activation's parameters (``negative_slope``, ``alpha``,
``approximate``, ``dim``, ``min_val``, ...) from its **source**: the module, or for a
functional call (``F.leaky_relu(x, 0.2)``) a :class:`Params` holding the call's
arguments under the module's attribute names, so one family serves both.

Example:
    >>> import torch.nn as nn
    >>> from gradscope.activations import family_of
    >>> family_of(nn.Tanh()).name
    'tanh'
    >>> family_of(nn.Linear(2, 2)) is None
    True
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Optional, Union

import torch
from torch import Tensor, nn

from gradscope import activation_stats, stats

__all__ = [
    "FAMILIES",
    "SATURATION_RULES",
    "ActivationFamily",
    "Params",
    "family_of",
    "register_family",
    "softmax_dim",
]

#: Saturation rules by family name, as documented in the README.
SATURATION_RULES = {
    "sigmoid": "y < eps or y > 1 - eps",
    "tanh": "|y| > 1 - eps",
    "softsign": "|y| > 1 - eps",
    "hardtanh": "y <= min_val + eps or y >= max_val - eps",
    "relu6": "y >= 6 - eps (the upper limit; the lower one is zero_frac)",
    "hardsigmoid": "y < eps or y > 1 - eps",
    "softplus": "y < eps (its lower limit, 0; it has no upper one)",
    "softmax": "max probability along dim >= 1 - eps (fraction of rows)",
}


class Params(SimpleNamespace):
    """A functional activation call's parameters, named like its module's attributes.

    Example:
        >>> import torch, torch.nn as nn
        >>> fam = family_of(nn.LeakyReLU())
        >>> fam.derivative(None, torch.tensor([-1.0, 2.0]), Params(negative_slope=0.2))
        tensor([0.2000, 1.0000])
    """


#: What the family functions read parameters from: the activation module, or the
#: :class:`Params` of a functional call.
Source = Union[nn.Module, Params]

SaturationFn = Callable[[Tensor, Any, float], Tensor]
DerivativeFn = Callable[[Optional[Tensor], Tensor, Any], Tensor]
PiecewiseFn = Callable[[Any], tuple[float, float, float, float]]


@dataclass(frozen=True)
class ActivationFamily:
    """How one kind of activation is summarised.

    Args:
        name: short family name used in layer info and docs (``"sigmoid"``).
        regime: ``"saturating"``, ``"relu"``, ``"negative"`` or ``"softmax"``.
        saturation: ``(y, source, eps) -> fraction`` or ``None`` when the family
            has no saturating limit (``source``: the module or the call's :class:`Params`).
        derivative: ``(x, y, source) -> f'(x)`` elementwise, or ``None`` when it is
            not elementwise (softmax). ``x`` is ``None`` unless ``needs_input``.
        needs_input: the derivative or the negative regime needs the input ``x``;
            an in-place call's input is then copied before it is overwritten.
        piecewise: for a piecewise-constant derivative, ``source -> (low, high,
            inside, outside)``: ``f'(x) = inside`` where ``low < y < high`` and
            ``outside`` elsewhere. The summary then counts one mask (shared with
            the zero/dead-unit statistics) instead of computing ``f'`` elementwise;
            ``derivative`` must agree with it (it is tested).
        derivative_out: ``derivative`` also takes keyword buffers ``out`` and
            ``work`` shaped like ``y`` and writes ``f'(x)`` into ``out`` (using
            ``work`` for any intermediate), so that it can be evaluated block by
            block in fixed scratch memory instead of fresh temporaries.
    """

    name: str
    regime: str
    saturation: Optional[SaturationFn] = None
    derivative: Optional[DerivativeFn] = None
    needs_input: bool = False
    piecewise: Optional[PiecewiseFn] = None
    derivative_out: bool = False

    def __post_init__(self) -> None:
        if self.regime not in _REGIMES:
            raise ValueError(
                f"ActivationFamily(regime={self.regime!r}) is not one of {sorted(_REGIMES)}"
            )


_REGIMES = {"saturating", "relu", "negative", "softmax"}


# ---------------------------------------------------------------------------
# Family definitions
# ---------------------------------------------------------------------------


def _sat_sigmoid(y: Tensor, m: Source, eps: float) -> Tensor:
    return activation_stats.sigmoid_saturation(y, eps)


def _sat_unit(y: Tensor, m: Source, eps: float) -> Tensor:
    return activation_stats.symmetric_saturation(y, 1.0, eps)


def _limits(m: Source) -> tuple[float, float]:
    """Hardtanh's ``(min_val, max_val)`` (ReLU6's are 0 and 6)."""
    return float(getattr(m, "min_val", -1.0)), float(getattr(m, "max_val", 1.0))


def _sat_hardtanh(y: Tensor, m: Source, eps: float) -> Tensor:
    return activation_stats.interval_saturation(y, *_limits(m), eps)


def _sat_relu6(y: Tensor, m: Source, eps: float) -> Tensor:
    return activation_stats.interval_saturation(y, None, 6.0, eps)


def _sat_softplus(y: Tensor, m: Source, eps: float) -> Tensor:
    return stats.fraction_where(torch.lt, y, eps)


def softmax_dim(m: Source, ndim: int) -> int:
    """The dimension an ``nn.Softmax`` normalises (its legacy ``dim=None`` rule included)."""
    dim = getattr(m, "dim", None)
    if dim is None:
        return 0 if ndim in (0, 1, 3) else 1
    return int(dim)


def _sat_softmax(y: Tensor, m: Source, eps: float) -> Tensor:
    return activation_stats.softmax_saturation(y, softmax_dim(m, y.ndim), eps)


# The derivatives below build f'(x) in place: into ``out`` and ``work`` (buffers shaped
# like y) when given, else in one or two fresh tensors. Inside a training step every
# fresh activation-sized temporary costs page faults on the CPU, so activation_sums
# evaluates them block by block in fixed scratch buffers (``derivative_out=True``).
# Each is checked against autograd in tests/test_activations.py.
def _d_sigmoid(x: Optional[Tensor], y: Tensor, m: Source,
               out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    return torch.addcmul(y, y, y, value=-1.0, out=out)  # y - y*y


def _d_tanh(x: Optional[Tensor], y: Tensor, m: Source,
            out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    return torch.mul(y, y, out=out).neg_().add_(1.0)


def _d_softsign(x: Optional[Tensor], y: Tensor, m: Source,
                out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    # y = x / (1 + |x|)  =>  f'(x) = 1 / (1 + |x|)^2 = (1 - |y|)^2
    return torch.abs(y, out=out).neg_().add_(1.0).square_()


def _d_relu(x: Optional[Tensor], y: Tensor, m: Source) -> Tensor:
    return (y > 0).to(torch.float32)


def _d_hardtanh(x: Optional[Tensor], y: Tensor, m: Source) -> Tensor:
    lo, hi = _limits(m)
    return ((y > lo) & (y < hi)).to(torch.float32)


def _pw_relu(m: Source) -> tuple[float, float, float, float]:
    return 0.0, math.inf, 1.0, 0.0


def _pw_hardtanh(m: Source) -> tuple[float, float, float, float]:
    return (*_limits(m), 1.0, 0.0)


def _d_hardsigmoid(x: Optional[Tensor], y: Tensor, m: Source) -> Tensor:
    # y = relu6(x + 3) / 6: f'(x) = 1/6 on -3 < x < 3, that is on 0 < y < 1, else 0
    return ((y > 0) & (y < 1)).to(torch.float32) / 6.0


def _pw_hardsigmoid(m: Source) -> tuple[float, float, float, float]:
    return 0.0, 1.0, 1.0 / 6.0, 0.0


def _pw_leaky(m: Source) -> tuple[float, float, float, float]:
    return 0.0, math.inf, 1.0, float(getattr(m, "negative_slope", 0.01))


def _d_leaky(x: Optional[Tensor], y: Tensor, m: Source) -> Tensor:
    slope = float(getattr(m, "negative_slope", 0.01))
    return torch.where(y > 0, 1.0, slope)


def _elu_like(y: Tensor, inside: float, scale: float, out: Optional[Tensor],
              work: Optional[Tensor]) -> Tensor:
    """``scale`` where ``y > 0``, else ``min(y, 0) + inside``: ELU ``inside = alpha``, SELU."""
    d = torch.clamp(y, max=0.0, out=out).add_(inside)
    on = torch.gt(y, 0.0, out=work if work is not None else torch.empty_like(d))
    return d.add_(on, alpha=scale - inside)


def _d_elu(x: Optional[Tensor], y: Tensor, m: Source,
           out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    # y = alpha * (exp(x) - 1) for x <= 0  =>  f'(x) = alpha * exp(x) = y + alpha; 1 for x > 0
    return _elu_like(y, float(getattr(m, "alpha", 1.0)), 1.0, out, work)


#: SELU's constants (Klambauer et al. 2017), as in ``torch.nn.SELU``.
SELU_ALPHA, SELU_SCALE = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946


def _d_selu(x: Optional[Tensor], y: Tensor, m: Source,
            out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    # y = scale * alpha * (exp(x) - 1) for x <= 0  =>  f'(x) = y + scale * alpha; scale for x > 0
    return _elu_like(y, SELU_SCALE * SELU_ALPHA, SELU_SCALE, out, work)


def _d_celu(x: Optional[Tensor], y: Tensor, m: Source,
            out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    # y = alpha * (exp(x / alpha) - 1) for x <= 0  =>  f'(x) = exp(x / alpha) = y / alpha + 1
    alpha = float(getattr(m, "alpha", 1.0))
    return torch.clamp(y, max=0.0, out=out).div_(alpha).add_(1.0)


def _d_softplus(x: Optional[Tensor], y: Tensor, m: Source) -> Tensor:
    # y = log(1 + exp(beta x)) / beta  =>  f'(x) = sigmoid(beta x); y = x (f' = 1) above
    # the threshold, which y alone cannot tell apart from the curve just below it
    x = _need_x(x, "Softplus")
    bx = x * float(getattr(m, "beta", 1.0))
    return torch.where(bx > float(getattr(m, "threshold", 20.0)), 1.0, torch.sigmoid(bx))


def _need_x(x: Optional[Tensor], name: str) -> Tensor:
    if x is None:
        raise RuntimeError(f"the {name} derivative needs the activation's input (internal error)")
    return x


_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _d_gelu(x: Optional[Tensor], y: Tensor, m: Source,
            out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    x = _need_x(x, "GELU")
    if getattr(m, "approximate", "none") == "tanh":
        k = math.sqrt(2.0 / math.pi)
        inner = k * (x + 0.044715 * x.pow(3))
        t = torch.tanh(inner)
        d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3 * 0.044715 * x * x)
        return d if out is None else out.copy_(d)
    # y = x Phi(x), so Phi(x) = y / x without an erf pass (0/0 at x = 0, where Phi = 1/2)
    cdf = torch.div(y, x, out=out).nan_to_num_(nan=0.5)
    x_pdf = torch.mul(x, x, out=work).mul_(-0.5).exp_().mul_(x).mul_(_INV_SQRT2PI)
    return cdf.add_(x_pdf)


def _d_silu(x: Optional[Tensor], y: Tensor, m: Source,
            out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    x = _need_x(x, "SiLU")
    s = torch.sigmoid(x, out=out)
    return torch.neg(s, out=work).add_(1.0).mul_(x).add_(1.0).mul_(s)


def _d_mish(x: Optional[Tensor], y: Tensor, m: Source) -> Tensor:
    # y = x tanh(softplus(x))  =>  f'(x) = t + x sigmoid(x) (1 - t^2), t = tanh(softplus(x))
    x = _need_x(x, "Mish")
    t = torch.tanh(torch.nn.functional.softplus(x))
    return t + x * torch.sigmoid(x) * (1.0 - t * t)


def _d_hardswish(x: Optional[Tensor], y: Tensor, m: Source) -> Tensor:
    # y = x relu6(x + 3) / 6  =>  f'(x) = 0 for x < -3, x/3 + 1/2 up to 3, 1 above (autograd's)
    x = _need_x(x, "Hardswish")
    return torch.where(x < -3.0, 0.0, torch.where(x <= 3.0, x / 3.0 + 0.5, 1.0))


def _d_rrelu(x: Optional[Tensor], y: Tensor, m: Source) -> Tensor:
    # Training draws a slope per element in [lower, upper]: the slope this call used is y / x.
    # (At x = 0 it cannot be read back; the mean slope stands in there.)
    x = _need_x(x, "RReLU")
    mid = (float(getattr(m, "lower", 1.0 / 8)) + float(getattr(m, "upper", 1.0 / 3))) / 2
    return torch.where(x > 0, 1.0, torch.div(y, x).nan_to_num_(nan=mid))


def _d_prelu(x: Optional[Tensor], y: Tensor, m: Source) -> Tensor:
    x = _need_x(x, "PReLU")
    weight = getattr(m, "weight", None)
    assert isinstance(weight, Tensor)
    w = weight.detach().to(torch.float32)
    if w.numel() > 1 and x.ndim >= 2:
        shape = [1] * x.ndim
        shape[1] = w.numel()
        w = w.reshape(shape)
    return torch.where(x > 0, torch.ones((), device=x.device), w)


_SOFTMAX = ActivationFamily("softmax", "softmax", _sat_softmax, None)

#: The family of each activation module type (subclasses inherit it; see :func:`family_of`).
FAMILIES: dict[type[nn.Module], ActivationFamily] = {
    nn.Sigmoid: ActivationFamily("sigmoid", "saturating", _sat_sigmoid, _d_sigmoid,
                                 derivative_out=True),
    nn.Tanh: ActivationFamily("tanh", "saturating", _sat_unit, _d_tanh, derivative_out=True),
    nn.Softsign: ActivationFamily("softsign", "saturating", _sat_unit, _d_softsign,
                                  derivative_out=True),
    nn.Hardtanh: ActivationFamily("hardtanh", "saturating", _sat_hardtanh, _d_hardtanh,
                                  piecewise=_pw_hardtanh),
    nn.Hardsigmoid: ActivationFamily("hardsigmoid", "saturating", _sat_sigmoid, _d_hardsigmoid,
                                     piecewise=_pw_hardsigmoid),
    nn.Softplus: ActivationFamily("softplus", "saturating", _sat_softplus, _d_softplus,
                                  needs_input=True),
    nn.ReLU: ActivationFamily("relu", "relu", None, _d_relu, piecewise=_pw_relu),
    nn.ReLU6: ActivationFamily("relu6", "relu", _sat_relu6, _d_hardtanh,
                               piecewise=_pw_hardtanh),
    nn.LeakyReLU: ActivationFamily("leaky_relu", "negative", None, _d_leaky,
                                   piecewise=_pw_leaky),
    nn.PReLU: ActivationFamily("prelu", "negative", None, _d_prelu, needs_input=True),
    nn.RReLU: ActivationFamily("rrelu", "negative", None, _d_rrelu, needs_input=True),
    nn.ELU: ActivationFamily("elu", "negative", None, _d_elu, derivative_out=True),
    nn.SELU: ActivationFamily("selu", "negative", None, _d_selu, derivative_out=True),
    nn.CELU: ActivationFamily("celu", "negative", None, _d_celu, derivative_out=True),
    nn.GELU: ActivationFamily("gelu", "negative", None, _d_gelu, needs_input=True,
                              derivative_out=True),
    nn.SiLU: ActivationFamily("silu", "negative", None, _d_silu, needs_input=True,
                              derivative_out=True),
    nn.Mish: ActivationFamily("mish", "negative", None, _d_mish, needs_input=True),
    nn.Hardswish: ActivationFamily("hardswish", "negative", None, _d_hardswish,
                                   needs_input=True),
    nn.Softmax: _SOFTMAX,
    nn.Softmin: _SOFTMAX,  # softmax(-x): probabilities along dim all the same
    nn.Softmax2d: _SOFTMAX,  # over the channels (dim -3)
}


def register_family(module_type: type[nn.Module], family: ActivationFamily) -> None:
    """Teach gradscope a new activation module type (or override a built-in one).

    Example:
        >>> import torch.nn as nn
        >>> from gradscope.activations import ActivationFamily, register_family, FAMILIES
        >>> class Swish(nn.Module):
        ...     def forward(self, x): return x * x.sigmoid()
        >>> register_family(Swish, FAMILIES[nn.SiLU])
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(
            f"register_family(module_type={module_type!r}) needs an nn.Module subclass"
        )
    if not isinstance(family, ActivationFamily):
        raise TypeError(f"register_family(family={family!r}) needs an ActivationFamily")
    FAMILIES[module_type] = family


def family_of(module: nn.Module) -> Optional[ActivationFamily]:
    """The family of ``module`` by its type or nearest registered base class, else ``None``."""
    for cls in type(module).__mro__:
        fam = FAMILIES.get(cls)
        if fam is not None:
            return fam
    if _load_lazy(type(module).__module__):
        return family_of(module)
    return None


#: Families of other libraries, registered the first time a module from there is seen:
#: module prefix -> the gradscope module whose ``register()`` registers them.
_LAZY_FAMILIES = {"transformers.": "gradscope.integrations.hf_activations"}
_loaded: set[str] = set()


def _load_lazy(module_name: str) -> bool:
    """Register the lazy families for a module of that name (once); whether any were new."""
    for prefix, source in _LAZY_FAMILIES.items():
        if module_name.startswith(prefix) and source not in _loaded:
            _loaded.add(source)
            return bool(importlib.import_module(source).register())
    return False
