"""The machinery of a metric: the :class:`Metric` spec, its kinds and sections, and the
helpers that finish a value on the host (``_per_element``, ``_ratio``, ...) and pick the
activation families that have it. The specs themselves are in
:mod:`gradscope.metrics.catalogue`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

from gradscope.activations import ActivationFamily

__all__ = ["KINDS", "RUN_AGGREGATES", "SECTIONS", "Finish", "Metric", "Shape", "copies", "ratio"]

#: Where a metric's values come from (see the module docstring).
KINDS = ("activation", "window", "backprop", "grad_in", "parameter", "step", "run", "gates",
         "through_time")
#: Dashboard sections: ``run`` (the ``run`` metrics) first, then the per-layer health
#: section (the metrics with a ``health`` position), then these in order.
SECTIONS = ("run", "forward", "backward", "update", "recurrent")
#: How a ``run`` metric combines a need's values over the layers (network order).
RUN_AGGREGATES = ("max", "min", "sum", "first/last")
_RECURRENT = ("gates", "through_time")


class Shape(NamedTuple):
    """What the host needs besides the reduced values: the element and unit counts."""

    numel: int
    units: int = 0


Finish = Callable[[Mapping[str, float], Shape], float]


def _everyone(family: Optional[ActivationFamily]) -> bool:
    return True


@dataclass(frozen=True)
class Metric:
    """One named statistic.

    Args:
        name: the series name (``"dead_units"``), as in the history and TensorBoard.
        kind: one of :data:`KINDS`.
        doc: the exact definition, one line (the README's tables say the same).
        needs: the reductions it reads (:mod:`gradscope.reductions`) or, for
            ``parameter`` metrics, the per-parameter values it is computed from.
        finish: ``(values, shape) -> value`` on the host; ``values`` maps each of
            ``needs`` to its reduced value (``run`` metrics: its value combined
            over the layers; ``shape.numel`` is then the number of layers read).
        families: which activation families have it (``activation``/``window``).
        section: the dashboard section (one of :data:`SECTIONS`; ``"run"`` exactly
            for ``run`` metrics).
        health: its position in the dashboard's health section, if it is there.
        report: its column's position in ``gradscope report`` tables (``run``
            metrics: in the ranked table of runs), if shown.
        header: the column header when not ``name``; metrics sharing a header
            share a column, which shows the first one (by ``report``) a layer has.
        image: the dashboard image that draws it (``"gradient_flow"``, ``"unit_health"``).
        label: a short human label for charts.
        aggregate: for ``parameter`` metrics, how a layer combines its parameters'
            values: ``"norm"`` (square root of the sum of squares), ``"sum"``, or
            ``None`` (computed by ``finish`` from the layer's combined ``needs``).
            For ``run`` metrics, how each need combines over the layers, one of
            :data:`RUN_AGGREGATES` (``"first/last"``: first over last in network
            order, at least two layers). ``max`` and ``min`` are NaN when a value is.
        empty: the value on an empty tensor (no element: nothing to count).
        reduce: for a statistic whose device side no other metric shares, its own
            reduction ``call -> part`` (see :mod:`gradscope.reductions`), available
            to ``needs`` under the metric's name. Then the spec is the whole metric.
        combine: how that own reduction combines across the ranks of
            ``torch.distributed`` (an op of :data:`gradscope.reductions.COMBINE`);
            without one, its values under several ranks are each rank's own.
    """

    name: str
    kind: str
    doc: str
    needs: tuple[str, ...]
    finish: Finish
    families: Callable[[Optional[ActivationFamily]], bool] = _everyone
    section: str = "forward"
    health: Optional[int] = None
    report: Optional[float] = None
    header: Optional[str] = None
    image: Optional[str] = None
    label: str = ""
    aggregate: Optional[str] = None
    empty: float = math.nan
    reduce: Optional[Callable[[Any], Any]] = None
    combine: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"Metric({self.name!r}, kind={self.kind!r}): kind must be one of {KINDS}")
        if self.section not in SECTIONS:
            raise ValueError(f"Metric({self.name!r}, section={self.section!r}): one of {SECTIONS}")
        if (self.kind == "run") != (self.section == "run"):
            raise ValueError(f"Metric({self.name!r}, kind={self.kind!r}, section="
                             f"{self.section!r}): section 'run' is for kind 'run' only, and "
                             "kind 'run' needs it")
        allowed = RUN_AGGREGATES if self.kind == "run" else (None, "norm", "sum")
        if self.aggregate not in allowed:
            raise ValueError(f"Metric({self.name!r}, aggregate={self.aggregate!r}): "
                             f"one of {allowed} for kind {self.kind!r}")


# ------------------------------------------------------------- finishing
def _per_element(need: str) -> Finish:
    return lambda v, s: v[need] / s.numel


def _off_fraction(need: str) -> Finish:
    return lambda v, s: 1.0 - v[need] / s.numel


def _idle_units(v: Mapping[str, float], s: Shape) -> float:
    """Units neither on nor non-finite, as a fraction (dead / negative units)."""
    return (s.units - v["active_units"] - v["bad_units"]) / max(s.units, 1)


def _per_unit(need: str) -> Finish:
    return lambda v, s: v[need] / max(s.units, 1)


def _log10(need: str) -> Finish:
    def finish(v: Mapping[str, float], s: Shape) -> float:
        x = v[need]
        if x > 0:
            return math.log10(x)  # inf stays inf
        return -math.inf if x == 0 else math.nan

    return finish


def _total(v: Mapping[str, float], s: Shape) -> float:
    return sum(v.values())


def _value(need: str) -> Finish:
    def finish(v: Mapping[str, float], s: Shape) -> float:
        return v[need]

    finish.copies = need  # type: ignore[attr-defined]  # decoders copy the value as it is
    return finish


def copies(metric: Metric) -> Optional[str]:
    """The reduction a metric's value is, unchanged (``None`` when ``finish`` computes)."""
    return getattr(metric.finish, "copies", None)


def _ratio(a: str, b: str) -> Finish:
    return lambda v, s: ratio(v[a], v[b])


def ratio(a: float, b: float) -> float:
    """``a / b`` with ``x / 0 = inf``, ``0 / 0 = nan`` and ``x / ±inf = nan``.

    A denominator that is infinite is a norm that overflowed ``float32`` (or a weight
    that is not finite, said by other metrics): the ratio is unknown, not 0.
    """
    if math.isinf(b):
        return math.nan
    if b == 0:
        return math.inf if a else math.nan
    return a / b


def _saturating(f: Optional[ActivationFamily]) -> bool:
    return f is not None and f.saturation is not None


def _differentiable(f: Optional[ActivationFamily]) -> bool:
    return f is not None and f.derivative is not None


def _relu(f: Optional[ActivationFamily]) -> bool:
    return f is not None and f.regime == "relu"


def _negative(f: Optional[ActivationFamily]) -> bool:
    return f is not None and f.regime == "negative"


def _has_units(f: Optional[ActivationFamily]) -> bool:
    return _relu(f) or _negative(f)


