"""The findings sink: the rules at each flush, handed to the sinks that write them.

:class:`FindingsSink` is a sink like the others. At each flush it applies the
rules to the history and hands the findings to its ``deliver`` callback: the
monitor passes one that calls its other sinks' ``write_findings`` (TensorBoard's
text tab, :class:`gradscope.writers.MemoryWriter`), and none when no sink writes
findings (the rules then do not run at flushes). At close it prints a short summary to
stderr (``watch(..., summary=False)`` turns that off).

The sink keeps a :class:`~gradscope.findings.scan.Scan` across flushes, so each
flush's rules read only the points that flush added: its cost does not grow with
the length of the run (:attr:`FindingsSink.reads` counts the values read).

Example:
    >>> from gradscope.history import History
    >>> got = []
    >>> sink = FindingsSink(Thresholds(), deliver=lambda found, step: got.append((step, found)),
    ...                     summary=False)
    >>> sink.write([(0, "fc1", "grad_norm", 1.0)], History())
    >>> got
    [(0, [])]
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from typing import Callable, Optional, TextIO

from gradscope.findings.rules import analyze, format_findings
from gradscope.findings.scan import Scan
from gradscope.findings.thresholds import Finding, Thresholds
from gradscope.history import History
from gradscope.writers.base import Record, Sink

__all__ = ["FindingsSink"]


class FindingsSink(Sink):
    """Runs the findings rules for the other sinks, and prints their summary at close.

    Args:
        thresholds: the rules' thresholds.
        deliver: ``deliver(findings, step)`` hands each flush's findings on (``None``: nobody
            wants them, the rules run only for the summary at close).
        summary: print a summary of the findings to ``stream`` at :meth:`close`.
        where: a hint appended to the summary (the dashboard command).
        stream: where the summary goes (default ``sys.stderr``).
    """

    def __init__(self, thresholds: Thresholds, *,
                 deliver: Optional[Callable[[list[Finding], int], None]] = None,
                 summary: bool = True, where: str = "", stream: Optional[TextIO] = None) -> None:
        self.thresholds = thresholds
        self.deliver = deliver
        self.summary = summary
        self.where = where
        self.stream = stream
        self.latest: list[Finding] = []
        self._history: Optional[History] = None
        self._scan = Scan()
        self._closed = False

    @property
    def reads(self) -> int:
        """Values the rules have read so far (each at most once)."""
        return self._scan.reads

    def write(self, records: Sequence[Record], history: History) -> None:
        """Apply the rules and hand the findings on, when a sink writes findings."""
        self._history = history
        if not records or self.deliver is None:
            return
        self.latest = analyze(history, self.thresholds, scan=self._scan)
        self.deliver(self.latest, records[-1][0])

    def close(self) -> None:
        """Print the summary of the findings over the whole run (once; never raises)."""
        if self._closed:
            return
        self._closed = True
        if not self.summary or self._history is None:
            return
        try:
            ends = self._history.span()
            if ends is None:
                return
            found = analyze(self._history, self.thresholds, scan=self._scan)
            span = f"steps {ends[0]}..{ends[1]}"
            stream = self.stream if self.stream is not None else sys.stderr
            if not found:
                print(f"gradscope: no findings over {span}{self.where}", file=stream)
            else:
                print(f"gradscope: {len(found)} finding(s) over {span}{self.where}\n"
                      f"{format_findings(found, limit=8)}", file=stream)
        except Exception as err:  # a summary must never break the user's program
            warnings.warn(f"gradscope: could not print the findings summary: {err}",
                          RuntimeWarning, stacklevel=2)

    def __repr__(self) -> str:
        return "FindingsSink()"
