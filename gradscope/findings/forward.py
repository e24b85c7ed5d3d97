"""The rules over activation call-sites: ``saturation``, ``dead_units``,
``dead_units_growing``, ``activation_collapse`` and ``activation_blowup`` (see
:mod:`gradscope.findings.rules`)."""

from __future__ import annotations

import math
from functools import partial
from typing import Optional

from gradscope.findings.scan import Scan, _derived, _family, _grew, _has, _pct
from gradscope.findings.thresholds import Finding, Thresholds
from gradscope.history import History


def _saturation(history: History, t: Thresholds, scan: Optional[Scan] = None) -> list[Finding]:
    """Call-sites whose outputs sit at the activation's limits (softmax excluded)."""
    scan = scan if scan is not None else Scan()
    out = []
    remedy = ("use ReLU/LeakyReLU instead, Xavier/Glorot initialisation, BatchNorm before "
              "the activation, or a lower learning rate")
    for site in history.layers("activation"):
        fam = _family(history, site)
        if fam == "softmax" or not _has(history, site, "saturation"):
            continue
        run = scan.tail(history, ("saturation", site), site, "saturation",
                        lambda v: v > t.saturation)
        if not run.holds(t.window):
            continue
        name = f"{fam} " if fam else ""
        out.append(Finding(
            "warning", "saturation", site, run.start,  # type: ignore[arg-type]
            f"layer {site}: {_pct(run.value)} of {name}outputs saturated since step {run.start} "
            "(gradients through them nearly vanish); " + remedy, remedy, run.value, run.step))
    return out


def _dead(history: History, t: Thresholds, scan: Optional[Scan] = None) -> list[Finding]:
    """Dead ReLU units, and growth of the dead fraction over time."""
    scan = scan if scan is not None else Scan()
    out = []
    remedy = ("lower the learning rate, use He initialisation, LeakyReLU/ELU, or BatchNorm "
              "before the ReLU")
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
        if dead.holds(t.window):
            start = f" ({_pct(v0)} at step {s0})" if s0 < dead.start else ""  # type: ignore[operator]
            out.append(Finding(
                "warning", "dead_units", site, dead.start,  # type: ignore[arg-type]
                f"layer {site}: {_pct(dead.value)} of ReLU units dead since step {dead.start}"
                f"{start}; " + remedy, remedy, dead.value, dead.step))
        elif grew.holds(t.window):
            out.append(Finding(
                "info", "dead_units_growing", site, grew.start,  # type: ignore[arg-type]
                f"layer {site}: dead ReLU units grew from {_pct(v0)} at step {s0} "
                f"to {_pct(grew.value)} at step {grew.step}; if it keeps growing, " + remedy,
                remedy, grew.value - v0, grew.step))
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
                    (lambda r: r < t.scale_collapse, lambda r: r > t.scale_blowup))
    out = []
    for run, (rule, verb, remedy) in zip(runs, (
        ("activation_collapse", "shrinks",
         "use an initialisation matched to the activation (He for ReLU, Xavier for tanh), "
         "BatchNorm/LayerNorm, or residual connections"),
        ("activation_blowup", "grows",
         "use a smaller initialisation (He/Xavier), BatchNorm/LayerNorm, or a lower learning rate"),
    )):
        if not run.holds(t.window):
            continue
        a, b = ends
        out.append(Finding(
            "warning", rule, last, run.start,  # type: ignore[arg-type]
            f"activation std {verb} with depth from {a:.2e} at {first} to {b:.2e} at {last} "
            f"({run.value:.1e}×) since step {run.start}; {remedy}", remedy, run.value, run.step))
    return out
