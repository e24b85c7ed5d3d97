"""Activation families: the registry of what each activation is, for the statistics.

Each supported activation module maps to an :class:`ActivationFamily` that says

* its **regime**: ``"saturating"`` (sigmoid, tanh, softsign, hardtanh), ``"relu"``
  (ReLU, ReLU6: zero output and dead units), ``"negative"`` (LeakyReLU, PReLU, ELU,
  GELU, SiLU: outputs in the negative regime, labelled as such) or ``"softmax"``;
* its **saturation rule** (an output is saturated when it lies within ``eps`` of the
  family's limits; see :data:`SATURATION_RULES`);
* its **local derivative** ``f'(x)``, computed from the output where the function is
  invertible enough (sigmoid ``y(1-y)``, tanh ``1-y²``, ...) and from the input
  otherwise (GELU, SiLU, PReLU).

Which metrics a family gets follows from these fields (:mod:`gradscope.metrics`).
Modules whose type (or a base class) is not registered are not monitored:
gradscope does not guess. Register your own with :func:`register_family`.

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
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from gradscope import stats

__all__ = [
    "FAMILIES",
    "SATURATION_RULES",
    "ActivationFamily",
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
    "softmax": "max probability along dim >= 1 - eps (fraction of rows)",
}

SaturationFn = Callable[[Tensor, nn.Module, float], Tensor]
DerivativeFn = Callable[[Optional[Tensor], Tensor, nn.Module], Tensor]
PiecewiseFn = Callable[[nn.Module], tuple[float, float, float, float]]


@dataclass(frozen=True)
class ActivationFamily:
    """How one kind of activation is summarised.

    Args:
        name: short family name used in layer info and docs (``"sigmoid"``).
        regime: ``"saturating"``, ``"relu"``, ``"negative"`` or ``"softmax"``.
        saturation: ``(y, module, eps) -> fraction`` or ``None`` when the family
            has no saturating limit.
        derivative: ``(x, y, module) -> f'(x)`` elementwise, or ``None`` when it is
            not elementwise (softmax). ``x`` is ``None`` unless ``needs_input``.
        needs_input: the derivative or the negative regime needs the input ``x``;
            the input is then read in a forward *pre*-hook, so in-place modules work.
        piecewise: for a piecewise-constant derivative, ``module -> (low, high,
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


def _sat_sigmoid(y: Tensor, m: nn.Module, eps: float) -> Tensor:
    return stats.sigmoid_saturation(y, eps)


def _sat_unit(y: Tensor, m: nn.Module, eps: float) -> Tensor:
    return stats.symmetric_saturation(y, 1.0, eps)


def _sat_hardtanh(y: Tensor, m: nn.Module, eps: float) -> Tensor:
    if isinstance(m, nn.ReLU6):
        return stats.interval_saturation(y, None, 6.0, eps)
    lo, hi = float(getattr(m, "min_val", -1.0)), float(getattr(m, "max_val", 1.0))
    return stats.interval_saturation(y, lo, hi, eps)


def softmax_dim(m: nn.Module, ndim: int) -> int:
    """The dimension an ``nn.Softmax`` normalises (its legacy ``dim=None`` rule included)."""
    dim = getattr(m, "dim", None)
    if dim is None:
        return 0 if ndim in (0, 1, 3) else 1
    return int(dim)


def _sat_softmax(y: Tensor, m: nn.Module, eps: float) -> Tensor:
    return stats.softmax_saturation(y, softmax_dim(m, y.ndim), eps)


# The derivatives below build f'(x) in place: into ``out`` and ``work`` (buffers shaped
# like y) when given, else in one or two fresh tensors. Inside a training step every
# fresh activation-sized temporary costs page faults on the CPU, so activation_sums
# evaluates them block by block in fixed scratch buffers (``derivative_out=True``).
def _d_sigmoid(x: Optional[Tensor], y: Tensor, m: nn.Module,
               out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    return torch.addcmul(y, y, y, value=-1.0, out=out)  # y - y*y


def _d_tanh(x: Optional[Tensor], y: Tensor, m: nn.Module,
            out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    return torch.mul(y, y, out=out).neg_().add_(1.0)


def _d_softsign(x: Optional[Tensor], y: Tensor, m: nn.Module,
                out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    # y = x / (1 + |x|)  =>  f'(x) = 1 / (1 + |x|)^2 = (1 - |y|)^2
    return torch.abs(y, out=out).neg_().add_(1.0).square_()


def _d_relu(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    return (y > 0).to(torch.float32)


def _d_hardtanh(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    if isinstance(m, nn.ReLU6):
        lo, hi = 0.0, 6.0
    else:
        lo, hi = float(getattr(m, "min_val", -1.0)), float(getattr(m, "max_val", 1.0))
    return ((y > lo) & (y < hi)).to(torch.float32)


def _pw_relu(m: nn.Module) -> tuple[float, float, float, float]:
    return 0.0, math.inf, 1.0, 0.0


def _pw_hardtanh(m: nn.Module) -> tuple[float, float, float, float]:
    if isinstance(m, nn.ReLU6):
        return 0.0, 6.0, 1.0, 0.0
    return float(getattr(m, "min_val", -1.0)), float(getattr(m, "max_val", 1.0)), 1.0, 0.0


def _pw_leaky(m: nn.Module) -> tuple[float, float, float, float]:
    return 0.0, math.inf, 1.0, float(getattr(m, "negative_slope", 0.01))


def _d_leaky(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    slope = float(getattr(m, "negative_slope", 0.01))
    return torch.where(y > 0, 1.0, slope)


def _d_elu(x: Optional[Tensor], y: Tensor, m: nn.Module,
           out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    # y = alpha * (exp(x) - 1) for x <= 0  =>  f'(x) = alpha * exp(x) = y + alpha;
    # 1 for x > 0: min(y, 0) + alpha + (1 - alpha) [y > 0]
    alpha = float(getattr(m, "alpha", 1.0))
    d = torch.clamp(y, max=0.0, out=out).add_(alpha)
    on = torch.gt(y, 0.0, out=work if work is not None else torch.empty_like(d))
    return d.add_(on, alpha=1.0 - alpha)


def _need_x(x: Optional[Tensor], name: str) -> Tensor:
    if x is None:
        raise RuntimeError(f"the {name} derivative needs the module's input (internal error)")
    return x


_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _d_gelu(x: Optional[Tensor], y: Tensor, m: nn.Module,
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


def _d_silu(x: Optional[Tensor], y: Tensor, m: nn.Module,
            out: Optional[Tensor] = None, work: Optional[Tensor] = None) -> Tensor:
    x = _need_x(x, "SiLU")
    s = torch.sigmoid(x, out=out)
    return torch.neg(s, out=work).add_(1.0).mul_(x).add_(1.0).mul_(s)


def _d_prelu(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    x = _need_x(x, "PReLU")
    weight = m.weight
    assert isinstance(weight, Tensor)
    w = weight.detach().to(torch.float32)
    if w.numel() > 1 and x.ndim >= 2:
        shape = [1] * x.ndim
        shape[1] = w.numel()
        w = w.reshape(shape)
    return torch.where(x > 0, torch.ones((), device=x.device), w)


FAMILIES: dict[type[nn.Module], ActivationFamily] = {
    nn.Sigmoid: ActivationFamily("sigmoid", "saturating", _sat_sigmoid, _d_sigmoid,
                                 derivative_out=True),
    nn.Tanh: ActivationFamily("tanh", "saturating", _sat_unit, _d_tanh, derivative_out=True),
    nn.Softsign: ActivationFamily("softsign", "saturating", _sat_unit, _d_softsign,
                                  derivative_out=True),
    nn.Hardtanh: ActivationFamily("hardtanh", "saturating", _sat_hardtanh, _d_hardtanh,
                                  piecewise=_pw_hardtanh),
    nn.ReLU: ActivationFamily("relu", "relu", None, _d_relu, piecewise=_pw_relu),
    nn.ReLU6: ActivationFamily("relu6", "relu", _sat_hardtanh, _d_hardtanh,
                               piecewise=_pw_hardtanh),
    nn.LeakyReLU: ActivationFamily("leaky_relu", "negative", None, _d_leaky,
                                   piecewise=_pw_leaky),
    nn.PReLU: ActivationFamily("prelu", "negative", None, _d_prelu, needs_input=True),
    nn.ELU: ActivationFamily("elu", "negative", None, _d_elu, derivative_out=True),
    nn.GELU: ActivationFamily("gelu", "negative", None, _d_gelu, needs_input=True,
                              derivative_out=True),
    nn.SiLU: ActivationFamily("silu", "negative", None, _d_silu, needs_input=True,
                              derivative_out=True),
    nn.Softmax: ActivationFamily("softmax", "softmax", _sat_softmax, None),
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
