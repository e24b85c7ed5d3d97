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
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from gradscope import stats

__all__ = [
    "FAMILIES",
    "ONE_PASS_CONDITION",
    "SATURATION_RULES",
    "ActivationFamily",
    "ActivationSums",
    "activation_sums",
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


@dataclass
class ActivationSums:
    """Sums and counts of one activation call, and how to finish them on the host.

    ``values = raw * scale + offset`` elementwise, ordered as :func:`metric_names`:
    divisions by the element or unit count are affine, so they are left to the
    host and the device computes only the reductions. A part that is already known
    on the host (on the CPU, where reading a value is free) is a Python ``float``
    instead of a 0-d tensor. :func:`summarize_activation` finishes on the device.
    """

    parts: list[Union[Tensor, float]]
    scale: list[float]
    offset: list[float]
    active: Optional[Tensor]  # bool per unit, for ReLU-like/negative-regime families

    def tensors(self) -> list[Tensor]:
        """The parts that are still on the device, in order (stack them to read them)."""
        return [p for p in self.parts if isinstance(p, Tensor)]

    def finish(self, raw: list[float]) -> list[float]:
        """The metric values, given the values of :meth:`tensors` read back on the host."""
        it = iter(raw)
        return [(p if isinstance(p, float) else next(it)) * a + b
                for p, a, b in zip(self.parts, self.scale, self.offset)]


#: ``mean**2 / var`` above which the one-pass variance ``E[y²] - mean²`` (sums with
#: ~1e-7 relative error) could lose more than ~1e-5; the two-pass sum is used instead.
ONE_PASS_CONDITION = 100.0


def activation_sums(
    family: ActivationFamily,
    module: nn.Module,
    x: Optional[Tensor],
    y: Tensor,
    *,
    eps: float,
    delta: float,
    unit_dim: Optional[int],
) -> ActivationSums:
    """The reductions behind :func:`summarize_activation`; see :class:`ActivationSums`.

    Written for few kernels and no large temporaries: on the CPU each operation
    inside a hook pays tens of microseconds to bring the interpreter back into a
    cache the training kernels just flushed, and each fresh activation-sized
    temporary costs page faults. So the moments come from three reductions of
    ``y`` (sum, sum of squares in scratch, min/max), dead units from the per-unit
    maximum, and each count from one 0/1 mask in scratch, computed once and shared.
    """
    yf = stats.as_float(y)
    n = yf.numel()
    names = metric_names(family)
    if n == 0:
        parts: list[Union[Tensor, float]] = [math.nan] * len(names)
        parts[len(BASE_METRICS) - 1] = 0.0  # no element, none non-finite
        return ActivationSums(parts, [1.0] * len(names), [0.0] * len(names), None)
    total = yf.sum()
    lo, hi = torch.aminmax(yf)
    parts = [total, math.nan, lo, hi, math.nan]
    scale, offset = [1 / n, 1.0, 1.0, 1.0, 1.0], [0.0] * 5
    std: Optional[float] = None
    all_finite = False  # known without counting (CPU only)
    if stats.host_readable(total):
        t, ss = total.item(), stats.sum_squares(yf).item()  # ok-sync: CPU only
        all_finite = math.isfinite(t)  # a NaN/Inf element makes the sum non-finite
        mean, var = t / n, ss / n - (t / n) ** 2
        if all_finite and math.isfinite(ss) and var > 0 \
                and mean * mean <= ONE_PASS_CONDITION * var:
            std = math.sqrt(var)
    if std is None:  # two-pass
        parts[1] = stats.sum_squares(yf, total / n).sqrt()
        scale[1] = 1 / math.sqrt(n)
    else:
        parts[1] = std
    parts[4] = 0.0 if all_finite else stats.nonfinite_count(yf)
    counts: dict[tuple[float, float], Tensor] = {}  # interval -> count, computed once

    def inside(low: float, high: float) -> Tensor:
        """How many elements have ``low < y < high`` (an infinite limit is not compared)."""
        key = (low, high)
        if key not in counts:
            if high == math.inf:
                counts[key] = stats.count_where(torch.gt, yf, low)
            elif low == -math.inf:
                counts[key] = stats.count_where(torch.lt, yf, high)
            else:  # low < high: #(y > low) - #(y >= high)
                counts[key] = stats.count_where(torch.gt, yf, low) - stats.count_where(
                    torch.ge, yf, high)
        return counts[key]

    if family.saturation is not None:
        parts.append(family.saturation(yf, module, eps))
        scale.append(1.0)
        offset.append(0.0)
    if family.piecewise is not None:
        low, high, d_in, d_out = family.piecewise(module)
        count = inside(low, high)
        small_in, small_out = float(d_in < delta), float(d_out < delta)
        parts += [count, count]  # both are affine in the count inside
        scale += [(small_in - small_out) / n, (d_in - d_out) / n]
        offset += [small_out, d_out]
    elif family.derivative is not None:
        xf = stats.as_float(x) if x is not None else None
        parts += _derivative_sums(family, module, xf, yf, delta)
        scale += [1 / n, 1 / n]
        offset += [0.0, 0.0]
    active = None
    if family.regime in ("relu", "negative"):
        ud = stats.resolve_unit_dim(y.ndim, unit_dim)
        dims = stats.batch_dims(y.ndim, ud)
        if family.regime == "relu":  # on: y > 0
            on_count = inside(0.0, math.inf)
            active = (yf.amax(dim=dims) if dims else yf) > 0
        else:  # on: not in the negative regime, src >= 0
            src = stats.as_float(x) if (family.needs_input and x is not None) else yf
            on_count = stats.count_where(torch.ge, src, 0.0)
            active = (src.amax(dim=dims) if dims else src) >= 0
        parts += [on_count, torch.count_nonzero(active)]
        scale += [-1 / n, -1 / max(active.numel(), 1)]
        offset += [1.0, 1.0]
    return ActivationSums(parts, scale, offset, active)


def _derivative_sums(
    family: ActivationFamily, module: nn.Module, x: Optional[Tensor], y: Tensor, delta: float
) -> list[Tensor]:
    """``[#(f'(x) < delta), sum f'(x)]``, block by block in CPU scratch memory when it can."""
    assert family.derivative is not None
    blocks = None
    if family.derivative_out and y.device.type == "cpu" and y.ndim > 0 and (
            x is None or x.shape == y.shape):
        blocks = stats.row_blocks(y)
    if blocks is None:  # a GPU (caching allocator), a custom derivative, or huge rows
        d = family.derivative(x, y, module)
        return [stats.count_where(torch.lt, d, delta), d.sum(dtype=torch.float32)]
    derivative: Callable[..., Tensor] = family.derivative
    out_buf, work_buf = stats.cpu_scratch(1), stats.cpu_scratch(2)
    sums: list[Tensor] = []
    for lo, hi in blocks:
        yb = y[lo:hi]
        k = yb.numel()
        d = derivative(None if x is None else x[lo:hi], yb, module,
                       out=out_buf[:k].view(yb.shape), work=work_buf[:k].view(yb.shape))
        c, s = stats.count_where(torch.lt, d, delta), d.sum(dtype=torch.float32)
        sums = [c, s] if not sums else [sums[0].add_(c), sums[1].add_(s)]
    return sums


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
    s = activation_sums(family, module, x, y, eps=eps, delta=delta, unit_dim=unit_dim)
    raw = torch.stack([p.to(torch.float32) if isinstance(p, Tensor)
                       else torch.tensor(p, dtype=torch.float32, device=y.device)
                       for p in s.parts])
    scale = torch.tensor(s.scale, dtype=torch.float32, device=raw.device)
    offset = torch.tensor(s.offset, dtype=torch.float32, device=raw.device)
    return torch.addcmul(offset, raw, scale), s.active


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
    return None
