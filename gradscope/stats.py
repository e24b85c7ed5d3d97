"""Pure statistics on tensors: no hooks, no I/O, no device synchronisation.

Every function here takes tensors and returns tensors on the same device, so
that it can run inside a hook without synchronising a GPU. Scalars come back as
0-d ``float32`` tensors; half-precision inputs (``float16``/``bfloat16``) are
computed in ``float32``. An empty input gives ``nan`` for fractions and moments
and ``0`` for counts.

On the CPU two things differ, for speed, never for the result: masks and
squares are written block by block into fixed per-thread scratch buffers
(:func:`cpu_scratch`) instead of fresh temporaries, and :func:`known_finite`
reads a value already computed (free in host memory) to skip a count.

:mod:`gradscope.reductions` composes these functions; the tests check what it
computes against plain NumPy or loop references (``tests/test_stats.py``).

Example:
    >>> import torch
    >>> from gradscope import stats
    >>> y = torch.tensor([[0.0, 1.0], [0.0, 2.0]])
    >>> float(stats.count_where(torch.gt, y, 0.0))
    2.0
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from typing import Callable, Optional, Union

import torch
from torch import Tensor

__all__ = [
    "all_finite",
    "as_float",
    "count_finite_where",
    "count_where",
    "cpu_kernels",
    "cpu_scratch",
    "finite_mask",
    "finite_probe",
    "foreach_finite_probe",
    "foreach_nonfinite_counts",
    "foreach_norms",
    "fraction",
    "fraction_where",
    "host_readable",
    "indicator",
    "known_finite",
    "l2_norm",
    "nonfinite_count",
    "row_blocks",
    "sum_squares",
    "uses_scratch",
]

_NAN = float("nan")
_SUM_AS_IS = (torch.float32, torch.float64)  # dtypes whose own sum cannot overflow early
_compiling = torch.compiler.is_dynamo_compiling  # True while torch.compile traces (cheap)


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


def host_readable(t: Tensor) -> bool:
    """Whether reading a value of ``t`` on the host is free: it lives in CPU memory.

    Reading a GPU tensor's value waits for the device (a synchronisation), so the
    statistics never do it; on the CPU there is nothing to wait for, and a few
    functions here use a value they already computed to skip work that cannot
    change the result (see :func:`known_finite`). The results are the same on
    every device. Inside ``torch.compile`` nothing is read (a read would break
    the graph): the accelerator path is traced instead.
    """
    return t.device.type == "cpu" and not _compiling()


#: Below this many elements a temporary is cheap on the CPU too (the allocator
#: recycles small blocks without page faults), so no scratch buffer is used.
SCRATCH_MIN_ELEMENTS = 1 << 15


def uses_scratch(x: Tensor) -> bool:
    """Whether ``x``'s masks and squares go through the CPU scratch buffers (see :func:`cpu_scratch`).

    Only eagerly on the CPU and for tensors of at least :data:`SCRATCH_MIN_ELEMENTS`:
    a GPU's caching allocator makes temporaries cheap, small temporaries are cheap
    everywhere, and inside ``torch.compile`` the compiler fuses them away.
    """
    return (x.device.type == "cpu" and x.numel() >= SCRATCH_MIN_ELEMENTS
            and not _compiling())


def cpu_kernels(t: Tensor) -> bool:
    """Whether ``t``'s operations run as CPU kernels, for choices made for CPU speed only.

    (Not about synchronisation: see :func:`host_readable`.)
    ``benchmarks/kernel_counts.py`` replaces it to count the accelerator path on a CPU.
    """
    return t.device.type == "cpu"


def nonfinite_count(x: Tensor) -> Tensor:
    """Number of NaN or ±Inf elements of ``x`` as a ``float32`` scalar."""
    if not x.is_floating_point() or x.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    # x * 0 is ±0 for finite x and NaN for NaN/±Inf: three kernels, where
    # ~isfinite(x) decomposes into five before the count
    return torch.count_nonzero(x.mul(0).ne_(0)).to(torch.float32)


def known_finite(reduction: Tensor) -> bool:
    """Whether ``reduction`` is finite *and* that can be read for free.

    ``reduction`` is a reduction over every element of some tensor ``x`` (its sum
    or L2 norm), or a vector of such reductions. A NaN or ±Inf element of ``x``
    makes its sum and norm NaN or ±Inf, so a finite reduction proves ``x`` has no
    non-finite element and its :func:`nonfinite_count` is 0. On the CPU
    (:func:`host_readable`) this replaces a pass over ``x``; on a GPU it returns
    ``False`` without reading anything (that would synchronise), and the caller
    counts on the device. ``False`` never means "not finite" alone.
    """
    if not host_readable(reduction):
        return False
    if reduction.ndim == 0:
        return math.isfinite(reduction.item())  # ok-sync: CPU memory, nothing to wait for
    return all(math.isfinite(v) for v in reduction.tolist())  # ok-sync: CPU only (above)


def all_finite(x: Tensor) -> bool:
    """Whether every element of ``x`` (in CPU memory) is finite: the every-step check's test.

    One sum (accumulated in ``float32``, or ``float64`` for ``float64`` data), read on
    the host: a NaN or ±Inf element makes the sum NaN or ±Inf, so a finite sum
    proves every element finite. A sum that is not finite is confirmed by
    :func:`finite_probe` (min and max, which never overflow): finite values whose sum
    overflows are not reported. About 2.5 µs on a 64x256 ``float32`` tensor against
    6 µs for the min/max probe with its reads. For CPU tensors only (it reads values).
    """
    total = float(x.sum() if x.dtype in _SUM_AS_IS else torch.sum(x, dtype=torch.float32))  # ok-sync: CPU memory, nothing to wait for
    if total - total == 0.0:
        return True
    return all(math.isfinite(v) for v in finite_probe(x).tolist())  # ok-sync: CPU only


def finite_probe(x: Tensor) -> Tensor:
    """A ``float32`` vector of 2 whose values are finite exactly when every element of ``x`` is.

    ``x``'s min and max (``torch.aminmax``: one pass, no temporary), in which NaN
    and ±Inf propagate and nothing overflows (unlike a sum or a 2-norm of huge
    finite values). ``vector_norm(x, inf)`` would do too, but its CPU kernel is about
    15x slower (190 vs 11 µs on a 128x256 ``float32`` tensor). For ``float64``, whose
    finite values may exceed ``float32``'s range, both are multiplied by 0 first (0
    if finite, NaN if not). Zeros for an empty tensor.
    """
    if x.numel() == 0:
        return torch.zeros(2, dtype=torch.float32, device=x.device)
    both = torch.stack(torch.aminmax(x))
    if both.dtype == torch.float64:
        both = both * 0.0
    return both if both.dtype == torch.float32 else both.float()


def foreach_finite_probe(tensors: Sequence[Tensor]) -> Tensor:
    """A ``float32`` vector with, per tensor, 0 when every element is finite and NaN when
    one is not: each tensor's max-abs (``torch._foreach_norm(..., inf)``: one fused call,
    NaN propagates, nothing overflows) times 0. Nothing is read back (the accelerator
    path of the every-step check); an empty tensor gives 0."""
    full = [t for t in tensors if t.numel()]
    # x 0 in the tensors' own dtype: a float64 max-abs beyond float32's range is finite
    zeroed = iter(torch._foreach_mul(torch._foreach_norm(full, math.inf), 0.0) if full else [])
    out = [next(zeroed) if t.numel() else torch.zeros((), device=t.device) for t in tensors]
    return torch.stack([z if z.dtype == torch.float32 else z.float() for z in out])


def l2_norm(x: Tensor) -> Tensor:
    """Euclidean norm of all elements of ``x``, accumulated in ``float32``."""
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    if x.dtype == torch.float64:
        return torch.linalg.vector_norm(x).to(torch.float32)
    return torch.linalg.vector_norm(x, dtype=torch.float32)


def indicator(op: Callable[..., Tensor], x: Tensor, value: float) -> Tensor:
    """``op(x, value)`` for a comparison ``op`` (``torch.lt``, ``torch.gt``, ...) as 0/1 ``float32``.

    The same truth values as the boolean mask (NaN compares false), but written into
    a float tensor: on the CPU that comparison is vectorised and about 4x faster
    than one producing ``bool``, and a float mask sums and ``amax``-reduces fast.
    Under ``torch.compile`` the plain form is traced (the compiler fuses it).
    """
    if _compiling():
        return op(x, value).to(torch.float32)
    return op(x, value, out=torch.empty(x.shape, dtype=torch.float32, device=x.device))


#: Elements of the per-thread CPU scratch buffer that :func:`count_where` compares into.
SCRATCH_ELEMENTS = 1 << 18  # 1 MiB of float32: fixed, whatever the batch size

_scratch = threading.local()


def cpu_scratch(index: int = 0) -> Tensor:
    """The calling thread's CPU scratch buffer number ``index`` (0: :func:`count_where`).

    :data:`SCRATCH_ELEMENTS` ``float32`` each, allocated once per thread: fixed
    memory, whatever the batch size.
    """
    bufs = getattr(_scratch, "bufs", None)
    if bufs is None:
        bufs = _scratch.bufs = {}
    buf = bufs.get(index)
    if buf is None:
        buf = bufs[index] = torch.empty(SCRATCH_ELEMENTS, dtype=torch.float32)
    return buf


def row_blocks(x: Tensor) -> list[tuple[int, int]] | None:
    """Ranges of rows (dim 0) of ``x`` that fit in a scratch buffer; ``None`` if a row does not."""
    rows = x.shape[0]
    if rows == 0:
        return None
    per_row = max(x.numel() // rows, 1)
    step = SCRATCH_ELEMENTS // per_row
    if step == 0:
        return None
    return [(i, min(i + step, rows)) for i in range(0, rows, step)]


def sum_squares(x: Tensor, center: Union[Tensor, float, None] = None) -> Tensor:
    """``Σ (x - center)²`` over every element (``center=None``: ``Σ x²``), as ``float32``.

    On the CPU, ``torch.linalg.vector_norm`` accumulates float32 lane by lane and
    loses ~1e-3 of relative precision at 3e7 elements; ``Tensor.sum`` uses cascade
    summation (~1e-7). So the squares are written into the scratch buffer a block
    of rows at a time and summed there: accurate, and no activation-sized temporary.
    On a GPU the norm's tree reduction is accurate and the temporary is cheap.
    """
    if not uses_scratch(x) or x.ndim == 0 or x.numel() == 0:
        d = x if center is None else x - center
        return torch.linalg.vector_norm(d).square()
    blocks = row_blocks(x)
    if blocks is None:
        d = x if center is None else x - center
        return (d * d).sum()
    scratch = cpu_scratch(0)
    total = None
    for lo, hi in blocks:
        block = x[lo:hi] if len(blocks) > 1 else x
        buf = scratch[:block.numel()].view(block.shape)
        if center is None:
            sq = torch.mul(block, block, out=buf)
        else:
            sq = torch.sub(block, center, out=buf).square_()
        c = sq.sum()
        total = c if total is None else total.add_(c)
    return total  # type: ignore[return-value]


def count_where(op: Callable[..., Tensor], x: Tensor, value: float) -> Tensor:
    """How many elements of ``x`` satisfy the comparison ``op(x, value)``, as ``float32``.

    On the CPU the 0/1 mask is written into a fixed per-thread scratch buffer
    (:func:`cpu_scratch`), a block of rows at a time, instead of a fresh
    activation-sized temporary: inside a training step such a temporary costs
    page faults (on the 5x1000 MLP benchmark, about 128 per activation and step).
    Elsewhere (GPUs have a caching allocator) it is :func:`indicator` summed.
    """
    if x.numel() < SCRATCH_MIN_ELEMENTS or _compiling():  # small: one comparison, one sum
        return op(x, value).sum(dtype=torch.float32)
    if not uses_scratch(x) or x.ndim == 0:
        return indicator(op, x, value).sum()
    blocks = row_blocks(x)
    if blocks is None:  # one row is larger than the scratch buffer
        return indicator(op, x, value).sum()
    scratch = cpu_scratch(0)
    total = None
    for lo, hi in blocks:
        block = x[lo:hi] if len(blocks) > 1 else x
        c = op(block, value, out=scratch[:block.numel()].view(block.shape)).sum()
        total = c if total is None else total.add_(c)
    return total  # type: ignore[return-value]


def count_finite_where(op: Callable[..., Tensor], x: Tensor, value: float,
                       finite: Optional[Tensor] = None) -> Tensor:
    """How many *finite* elements of ``x`` satisfy ``op(x, value)``, as ``float32``.

    NaN compares false anyway; this also leaves out ``±Inf`` (``-Inf <= 0`` is true).
    ``finite`` is :func:`finite_mask` of ``x`` when the caller has it already.
    """
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float32, device=x.device)
    if finite is None:
        finite = finite_mask(x)
    return torch.count_nonzero(op(x, value) & finite).to(torch.float32)


def finite_mask(x: Tensor) -> Tensor:
    """``torch.isfinite(x)`` in two kernels (``x * 0 == 0``: ±0 for finite ``x``, NaN
    otherwise) where ``isfinite`` decomposes into five on floating tensors."""
    if not x.is_floating_point():
        return torch.isfinite(x)
    return x.mul(0).eq(0)


def fraction_where(op: Callable[..., Tensor], x: Tensor, value: float) -> Tensor:
    """Fraction of elements of ``x`` for which ``op(x, value)`` holds (``nan`` when empty)."""
    return _per_element(count_where(op, x, value), x)


def _per_element(count: Tensor, x: Tensor) -> Tensor:
    n = x.numel()
    if n == 0:
        return torch.full((), _NAN, dtype=torch.float32, device=x.device)
    return count.to(torch.float32) / n


def foreach_norms(tensors: Sequence[Tensor]) -> Tensor:
    """L2 norm of each tensor in ``tensors`` as one ``float32`` vector (one fused call).

    Accumulated and returned in ``float32`` (an fp16 norm above 65504 is not inf, a bf16
    one not rounded to 8 bits); a list holding ``float64`` tensors keeps their dtype.
    The squares of elements above ~1.8e19 overflow ``float32``: on the CPU
    (:func:`host_readable`) a norm that came out infinite for a tensor whose elements
    are all finite is computed again in ``float64`` (it is inf only if the true norm
    exceeds ``float32``'s range); on an accelerator it stays inf (never a finite wrong
    value, and ratios over it are unknown: :func:`gradscope.metrics.ratio`).
    """
    if not tensors:
        return torch.zeros(0)
    if any(t.dtype == torch.float64 for t in tensors):
        norms = torch._foreach_norm(list(tensors))
    else:
        norms = torch._foreach_norm(list(tensors), 2, dtype=torch.float32)
    out = torch.stack([n if n.dtype == torch.float32 else n.float() for n in norms])
    if host_readable(out) and not known_finite(out):  # rare: NaN/Inf, or an overflow
        for i, v in enumerate(out.tolist()):  # ok-sync: CPU only (above)
            if math.isinf(v) and all_finite(tensors[i]):
                out[i] = torch.linalg.vector_norm(tensors[i], dtype=torch.float64).float()
    return out


def foreach_nonfinite_counts(tensors: Sequence[Tensor]) -> Tensor:
    """Number of NaN/Inf elements of each tensor, as one ``float32`` vector.

    ``x * 0`` is 0 for finite ``x`` and NaN otherwise, and the 0-"norm" counts
    non-zeros, so two fused calls count every tensor's non-finite elements.
    """
    if not tensors:
        return torch.zeros(0)
    if all(cpu_kernels(t) for t in tensors):
        # On the CPU the 0-"norm" is a slow generic kernel (and isfinite slower
        # still); count_nonzero of the same ``x * 0`` is about 2.4x faster.
        return torch.stack([torch.count_nonzero(t * 0).to(torch.float32) for t in tensors])
    zeroed = torch._foreach_mul(list(tensors), 0.0)
    counts = torch._foreach_norm(zeroed, 0)
    return torch.stack([c.to(torch.float32) for c in counts])
