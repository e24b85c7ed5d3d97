"""Statistics of recurrent layers: gate reductions on the device, profile summaries on the host.

* :class:`GateCall` and :data:`GATE_REDUCTIONS`: the reductions the ``gates`` metrics
  of :mod:`gradscope.metrics` name in ``needs`` (gate sums, the counts of keep-gates
  near 1 and near 0, saturated hidden states), over a replayed unit's rows
  (:func:`gradscope.recurrence.replay`) or one cell call;
* :func:`profile_summary`: what the ``through_time`` metrics read from one profile
  ``‖∂L/∂h_k‖`` over time steps; :func:`downsample`: the bounded profile kept in the
  history.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Optional

import torch
from torch import Tensor

from gradscope import stats
from gradscope.recurrence import GATES
from gradscope.reductions import Part, _reduction

__all__ = ["FALL_FRACTION", "GATE_REDUCTIONS", "PROFILE_POINTS", "GateCall", "downsample",
           "profile_summary"]

#: ``grad_h_fall``: the gradient has "fallen" at a step where ``‖∂L/∂h_t‖`` is below
#: this fraction of its largest value over the sequence.
FALL_FRACTION = 0.01
#: A profile over time is kept in the history at this many evenly spaced steps at most.
PROFILE_POINTS = 64


# ------------------------------------------------------------- reductions
class GateCall:
    """The gates and hidden states of one replayed unit (or a cell's call), to reduce.

    Its reductions (:data:`GATE_REDUCTIONS`) are what the ``gates`` metrics of
    :mod:`gradscope.metrics` name in ``needs``; :attr:`available` says which this
    unit has (an LSTM has no update gate, a projected LSTM no bounded hidden state).
    """

    __slots__ = ("_parts", "available", "eps", "gates", "hidden", "numel", "units")

    def __init__(self, gates: dict[str, Tensor], hidden: Optional[Tensor], *, eps: float) -> None:
        self.gates, self.hidden, self.eps = gates, hidden, eps
        sizes = {t.numel() for t in gates.values()} | ({hidden.numel()} if hidden is not None else set())
        if len(sizes) > 1:
            raise ValueError(f"GateCall: gates and hidden state differ in size ({sorted(sizes)})")
        self.numel = sizes.pop() if sizes else 0
        self.units = 0
        self._parts: dict[str, Part] = {}
        names = {f"{g}_sum" for g in gates}
        names |= {f"{g}_{side}" for g in gates if g in _KEEP_GATES for side in ("open", "shut")}
        if hidden is not None:
            names.add("hidden_saturated")
        self.available = frozenset(names)

    def part(self, name: str) -> Part:
        """The reduction ``name`` (computed on first use)."""
        p = self._parts.get(name)
        if p is None:
            p = self._parts[name] = _reduction(GATE_REDUCTIONS, name)(self)
        return p


#: Gates whose value near 1 keeps the previous state (LSTM forget, GRU update).
_KEEP_GATES = ("forget", "update")


def _hidden_saturated(c: GateCall) -> Part:
    assert c.hidden is not None
    edge = 1.0 - c.eps
    return stats.count_where(torch.gt, c.hidden, edge) + stats.count_where(torch.lt, c.hidden, -edge)


def _gate_sum(gate: str) -> Callable[[GateCall], Part]:
    return lambda c: c.gates[gate].sum(dtype=torch.float32)


def _gate_open(gate: str) -> Callable[[GateCall], Part]:
    return lambda c: stats.count_where(torch.ge, c.gates[gate], 1.0 - c.eps)


def _gate_shut(gate: str) -> Callable[[GateCall], Part]:
    return lambda c: stats.count_where(torch.le, c.gates[gate], c.eps)


#: Reductions of replayed gates and hidden states, by name.
GATE_REDUCTIONS: dict[str, Callable[[GateCall], Part]] = {
    "hidden_saturated": _hidden_saturated,
    **{f"{g}_sum": _gate_sum(g) for gates in GATES.values() for g in gates},
    **{f"{g}_open": _gate_open(g) for g in _KEEP_GATES},
    **{f"{g}_shut": _gate_shut(g) for g in _KEEP_GATES},
}


# --------------------------------------------------------------- profiles
def profile_summary(norms: Sequence[float]) -> dict[str, float]:
    """What the ``through_time`` metrics read from one profile ``‖∂L/∂h_k‖``, ``k`` in processing order.

    ``first`` and ``last``: the norms at the first and last step processed;
    ``fall``: the latest ``k`` with a norm below :data:`FALL_FRACTION` of the
    largest (``-1`` when there is none, ``nan`` when the profile is zero or not
    finite); ``len``: the number of steps.

    Example:
        >>> profile_summary([1e-5, 1e-3, 0.5, 1.0])
        {'first': 1e-05, 'last': 1.0, 'fall': 1.0, 'len': 4.0}
    """
    n = len(norms)
    if n == 0:
        return {"first": math.nan, "last": math.nan, "fall": math.nan, "len": 0.0}
    top = max(norms)
    fall = math.nan
    if math.isfinite(top) and top > 0 and all(math.isfinite(v) for v in norms):
        edge = FALL_FRACTION * top
        fall = float(next((k for k in range(n - 1, -1, -1) if norms[k] < edge), -1))
    return {"first": float(norms[0]), "last": float(norms[-1]), "fall": fall, "len": float(n)}


def downsample(values: Sequence[float], points: int = PROFILE_POINTS
               ) -> tuple[tuple[int, ...], list[float]]:
    """At most ``points`` evenly spaced entries of ``values`` (the first and last included).

    Example:
        >>> downsample([0.0, 1.0, 2.0, 3.0, 4.0], 3)
        ((0, 2, 4), [0.0, 2.0, 4.0])
    """
    n = len(values)
    if n <= points:
        return tuple(range(n)), [float(v) for v in values]
    idx = tuple(sorted({round(i * (n - 1) / (points - 1)) for i in range(points)}))
    return idx, [float(values[i]) for i in idx]
