"""Looking metrics up: by kind, by family, the dashboard's health section, the report's
columns; :func:`register` adds one at run time; :func:`layer_values` combines a layer's
parameters."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Optional

from gradscope.activations import ActivationFamily
from gradscope.metrics.catalogue import METRICS
from gradscope.metrics.spec import _RECURRENT, Metric, Shape

__all__ = ["by_kind", "columns", "emitted", "for_family", "health", "layer_values", "register",
           "series_kind"]


def register(metric: Metric) -> Metric:
    """Add (or replace) a metric; monitors created afterwards record it.

    Example:
        >>> import torch
        >>> spec = register(Metric(
        ...     "abs_mean", "activation", "mean of |y|", ("abs_mean",),
        ...     lambda v, s: v["abs_mean"] / s.numel, reduce=lambda c: c.y.abs().sum()))
        >>> del METRICS["abs_mean"]
    """
    if not isinstance(metric, Metric):
        raise TypeError(f"register({metric!r}): pass a gradscope.metrics.Metric")
    METRICS[metric.name] = metric
    return metric


# ---------------------------------------------------------------- lookups
def by_kind(*kinds: str) -> list[Metric]:
    """The metrics of these kinds, in registry order."""
    return [m for m in METRICS.values() if m.kind in kinds]


def for_family(family: Optional[ActivationFamily], kind: str) -> list[Metric]:
    """The metrics of ``kind`` that a call-site of ``family`` gets."""
    return [m for m in METRICS.values() if m.kind == kind and m.families(family)]


def series_kind(metric: str) -> Optional[str]:
    """The series a metric has: ``"activation"`` (call-sites), ``"layer"``, ``"step"``, ``"run"`` or ``"recurrent"``."""
    m = METRICS.get(metric)
    if m is None:
        return None
    if m.kind in _RECURRENT:
        return "recurrent"
    return {"parameter": "layer", "run": "run", "step": "step"}.get(m.kind, "activation")


def health() -> list[Metric]:
    """The per-layer health section's metrics, in order."""
    return sorted((m for m in METRICS.values() if m.health is not None),
                  key=lambda m: m.health)  # type: ignore[arg-type,return-value]


def columns(kind: str) -> list[tuple[str, tuple[str, ...]]]:
    """``gradscope report`` columns of a series kind: ``(header, candidate metrics)``.

    Example:
        >>> columns("activation")[1]
        ('dead_units', ('dead_units_window', 'dead_units'))
    """
    shown = [m for m in METRICS.values() if m.report is not None and series_kind(m.name) == kind]
    shown.sort(key=lambda m: m.report)  # type: ignore[arg-type,return-value]
    out: dict[str, list[str]] = {}
    for m in shown:
        out.setdefault(m.header or m.name, []).append(m.name)
    return [(h, tuple(c)) for h, c in out.items()]


# ------------------------------------------------------- layer aggregates
def layer_values(values: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """A layer's parameter metrics from its parameters' values.

    ``values`` maps a parameter metric to the values of the layer's parameters
    (one per parameter, all at one step). Metrics with an ``aggregate`` combine
    them; the others are recomputed by ``finish`` from the combined values.

    Example:
        >>> layer_values({"grad_norm": [3.0, 4.0], "weight_norm": [10.0, 0.0]})
        {'grad_norm': 5.0, 'weight_norm': 10.0, 'grad_weight_ratio': 0.5}
    """
    combined, derived = _parameter_specs()
    out: dict[str, float] = {}
    for name, how in combined:
        vs = values.get(name)
        if vs is not None:
            out[name] = math.sqrt(sum(v * v for v in vs)) if how == "norm" else sum(vs)
    for m in derived:
        if all(n in out for n in m.needs):
            out[m.name] = m.finish(out, _NO_SHAPE)
    return out


_NO_SHAPE = Shape(0)
_param_cache: dict[tuple[str, ...], tuple[list[tuple[str, str]], list[Metric]]] = {}


def _parameter_specs() -> tuple[list[tuple[str, str]], list[Metric]]:
    """Parameter metrics that combine across a layer, and those derived from them (cached)."""
    key = tuple(METRICS)
    got = _param_cache.get(key)
    if got is None:
        specs = by_kind("parameter")
        got = _param_cache[key] = ([(m.name, m.aggregate) for m in specs if m.aggregate],
                                   [m for m in specs if m.aggregate is None])
    return got


def emitted(parts: Iterable[str], context: Iterable[str] = ()) -> list[Metric]:
    """Parameter metrics computable from ``parts`` (+ ``context``) that read at least one part."""
    have, new = set(parts) | set(context), set(parts)
    return [m for m in by_kind("parameter") if set(m.needs) <= have and set(m.needs) & new]

