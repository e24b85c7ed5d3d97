"""The device side of the metrics: named reductions, each computed at most once per call,
and how each combines across ranks.

A call object (:class:`ActivationCall` or :class:`GradCall`) memoises the
reductions a :class:`gradscope.plan.Plan` asks it for, so that ``mean`` and ``std``
share one sum and ``small_deriv``, ``mean_deriv`` and ``zero_frac`` of a ReLU share
one count. :data:`ACTIVATION_REDUCTIONS` and :data:`BACKPROP_REDUCTIONS` name them
(what :attr:`gradscope.metrics.Metric.needs` names); :data:`COMBINE` says how each
combines across the ranks of ``torch.distributed``.

A reduction's value (a :data:`Part`) is a 0-d tensor on the device, a Python
``float`` already known on the host (on the CPU, where reading a value is free:
see :func:`gradscope.stats.host_readable`), or an :class:`Affine` of a tensor
(``count * scale + offset``) whose arithmetic is left to the host.

Written for few kernels and no large temporaries: on the CPU each operation
inside a hook pays tens of microseconds to bring the interpreter back into a
cache the training kernels just flushed, and each fresh activation-sized
temporary costs page faults. So the moments come from three reductions of ``y``
(sum, sum of squares in scratch, min/max), dead units from the per-unit maximum,
and each count from one 0/1 mask in scratch, computed once and shared.

Example:
    >>> import torch, torch.nn as nn
    >>> from gradscope.activations import family_of
    >>> m = nn.ReLU()
    >>> c = ActivationCall(family_of(m), m, None, torch.tensor([[1.0, -1.0], [2.0, -3.0]]),
    ...                    eps=0.01, delta=0.01, unit_dim=None)
    >>> float(c.part("sum")), float(c.part("active_units")), combine_op("active_units")
    (-1.0, 1.0, 'any')
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor

from gradscope import activation_stats, stats
from gradscope.activations import ActivationFamily, Source
from gradscope.metrics import METRICS

__all__ = [
    "ACTIVATION_REDUCTIONS",
    "BACKPROP_REDUCTIONS",
    "COMBINE",
    "ONE_PASS_CONDITION",
    "ActivationCall",
    "Affine",
    "GradCall",
    "Part",
    "combine_op",
]

#: ``mean**2 / var`` above which the one-pass variance ``E[y²] - mean²`` (sums with
#: ~1e-7 relative error) could lose more than ~1e-5; the two-pass sum is used instead.
ONE_PASS_CONDITION = 100.0


def _reduction(table: dict[str, Callable[[Any], Part]], name: str) -> Callable[[Any], Part]:
    """The reduction ``name``: a shared one from ``table``, or a metric's own ``reduce``."""
    fn = table.get(name)
    if fn is None:
        spec = METRICS.get(name)
        fn = spec.reduce if spec is not None else None
        if fn is None:
            raise KeyError(f"no reduction named {name!r}: add it to gradscope.reductions or "
                           "give the metric of that name a reduce= function")
    return fn


class Affine(NamedTuple):
    """``source * scale + offset``, evaluated on the host once ``source`` is read."""

    source: Tensor
    scale: float
    offset: float


Part = Union[Tensor, float, Affine]


class ActivationCall:
    """One activation call: its tensors, options, and the reductions computed so far.

    ``y`` is the output and ``x`` the input (``None`` unless the family needs it),
    both upcast to ``float32`` when in half precision. After the ``active_units``
    reduction, :attr:`active` holds which units were on (for the unit window).
    """

    __slots__ = ("_counts", "_parts", "active", "delta", "eps", "family", "module",
                 "numel", "unit_dim", "units", "x", "y")

    def __init__(self, family: ActivationFamily, module: Source, x: Optional[Tensor],
                 y: Tensor, *, eps: float, delta: float, unit_dim: Optional[int]) -> None:
        self.family = family
        self.module = module
        self.y = stats.as_float(y)
        self.x = stats.as_float(x) if x is not None else None
        self.eps, self.delta, self.unit_dim = eps, delta, unit_dim
        self.numel = self.y.numel()
        self.units = 0
        self.active: Optional[Tensor] = None
        self._parts: dict[str, Part] = {}
        self._counts: dict[tuple[float, float], Tensor] = {}

    def part(self, name: str) -> Part:
        """The reduction ``name`` (computed on first use)."""
        p = self._parts.get(name)
        if p is None:
            p = self._parts[name] = _reduction(ACTIVATION_REDUCTIONS, name)(self)
        return p

    def inside(self, low: float, high: float) -> Tensor:
        """How many elements have ``low < y < high`` (an infinite limit is not compared)."""
        key = (low, high)
        c = self._counts.get(key)
        if c is None:
            y = self.y
            if high == math.inf:
                c = stats.count_where(torch.gt, y, low)
            elif low == -math.inf:
                c = stats.count_where(torch.lt, y, high)
            else:  # low < high: #(y > low) - #(y >= high)
                c = stats.count_where(torch.gt, y, low) - stats.count_where(torch.ge, y, high)
            self._counts[key] = c
        return c


