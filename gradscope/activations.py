"""Activation families: which statistics each activation gets, and their definitions.

Each supported activation module maps to an :class:`ActivationFamily` that says

* its **regime**: ``"saturating"`` (sigmoid, tanh, softsign, hardtanh), ``"relu"``
  (ReLU, ReLU6: zero output and dead units), ``"negative"`` (LeakyReLU, PReLU, ELU,
  GELU, SiLU: outputs in the negative regime, labelled as such) or ``"softmax"``;
* its **saturation rule** (an output is saturated when it lies within ``eps`` of the
  family's limits; see :data:`SATURATION_RULES`);
* its **local derivative** ``f'(x)``, computed from the output where the function is
  invertible enough (sigmoid ``y(1-y)``, tanh ``1-y²``, ...) and from the input
  otherwise (GELU, SiLU, PReLU).

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
    "metric_names",
    "register_family",
    "summarize_activation",
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
    """

    name: str
    regime: str
    saturation: Optional[SaturationFn] = None
    derivative: Optional[DerivativeFn] = None
    needs_input: bool = False

    def __post_init__(self) -> None:
        if self.regime not in _REGIMES:
            raise ValueError(
                f"ActivationFamily(regime={self.regime!r}) is not one of {sorted(_REGIMES)}"
            )


_REGIMES = {"saturating", "relu", "negative", "softmax"}

#: Metrics every activation call-site gets, in order.
BASE_METRICS = ("mean", "std", "min", "max", "nonfinite")


def metric_names(family: ActivationFamily) -> tuple[str, ...]:
    """Names of the forward statistics :func:`summarize_activation` returns, in order."""
    names: list[str] = list(BASE_METRICS)
    if family.saturation is not None:
        names.append("saturation")
    if family.derivative is not None:
        names += ["small_deriv", "mean_deriv"]
    if family.regime == "relu":
        names += ["zero_frac", "dead_units"]
    elif family.regime == "negative":
        names += ["neg_frac", "neg_units"]
    return tuple(names)


def window_metric(family: ActivationFamily) -> Optional[str]:
    """Name of the windowed unit metric of a family (``dead_units_window``), if any."""
    return {"relu": "dead_units_window", "negative": "neg_units_window"}.get(family.regime)


def summarize_activation(
    family: ActivationFamily,
    module: nn.Module,
    x: Optional[Tensor],
    y: Tensor,
    *,
    eps: float,
    delta: float,
    unit_dim: Optional[int],
) -> tuple[Tensor, Optional[Tensor]]:
    """Forward statistics of one activation call.

    Returns ``(values, active_units)``: a ``float32`` vector ordered as
    :func:`metric_names`, and for ReLU-like/negative-regime families a boolean
    vector saying which units were active (positive output, or not in the negative
    regime) for at least one sample, used for windowed dead-unit tracking.
    ``x`` is only read when ``family.needs_input``.
    """
    yf = stats.as_float(y)
    parts = [stats.moments(yf), stats.nonfinite_count(yf).reshape(1)]
    if family.saturation is not None:
        parts.append(family.saturation(yf, module, eps).reshape(1))
    if family.derivative is not None:
        xf = stats.as_float(x) if x is not None else None
        d = family.derivative(xf, yf, module)
        if d.numel() == 0:
            nan = torch.full((2,), float("nan"), device=y.device)
            parts.append(nan)
        else:
            parts.append(torch.stack([stats.small_fraction(d, delta), d.mean(dtype=torch.float32)]))
    active = None
    if family.regime in ("relu", "negative") and y.numel() > 0:
        ud = stats.resolve_unit_dim(y.ndim, unit_dim)
        if family.regime == "relu":
            on = yf > 0
        else:
            src = x if (family.needs_input and x is not None) else yf
            on = src >= 0
        active = stats.unit_any(on, ud)
        parts.append(torch.stack([1.0 - stats.fraction(on), 1.0 - stats.fraction(active)]))
    elif family.regime in ("relu", "negative"):
        parts.append(torch.full((2,), float("nan"), device=y.device))
    return torch.cat([p.to(torch.float32) for p in parts]), active


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


def _d_sigmoid(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    return y * (1.0 - y)


def _d_tanh(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    return 1.0 - y * y


def _d_softsign(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    # y = x / (1 + |x|)  =>  f'(x) = 1 / (1 + |x|)^2 = (1 - |y|)^2
    return (1.0 - y.abs()).square()


def _d_relu(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    return (y > 0).to(torch.float32)


def _d_hardtanh(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    if isinstance(m, nn.ReLU6):
        lo, hi = 0.0, 6.0
    else:
        lo, hi = float(getattr(m, "min_val", -1.0)), float(getattr(m, "max_val", 1.0))
    return ((y > lo) & (y < hi)).to(torch.float32)


def _d_leaky(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    slope = float(getattr(m, "negative_slope", 0.01))
    return torch.where(y > 0, 1.0, slope)


def _d_elu(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    # y = alpha * (exp(x) - 1) for x <= 0  =>  f'(x) = alpha * exp(x) = y + alpha
    alpha = float(getattr(m, "alpha", 1.0))
    return torch.where(y > 0, 1.0, y + alpha)


def _need_x(x: Optional[Tensor], name: str) -> Tensor:
    if x is None:
        raise RuntimeError(f"the {name} derivative needs the module's input (internal error)")
    return x


_INV_SQRT2 = 1.0 / math.sqrt(2.0)
_INV_SQRT2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _d_gelu(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    x = _need_x(x, "GELU")
    if getattr(m, "approximate", "none") == "tanh":
        k = math.sqrt(2.0 / math.pi)
        inner = k * (x + 0.044715 * x.pow(3))
        t = torch.tanh(inner)
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3 * 0.044715 * x * x)
    cdf = 0.5 * (1.0 + torch.erf(x * _INV_SQRT2))
    pdf = torch.exp(-0.5 * x * x) * _INV_SQRT2PI
    return cdf + x * pdf


def _d_silu(x: Optional[Tensor], y: Tensor, m: nn.Module) -> Tensor:
    x = _need_x(x, "SiLU")
    s = torch.sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


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
    nn.Sigmoid: ActivationFamily("sigmoid", "saturating", _sat_sigmoid, _d_sigmoid),
    nn.Tanh: ActivationFamily("tanh", "saturating", _sat_unit, _d_tanh),
    nn.Softsign: ActivationFamily("softsign", "saturating", _sat_unit, _d_softsign),
    nn.Hardtanh: ActivationFamily("hardtanh", "saturating", _sat_hardtanh, _d_hardtanh),
    nn.ReLU: ActivationFamily("relu", "relu", None, _d_relu),
    nn.ReLU6: ActivationFamily("relu6", "relu", _sat_hardtanh, _d_hardtanh),
    nn.LeakyReLU: ActivationFamily("leaky_relu", "negative", None, _d_leaky),
    nn.PReLU: ActivationFamily("prelu", "negative", None, _d_prelu, needs_input=True),
    nn.ELU: ActivationFamily("elu", "negative", None, _d_elu),
    nn.GELU: ActivationFamily("gelu", "negative", None, _d_gelu, needs_input=True),
    nn.SiLU: ActivationFamily("silu", "negative", None, _d_silu, needs_input=True),
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
    return None
