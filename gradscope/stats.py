"""Pure statistics on tensors: no hooks, no I/O, no host transfers.

Every function here takes tensors and returns tensors on the same device, so
that it can run inside a hook without synchronising a GPU. Scalars come back as
0-d ``float32`` tensors; half-precision inputs (``float16``/``bfloat16``) are
computed in ``float32``. An empty input gives ``nan`` for fractions and moments
and ``0`` for counts.

The monitor composes these functions; tests check each one against a plain
NumPy or loop computation (``tests/test_stats.py``).

Example:
    >>> import torch
    >>> from gradscope import stats
    >>> y = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    >>> float(stats.dead_fraction(y, unit_dim=1))
    0.5
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "batch_dims",
    "dead_fraction",
    "foreach_nonfinite_counts",
    "foreach_norms",
    "fraction",
    "interval_saturation",
    "l2_norm",
    "moments",
    "nonfinite_count",
    "resolve_unit_dim",
    "sigmoid_saturation",
    "small_fraction",
    "softmax_saturation",
    "symmetric_saturation",
    "unit_all",
    "unit_any",
]

_NAN = float("nan")


def as_float(x: Tensor) -> Tensor:
    """Return ``x`` in a dtype wide enough for statistics (fp16/bf16 -> fp32)."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.float()


def fraction(mask: Tensor) -> Tensor:
    """Fraction of ``True`` elements of a boolean mask (``nan`` when empty)."""
    n = mask.numel()
    if n == 0:
        return torch.full((), _NAN, dtype=torch.float32, device=mask.device)
    return torch.count_nonzero(mask).to(torch.float32) / n


def moments(x: Tensor) -> Tensor:
    """Mean, standard deviation (population, ``correction=0``), min and max of ``x``.

    Returns a ``float32`` tensor of shape ``(4,)``. Non-finite elements propagate
    (a NaN anywhere makes every moment NaN); count them with :func:`nonfinite_count`.
    """
    if x.numel() == 0:
        return torch.full((4,), _NAN, dtype=torch.float32, device=x.device)
    xf = as_float(x)
    std, mean = torch.std_mean(xf, correction=0)
    lo, hi = torch.aminmax(xf)
    return torch.stack([mean, std, lo, hi]).to(torch.float32)


def nonfinite_count(x: Tensor) -> Tensor:
    """Number of NaN or ±Inf elements of ``x`` as a ``float32`` scalar."""
    if not x.is_floating_point():
        return torch.zeros((), dtype=torch.float32, device=x.device)
    return torch.count_nonzero(~torch.isfinite(x)).to(torch.float32)


def l2_norm(x: Tensor) -> Tensor:
    """Euclidean norm of all elements of ``x``, accumulated in ``float32``."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    if x.dtype == torch.float64:
        return torch.linalg.vector_norm(x).to(torch.float32)
    return torch.linalg.vector_norm(x, dtype=torch.float32)


def small_fraction(values: Tensor, threshold: float) -> Tensor:
    """Fraction of elements strictly below ``threshold`` (NaN compares false)."""
    return fraction(values < threshold)


def sigmoid_saturation(y: Tensor, eps: float) -> Tensor:
    """Fraction of sigmoid outputs within ``eps`` of 0 or 1: ``y < eps or y > 1 - eps``."""
    return fraction((y < eps) | (y > 1.0 - eps))


def symmetric_saturation(y: Tensor, bound: float, eps: float) -> Tensor:
    """Fraction of outputs within ``eps`` of ``±bound``: ``|y| > bound - eps``.

    The rule for tanh and softsign (``bound = 1``).
    """
    return fraction(y.abs() > bound - eps)


def interval_saturation(y: Tensor, low: float | None, high: float, eps: float) -> Tensor:
    """Fraction of outputs within ``eps`` of a hard limit: ``y <= low + eps or y >= high - eps``.

    The rule for Hardtanh (``low=min_val, high=max_val``); ``low=None`` checks the
    upper limit only (ReLU6, whose lower limit is the ReLU zero, reported as ``zero_frac``).
    """
    mask = y >= high - eps
    if low is not None:
        mask = mask | (y <= low + eps)
    return fraction(mask)


def softmax_saturation(p: Tensor, dim: int, eps: float) -> Tensor:
    """Fraction of softmax rows whose largest probability is at least ``1 - eps``.

    A row is the set of probabilities along ``dim`` that sums to one.
    """
    if p.numel() == 0:
        return torch.full((), _NAN, dtype=torch.float32, device=p.device)
    return fraction(p.amax(dim=dim) >= 1.0 - eps)


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


def unit_any(mask: Tensor, unit_dim: int) -> Tensor:
    """Per unit: is ``mask`` true for at least one sample/position? Shape ``(units,)``."""
    dims = batch_dims(mask.ndim, unit_dim)
    if not dims:
        return mask
    return mask.any(dim=dims)


def unit_all(mask: Tensor, unit_dim: int) -> Tensor:
    """Per unit: is ``mask`` true for every sample/position? Shape ``(units,)``."""
    return ~unit_any(~mask, unit_dim)


def dead_fraction(y: Tensor, unit_dim: int | None = None) -> Tensor:
    """Fraction of units (features/channels) that are non-positive for every sample.

    A ReLU unit is dead on a batch when none of its outputs is positive. With an
    empty batch no unit is observed and the result is ``nan``.
    """
    ud = resolve_unit_dim(y.ndim, unit_dim)
    if y.numel() == 0:
        return torch.full((), _NAN, dtype=torch.float32, device=y.device)
    return fraction(~unit_any(y > 0, ud))


def foreach_norms(tensors: Sequence[Tensor]) -> Tensor:
    """L2 norm of each tensor in ``tensors`` as one ``float32`` vector (one fused call)."""
    if not tensors:
        return torch.zeros(0)
    norms = torch._foreach_norm(list(tensors))
    return torch.stack([n if n.dtype == torch.float32 else n.float() for n in norms])


def foreach_nonfinite_counts(tensors: Sequence[Tensor]) -> Tensor:
    """Number of NaN/Inf elements of each tensor, as one ``float32`` vector.

    ``x * 0`` is 0 for finite ``x`` and NaN otherwise, and the 0-"norm" counts
    non-zeros, so two fused calls count every tensor's non-finite elements.
    """
    if not tensors:
        return torch.zeros(0)
    if all(t.device.type == "cpu" for t in tensors):
        # On the CPU the 0-"norm" is a slow generic kernel (and isfinite slower
        # still); count_nonzero of the same ``x * 0`` is about 2.4x faster.
        return torch.stack([torch.count_nonzero(t * 0).to(torch.float32) for t in tensors])
    zeroed = torch._foreach_mul(list(tensors), 0.0)
    counts = torch._foreach_norm(zeroed, 0)
    return torch.stack([c.to(torch.float32) for c in counts])


# Used by docs and tests: the definitions above in one line each.
DEFINITIONS = {
    "moments": "mean, population std (correction=0), min, max over all elements, in float32",
    "nonfinite": "count of NaN or ±Inf elements",
    "dead": "unit non-positive for every sample/position of the batch",
    "saturation.sigmoid": "y < eps or y > 1 - eps",
    "saturation.tanh": "|y| > 1 - eps",
    "saturation.hardtanh": "y <= min_val + eps or y >= max_val - eps",
    "saturation.softmax": "max probability along dim >= 1 - eps (fraction of rows)",
}

