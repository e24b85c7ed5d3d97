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

A run also remembers its **episodes**: an episode opens when the condition has
held on ``window`` points in a row (when the rule fires), keeps its first and
last bad step and its worst value (and that value's step), survives good
stretches shorter than ``window`` points (one good batch does not resolve a
finding, as one bad batch does not make one), and is closed -- resolved -- by
``window`` good points in a row. Closed episodes are kept for the whole run, at
most :data:`EPISODES_KEPT` per run (the closest neighbours merged beyond that),
so what a finding held before is still known at the end of the run.

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
    >>> for step in range(6, 10):
    ...     h.add(step, "act1", "saturation", 0.0)
    >>> run = scan.tail(h, ("sat", "act1"), "act1", "saturation", lambda v: v > 0.3)
    >>> run.episodes
    [Episode(first=2, last=5, worst=0.95, worst_step=5, merged=1)]
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any, Callable, NamedTuple, Optional

from gradscope.history import History

__all__ = ["EPISODES_KEPT", "Episode", "Run", "Scan"]

#: Closed episodes a run keeps (per rule and layer or call-site): beyond it, the two
#: neighbours with the shortest gap between them are merged into one (first step of
#: the earlier, last step of the later, the worse of the two worst values), so memory
#: stays bounded however long the run and however often a condition comes and goes,
#: while the first and last steps of what held are never lost.
EPISODES_KEPT = 8


class Episode(NamedTuple):
    """A closed stretch of steps where a rule's condition held.

    ``first``/``last``: its first and last bad step; ``worst``/``worst_step``: the
    value furthest past the threshold and its step; ``merged``: how many episodes
    it stands for (more than one after :data:`EPISODES_KEPT` merged neighbours).
    """

    first: int
    last: int
    worst: float
    worst_step: int
    merged: int = 1


class Run:
    """The trailing run of bad points of one (derived) series, as read so far."""

    __slots__ = ("episodes", "first", "good", "last", "length", "low", "open", "origin", "start",
                 "step", "value", "window", "worst")

    def __init__(self, window: int = 1) -> None:
        self.window = window  # points in a row that open (bad) or close (good) an episode
        self.low = False  # lower values are worse (the worst value is the smallest)
        self.open: Optional[list[Any]] = None  # the open episode: [first, last, worst, worst_step]
        self.good = 0  # good points in a row since the open episode's last bad one
        self.episodes: list[Episode] = []  # the closed ones, oldest first
        self.worst = (math.nan, -1)  # the worst (value, step) of the trailing bad run
        self.last = -math.inf  # last step read
        self.start: Optional[int] = None  # step where the trailing bad run began
        self.length = 0  # points in it
        self.value = math.nan  # the last value read
        self.step = -1  # and its step
        self.first: Optional[tuple[int, float]] = None  # the first finite point read
        self.origin: Optional[int] = None  # the series' first step (its settling starts there)

    def feed(self, steps: Sequence[int], values: Sequence[float],
             bad: Callable[[float], bool]) -> None:
        """Read new points (in step order, all after :attr:`last`)."""
        for s, v in zip(steps, values):
            if bad(v):
                if self.length == 0:
                    self.start = s
                self.length += 1
                self._bad(s, v)
            else:
                self.length, self.start = 0, None
                if self.open is not None:
                    self.good += 1
                    if self.good >= self.window:
                        self._close()
            if self.first is None and math.isfinite(v):
                self.first = (s, v)
        if steps:
            self.last, self.step, self.value = steps[-1], steps[-1], values[-1]

    def holds(self, window: int) -> bool:
        """Whether the condition held on the last ``window`` points (and so, at least that many)."""
        return self.length >= window

    def _worse(self, v: float, than: float) -> bool:
        return (v < than) if self.low else (v > than)

    def _bad(self, s: int, v: float) -> None:
        """A bad point: extend the open episode, or open one when the run is long enough."""
        if self.length == 1 or self._worse(v, self.worst[0]):
            self.worst = (v, s)  # the worst point of the trailing run
        ep = self.open
        if ep is not None:
            ep[1], self.good = s, 0
            if self._worse(v, ep[2]):
                ep[2], ep[3] = v, s
        elif self.length >= self.window:
            self.open = [self.start, s, *self.worst]
            self.good = 0

    def _close(self) -> None:
        first, last, worst, at = self.open  # type: ignore[misc]
        self.open, self.good = None, 0
        self.episodes.append(Episode(first, last, worst, at))
        if len(self.episodes) > EPISODES_KEPT:
            eps = self.episodes
            i = min(range(len(eps) - 1), key=lambda k: eps[k + 1].first - eps[k].last)
            a, b = eps[i], eps[i + 1]
            w = b if self._worse(b.worst, a.worst) else a
            eps[i:i + 2] = [Episode(a.first, b.last, w.worst, w.worst_step, a.merged + b.merged)]

    def current(self) -> Optional[Episode]:
        """The open episode (the condition holds, or held until fewer than ``window`` good points ago)."""
        if self.open is None:
            return None
        return Episode(*self.open)

    def resolved(self) -> list[Episode]:
        """Episodes that no longer hold: the closed ones, and the open one when it does not hold now."""
        cur = self.current()
        if cur is not None and not self.holds(self.window):
            return [*self.episodes, cur]
        return list(self.episodes)


class Scan:
    """Per-rule reading state over one history (see the module docstring)."""

    def __init__(self, window: int = 1) -> None:
        self.window = window  # the runs' episode window (``Thresholds.window``, set by analyze)
        self.runs: dict[Any, Run] = {}
        self.memo: dict[Any, Any] = {}
        self.reads = 0
        self._history: Optional[int] = None

    def bind(self, history: History, window: Optional[int] = None) -> None:
        """Start over when given another history (or episode window) than the one read so far."""
        if window is not None and window != self.window:
            self.window, self._history = window, None
        if self._history != id(history):
            self.runs.clear()
            self.memo.clear()
            self._history = id(history)

    def run(self, key: Any, *, low: bool = False) -> Run:
        """The run state of ``key`` (made on first use; ``low``: smaller values are worse)."""
        r = self.runs.get(key)
        if r is None:
            r = self.runs[key] = Run(self.window)
            r.low = low
        return r

    def tail(self, history: History, key: Any, layer: str, metric: str,
             bad: Callable[[float], bool], *, low: bool = False, settle: int = 0) -> Run:
        """Read ``layer/metric``'s new points into the run of ``key`` and return it.

        ``settle``: the points within this many steps of the series' first one are read
        but not judged (neither bad nor good: no episode opens or closes there).
        """
        r = self.run(key, low=low)
        steps, values = history.since(layer, metric, r.last)  # type: ignore[arg-type]
        self.reads += len(steps)
        if settle and len(steps):
            if r.origin is None:
                r.origin = steps[0]
            cut = bisect.bisect_left(steps, r.origin + settle)
            if cut:
                r.last = steps[cut - 1]
                steps, values = steps[cut:], values[cut:]
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
