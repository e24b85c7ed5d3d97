"""The rules that turn a :class:`gradscope.History` into diagnoses with remedies.

:func:`analyze` applies every rule of :data:`RULES` and returns a list of
:class:`Finding` (severity, rule, layer, first step seen, a one-line message with
the usual remedy). The thresholds are the fields of :class:`Thresholds`; each is
documented there and can be changed (``Thresholds(dead_units=0.5)``).

A condition must hold on ``Thresholds.window`` recorded steps in a row of a series
to fire (one bad batch is not a finding, and a series needs at least ``window``
records), and ``first_step`` is where its episode began ("dead since step 400").
The episode resolves when the condition fails on ``window`` steps in a row: the
finding stays, marked ``resolved``, with the steps it held over and its worst value
(:mod:`gradscope.findings.episodes`). ``nonfinite`` fires on the first NaN/Inf.

The rules read a history through a :class:`~gradscope.findings.scan.Scan`: the
findings sink keeps one across flushes, so each flush reads only the new points.

========================  ========  ===============================================
rule                      severity  fires when (default thresholds)
========================  ========  ===============================================
``nonfinite``             error     any NaN/Inf in activations, back-propagated
                                    gradients, parameter gradients, the model's output
                                    or weights; names the first layer it appeared at
``exploding_gradients``   error     first-layer gradient RMS > 100× the last layer's,
                                    or the total gradient norm > 100× its start
``vanishing_gradients``   warning   first-layer gradient RMS < 0.01× the last layer's
``saturation``            warning   > 30% of a call-site's outputs saturated
                                    (sigmoid, tanh, softsign, hardtanh, relu6)
``dead_units``            warning   > 30% of a ReLU call-site's units dead
``dead_units_growing``    info      dead fraction up by ≥ 0.2 since the first record
``activation_collapse``   warning   activation std at the deepest call-site < 0.01×
                                    the first call-site's
``activation_blowup``     warning   ... > 100× the first call-site's
``update_ratio_low``      warning   a layer's ‖Δw‖/‖w‖ < 1e-5 (rule of thumb ~1e-3),
                                    judged from 100 steps after its first record on
``update_ratio_high``     warning   a layer's ‖Δw‖/‖w‖ > 1e-1, from 100 steps on
``scaler_skipped``        info      a GradScaler skipped steps (inf/NaN gradients at
                                    the scale in force; the ``nonfinite`` rule ignores
                                    the gradients of those steps); a warning when it
                                    skipped the last :data:`gradscope.findings.amp.SKIPPED_RUN` steps in a row
========================  ========  ===============================================

Gradient RMS is a layer's gradient norm divided by the square root of its number
of parameters, so that wide and narrow layers compare fairly.

Example:
    >>> from gradscope.history import History, LayerInfo
    >>> h = History()
    >>> h.add_layer(LayerInfo("3", kind="activation", order=0, type="ReLU", family="relu"))
    >>> for step, dead in enumerate([0.05, 0.05, 0.4, 0.7, 0.71]):
    ...     h.add(step * 100, "3", "dead_units", dead)
    >>> [f.message.split(";")[0] for f in analyze(h)]
    ['layer 3: 71% of ReLU units dead since step 200 (5% at step 0)']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Optional

from gradscope.findings.amp import scaler_skipped, skipped_steps
from gradscope.findings.forward import _activation_scale, _dead, _saturation
from gradscope.findings.gradients import _gradient_depth, _update_ratio
from gradscope.findings.remedies import RunFacts, fit_remedy
from gradscope.findings.scan import Scan, _has
from gradscope.findings.thresholds import SEVERITIES, Finding, Thresholds
from gradscope.history import History

__all__ = ["RULES", "analyze", "format_findings"]

Rule = Callable[..., list[Finding]]

_NONFINITE_REMEDY = ("lower the learning rate, clip gradients (torch.nn.utils.clip_grad_norm_), "
                     "look for log(0) or division by zero in the loss, and under fp16 use a "
                     "GradScaler or bf16")
#: Where a non-finite value can show: (kind, metric, where); the ``*_check`` metrics
#: come from the every-step check of unsampled steps.
_NONFINITE_SERIES = (("activation", "nonfinite", "forward"),
                     ("activation", "nonfinite_check", "forward"),
                     ("step", "output_nonfinite", "output"),
                     ("activation", "grad_out_nonfinite", "backward"),
                     ("layer", "grad_nonfinite", "parameter"),
                     ("layer", "grad_nonfinite_check", "parameter"),
                     ("layer", "weight_norm", "weights"))


# -------------------------------------------------------------------- rules
def _nonfinite(history: History, t: Thresholds, scan: Optional[Scan] = None) -> list[Finding]:
    """The first step with a non-finite value, and the layer it appeared at first.

    Reads each series' first alarm (:meth:`History.alarm`, kept through thinning):
    its cost is the number of series, not of values. Steps a GradScaler skipped
    (inf gradients are expected there) do not count for gradients; only then is
    the series read further, for its first bad value at a step that was not skipped.
    """
    found: list[tuple[int, str, str, str]] = []
    skipped = skipped_steps(history)
    for kind, metric, where in _NONFINITE_SERIES:
        for layer in history.layers(kind):
            if not _has(history, layer, metric):
                continue
            if scan is not None:
                scan.reads += 1
            alarm = history.alarm(layer, metric)
            if alarm is None:
                continue
            if alarm[0] in skipped and where in ("backward", "parameter"):
                steps, values = history.series(layer, metric)
                later = [s for s, v in zip(steps, values)
                         if s not in skipped and (v > 0 or math.isnan(v))]
                if not later:
                    continue
                alarm = (later[0], *alarm[1:])
            found.append((alarm[0], layer, where, metric))
    if not found:
        return []
    first = min(s for s, *_ in found)
    hits: dict[str, list[tuple[str, str]]] = {"forward": [], "output": [], "backward": [],
                                              "parameter": [], "weights": []}
    for s, layer, where, metric in found:
        if s == first:
            hits[where].append((layer, metric))
    if hits["forward"]:
        (layer, metric), what = hits["forward"][0], "in the forward pass (activations)"
    elif hits["backward"]:
        # The backward pass runs from the output: the deepest call-site sees it first.
        (layer, metric), what = hits["backward"][-1], "in the backward pass (gradients reaching it)"
    elif hits["parameter"]:
        (layer, metric), what = hits["parameter"][-1], "in parameter gradients"
    elif hits["output"]:  # neither an activation output nor a gradient was
        (layer, metric), what = hits["output"][0], ("in the model's output (no activation "
                                                    "output or gradient was)")
    else:
        (layer, metric), what = hits["weights"][0], "in the weights"
    how = (" (an unsampled step: found by the every-step check, which sees that a value is "
           "not finite but does not count them)") if metric.endswith("_check") else ""
    return [Finding("error", "nonfinite", layer, first,
                    f"first NaN/Inf at step {first}{how} {what}, at layer {layer}; "
                    f"{_NONFINITE_REMEDY}", _NONFINITE_REMEDY, last_step=first)]


#: Rule name -> function ``(history, thresholds) -> findings``, applied in this order.
RULES: dict[str, Rule] = {
    "nonfinite": _nonfinite,
    "gradients": _gradient_depth,
    "saturation": _saturation,
    "dead_units": _dead,
    "activation_scale": _activation_scale,
    "update_ratio": _update_ratio,
    "scaler_skipped": scaler_skipped,
}


def analyze(history: History, thresholds: Optional[Thresholds] = None, *,
            scan: Optional[Scan] = None, facts: Optional[RunFacts] = None) -> list[Finding]:
    """Apply every rule to ``history``; findings that hold now first, then the resolved
    ones (each sorted by severity, then first step).

    Args:
        history: a monitor's :attr:`~gradscope.Monitor.history` (or one read back
            from a TensorBoard run by ``gradscope report``).
        thresholds: the :class:`Thresholds` to use; the documented defaults when ``None``.
        scan: what earlier calls with the same thresholds read of this history
            (:class:`~gradscope.findings.scan.Scan`); then only new points are read.
            ``None`` reads the whole history.
        facts: what the run already applies (optimizer, normalisation, weight
            scales: :class:`~gradscope.findings.remedies.RunFacts`, measured by
            ``watch()``); the remedies leave it out and say it. The activation
            families and normalisation layers are read from ``history`` too.

    Returns:
        The findings that hold now and those that held before (``resolved``); an
        empty list for a healthy run.
    """
    if thresholds is None:
        thresholds = Thresholds()
    elif not isinstance(thresholds, Thresholds):
        raise TypeError(f"analyze(thresholds={thresholds!r}): pass a gradscope.findings."
                        "Thresholds or None for the defaults")
    scan = scan if scan is not None else Scan()
    scan.bind(history, thresholds.window)
    found: list[Finding] = []
    for rule in RULES.values():
        found.extend(rule(history, thresholds, scan))
    facts = RunFacts.of_history(history, facts)
    found = [fit_remedy(f, facts) for f in found]
    order = {n: i for i, n in enumerate(history.layers())}
    found.sort(key=lambda f: (f.resolved, SEVERITIES.index(f.severity), f.first_step,
                              order.get(f.layer or "", -1)))
    return found


def format_findings(findings: Sequence[Finding], *, limit: Optional[int] = None) -> str:
    """Findings as text, one line each (``limit`` lines at most, then a count)."""
    if not findings:
        return "no findings"
    shown = list(findings)[:limit] if limit is not None else list(findings)
    lines = [f"  {f.severity:<7} {f.rule:<20} {f.message}" for f in shown]
    if len(findings) > len(shown):
        lines.append(f"  ... and {len(findings) - len(shown)} more (monitor.findings())")
    return "\n".join(lines)

