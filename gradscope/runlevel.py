"""Run-level values: one number per run and step from that step's per-layer values.

The ``run`` metrics of :mod:`gradscope.metrics` (worst saturation, worst dead
units, the first/last back-propagated gradient ratio, the smallest and largest
update ratio, the non-finite count) summarise a whole network in one series, so
a dashboard of 30 runs draws 30 lines per chart. Both functions are pure: the
TensorBoard writer calls :func:`run_records` on each flush's records, and
``gradscope report`` calls :func:`run_values` on a run read back.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Callable, Optional

from gradscope.metrics import Shape, by_kind, ratio, series_kind

__all__ = ["run_records", "run_values"]


def _most(pick: Callable[[Sequence[float]], float]) -> Callable[[Sequence[float]], Optional[float]]:
    return lambda vs: math.nan if any(math.isnan(v) for v in vs) else pick(vs)


_OVER: dict[str, Callable[[Sequence[float]], Optional[float]]] = {
    "max": _most(max), "min": _most(min), "sum": lambda vs: math.fsum(vs),
    "first/last": lambda vs: ratio(vs[0], vs[-1]) if len(vs) > 1 else None,
}


def run_values(values: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """The ``run`` metrics at one step from that step's per-layer values.

    ``values`` maps a per-layer metric to its values over the series of its kind
    (call-sites for activation metrics, layers, not parameters, for parameter
    metrics), in network order. A run metric is left out when none of its needs
    has a value (or ``first/last`` has one layer).

    Example:
        >>> v = run_values({"saturation": [0.1, 0.4], "grad_out_norm": [1e-3, 1e-1],
        ...                 "update_ratio": [1e-4, 2e-3], "nonfinite": [0, 2]})
        >>> v["worst_saturation"], v["backprop_log10_ratio"], v["max_update_ratio"]
        (0.4, -2.0, 0.002)
        >>> v["nonfinite_count"], "worst_dead_units" in v
        (2.0, False)
    """
    out: dict[str, float] = {}
    for m in by_kind("run"):
        over, combined, read = _OVER[m.aggregate or "sum"], {}, 0
        for need in m.needs:
            vs = values.get(need)
            if vs:
                c = over(vs)
                if c is not None:
                    combined[need], read = c, max(read, len(vs))
        if combined:
            out[m.name] = m.finish(combined, Shape(read))
    return out


def run_records(records: Iterable[tuple[int, str, str, float]],
                kinds: Mapping[str, str]) -> list[tuple[int, str, float]]:
    """``(step, run metric, value)`` for every step of ``records`` (one flush's).

    ``kinds`` maps each series name to its kind (``"activation"``, ``"layer"``,
    ``"parameter"``) in network order; a need is read from the series of its own
    kind only (``grad_norm`` of layers, not of their parameters).

    Example:
        >>> recs = [(0, "fc1", "update_ratio", 1e-3), (0, "fc1.weight", "update_ratio", 9.0),
        ...         (0, "fc2", "update_ratio", 1e-2), (5, "fc1", "update_ratio", 2e-3)]
        >>> [r for r in run_records(recs, {"fc1": "layer", "fc1.weight": "parameter",
        ...                                "fc2": "layer"}) if r[1] == "max_update_ratio"]
        [(0, 'max_update_ratio', 0.01), (5, 'max_update_ratio', 0.002)]
    """
    wanted = {n: series_kind(n) for m in by_kind("run") for n in m.needs}
    rank = {n: i for i, n in enumerate(kinds)}
    steps: dict[int, dict[str, list[tuple[int, float]]]] = {}
    for step, layer, metric, value in records:
        kind = wanted.get(metric)
        if kind is not None and kinds.get(layer) == kind:
            steps.setdefault(step, {}).setdefault(metric, []).append((rank[layer], value))
    out = []
    for step in sorted(steps):
        values = {m: [v for _, v in sorted(pairs)] for m, pairs in steps[step].items()}
        out += [(step, name, v) for name, v in run_values(values).items()]
    return out
