"""The rules that turn a :class:`gradscope.History` into diagnoses with remedies.

:func:`analyze` applies every rule of :data:`RULES` and returns a list of
:class:`Finding` (severity, rule, layer, first step seen, a one-line message with
the usual remedy). The thresholds are the fields of :class:`Thresholds`; each is
documented there and can be changed (``Thresholds(dead_units=0.5)``).

A condition must hold on the last ``Thresholds.window`` recorded steps of a series
to fire (one bad batch is not a finding), and ``first_step`` is where the current
uninterrupted run of bad steps began ("dead since step 400").

========================  ========  ===============================================
rule                      severity  fires when (default thresholds)
========================  ========  ===============================================
``nonfinite``             error     any NaN/Inf in activations, back-propagated
                                    gradients, parameter gradients or weights; names
                                    the first layer it appeared at
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
from typing import Any, Callable, Optional, TypeVar

from gradscope.findings.amp import scaler_skipped, skipped_steps
from gradscope.findings.thresholds import SEVERITIES, Finding, Thresholds
from gradscope.history import History

__all__ = ["RULES", "analyze", "format_findings"]

# ------------------------------------------------------------------ helpers
_T = TypeVar("_T")


class _Lazy(Sequence[_T]):
    """A derived series computed on demand: rules walk back from the end, not the whole run."""

    def __init__(self, n: int, fn: Callable[[int], _T]) -> None:
        self._n, self._fn = n, fn

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self._fn(j) for j in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._fn(i)


def _since(steps: Sequence[int], values: Sequence[Any], bad: Callable[[Any], bool],
           window: int) -> Optional[int]:
    """Start of the trailing run of bad values, if it covers the last ``window`` records.

    Walks back from the last record, so its cost is the length of that run, not of the run.
    """
    n = len(values)
    if n == 0 or not bad(values[-1]):
        return None
    i = n - 1
    while i > 0 and bad(values[i - 1]):
        i -= 1
    if n - i < min(window, n):
        return None
    return steps[i]


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


def _aligned(history: History, layers: Sequence[str], metric: str
             ) -> tuple[list[int], Sequence[list[float]]]:
    """Steps at which every layer has ``metric``, and the values (one row per step)."""
    if not layers:
        return [], []
    series = [history.series(n, metric) for n in layers]
    steps = series[0][0]
    if all(st == steps for st, _ in series):  # the usual case: recorded at the same steps
        cols = [vs for _, vs in series]
        return steps, _Lazy(len(steps), lambda i: [c[i] for c in cols])
    maps = [dict(zip(st, vs)) for st, vs in series]
    steps = [s for s in steps if all(s in d for d in maps)]
    return steps, [[d[s] for d in maps] for s in steps]


def _has(history: History, layer: str, metric: str) -> bool:
    return metric in history.metrics(layer)


def _family(history: History, layer: str) -> Optional[str]:
    try:
        return history.info(layer).family
    except KeyError:
        return None


Rule = Callable[[History, Thresholds], list[Finding]]


# -------------------------------------------------------------------- rules
def _nonfinite(history: History, t: Thresholds) -> list[Finding]:
    """The first step with a non-finite value, and the layer it appeared at first."""
    first: Optional[int] = None
    hits: dict[str, list[str]] = {"forward": [], "backward": [], "parameter": [], "weights": []}
    checks = [("activation", "nonfinite", "forward"), ("activation", "grad_out_nonfinite", "backward"),
              ("layer", "grad_nonfinite", "parameter"), ("layer", "weight_norm", "weights")]
    found: list[tuple[int, str, str]] = []
    skipped = skipped_steps(history)  # a GradScaler's skipped steps: inf gradients are expected
    for kind, metric, where in checks:
        for layer in history.layers(kind):
            if not _has(history, layer, metric):
                continue
            steps, values = history.series(layer, metric)
            total = sum(values)  # NaN/Inf or a positive count shows in the sum
            if metric == "weight_norm" and math.isfinite(total):
                continue
            if metric != "weight_norm" and not (total > 0 or math.isnan(total)):
                continue
            for s, v in zip(steps, values):
                bad = (not math.isfinite(v)) if metric == "weight_norm" else (v > 0 or math.isnan(v))
                if bad and not (s in skipped and where in ("backward", "parameter")):
                    found.append((s, layer, where))
                    break
    if not found:
        return []
    first = min(s for s, _, _ in found)
    for s, layer, where in found:
        if s == first:
            hits[where].append(layer)
    remedy = ("lower the learning rate, clip gradients (torch.nn.utils.clip_grad_norm_), look "
              "for log(0) or division by zero in the loss, and under fp16 use a GradScaler or bf16")
    if hits["forward"]:
        layer, what = hits["forward"][0], "in the forward pass (activations)"
    elif hits["backward"]:
        # The backward pass runs from the output: the deepest call-site sees it first.
        layer, what = hits["backward"][-1], "in the backward pass (gradients reaching it)"
    elif hits["parameter"]:
        layer, what = hits["parameter"][-1], "in parameter gradients"
    else:
        layer, what = hits["weights"][0], "in the weights"
    return [Finding("error", "nonfinite", layer, first,
                    f"first NaN/Inf at step {first} {what}, at layer {layer}; {remedy}",
                    remedy, last_step=first)]


def _gradient_depth(history: History, t: Thresholds) -> list[Finding]:
    """Vanishing or exploding gradients across depth, and exploding growth over time."""
    layers = [n for n in history.layers("layer") if _has(history, n, "grad_norm")]
    if not layers:
        return []
    out = []
    steps, rows = _aligned(history, layers, "grad_norm")
    numel = _layer_numel(history)
    if len(layers) >= 2 and steps:
        scale = [math.sqrt(numel.get(n, 1)) for n in layers]

        def ratio(i: int) -> float:
            row = rows[i]
            first, last = row[0] / scale[0], row[-1] / scale[-1]
            ok = math.isfinite(first) and math.isfinite(last) and last > 0
            return first / last if ok else math.nan

        ratios = _Lazy(len(steps), ratio)
        first_l, last_l = layers[0], layers[-1]
        since = _since(steps, ratios, lambda r: r < t.vanishing_ratio, t.window)
        if since is not None:
            r = ratios[-1]
            remedy = ("use ReLU/LeakyReLU instead of sigmoid/tanh, Xavier/He initialisation, "
                      "BatchNorm or residual connections; Adam/RMSProp rescale small gradients")
            out.append(Finding(
                "warning", "vanishing_gradients", first_l, since,
                f"gradient RMS at the first layer {first_l} is {r:.1e}× the last layer's "
                f"({last_l}) since step {since}: the early layers barely learn; {remedy}",
                remedy, r, steps[-1]))
        since = _since(steps, ratios, lambda r: r > t.exploding_ratio, t.window)
        if since is not None:
            r = ratios[-1]
            remedy = ("lower the learning rate, clip gradients (clip_grad_norm_), use a smaller "
                      "initialisation or BatchNorm")
            out.append(Finding(
                "error", "exploding_gradients", first_l, since,
                f"gradient RMS at the first layer {first_l} is {r:.1e}× the last layer's "
                f"({last_l}) since step {since}: gradients grow towards the input; {remedy}",
                remedy, r, steps[-1]))
    if steps and len(steps) > t.window:
        total = _Lazy(len(steps), lambda i: math.sqrt(sum(v * v for v in rows[i])))
        base = statistics.median(total[:t.window])
        if base > 0 and math.isfinite(base):
            growth = _Lazy(len(steps), lambda i: total[i] / base)
            since = _since(steps, growth, lambda g: g > t.exploding_growth, t.window)
            if since is not None:
                remedy = ("lower the learning rate, clip gradients (clip_grad_norm_), or use "
                          "Adam/RMSProp")
                out.append(Finding(
                    "error", "exploding_gradients", None, since,
                    f"total gradient norm grew {growth[-1]:.1e}× since the start ({base:.2e} → "
                    f"{total[-1]:.2e}) and has stayed above {t.exploding_growth:g}× since step "
                    f"{since}; {remedy}", remedy, growth[-1], steps[-1]))
    return out


def _saturation(history: History, t: Thresholds) -> list[Finding]:
    """Call-sites whose outputs sit at the activation's limits (softmax excluded)."""
    out = []
    for site in history.layers("activation"):
        fam = _family(history, site)
        if fam == "softmax" or not _has(history, site, "saturation"):
            continue
        steps, values = history.series(site, "saturation")
        since = _since(steps, values, lambda v: v > t.saturation, t.window)
        if since is None:
            continue
        remedy = ("use ReLU/LeakyReLU instead, Xavier/Glorot initialisation, BatchNorm before "
                  "the activation, or a lower learning rate")
        name = f"{fam} " if fam else ""
        out.append(Finding(
            "warning", "saturation", site, since,
            f"layer {site}: {_pct(values[-1])} of {name}outputs saturated since step {since} "
            "(gradients through them nearly vanish); " + remedy, remedy, values[-1], steps[-1]))
    return out


