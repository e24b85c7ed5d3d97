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
``update_ratio_low``      warning   a layer's ‖Δw‖/‖w‖ < 1e-5 (rule of thumb ~1e-3)
``update_ratio_high``     warning   a layer's ‖Δw‖/‖w‖ > 1e-1
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
import statistics
from collections.abc import Sequence
from functools import partial
from typing import Callable, Optional

from gradscope.findings.amp import scaler_skipped
from gradscope.findings.episodes import holding as _now
from gradscope.findings.episodes import resolved as _resolved
from gradscope.findings.nonfinite import nonfinite
from gradscope.findings.remedies import RunFacts, fit_remedy, remedy_text
from gradscope.findings.scan import Run, Scan
from gradscope.findings.thresholds import SEVERITIES, Finding, Thresholds
from gradscope.history import History

__all__ = ["RULES", "analyze", "format_findings"]

# ------------------------------------------------------------------ helpers
def _grew(v: float, *, start: float, by: float) -> bool:
    return v - start >= by


def _pct(v: float) -> str:
    return f"{v:.0%}"


def _layer_numel(history: History) -> dict[str, int]:
    """Parameters per layer, from the parameters' shapes (empty when unknown)."""
    out: dict[str, int] = {}
    for name in history.layers("parameter"):
        info = history.info(name)
        if info.shape is None:
            continue
        layer = info.module or "(root)"
        out[layer] = out.get(layer, 0) + math.prod(info.shape)
    return out


def _has(history: History, layer: str, metric: str) -> bool:
    return metric in history.metrics(layer)


def _family(history: History, layer: str) -> Optional[str]:
    try:
        return history.info(layer).family
    except KeyError:
        return None


def _derived(scan: Scan, key: object, history: History, layers: Sequence[str], metric: str,
             fn: Callable[[list[float]], float], tests: Sequence[Callable[[float], bool]],
             lows: Sequence[bool] = ()) -> list[Run]:
    """Runs of ``fn(row)`` over the new rows of ``layers/metric``, one run per test
    (``lows[i]``: smaller values are worse for test ``i``)."""
    steps, rows = scan.rows(history, key, layers, metric)
    derived = [fn(row) for row in rows]
    lows = tuple(lows) + (False,) * (len(tests) - len(lows))
    runs = [scan.run((key, i), low=low) for i, low in zip(range(len(tests)), lows)]
    for r, bad in zip(runs, tests):
        r.feed(steps, derived, bad)
    if steps:
        scan.run(key).last = steps[-1]
    return runs


Rule = Callable[..., list[Finding]]

# -------------------------------------------------------------------- rules
def _gradient_depth(history: History, t: Thresholds, scan: Optional[Scan] = None) -> list[Finding]:
    """Vanishing or exploding gradients across depth, and exploding growth over time."""
    scan = scan if scan is not None else Scan()
    layers = [n for n in history.layers("layer") if _has(history, n, "grad_norm")]
    if not layers:
        return []
    out = []
    numel = _layer_numel(history)
    first_l, last_l = layers[0], layers[-1]
    if len(layers) >= 2:
        a, b = math.sqrt(numel.get(first_l, 1)), math.sqrt(numel.get(last_l, 1))

        def ratio(row: list[float]) -> float:
            first, last = row[0] / a, row[-1] / b
            ok = math.isfinite(first) and math.isfinite(last) and last > 0
            return first / last if ok else math.nan

        vanish, explode = _derived(
            scan, ("depth", first_l, last_l), history, [first_l, last_l], "grad_norm", ratio,
            (lambda r: r < t.vanishing_ratio, lambda r: r > t.exploding_ratio), (True, False))
        for run, severity, rule, side, effect in (
            (vanish, "warning", "vanishing_gradients", f"below {t.vanishing_ratio:g}×",
             "the early layers barely learn"),
            (explode, "error", "exploding_gradients", f"above {t.exploding_ratio:g}×",
             "gradients grow towards the input"),
        ):
            remedy = remedy_text(rule)
            if run.holds(t.window):
                since, worst, at = _now(run)
                out.append(Finding(
                    severity, rule, first_l, since,
                    f"gradient RMS at the first layer {first_l} is {run.value:.1e}× the last "
                    f"layer's ({last_l}) since step {since} (worst {worst:.1e} at step {at}): "
                    f"{effect}; {remedy}", remedy, run.value, run.step, worst=worst,
                    worst_step=at))
            out += _resolved(run, severity, rule, first_l, f"gradient RMS at the first layer "
                             f"{side} the last layer's ({last_l})", remedy)
    out += _growth(history, t, scan, layers)
    return out


