"""Histograms computed on the device: only the bin counts cross to the host.

:func:`histogram_vector` is a pure tensor function (no hooks, no I/O, no host
transfer). It bins the finite elements of a tensor into ``bins`` equal-width bins
spanning their own ``[min, max]``, and returns one ``float32`` vector that the
monitor queues with its other statistics and moves to the host at the flush:

``[min, max, num, sum, sum_squares, count_0, ..., count_{bins-1}]``

:func:`decode_histogram` turns those values back into a :class:`Histogram`, whose
fields are the arguments of ``SummaryWriter.add_histogram_raw``.

Counting uses ``scatter_add_`` into ``int64`` bins, so no step depends on the data
size (``torch.histc`` with an automatic range and ``torch.bincount`` both read a
value back to the host on CUDA) and counts stay exact beyond 2**24 elements.

Example:
    >>> import torch
    >>> from gradscope.histograms import histogram_vector, decode_histogram
    >>> x = torch.tensor([0.0, 0.0, 1.0, 2.0, float("nan")])
    >>> h = decode_histogram(0, "activations", "relu", histogram_vector(x, bins=2).tolist())  # ok-sync: example
    >>> h.num, h.bucket_limits, h.bucket_counts
    (4, [1.0, 2.0], [2, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from gradscope import stats

__all__ = ["HEADER", "Histogram", "decode_histogram", "histogram_vector"]

#: Number of leading summary values before the bin counts.
HEADER = 5


@dataclass(frozen=True)
class Histogram:
    """One histogram of one tensor at one step, ready for ``add_histogram_raw``.

    Args:
        step: the training step it was taken at.
        group: what was binned: ``"activations"`` (a call-site's output),
            ``"backprop"`` (the gradient flowing back through that output),
            ``"gradients"`` (a parameter's gradient) or ``"weights"``.
        name: the call-site or parameter name (as in :class:`gradscope.History`).
        min, max, num, sum, sum_squares: over the finite elements.
        bucket_limits: the upper edge of each bin.
        bucket_counts: the number of finite elements in each bin.
        nonfinite: elements that were NaN or ±Inf (not binned).
    """

    step: int
    group: str
    name: str
    min: float
    max: float
    num: int
    sum: float
    sum_squares: float
    bucket_limits: list[float]
    bucket_counts: list[int]
    nonfinite: int = 0


def histogram_vector(x: Tensor, bins: int) -> Tensor:
    """Summary and ``bins`` equal-width bin counts of the finite elements of ``x``.

    Returns a ``float32`` vector of length ``HEADER + bins`` on ``x``'s device:
    ``[min, max, num, sum, sum_squares, counts...]``. The bins span the finite
    ``[min, max]``; a constant tensor puts everything in the last bin. With no
    finite element, ``min = +inf``, ``max = -inf`` and every count is 0.
    """
    if bins < 1:
        raise ValueError(f"histogram_vector(bins={bins}): bins must be >= 1")
    xf = x.detach().reshape(-1)
    if xf.dtype not in (torch.float32, torch.float64):
        xf = xf.float()
    fast = _cpu_histogram(xf, bins)
    if fast is not None:
        return fast
    finite = torch.isfinite(xf)
    inf = torch.full((), float("inf"), dtype=xf.dtype, device=xf.device)  # a fill, no copy
    lo = torch.where(finite, xf, inf).amin() if xf.numel() else inf
    hi = torch.where(finite, xf, -inf).amax() if xf.numel() else -inf
    z = torch.where(finite, xf, torch.zeros((), dtype=xf.dtype, device=xf.device))
    width = hi - lo
    scale = torch.where(width > 0, bins / width, torch.zeros_like(width))
    pos = torch.nan_to_num((z - lo) * scale, nan=0.0, posinf=0.0, neginf=0.0)
    idx = pos.floor().clamp_(0, bins - 1).long()
    # A constant tensor (width 0) goes to the last bin, whose upper limit is the value.
    idx = torch.where(width > 0, idx, torch.full_like(idx, bins - 1))
    idx = torch.where(finite, idx, torch.full_like(idx, bins))  # overflow slot, dropped
    counts = torch.zeros(bins + 1, dtype=torch.long, device=xf.device)
    counts.scatter_add_(0, idx, torch.ones_like(idx))
    head = torch.stack([lo, hi, finite.sum().to(xf.dtype), z.sum(), (z * z).sum()])
    return torch.cat([head.to(torch.float32), counts[:bins].to(torch.float32)])


def _cpu_histogram(xf: Tensor, bins: int) -> Optional[Tensor]:
    """The same vector for a finite CPU tensor, in a few passes (~40x faster on 1e6 elements).

    On the CPU the range can be read for free (:func:`gradscope.stats.host_readable`)
    and ``torch.bincount`` needs no synchronisation. ``None`` when it does not apply
    (another device, an empty tensor, or a NaN/Inf element, which the general path bins
    out).
    """
    if not stats.host_readable(xf) or xf.numel() == 0 or xf.dtype != torch.float32:
        return None
    lo, hi = torch.aminmax(xf)
    if not stats.known_finite(torch.stack([lo, hi])):  # aminmax propagates NaN; Inf shows
        return None
    width = hi - lo
    if width.item() > 0:  # ok-sync: CPU only
        # The general path's arithmetic, (x - lo) * (bins / width) floored, block by
        # block in the fixed scratch buffers (fresh tensor-sized temporaries page-fault).
        scale = bins / width
        pos, ints = stats.cpu_scratch(0), stats.cpu_scratch(1).view(torch.int32)
        counts = torch.zeros(bins, dtype=torch.long)
        for start in range(0, xf.numel(), pos.numel()):
            block = xf[start:start + pos.numel()]
            k = block.numel()
            torch.sub(block, lo, out=pos[:k]).mul_(scale).floor_().clamp_(0, bins - 1)
            counts += torch.bincount(ints[:k].copy_(pos[:k]), minlength=bins)
    else:  # a constant tensor: everything in the last bin
        counts = torch.zeros(bins, dtype=torch.long)
        counts[-1] = xf.numel()
    head = torch.stack([lo, hi, torch.tensor(float(xf.numel()), dtype=xf.dtype), xf.sum(),
                        stats.sum_squares(xf).to(xf.dtype)])
    return torch.cat([head.to(torch.float32), counts.to(torch.float32)])


def decode_histogram(
    step: int, group: str, name: str, values: Sequence[float], numel: Optional[int] = None
) -> Optional[Histogram]:
    """Rebuild a :class:`Histogram` from the host values of :func:`histogram_vector`.

    Returns ``None`` when no element was finite (there is nothing to draw).
    ``numel`` (the tensor's size) lets it report how many elements were non-finite.
    """
    lo, hi, num, total, squares = values[:HEADER]
    counts = [round(c) for c in values[HEADER:]]
    bins = len(counts)
    if num < 1 or not bins:
        return None
    if hi > lo:
        limits = [lo + (hi - lo) * (i + 1) / bins for i in range(bins)]
        limits[-1] = hi
    else:
        # Constant tensor: empty bins just below the value, all counts in the last.
        step_w = max(abs(hi), 1.0) * 1e-6
        limits = [hi - step_w * (bins - 1 - i) for i in range(bins)]
    n = round(num)
    nonfinite = max(numel - n, 0) if numel is not None else 0
    return Histogram(step, group, name, lo, hi, n, total, squares, limits, counts, nonfinite)
