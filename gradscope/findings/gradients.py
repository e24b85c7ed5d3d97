"""The rules over gradients and updates: ``vanishing_gradients``, ``exploding_gradients``
(the first layer's gradient RMS against the last one's, the total norm's growth),
``update_ratio_low`` and ``update_ratio_high`` (see :mod:`gradscope.findings.rules`)."""

from __future__ import annotations

import math
import statistics
from typing import Callable, Optional

from gradscope.findings.episodes import holding as _now
from gradscope.findings.episodes import resolved as _resolved
from gradscope.findings.remedies import remedy_text
from gradscope.findings.scan import Scan, _derived, _has, _layer_numel
from gradscope.findings.thresholds import Finding, Thresholds
from gradscope.history import History


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
        # Per-parameter RMS ‖∇W‖/√#params, unlike backprop_log10_ratio's per-example norms
        # of ∂L/∂y: a convolution's weight gradient sums over the positions, so a healthy
        # CNN does not read as vanishing here (0.67 on a He-initialised conv 3→8→16 + MLP
        # head, 1.4 on mobilenet_v3_small), and total norms would move the MLP figures.
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


def _update_ratio(history: History, t: Thresholds, scan: Optional[Scan] = None) -> list[Finding]:
    """Layers whose per-step update is far from ~1e-3 of their weights (one finding per side),
    judged from ``update_settle`` steps after each layer's first record on."""
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
            run = scan.tail(history, (rule, layer), layer, "update_ratio", bad,
                            low=word == "below", settle=t.update_settle)
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