def _dead(history: History, t: Thresholds) -> list[Finding]:
    """Dead ReLU units, and growth of the dead fraction over time."""
    out = []
    for site in history.layers("activation"):
        metric = next((m for m in ("dead_units_window", "dead_units")
                       if _has(history, site, m)), None)
        if metric is None:
            continue
        steps, values = history.series(site, metric)
        i0 = next((i for i, v in enumerate(values) if math.isfinite(v)), None)
        if i0 is None:
            continue
        s0, v0 = steps[i0], values[i0]
        remedy = ("lower the learning rate, use He initialisation, LeakyReLU/ELU, or BatchNorm "
                  "before the ReLU")
        since = _since(steps, values, lambda v: v > t.dead_units, t.window)
        if since is not None:
            start = f" ({_pct(v0)} at step {s0})" if s0 < since else ""
            out.append(Finding(
                "warning", "dead_units", site, since,
                f"layer {site}: {_pct(values[-1])} of ReLU units dead since step {since}{start}; "
                + remedy, remedy, values[-1], steps[-1]))
            continue
        since = _since(steps, values, partial(_grew, start=v0, by=t.dead_growth), t.window)
        if since is not None:
            out.append(Finding(
                "info", "dead_units_growing", site, since,
                f"layer {site}: dead ReLU units grew from {_pct(v0)} at step {s0} "
                f"to {_pct(values[-1])} at step {steps[-1]}; if it keeps growing, " + remedy,
                remedy, values[-1] - v0, steps[-1]))
    return out


