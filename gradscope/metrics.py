"""Metrics by name: every statistic gradscope records is one :class:`Metric` spec.

A spec says what the statistic means (``doc``), which **reductions** it reads
(computed on the tensor's own device inside a hook, each at most once per call,
see :mod:`gradscope.reductions`), how the host **finishes** it at the flush (a
division by an element or unit count, a ratio, a square root), which activation
**families** have it, and where it is shown: the TensorBoard custom-scalars
**section** and health chart, the ``gradscope report`` **column** and the
dashboard **image**. The hot path, the decoders, the TensorBoard layout,
``gradscope report`` and the figures all read these specs, so adding a metric
is one entry here (plus a reduction in :mod:`gradscope.reductions` if it needs a
new one) and its test.

Kinds (where the values come from):

==============  ==============================================================
``activation``  one activation call: ``y`` (output) and ``x`` (input)
``window``      an activation call-site's unit window, updated at each step's end
``backprop``    the gradient flowing back into a call-site's output, ``∂L/∂y``
``grad_in``     the gradient the activation passes back to its input, ``∂L/∂x``
                (with respect to the pre-activation)
``parameter``   a parameter's gradient and weights (a layer combines its
                parameters as ``aggregate`` says)
``step``        model-wide, once per step (the GradScaler's ``skipped``, ``scale``)
``run``         one value per run and step from that step's per-layer values
                (:func:`gradscope.runlevel.run_values`: ``aggregate`` combines a
                need over the layers, ``finish`` the combined needs); written by
                the TensorBoard writer as ``run/<name>``, first in the layout
``gates``       a recurrent layer's gates and hidden states, replayed on sampled
                steps (:mod:`gradscope.recurrence`)
``through_time`` a recurrent layer's profile ``‖∂L/∂h_t‖`` over its time steps,
                summarised on the host (:func:`gradscope.recurrent_stats.profile_summary`)
==============  ==============================================================

Example:
    >>> from gradscope.metrics import METRICS, for_family
    >>> from gradscope.activations import FAMILIES
    >>> import torch.nn as nn
    >>> METRICS["grad_in_rms"].doc
    'grad_in_norm / sqrt(x.numel()): comparable across widths'
    >>> [m.name for m in for_family(FAMILIES[nn.Tanh], "activation")][-3:]
    ['saturation', 'small_deriv', 'mean_deriv']
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional

from gradscope.activations import ActivationFamily

__all__ = [
    "KINDS",
    "METRICS",
    "SECTIONS",
    "Metric",
    "Shape",
    "by_kind",
    "columns",
    "copies",
    "emitted",
    "for_family",
    "health",
    "layer_values",
    "ratio",
    "register",
    "series_kind",
]

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


# ----------------------------------------------------------------- specs
_SPECS = (
    # -- forward: one activation call ---------------------------------------------
    Metric("mean", "activation", "mean of y over all elements (NaN/Inf propagate)",
           ("sum",), _per_element("sum"), label="activation mean"),
    Metric("std", "activation", "population standard deviation of y (correction=0)",
           ("ssq",), lambda v, s: math.sqrt(v["ssq"] / s.numel) if v["ssq"] >= 0 else math.nan,
           health=2, report=3, image="gradient_flow", label="activation std"),
    Metric("min", "activation", "smallest element of y", ("min",), _value("min")),
    Metric("max", "activation", "largest element of y", ("max",), _value("max")),
    Metric("nonfinite", "activation", "count of NaN or ±Inf elements of y",
           ("nonfinite",), _value("nonfinite"), report=5, empty=0.0),
    Metric("saturation", "activation",
           "fraction of elements within eps of the family's limits (softmax: of rows whose "
           "largest probability is >= 1-eps)",
           ("saturated",), _value("saturated"), _saturating, health=0, report=0,
           image="unit_health", label="saturated outputs"),
    Metric("small_deriv", "activation",
           "fraction of elements whose local derivative f'(x) < delta", ("deriv_small",),
           _per_element("deriv_small"), _differentiable),
    Metric("mean_deriv", "activation",
           "mean of the local derivative f'(x): the factor the chain rule multiplies by here",
           ("deriv_sum",), _per_element("deriv_sum"), _differentiable),
    Metric("zero_frac", "activation", "fraction of elements with y <= 0 (finite: a NaN/Inf "
           "element is not zero)", ("off",), _per_element("off"), _relu),
    Metric("dead_units", "activation",
           "fraction of units (features or channels) that are <= 0 for every sample and "
           "position of the batch (a unit with a NaN/Inf element is non-finite, not dead)",
           ("active_units", "bad_units"), _idle_units, _relu,
           report=1.1, header="dead_units", image="unit_health", label="dead units"),
    Metric("neg_frac", "activation", "fraction of elements in the negative regime x < 0 "
           "(finite elements)", ("off",), _per_element("off"), _negative),
    Metric("neg_units", "activation",
           "fraction of units in the negative regime for every sample and position (a unit "
           "with a NaN/Inf element is non-finite, not negative)",
           ("active_units", "bad_units"), _idle_units, _negative, report=2.1,
           header="neg_units"),
    Metric("nonfinite_units", "activation",
           "fraction of units with a NaN or ±Inf element in the batch (neither dead nor alive)",
           ("bad_units",), _per_unit("bad_units"), _has_units),
    # -- forward: the unit window, at each step's end ------------------------------
    Metric("dead_units_window", "window",
           "fraction of units not positive on any sampled step of the last dead_window steps",
           ("idle_units",), _per_unit("idle_units"), _relu, health=1, report=1.0, header="dead_units", image="unit_health",
           label="dead units over the window"),
    Metric("neg_units_window", "window",
           "fraction of units in the negative regime on every sampled step of the last "
           "dead_window steps", ("idle_units",), _per_unit("idle_units"), _negative, report=2.0,
           header="neg_units"),
    # -- backward: the gradient reaching a call-site's output ------------------------
    Metric("grad_out_norm", "backprop", "L2 norm of ∂L/∂y, the gradient flowing back into y",
           ("norm",), _value("norm"), section="backward"),
    Metric("grad_out_rms", "backprop", "grad_out_norm / sqrt(y.numel()): comparable across widths",
           ("norm",), lambda v, s: v["norm"] / math.sqrt(s.numel) if s.numel else math.nan,
           section="backward", health=3, report=4, image="gradient_flow",
           label="backprop RMS ‖∂L/∂y‖/√n"),
    Metric("grad_out_nonfinite", "backprop", "count of NaN/Inf elements of ∂L/∂y",
           ("nonfinite",), _value("nonfinite"), section="backward", empty=0.0),
    # -- backward: the gradient the activation passes to its input (pre-activation) -----
    Metric("grad_in_norm", "grad_in", "L2 norm of ∂L/∂x, the gradient back-propagated "
           "through the activation to its input (the pre-activation)",
           ("norm",), _value("norm"), section="backward"),
    Metric("grad_in_rms", "grad_in", "grad_in_norm / sqrt(x.numel()): comparable across widths",
           ("norm",), lambda v, s: v["norm"] / math.sqrt(s.numel) if s.numel else math.nan,
           section="backward", label="pre-activation gradient RMS ‖∂L/∂x‖/√n"),
    Metric("grad_in_nonfinite", "grad_in", "count of NaN/Inf elements of ∂L/∂x",
           ("nonfinite",), _value("nonfinite"), section="backward", empty=0.0),
    # -- parameters (and layers: their parameters combined) --------------------------
    Metric("grad_norm", "parameter", "L2 norm of the gradient (a layer: sqrt of the sum of "
           "its parameters' squared norms)", ("grad_norm",), _value("grad_norm"),
           section="backward", health=4, report=0, image="gradient_flow",
           label="gradient norm ‖∇W‖", aggregate="norm"),
    Metric("weight_norm", "parameter", "L2 norm of the weights before the optimizer step",
           ("weight_norm",), _value("weight_norm"), section="update", report=1,
           aggregate="norm"),
    Metric("grad_weight_ratio", "parameter", "grad_norm / weight_norm",
           ("grad_norm", "weight_norm"), _ratio("grad_norm", "weight_norm"),
           section="backward", report=2, header="grad/weight"),
    Metric("grad_nonfinite", "parameter", "count of NaN/Inf gradient elements",
           ("grad_nonfinite",), _value("grad_nonfinite"), section="backward", report=4,
           aggregate="sum"),
    Metric("update_norm", "parameter", "‖w_after - w_before‖ across optimizer.step()",
           ("update_norm",), _value("update_norm"), section="update", aggregate="norm"),
    Metric("update_ratio", "parameter", "update_norm / weight_norm (rule of thumb ~1e-3)",
           ("update_norm", "weight_norm"), _ratio("update_norm", "weight_norm"),
           section="update", health=5, report=3, label="update ratio ‖Δw‖/‖w‖"),
    # -- the step: a GradScaler's verdict and scale (series "scaler") -----------------
    Metric("skipped", "step", "1 when the GradScaler skipped the optimizer step (inf/NaN "
           "gradients at the scale in force), else 0", ("skipped",), _value("skipped"),
           section="update", label="steps skipped by the GradScaler", empty=0.0),
    Metric("scale", "step", "the GradScaler's loss scale during this step's backward",
           ("scale",), _value("scale"), section="update", label="loss scale"),
    # -- recurrent layers: the gradient through time (a profile over t, summarised) ----
    Metric("grad_h_ratio", "through_time",
           "‖∂L/∂h‖ at the first step a layer processes over ‖∂L/∂h‖ at its last (≪ 1: the "
           "gradient vanishes back through time)", ("first", "last"), _ratio("first", "last"),
           section="recurrent", report=0, header="∂L/∂h first/last",
           label="‖∂L/∂h_first‖ / ‖∂L/∂h_last‖"),
    Metric("grad_h_fall", "through_time",
           "the latest step (0-based, in processing order) at which ‖∂L/∂h_t‖ is below 1% of "
           "its largest value over the sequence; -1 when it never is",
           ("fall",), _value("fall"), section="recurrent", report=1, header="falls below 1% at"),
    Metric("grad_h_first", "through_time",
           "‖∂L/∂h‖ at the first step a layer processes (L2 norm over batch and hidden units)",
           ("first",), _value("first"), section="recurrent"),
    Metric("grad_h_last", "through_time", "‖∂L/∂h‖ at the last step a layer processes",
           ("last",), _value("last"), section="recurrent"),
    Metric("seq_len", "through_time", "time steps of the sequence (the longest, when packed)",
           ("len",), _value("len"), section="recurrent", report=1.5, header="steps"),
    # -- recurrent layers: hidden states and gates, replayed on sampled steps ---------
    Metric("hidden_saturation", "gates",
           "fraction of hidden-state elements with |h| > 1 - eps (tanh RNN, GRU, LSTM "
           "without projection)", ("hidden_saturated",), _per_element("hidden_saturated"),
           section="recurrent", report=2, header="saturated h", label="saturated hidden state"),
    Metric("forget_open", "gates",
           "LSTM: fraction of forget gates f >= 1 - eps (the cell state is kept: remembering)",
           ("forget_open",), _per_element("forget_open"), section="recurrent", report=3,
           header="remembering", label="forget gates >= 1-eps (remembering)"),
    Metric("forget_shut", "gates",
           "LSTM: fraction of forget gates f <= eps (the cell state is dropped: forgetting)",
           ("forget_shut",), _per_element("forget_shut"), section="recurrent", report=4,
           header="forgetting", label="forget gates <= eps (forgetting)"),
    Metric("forget_mean", "gates", "LSTM: mean forget gate f", ("forget_sum",),
           _per_element("forget_sum"), section="recurrent", report=5, header="keep gate mean"),
    Metric("input_mean", "gates", "LSTM: mean input gate i", ("input_sum",),
           _per_element("input_sum"), section="recurrent", report=6, header="input/reset mean"),
    Metric("output_mean", "gates", "LSTM: mean output gate o", ("output_sum",),
           _per_element("output_sum"), section="recurrent", report=7),
    Metric("update_open", "gates",
           "GRU: fraction of update gates z >= 1 - eps (the previous state is kept: remembering)",
           ("update_open",), _per_element("update_open"), section="recurrent", report=3.1,
           header="remembering"),
    Metric("update_shut", "gates",
           "GRU: fraction of update gates z <= eps (the state is replaced: forgetting)",
           ("update_shut",), _per_element("update_shut"), section="recurrent", report=4.1,
           header="forgetting"),
    Metric("update_mean", "gates", "GRU: mean update gate z (1 keeps the previous state)",
           ("update_sum",), _per_element("update_sum"), section="recurrent", report=5.1,
           header="keep gate mean"),
    Metric("reset_mean", "gates", "GRU: mean reset gate r", ("reset_sum",),
           _per_element("reset_sum"), section="recurrent", report=6.1, header="input/reset mean"),
    # -- run: one value per run and step, over the layers recorded at that step -------
    Metric("worst_saturation", "run", "largest saturation over the call-sites",
           ("saturation",), _value("saturation"), section="run", report=0, aggregate="max",
           header="sat", label="worst saturation over call-sites"),
    Metric("worst_dead_units", "run", "largest dead_units_window over the call-sites",
           ("dead_units_window",), _value("dead_units_window"), section="run", report=1,
           aggregate="max", header="dead", label="worst dead units over call-sites"),
    Metric("backprop_log10_ratio", "run",
           "log10 of grad_out_rms at the first call-site over the last (network order): 0 "
           "even, -2 the gradient reaching the input is 100x weaker (needs two call-sites)",
           ("grad_out_rms",), _log10("grad_out_rms"), section="run", report=2,
           aggregate="first/last", header="log10 bp", label="log10 backprop RMS first/last"),
    Metric("min_update_ratio", "run", "smallest update_ratio over the layers",
           ("update_ratio",), _value("update_ratio"), section="run", report=3, aggregate="min",
           header="min upd", label="smallest update ratio over layers"),
    Metric("max_update_ratio", "run", "largest update_ratio over the layers",
           ("update_ratio",), _value("update_ratio"), section="run", report=4, aggregate="max",
           header="max upd", label="largest update ratio over layers"),
    Metric("nonfinite_count", "run",
           "NaN/Inf elements at this step: nonfinite and grad_out_nonfinite summed over the "
           "call-sites, plus grad_nonfinite over the layers",
           ("nonfinite", "grad_out_nonfinite", "grad_nonfinite"), _total, section="run",
           report=5, aggregate="sum", header="nonfinite", label="non-finite elements", empty=0.0),
)

#: Every metric by name, in the order they are recorded.
METRICS: dict[str, Metric] = {m.name: m for m in _SPECS}


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