def _growth(history: History, t: Thresholds, scan: Scan, layers: list[str]) -> list[Finding]:
    """The total gradient norm growing far above its value at the start of the run."""
    key = ("growth", tuple(layers))
    base_key = (key, "base")
    start: list[float] = scan.memo.setdefault(base_key, [])

    def growth(row: list[float]) -> float:
        total = math.sqrt(sum(v * v for v in row))
        if len(start) < t.window:
            start.append(total)
            return math.nan
        base = statistics.median(start)
        return total / base if base > 0 and math.isfinite(base) else math.nan

    (run,) = _derived(scan, key, history, layers, "grad_norm", growth,
                      (lambda g: g > t.exploding_growth,))
    remedy = remedy_text("gradient_growth")
    out = _resolved(run, "error", "exploding_gradients", None,
                    f"total gradient norm above {t.exploding_growth:g}× its start", remedy)
    if not run.holds(t.window):
        return out
    base = statistics.median(start)
    since, worst, at = _now(run)
    return [Finding(
        "error", "exploding_gradients", None, since,
        f"total gradient norm grew {run.value:.1e}× since the start ({base:.2e} → "
        f"{run.value * base:.2e}) and has stayed above {t.exploding_growth:g}× since step "
        f"{since}; {remedy}", remedy, run.value, run.step, worst=worst, worst_step=at), *out]


def _saturation(history: History, t: Thresholds, scan: Optional[Scan] = None) -> list[Finding]:
    """Call-sites whose outputs sit at the activation's limits (softmax excluded)."""
    scan = scan if scan is not None else Scan()
    out = []
    remedy = remedy_text("saturation")
    for site in history.layers("activation"):
        fam = _family(history, site)
        if fam == "softmax" or not _has(history, site, "saturation"):
            continue
        run = scan.tail(history, ("saturation", site), site, "saturation",
                        lambda v: v > t.saturation)
        name = f"{fam} " if fam else ""
        out += _resolved(run, "warning", "saturation", site,
                         f"more than {_pct(t.saturation)} of {name}outputs saturated", remedy, _pct)
        if not run.holds(t.window):
            continue
        since, worst, at = _now(run)
        out.append(Finding(
            "warning", "saturation", site, since,
            f"layer {site}: {_pct(run.value)} of {name}outputs saturated since step {since} "
            f"(worst {_pct(worst)} at step {at}; gradients through them nearly vanish); "
            + remedy, remedy, run.value, run.step, worst=worst, worst_step=at))
    return out


def _dead(history: History, t: Thresholds, scan: Optional[Scan] = None) -> list[Finding]:
    """Dead ReLU units, and growth of the dead fraction over time."""
    scan = scan if scan is not None else Scan()
    out = []
    remedy = remedy_text("dead_units")
    for site in history.layers("activation"):
        metric = next((m for m in ("dead_units_window", "dead_units")
                       if _has(history, site, m)), None)
        if metric is None:
            continue
        dead = scan.tail(history, ("dead", site, metric), site, metric,
                         lambda v: v > t.dead_units)
        if dead.first is None:
            continue
        s0, v0 = dead.first
        grew = scan.tail(history, ("dead_growth", site, metric), site, metric,
                         partial(_grew, start=v0, by=t.dead_growth))
        held = _resolved(dead, "warning", "dead_units", site,
                         f"more than {_pct(t.dead_units)} of ReLU units dead", remedy, _pct)
        if dead.holds(t.window):
            since, worst, at = _now(dead)
            start = f" ({_pct(v0)} at step {s0})" if s0 < since else ""
            out.append(Finding(
                "warning", "dead_units", site, since,
                f"layer {site}: {_pct(dead.value)} of ReLU units dead since step {since}"
                f"{start}; " + remedy, remedy, dead.value, dead.step, worst=worst,
                worst_step=at))
        elif grew.holds(t.window):
            since, worst, at = _now(grew)
            out.append(Finding(
                "info", "dead_units_growing", site, since,
                f"layer {site}: dead ReLU units grew from {_pct(v0)} at step {s0} "
                f"to {_pct(grew.value)} at step {grew.step}; if it keeps growing, " + remedy,
                remedy, grew.value - v0, grew.step, worst=worst, worst_step=at))
        # a growth that became dead units is told by the dead_units episode
        spans: list[tuple[float, float]] = [(f.first_step, f.last_step) for f in held]
        now = dead.current()
        if now is not None:
            spans.append((now.first, math.inf))
        out += held + [f for f in _resolved(
            grew, "info", "dead_units_growing", site,
            f"dead ReLU units up by {_pct(t.dead_growth)} or more since step {s0}", remedy, _pct)
            if not any(a <= f.last_step and f.first_step <= b for a, b in spans)]
    return out


