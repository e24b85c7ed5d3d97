"""Statistics particular to activation outputs: the saturated fraction for each kind of
limit (the family functions of :mod:`gradscope.activations` call these), and which
dimension of an output indexes its units.

Pure tensor functions like :mod:`gradscope.stats`, built from its counts.

Example:
    >>> import torch
    >>> float(sigmoid_saturation(torch.tensor([0.001, 0.5, 0.999, 0.2]), 0.01))
    0.5
    >>> resolve_unit_dim(4, None)  # (batch, channels, H, W): channels
    1
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gradscope import stats

__all__ = ["batch_dims", "interval_saturation", "resolve_unit_dim", "sigmoid_saturation",
           "softmax_saturation", "symmetric_saturation"]


def sigmoid_saturation(y: Tensor, eps: float) -> Tensor:
    """Fraction of sigmoid outputs within ``eps`` of 0 or 1: ``y < eps or y > 1 - eps``."""
    if eps >= 0.5:  # the two sides overlap: count the union
        return stats.fraction((y < eps) | (y > 1.0 - eps))
    both = stats.count_where(torch.lt, y, eps) + stats.count_where(torch.gt, y, 1.0 - eps)
    return stats._per_element(both, y)


def symmetric_saturation(y: Tensor, bound: float, eps: float) -> Tensor:
    """Fraction of outputs within ``eps`` of ``±bound``: ``|y| > bound - eps``.

    The rule for tanh and softsign (``bound = 1``).
    """
    edge = bound - eps
    if edge <= 0:
        return stats.fraction_where(torch.gt, y.abs(), edge)
    return stats._per_element(stats.count_where(torch.gt, y, edge) + stats.count_where(torch.lt, y, -edge), y)


def interval_saturation(y: Tensor, low: float | None, high: float, eps: float) -> Tensor:
    """Fraction of outputs within ``eps`` of a hard limit: ``y <= low + eps or y >= high - eps``.

    The rule for Hardtanh (``low=min_val, high=max_val``); ``low=None`` checks the
    upper limit only (ReLU6, whose lower limit is the ReLU zero, reported as ``zero_frac``).
    """
    if low is None:
        return stats.fraction_where(torch.ge, y, high - eps)
    if low + eps >= high - eps:  # the two sides overlap: count the union
        return stats.fraction((y >= high - eps) | (y <= low + eps))
    both = stats.count_where(torch.ge, y, high - eps) + stats.count_where(torch.le, y, low + eps)
    return stats._per_element(both, y)


def softmax_saturation(p: Tensor, dim: int, eps: float) -> Tensor:
    """Fraction of softmax rows whose largest probability is at least ``1 - eps``.

    A row is the set of probabilities along ``dim`` that sums to one.
    """
    if p.numel() == 0:
        return torch.full((), math.nan, dtype=torch.float32, device=p.device)
    return stats.fraction(p.amax(dim=dim) >= 1.0 - eps)


def resolve_unit_dim(ndim: int, unit_dim: int | None) -> int:
    """Which dimension indexes units (features or channels) for a tensor of rank ``ndim``.

    ``unit_dim=None`` means the documented default: the last dimension for rank
    1-3 (``(features,)``, ``(batch, features)``, ``(batch, seq, features)``) and
    dimension 1 for rank 4-5 (``(batch, channels, H, W[, D])``, channels first).
    Negative values count from the end.
    """
    if ndim == 0:
        raise ValueError("a 0-d tensor has no unit dimension")
    if unit_dim is None:
        unit_dim = 1 if ndim >= 4 else ndim - 1
    if not -ndim <= unit_dim < ndim:
        raise ValueError(
            f"unit_dim={unit_dim} is out of range for a tensor of rank {ndim}; "
            f"pass a dimension in [{-ndim}, {ndim - 1}] or None for the default"
        )
    return unit_dim % ndim


def batch_dims(ndim: int, unit_dim: int) -> tuple[int, ...]:
    """All dimensions except ``unit_dim``: the ones a unit is reduced over."""
    return tuple(d for d in range(ndim) if d != unit_dim)
