"""The rules over activation call-sites: ``saturation``, ``dead_units``,
``dead_units_growing``, ``activation_collapse`` and ``activation_blowup`` (see
:mod:`gradscope.findings.rules`)."""

from __future__ import annotations

import math
from functools import partial
from typing import Optional

from gradscope.findings.episodes import holding as _now
from gradscope.findings.episodes import resolved as _resolved
from gradscope.findings.remedies import remedy_text
from gradscope.findings.scan import Scan, _derived, _family, _grew, _has, _pct
from gradscope.findings.thresholds import Finding, Thresholds
from gradscope.history import History


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
