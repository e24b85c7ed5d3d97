"""What a fused kernel is told: a family's settings, and a tensor's strided layout.

:func:`forward_spec` turns an activation family (and the module's or call's settings) into
the constants of :func:`gradscope.kernels._triton.forward_partials`: the saturation
bounds, the piecewise-derivative interval or the elementwise derivative, the regime and
where it is read from. It returns ``None`` for a family the kernels do not cover (softmax:
row-wise; PReLU: a weight tensor; Softplus, Mish, Hardswish, RReLU; a family registered by
the user; a metric with its own ``reduce=``): those call-sites stay on the eager path.

:func:`unit_view` describes a tensor as ``(outer, units, inner)`` with one stride each,
without copying when its dimensions before and after the unit dimension can each be
merged (contiguous and channels-last tensors, most slices); otherwise the caller copies.

Pure Python and torch: no Triton import (the CPU path never needs it).

Example:
    >>> import torch, torch.nn as nn
    >>> from gradscope.activations import family_of
    >>> spec = forward_spec(family_of(nn.ReLU()), nn.ReLU(), 0.01, 0.01)
    >>> spec.regime, spec.inside, spec.deriv
    (1, 1, 0)
    >>> unit_view(torch.zeros(2, 3, 4, 5).to(memory_format=torch.channels_last), 1)
    (2, 3, 20, 60, 1, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor

from gradscope import activations as act
from gradscope.activations import ActivationFamily, Source

__all__ = ["FORWARD_VALUES", "ForwardSpec", "decoder_code", "forward_spec", "unit_view"]

#: The values the finisher writes for one forward segment, in order (``idle_units``: the
#: unit window's count, after this call).
FORWARD_VALUES = ("sum", "ssq", "min", "max", "nonfinite", "saturated_count", "deriv_small",
                  "deriv_sum", "inside", "off", "active_units", "bad_units", "idle_units")
#: Partial values per forward program (see :mod:`gradscope.kernels._triton`).
FORWARD_PARTIALS = 13
_AT = {name: i for i, name in enumerate(FORWARD_VALUES)}

#: Elementwise derivatives of :func:`gradscope.kernels._triton.forward_partials` (``DERIV``).
_DERIVS: dict[Any, int] = {act._d_sigmoid: 1, act._d_tanh: 2, act._d_softsign: 3,
                           act._d_elu: 4, act._d_selu: 4, act._d_celu: 5, act._d_gelu: 6,
                           act._d_silu: 8}
_SATURATIONS = (None, act._sat_sigmoid, act._sat_unit, act._sat_hardtanh, act._sat_relu6)

Code = Union[float, int, tuple[int, float, float]]


@dataclass(frozen=True)
class ForwardSpec:
    """The kernel constants of one family and settings (see the module docstring)."""

    sat_lo: int = 0  # 0: no lower bound, 1: y < sat_a, 2: y <= sat_a
    sat_a: float = 0.0
    sat_hi: int = 0  # 0: no upper bound, 1: y > sat_b, 2: y >= sat_b
    sat_b: float = 0.0
    inside: int = 0  # piecewise derivative: 1 y > in_lo, 2 y < in_hi, 3 both
    in_lo: float = 0.0
    in_hi: float = 0.0
    deriv: int = 0  # elementwise derivative (0: none or piecewise)
    p1: float = 0.0
    p2: float = 0.0
    regime: int = 0  # 0 saturating, 1 relu, 2 negative
    src_x: bool = False  # the negative regime is read from the input
    needs_x: bool = False
    piecewise: Optional[tuple[float, float, float, float]] = None
    delta: float = 0.0  # f'(x) < delta is a small derivative


def _registered() -> set[int]:
    """The built-in families (a user's family of the same name is not assumed alike)."""
    return {id(f) for f in act.FAMILIES.values()}


def forward_spec(family: ActivationFamily, source: Source, eps: float,
                 delta: float) -> Optional[ForwardSpec]:
    """The kernel constants for ``family`` called with ``source``'s settings (``None``: eager)."""
    if family.regime == "softmax" or family.saturation not in _SATURATIONS:
        return None
    derivative = family.derivative
    if derivative is None:
        return None
    tanh_gelu = _is_tanh_gelu(family)
    if id(family) not in _registered() and not tanh_gelu:
        return None
    kw: dict[str, Any] = {}
    sat = family.saturation
    if sat is act._sat_sigmoid:
        kw.update(sat_lo=1, sat_a=eps, sat_hi=1, sat_b=1.0 - eps)
    elif sat is act._sat_unit:
        edge = 1.0 - eps
        kw.update(sat_lo=1, sat_a=-edge, sat_hi=1, sat_b=edge)
    elif sat is act._sat_hardtanh:
        lo, hi = act._limits(source)
        kw.update(sat_lo=2, sat_a=lo + eps, sat_hi=2, sat_b=hi - eps)
    elif sat is act._sat_relu6:
        kw.update(sat_hi=2, sat_b=6.0 - eps)
    if family.piecewise is not None:
        low, high, d_in, d_out = family.piecewise(source)
        if not low < high:
            return None
        mode = 1 if high == math.inf else 2 if low == -math.inf else 3
        kw.update(inside=mode, in_lo=low, in_hi=high, piecewise=(low, high, d_in, d_out))
    elif tanh_gelu:
        kw.update(deriv=7)
    elif derivative in _DERIVS:
        kw["deriv"] = _DERIVS[derivative]
        if derivative is act._d_gelu and getattr(source, "approximate", "none") == "tanh":
            kw["deriv"] = 7
        elif derivative is act._d_elu:
            kw.update(p1=float(getattr(source, "alpha", 1.0)), p2=1.0)
        elif derivative is act._d_selu:
            kw.update(p1=act.SELU_SCALE * act.SELU_ALPHA, p2=act.SELU_SCALE)
        elif derivative is act._d_celu:
            kw["p1"] = float(getattr(source, "alpha", 1.0))
    else:
        return None
    regime = {"saturating": 0, "relu": 1, "negative": 2}[family.regime]
    return ForwardSpec(regime=regime, src_x=regime == 2 and family.needs_input,
                       needs_x=family.needs_input, delta=delta, **kw)


def _is_tanh_gelu(family: ActivationFamily) -> bool:
    """Whether ``family`` is the Hugging Face tanh-approximated GELU (registered lazily)."""
    import sys
    hf = sys.modules.get("gradscope.integrations.hf_activations")
    return hf is not None and family is getattr(hf, "TANH_GELU", None)


def decoder_code(spec: ForwardSpec, needs: Sequence[str], numel: int,
                 delta: float) -> Optional[list[Code]]:
    """Where each of ``needs`` is among :data:`FORWARD_VALUES` (an index, or ``(index,
    scale, offset)``); ``None`` when one is not computed by the kernels. A piecewise
    derivative is ``inside`` outside, ``outside`` elsewhere: its sums are affine in the
    inside count (as on the eager path)."""
    code: list[Code] = []
    n = float(numel)
    for name in needs:
        if name == "saturated":
            code.append((_AT["saturated_count"], 1.0 / n, 0.0))
        elif name in ("deriv_small", "deriv_sum") and spec.piecewise is not None:
            _, _, d_in, d_out = spec.piecewise
            if name == "deriv_sum":
                code.append((_AT["inside"], d_in - d_out, d_out * n))
            else:
                small_in, small_out = float(d_in < delta), float(d_out < delta)
                code.append((_AT["inside"], small_in - small_out, small_out * n))
        elif name in ("deriv_small", "deriv_sum") and spec.deriv == 0:
            return None
        elif name in _AT and name not in ("saturated_count", "inside", "idle_units"):
            code.append(_AT[name])
        else:
            return None
    return code


def _merge(sizes: Sequence[int], strides: Sequence[int]) -> Optional[tuple[int, int]]:
    """``(size, stride)`` of dimensions merged into one, or ``None`` if they cannot be."""
    kept = [(n, s) for n, s in zip(sizes, strides) if n != 1]
    if not kept:
        return 1, 0
    size = 1
    for (_, s), (n2, s2) in zip(kept, kept[1:]):
        if s != s2 * n2:
            return None
    for n, _ in kept:
        size *= n
    return size, kept[-1][1]


def unit_view(t: Tensor, unit_dim: int) -> Optional[tuple[int, int, int, int, int, int]]:
    """``(outer, units, inner, outer_stride, unit_stride, inner_stride)`` of ``t`` seen as
    ``(outer, units, inner)`` around ``unit_dim``, or ``None`` when it needs a copy."""
    sizes, strides = t.shape, t.stride()
    before = _merge(sizes[:unit_dim], strides[:unit_dim])
    after = _merge(sizes[unit_dim + 1:], strides[unit_dim + 1:])
    if before is None or after is None:
        return None
    return before[0], sizes[unit_dim], after[0], before[1], strides[unit_dim], after[1]


def flat_view(t: Tensor) -> Tensor:
    """``t`` itself when its elements fill its memory span (any order: a reduction over
    all of them need not know which), else a contiguous copy."""
    if t.is_contiguous() or (t.numel() > 0 and _dense(t)):
        return t
    return t.contiguous()


def _dense(t: Tensor) -> bool:
    """Non-overlapping and dense: its strides, sorted, are those of a contiguous tensor."""
    dims = sorted((s, n) for s, n in zip(t.stride(), t.shape) if n != 1)
    expect = 1
    for s, n in dims:
        if s != expect:
            return False
        expect *= n
    return True


def next_pow2(n: int) -> int:
    """The smallest power of two >= ``n`` (1 for ``n <= 1``)."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def storage_dtype_ok(t: Tensor) -> bool:
    """Whether the kernels read ``t``'s dtype natively (float32, bfloat16, float16)."""
    return t.dtype in (torch.float32, torch.bfloat16, torch.float16)
