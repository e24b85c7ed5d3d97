"""What a writer could not write: counted where it writes, said where the user sees it.

:class:`Losses` is kept by :class:`gradscope.writers.TensorBoardWriter`. Its
writing thread reports the scalars it hands to the event file, the errors, and
the flushes that succeeded (after which what was handed is on disk). When an
error kills the event file, the values handed since its last successful flush
are *settled* by reading back what reached the file; the others are lost. The
caller's thread asks, once writing works again and at close, for one sentence
saying how much is missing.

Example:
    >>> losses = Losses()
    >>> losses.handed([(3, "mean/1"), (4, "mean/1")], done=2)
    >>> losses.failed(OSError(28, "No space left on device"), items=0)
    >>> losses.settle({(3, "mean/1")})  # read back: only step 3 reached the file
    >>> losses.handed([(5, "mean/1")], done=1)  # in a new file, the next job writes
    >>> losses.confirmed()  # and its flush succeeds
    >>> print(losses.recovered())
    1 scalar value (steps 4..4) and 0 other items (histograms, text, images) could not be written; first error: OSError: [Errno 28] No space left on device
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Optional

__all__ = ["Losses"]

Item = tuple[int, str]  # (step, tag) of a scalar


class Losses:
    """What could not be written over a run (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.broken = False  # the current file's writer died: open a new file first
        self._pending: list[Item] = []  # handed since the last successful flush
        self._unhanded: list[Item] = []  # what the last scalar job did not hand over
        self.lost = self.other = 0  # scalar values and other items, over the run
        self._steps: Optional[tuple[int, int]] = None
        self._said = (0, 0)  # (lost, other) already said when writing recovered
        self._failing = False
        self._recovered = False
        self._ok = True  # the last job wrote all it was given
        self.first_error: Optional[str] = None

    def handed(self, items: Sequence[Item], done: int) -> None:
        """The first ``done`` of a job's scalars reached the event file; the rest raised."""
        with self._lock:
            self._pending += items[:done]
            self._unhanded = list(items[done:])
            self._ok = done == len(items)

    def failed(self, err: Exception, items: int) -> None:
        """A job raised: its scalars not handed over (and ``items`` others) are lost."""
        with self._lock:
            self._lose(self._unhanded)
            self._unhanded = []
            self._ok = False
            self.other += items
            self._failing = True
            if isinstance(err, OSError):  # TensorBoard's writer thread is dead: the file too
                self.broken = True
            if self.first_error is None:
                self.first_error = f"{type(err).__name__}: {err}"

    def pending(self) -> set[Item]:
        """What was handed to the current file since its last successful flush."""
        with self._lock:
            return set(self._pending)

    def settle(self, found: set[Item]) -> None:
        """The dead file holds ``found``: the other pending scalars are lost."""
        with self._lock:
            self._lose([p for p in self._pending if p not in found])
            self._pending = []

    def confirmed(self) -> None:
        """A flush succeeded: the pending scalars are on disk (recovered if the last job wrote)."""
        with self._lock:
            self._pending = []
            if self._failing and self._ok:
                self._failing, self._recovered = False, True

    def _lose(self, items: Sequence[Item]) -> None:
        if not items:
            return
        lo, hi = min(s for s, _ in items), max(s for s, _ in items)
        self._steps = (lo, hi) if self._steps is None else (min(lo, self._steps[0]),
                                                            max(hi, self._steps[1]))
        self.lost += len(items)

    def _describe(self, lost: int, other: int) -> str:
        span = f" (steps {self._steps[0]}..{self._steps[1]})" if self._steps and lost else ""
        return (f"{lost} scalar value{'s' if lost != 1 else ''}{span} and {other} other items "
                f"(histograms, text, images) could not be written; first error: "
                f"{self.first_error}")

    def recovered(self) -> Optional[str]:
        """What was lost since it was last said, once after writing recovers (else ``None``)."""
        with self._lock:
            if not self._recovered:
                return None
            self._recovered = False
            lost, other = self.lost - self._said[0], self.other - self._said[1]
            self._said = (self.lost, self.other)
            return self._describe(lost, other) if lost or other else None

    def total(self) -> Optional[str]:
        """What was lost over the whole run, or ``None``."""
        with self._lock:
            return self._describe(self.lost, self.other) if self.lost or self.other else None
