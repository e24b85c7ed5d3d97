"""Findings as episodes: what holds now, and what held before.

A rule's :class:`~gradscope.findings.scan.Run` remembers its episodes (opened when
the condition held on ``Thresholds.window`` points in a row, resolved by as many
good ones, at most :data:`~gradscope.findings.scan.EPISODES_KEPT` kept per rule
and layer). :func:`holding` gives the holding episode's first step and worst value
for the rule's own message; :func:`resolved` turns the episodes that no longer
hold into findings marked ``resolved``, so that ``mon.findings()``, the closing
summary, the TensorBoard text and ``gradscope report`` tell the whole run.

Example:
    >>> from gradscope.findings.scan import Run
    >>> run = Run(window=2)
    >>> run.feed([0, 1, 2, 3, 4, 5], [0.5, 0.9, 0.7, 0.1, 0.0, 0.0], lambda v: v > 0.3)
    >>> print(resolved(run, "warning", "saturation", "act1", "outputs saturated", "")[0].message)
    act1: steps 0–2 (resolved), worst 9.0e-01 at step 1: outputs saturated
"""

from __future__ import annotations

from typing import Callable, Optional

from gradscope.findings.scan import Run
from gradscope.records import Finding

__all__ = ["holding", "resolved", "sci"]


def sci(v: float) -> str:
    """A value in scientific notation, two digits."""
    return f"{v:.1e}"


def holding(run: Run) -> tuple[int, float, int]:
    """The holding episode's first step, worst value and its step (the rule fires: it is open)."""
    ep = run.current()
    if ep is None:  # not reached when the run holds; the trailing run then
        return run.start, run.value, run.step  # type: ignore[return-value]
    return ep.first, ep.worst, ep.worst_step


def resolved(run: Run, severity: str, rule: str, layer: Optional[str], what: str,
             remedy: str, show: Callable[[float], str] = sci) -> list[Finding]:
    """The episodes of ``run`` that no longer hold, as one resolved finding (none if none).

    ``what`` says the condition (``"gradient RMS at fc1 below 0.01× fc3's"``); the
    message reads ``"fc1: steps 0–780 (resolved), worst 2.5e-03 at step 120: what"``,
    and lists the episodes when there were several (``"(resolved; 3 episodes: 0–584,
    588–601, 623–780)"``): one line per rule and layer tells what held before.
    """
    eps = run.resolved()
    if not eps:
        return []
    worst = (min if run.low else max)(eps, key=lambda e: e.worst)
    count = sum(e.merged for e in eps)
    spans = "" if count == 1 else (f"; {count} episodes: "
                                   + ", ".join(f"{e.first}–{e.last}" for e in eps))
    first, last = eps[0].first, eps[-1].last
    where = f"{layer}: " if layer else ""
    return [Finding(
        severity, rule, layer, first,
        f"{where}steps {first}–{last} (resolved{spans}), worst {show(worst.worst)} at step "
        f"{worst.worst_step}: {what}", remedy, worst.worst, last, resolved=True,
        worst=worst.worst, worst_step=worst.worst_step, episodes=count)]