# ------------------------------------------------------- activation reductions
def _sum(c: ActivationCall) -> Part:
    return c.y.sum()


def _minmax(c: ActivationCall) -> Part:
    lo, hi = torch.aminmax(c.y)
    c._parts["max"] = hi
    return lo


def _max(c: ActivationCall) -> Part:
    c.part("min")
    return c._parts["max"]


def _ssq(c: ActivationCall) -> Part:
    """``Σ (y - mean)²``: one-pass on the CPU when well conditioned, else two-pass."""
    total = c.part("sum")
    assert isinstance(total, Tensor)
    n = c.numel
    if stats.host_readable(total):
        t, ss = total.item(), stats.sum_squares(c.y).item()  # ok-sync: CPU only
        mean = t / n
        var = ss / n - mean * mean  # a float product overflows to inf (``**`` would raise)
        if math.isfinite(t) and math.isfinite(ss) and var > 0 \
                and mean * mean <= ONE_PASS_CONDITION * var:
            return var * n
    return stats.sum_squares(c.y, total / n)


def _nonfinite(c: ActivationCall) -> Part:
    return _count_nonfinite(c.y, c.part("sum"))


def _count_nonfinite(x: Tensor, reduction: Part) -> Part:
    """NaN/Inf elements of ``x``; 0 without counting when ``reduction`` (its sum or norm,
    which a NaN/Inf element makes non-finite) is known finite for free (CPU)."""
    assert isinstance(reduction, Tensor)
    if stats.known_finite(reduction):
        return 0.0
    return stats.nonfinite_count(x)


def _saturated(c: ActivationCall) -> Part:
    assert c.family.saturation is not None
    return c.family.saturation(c.y, c.module, c.eps)


def _deriv_small(c: ActivationCall) -> Part:
    _derivative(c)
    return c._parts["deriv_small"]


def _deriv_sum(c: ActivationCall) -> Part:
    _derivative(c)
    return c._parts["deriv_sum"]


def _derivative(c: ActivationCall) -> None:
    """Both derivative reductions: ``#(f'(x) < delta)`` and ``Σ f'(x)``."""
    if "deriv_sum" in c._parts:
        return
    fam, n = c.family, c.numel
    if fam.piecewise is not None:  # f' is d_in on low < y < high, d_out elsewhere
        low, high, d_in, d_out = fam.piecewise(c.module)
        count = c.inside(low, high)
        small_in, small_out = float(d_in < c.delta), float(d_out < c.delta)
        c._parts["deriv_small"] = Affine(count, small_in - small_out, small_out * n)
        c._parts["deriv_sum"] = Affine(count, d_in - d_out, d_out * n)
        return
    small, total = _derivative_sums(fam, c.module, c.x, c.y, c.delta)
    c._parts["deriv_small"], c._parts["deriv_sum"] = small, total