def _activation_scale(history: History, t: Thresholds) -> list[Finding]:
    """Activation std collapsing or blowing up from the first call-site to the deepest."""
    sites = [s for s in history.layers("activation")
             if _family(history, s) != "softmax" and _has(history, s, "std")]
    if len(sites) < 2:
        return []
    first, last = sites[0], sites[-1]
    steps, rows = _aligned(history, [first, last], "std")

    def ratio(i: int) -> float:
        a, b = rows[i]
        return b / a if a > 0 and math.isfinite(a) and math.isfinite(b) else math.nan

    ratios = _Lazy(len(steps), ratio)
    out = []
    bad: Callable[[float], bool]
    for rule, bad, verb, remedy in (
        ("activation_collapse", lambda r: r < t.scale_collapse, "shrinks",
         "use an initialisation matched to the activation (He for ReLU, Xavier for tanh), "
         "BatchNorm/LayerNorm, or residual connections"),
        ("activation_blowup", lambda r: r > t.scale_blowup, "grows",
         "use a smaller initialisation (He/Xavier), BatchNorm/LayerNorm, or a lower learning rate"),
    ):
        since = _since(steps, ratios, bad, t.window)
        if since is None:
            continue
        a, b = rows[-1]
        out.append(Finding(
            "warning", rule, last, since,
            f"activation std {verb} with depth from {a:.2e} at {first} to {b:.2e} at {last} "
            f"({ratios[-1]:.1e}×) since step {since}; {remedy}", remedy, ratios[-1], steps[-1]))
    return out


def _update_ratio(history: History, t: Thresholds) -> list[Finding]:
    """Layers whose per-step update is far from ~1e-3 of their weights (one finding per side)."""
    layers = [n for n in history.layers("layer") if _has(history, n, "update_ratio")]
    out = []
    for rule, test, word, remedy in (
        ("update_ratio_low", lambda v: v < t.update_ratio_low, "below",
         "raise the learning rate, or check for vanishing gradients upstream"),
        ("update_ratio_high", lambda v: v > t.update_ratio_high, "above",
         "lower the learning rate, add warmup or gradient clipping"),
    ):
        hits = []
        for layer in layers:
            steps, values = history.series(layer, "update_ratio")
            since = _since(steps, values, test, t.window)
            if since is not None:
                hits.append((layer, since, values[-1], steps[-1]))
        if not hits:
            continue
        bound = t.update_ratio_low if word == "below" else t.update_ratio_high
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
    "nonfinite": _nonfinite,
    "gradients": _gradient_depth,
    "saturation": _saturation,
    "dead_units": _dead,
    "activation_scale": _activation_scale,
    "update_ratio": _update_ratio,
    "scaler_skipped": scaler_skipped,
}


def analyze(history: History, thresholds: Optional[Thresholds] = None) -> list[Finding]:
    """Apply every rule to ``history``; findings sorted by severity, then first step.

    Args:
        history: a monitor's :attr:`~gradscope.Monitor.history` (or one read back
            from a TensorBoard run by ``gradscope report``).
        thresholds: the :class:`Thresholds` to use; the documented defaults when ``None``.

    Returns:
        The findings; an empty list for a healthy run.
    """
    if thresholds is None:
        thresholds = Thresholds()
    elif not isinstance(thresholds, Thresholds):
        raise TypeError(f"analyze(thresholds={thresholds!r}): pass a gradscope.findings."
                        "Thresholds or None for the defaults")
    found: list[Finding] = []
    for rule in RULES.values():
        found.extend(rule(history, thresholds))
    order = {n: i for i, n in enumerate(history.layers())}
    found.sort(key=lambda f: (SEVERITIES.index(f.severity), f.first_step,
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