def _activation_scale(history: History, t: Thresholds, scan: Optional[Scan] = None
                      ) -> list[Finding]:
    """Activation std collapsing or blowing up from the first call-site to the deepest."""
    scan = scan if scan is not None else Scan()
    sites = [s for s in history.layers("activation")
             if _family(history, s) != "softmax" and _has(history, s, "std")]
    if len(sites) < 2:
        return []
    first, last = sites[0], sites[-1]
    ends: list[float] = scan.memo.setdefault(("scale_ends", first, last), [math.nan, math.nan])

    def ratio(row: list[float]) -> float:
        a, b = ends[:] = row
        return b / a if a > 0 and math.isfinite(a) and math.isfinite(b) else math.nan

    runs = _derived(scan, ("scale", first, last), history, [first, last], "std", ratio,
                    (lambda r: r < t.scale_collapse, lambda r: r > t.scale_blowup), (True, False))
    out = []
    for run, (rule, verb, bound) in zip(runs, (
        ("activation_collapse", "shrinks", f"below {t.scale_collapse:g}×"),
        ("activation_blowup", "grows", f"above {t.scale_blowup:g}×"),
    )):
        remedy = remedy_text(rule)
        out += _resolved(run, "warning", rule, last,
                         f"activation std at {last} {bound} the first call-site's ({first})", remedy)
        if not run.holds(t.window):
            continue
        a, b = ends
        since, worst, at = _now(run)
        out.append(Finding(
            "warning", rule, last, since,
            f"activation std {verb} with depth from {a:.2e} at {first} to {b:.2e} at {last} "
            f"({run.value:.1e}×) since step {since}; {remedy}", remedy, run.value, run.step,
            worst=worst, worst_step=at))
    return out


def _update_ratio(history: History, t: Thresholds, scan: Optional[Scan] = None) -> list[Finding]:
    """Layers whose per-step update is far from ~1e-3 of their weights (one finding per side)."""
    scan = scan if scan is not None else Scan()
    layers = [n for n in history.layers("layer") if _has(history, n, "update_ratio")]
    out = []
    bad: Callable[[float], bool]
    for rule, bad, word in (
        ("update_ratio_low", lambda v: v < t.update_ratio_low, "below"),
        ("update_ratio_high", lambda v: v > t.update_ratio_high, "above"),
    ):
        remedy = remedy_text(rule)
        bound = t.update_ratio_low if word == "below" else t.update_ratio_high
        hits = []
        for layer in layers:
            run = scan.tail(history, (rule, layer), layer, "update_ratio", bad, low=word == "below")
            out += _resolved(run, "warning", rule, layer,
                             f"update/weight ratio ‖Δw‖/‖w‖ {word} {bound:g}", remedy)
            if run.holds(t.window):
                hits.append((layer, _now(run)[0], run.value, run.step))
        if not hits:
            continue
        worst = min(hits, key=lambda h: h[2]) if word == "below" else max(hits, key=lambda h: h[2])
        names = ", ".join(f"{h[0]} ({h[2]:.1e})" for h in hits[:4])
        more = f" and {len(hits) - 4} more" if len(hits) > 4 else ""
        since = min(h[1] for h in hits)
        out.append(Finding(
            "warning", rule, worst[0], since,
            f"update/weight ratio ‖Δw‖/‖w‖ {word} {bound:g} (rule of thumb ~1e-3) in "
            f"{len(hits)} of {len(layers)} layers since step {since}: {names}{more}; {remedy}",
            remedy, worst[2], max(h[3] for h in hits)))
    return out


#: Rule name -> function ``(history, thresholds) -> findings``, applied in this order.
RULES: dict[str, Rule] = {
    "nonfinite": nonfinite,
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

