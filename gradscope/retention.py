"""How many points a :class:`gradscope.History` keeps: the :class:`Retention` rule and the
series and profile stores that apply it (see :mod:`gradscope.history`)."""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Optional

__all__ = ["DEFAULT_RETENTION", "MAX_PROFILE_ROWS", "Retention"]

#: A profile series keeps at most this many rows: beyond, every other row is dropped
#: and only every other new one is kept, so rows stay evenly spread over the run.
MAX_PROFILE_ROWS = 512


@dataclass(frozen=True)
class Retention:
    """How many points of each series a :class:`History` keeps (see the module docstring).

    A point ``age`` steps older than the series' last one is kept when it is among
    the ``head`` first points, is the series' first alarm, or its step is a multiple
    of the stride of its age: 1 below ``recent`` steps, then, in each octave of age
    ``[recent·2^(k-1), recent·2^k)``, the power of two that leaves about
    ``per_octave`` points in it. A series therefore holds about
    ``recent / every + per_octave · log2(steps / recent)`` points (16 bytes each),
    at most twice that between two compactions.

    Args:
        recent: steps kept at full resolution; ``None`` keeps every point of the run.
        per_octave: points kept per doubling of age beyond ``recent``.
        head: the first ``head`` points of a series are always kept.

    Example:
        >>> Retention(recent=500).per_octave
        50
        >>> Retention(recent=0)
        Traceback (most recent call last):
        ...
        ValueError: Retention(recent=0): must be an int >= 1, or None to keep every point
    """

    recent: Optional[int] = 1000
    per_octave: int = 50
    head: int = 10

    def __post_init__(self) -> None:
        if self.recent is not None and (not isinstance(self.recent, int)
                                        or isinstance(self.recent, bool) or self.recent < 1):
            raise ValueError(f"Retention(recent={self.recent!r}): must be an int >= 1, or None "
                             "to keep every point")
        for name, low in (("per_octave", 1), ("head", 0)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"Retention({name}={v!r}): must be an int >= {low}")

    @property
    def bounded(self) -> bool:
        """Whether points are ever dropped."""
        return self.recent is not None

    def stride(self, age: int) -> int:
        """The step stride kept at ``age`` steps before the last point (1 when recent)."""
        recent = self.recent
        if recent is None or age < recent:
            return 1
        k = (age // recent).bit_length()  # age in [recent·2^(k-1), recent·2^k)
        per = -(-(recent << (k - 1)) // self.per_octave)
        return 1 << (per - 1).bit_length()


#: The default retention (what ``watch(retention=...)`` defaults to).
DEFAULT_RETENTION = Retention()
#: Points a series may grow by (at least) between two compactions.
_SLACK = 64


class _Series:
    """One metric of one layer: steps and values in typed arrays, and its first alarm."""

    __slots__ = ("alarm", "compact_at", "counts", "head", "head_end", "steps", "total", "values")

    def __init__(self, metric: str, head: int = 0) -> None:
        self.steps = array("q")
        self.values = array("d")
        self.counts = "nonfinite" in metric  # a count of NaN/Inf elements: > 0 is an alarm
        self.alarm: Optional[tuple[int, float]] = None  # (step, value) of the first alarm
        self.total = 0  # points ever added (thinned ones included)
        self.head = head  # the first ``head`` points are always kept
        self.head_end = -1  # step of the last of them
        self.compact_at = _SLACK

    def append(self, step: int, value: float) -> None:
        self.steps.append(step)
        self.values.append(value)
        self.total += 1
        if self.total <= self.head:
            self.head_end = step
        if self.alarm is None and (value - value != 0.0 or (self.counts and value > 0.0)):
            self.alarm = (step, value)

    def thin(self, keep: Retention) -> None:
        """Drop the points :class:`Retention` no longer keeps (amortised O(1) per point)."""
        steps, values = self.steps, self.values
        last, head_end = steps[-1], self.head_end
        alarm = self.alarm[0] if self.alarm is not None else None
        stride = keep.stride
        kept = [i for i, s in enumerate(steps)
                if s <= head_end or s == alarm or s % stride(last - s) == 0]
        if len(kept) < len(steps):
            self.steps = array("q", (steps[i] for i in kept))
            self.values = array("d", (values[i] for i in kept))
        self.compact_at = len(self.steps) + max(_SLACK, len(self.steps) // 2)


class _Profile:
    """Rows of one profile series, thinned to at most :data:`MAX_PROFILE_ROWS` evenly spread rows."""

    def __init__(self, stride: int = 1) -> None:
        self.steps: list[int] = []
        self.positions: list[tuple[int, ...]] = []
        self.values: list[list[float]] = []
        self.stride = stride  # keep one offered row in ``stride``
        self._offered = 0

    def add(self, step: int, positions: tuple[int, ...], values: list[float]) -> None:
        if self.steps and self.steps[-1] == step:  # a repeated step replaces the row
            self.positions[-1], self.values[-1] = positions, values
            return
        self._offered += 1
        if (self._offered - 1) % self.stride:
            return
        if self.positions and self.positions[-1] == positions:
            positions = self.positions[-1]  # share the tuple between rows
        self.steps.append(step)
        self.positions.append(positions)
        self.values.append(values)
        if len(self.steps) > MAX_PROFILE_ROWS:
            self.steps, self.positions, self.values = \
                self.steps[::2], self.positions[::2], self.values[::2]
            self.stride *= 2
            self._offered = 1  # the last row (even index: kept) is where the new stride starts
