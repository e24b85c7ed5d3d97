"""What the rules have read so far, so that each call reads only what is new.

A rule's condition ("saturation above 30%") is a run of bad points at the end of
a series. :class:`Scan` keeps, per rule and series, the last step it read and the
length and start of the trailing bad run, so that the findings sink, which
applies the rules at every flush, reads only the points added since the last
flush (:meth:`gradscope.History.since`): the cost of a flush does not grow with
the run. :attr:`Scan.reads` counts the values read (the soak test checks it stays
flat). A fresh :class:`Scan` (what :func:`gradscope.findings.analyze` uses by
default) reads every point once. The small readers the rules share (``_derived``,
``_layer_numel``, ``_family``, ...) are at the end of this module.

Example:
    >>> from gradscope.history import History
    >>> h, scan = History(), Scan()
    >>> for step in range(5):
    ...     h.add(step, "act1", "saturation", 0.9 if step >= 2 else 0.0)
    >>> run = scan.tail(h, ("sat", "act1"), "act1", "saturation", lambda v: v > 0.3)
    >>> run.start, run.length, scan.reads
    (2, 3, 5)
    >>> h.add(5, "act1", "saturation", 0.95)
    >>> run = scan.tail(h, ("sat", "act1"), "act1", "saturation", lambda v: v > 0.3)
    >>> run.start, run.length, scan.reads
    (2, 4, 6)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable, Optional

from gradscope.history import History

__all__ = ["Run", "Scan"]


class Run:
    """The trailing run of bad points of one (derived) series, as read so far."""

    __slots__ = ("first", "last", "length", "start", "step", "value")

    def __init__(self) -> None:
        self.last = -math.inf  # last step read
        self.start: Optional[int] = None  # step where the trailing bad run began
        self.length = 0  # points in it
        self.value = math.nan  # the last value read
        self.step = -1  # and its step
        self.first: Optional[tuple[int, float]] = None  # the first finite point read

    def feed(self, steps: Sequence[int], values: Sequence[float],
             bad: Callable[[float], bool]) -> None:
        """Read new points (in step order, all after :attr:`last`)."""
        for s, v in zip(steps, values):
            if bad(v):
                if self.length == 0:
                    self.start = s
                self.length += 1
            else:
                self.length, self.start = 0, None
            if self.first is None and math.isfinite(v):
                self.first = (s, v)
        if steps:
            self.last, self.step, self.value = steps[-1], steps[-1], values[-1]

    def holds(self, window: int) -> bool:
        """Whether the condition held on the last ``window`` points (and so, at least that many)."""
        return self.length >= window


class Scan:
    """Per-rule reading state over one history (see the module docstring)."""

    def __init__(self) -> None:
        self.runs: dict[Any, Run] = {}
        self.memo: dict[Any, Any] = {}
        self.reads = 0
        self._history: Optional[int] = None

    def bind(self, history: History) -> None:
        """Start over when given another history than the one read so far."""
        if self._history != id(history):
            self.runs.clear()
            self.memo.clear()
            self._history = id(history)

    def run(self, key: Any) -> Run:
        """The run state of ``key`` (made on first use)."""
        r = self.runs.get(key)
        if r is None:
            r = self.runs[key] = Run()
        return r

    def tail(self, history: History, key: Any, layer: str, metric: str,
             bad: Callable[[float], bool]) -> Run:
        """Read ``layer/metric``'s new points into the run of ``key`` and return it."""
        r = self.run(key)
        steps, values = history.since(layer, metric, r.last)  # type: ignore[arg-type]
        self.reads += len(steps)
        r.feed(steps, values, bad)
        return r

    def rows(self, history: History, key: Any, layers: Sequence[str], metric: str
             ) -> tuple[list[int], list[list[float]]]:
        """New steps at which every one of ``layers`` has ``metric``, and the values (a row each)."""
        after = self.run(key).last
        series = [history.since(n, metric, after) for n in layers]  # type: ignore[arg-type]
        self.reads += sum(len(st) for st, _ in series)
        steps = series[0][0]
        if all(st == steps for st, _ in series):  # the usual case: recorded at the same steps
            cols = [vs for _, vs in series]
            return list(steps), [list(row) for row in zip(*cols)]
        maps = [dict(zip(st, vs)) for st, vs in series]
        common = [s for s in steps if all(s in d for d in maps)]
        return common, [[d[s] for d in maps] for s in common]


# ------------------------------------------------- helpers of the rules
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
             fn: Callable[[list[float]], float], tests: Sequence[Callable[[float], bool]]
             ) -> list[Run]:
    """Runs of ``fn(row)`` over the new rows of ``layers/metric``, one run per test."""
    steps, rows = scan.rows(history, key, layers, metric)
    derived = [fn(row) for row in rows]
    runs = [scan.run((key, i)) for i in range(len(tests))]
    for r, bad in zip(runs, tests):
        r.feed(steps, derived, bad)
    if steps:
        scan.run(key).last = steps[-1]
    return runs