def _derivative_sums(family: ActivationFamily, module: Source, x: Optional[Tensor],
                     y: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """``(#(f'(x) < delta), Σ f'(x))``, block by block in CPU scratch memory when it can."""
    assert family.derivative is not None
    blocks = None
    if family.derivative_out and stats.uses_scratch(y) and y.ndim > 0 and (
            x is None or x.shape == y.shape):
        blocks = stats.row_blocks(y)
    if blocks is None:  # a GPU (caching allocator), a custom derivative, or huge rows
        d = family.derivative(x, y, module)
        return stats.count_where(torch.lt, d, delta), d.sum(dtype=torch.float32)
    derivative: Callable[..., Tensor] = family.derivative
    out_buf, work_buf = stats.cpu_scratch(1), stats.cpu_scratch(2)
    small: Optional[Tensor] = None
    total: Optional[Tensor] = None
    for lo, hi in blocks:
        yb = y[lo:hi]
        k = yb.numel()
        d = derivative(None if x is None else x[lo:hi], yb, module,
                       out=out_buf[:k].view(yb.shape), work=work_buf[:k].view(yb.shape))
        c, s = stats.count_where(torch.lt, d, delta), d.sum(dtype=torch.float32)
        small = c if small is None else small.add_(c)
        total = s if total is None else total.add_(s)
    assert small is not None and total is not None
    return small, total


def _off(c: ActivationCall) -> Part:
    """Finite elements in the "off" regime: ``y <= 0`` (ReLU), negative ``src < 0`` (others).

    A NaN or ±Inf element is in neither regime (it is counted by ``nonfinite``). When
    the output's sum is known finite (CPU), so is every element of ``y`` and of an
    input it is read from (every built-in family maps a non-finite input to a
    non-finite output), and the count is ``numel`` minus the elements that are on.
    """
    relu = c.family.regime == "relu"
    src = c.y if relu else _regime_source(c)
    total = c.part("sum")
    assert isinstance(total, Tensor)
    if stats.known_finite(total):
        on = c.inside(0.0, math.inf) if relu else stats.count_where(torch.ge, src, 0.0)
        return Affine(on, -1.0, float(c.numel))
    return stats.count_finite_where(torch.le if relu else torch.lt, src, 0.0, _finite(c, src))


def _finite(c: ActivationCall, src: Tensor) -> Tensor:
    """:func:`gradscope.stats.finite_mask` of ``src`` (``y`` or ``x``), computed once per call."""
    key = "finite_y" if src is c.y else "finite_x"
    mask = c._parts.get(key)
    if mask is None:
        mask = c._parts[key] = stats.finite_mask(src)
    return mask  # type: ignore[return-value]


def _regime_source(c: ActivationCall) -> Tensor:
    """What the negative regime is read from: the input when the family keeps it, else ``y``."""
    return c.x if (c.family.needs_input and c.x is not None) else c.y


def _active_units(c: ActivationCall) -> Part:
    """Finite units on for at least one sample/position; also ``bad_units``, the units with
    a NaN/Inf element (neither on nor off). Sets :attr:`ActivationCall.active`: the units
    that are not idle this step (on, or non-finite), for the unit window."""
    ud = activation_stats.resolve_unit_dim(c.y.ndim, c.unit_dim)
    dims = activation_stats.batch_dims(c.y.ndim, ud)
    relu = c.family.regime == "relu"
    src = c.y if relu else _regime_source(c)
    peak = src.amax(dim=dims) if dims else src
    active = peak > 0 if relu else peak >= 0
    total = c.part("sum")
    assert isinstance(total, Tensor)
    if stats.known_finite(total):
        c._parts["bad_units"] = 0.0
        c.active = active
    else:
        mask = _finite(c, src)
        finite = mask.all(dim=dims) if dims else mask
        active &= finite
        c._parts["bad_units"] = (~finite).sum(dtype=torch.float32)
        c.active = active | ~finite
    c.units = active.numel()
    return active.sum(dtype=torch.float32)


def _bad_units(c: ActivationCall) -> Part:
    c.part("active_units")
    return c._parts["bad_units"]


#: Reductions of an activation call, by name (what :class:`gradscope.metrics.Metric.needs` names).
ACTIVATION_REDUCTIONS: dict[str, Callable[[ActivationCall], Part]] = {
    "sum": _sum,
    "ssq": _ssq,
    "min": _minmax,
    "max": _max,
    "nonfinite": _nonfinite,
    "saturated": _saturated,
    "deriv_small": _deriv_small,
    "deriv_sum": _deriv_sum,
    "off": _off,
    "active_units": _active_units,
    "bad_units": _bad_units,
}


# --------------------------------------------------------- backprop reductions
class GradCall:
    """The gradient flowing back into a call-site's output.

    Under a ``GradScaler`` the backward runs on ``loss * scale``: ``scale`` (a 0-d
    device tensor) is then divided out of the norms on the device, so that they are
    in true units without a host read.
    """

    __slots__ = ("_parts", "grad", "numel", "scale", "units")

    def __init__(self, grad: Tensor, scale: Optional[Tensor] = None) -> None:
        self.grad = grad
        self.scale = scale
        self.numel = grad.numel()
        self.units = 0
        self._parts: dict[str, Part] = {}

    def part(self, name: str) -> Part:
        """The reduction ``name`` (computed on first use)."""
        p = self._parts.get(name)
        if p is None:
            p = self._parts[name] = _reduction(BACKPROP_REDUCTIONS, name)(self)
        return p


def _grad_norm(c: GradCall) -> Part:
    norm = stats.l2_norm(c.grad)
    if c.scale is None:
        return norm
    return norm.div_(c.scale.to(norm.device, non_blocking=True))


def _grad_nonfinite(c: GradCall) -> Part:
    return _count_nonfinite(c.grad, c.part("norm"))


#: Reductions of a back-propagated gradient, by name.
BACKPROP_REDUCTIONS: dict[str, Callable[[GradCall], Part]] = {
    "norm": _grad_norm,
    "nonfinite": _grad_nonfinite,
}

#: How each reduction combines across the ranks of torch.distributed
#: (:mod:`gradscope.distributed`): ``sum``, ``min``, ``max``, ``norm`` (root of the
#: summed squares), ``grad`` (a back-propagated gradient's norm: DDP averages the
#: ranks' gradients, so the objective is the mean of their losses and the norm is
#: ``sqrt(Σ ‖g_r‖²) / ranks``), ``mean`` (a fraction, weighted by each rank's element count),
#: ``centered`` (a centred sum of squares, exact from each rank's count and sum),
#: ``any``/``all`` (units on in any / every rank's per-unit mask, counted). A
#: metric's own ``reduce=`` declares its op with ``Metric(combine=...)``.
COMBINE: dict[str, str] = {
    "sum": "sum",
    "ssq": "centered",
    "min": "min",
    "max": "max",
    "nonfinite": "sum",
    "saturated": "mean",
    "deriv_small": "sum",
    "deriv_sum": "sum",
    "on": "sum",
    "off": "sum",
    "active_units": "any",
    "bad_units": "max",  # a lower bound across ranks (the per-unit masks are not gathered)
    "idle_units": "all",
    "norm": "grad",
}


def combine_op(name: str) -> Optional[str]:
    """The combine op of the reduction ``name`` (``None`` when it declares none)."""
    op = COMBINE.get(name)
    if op is None:
        spec = METRICS.get(name)
        op = spec.combine if spec is not None else None
    return op
