"""The findings sink: the rules at each flush, handed to the sinks that write them.

:class:`FindingsSink` is a sink like the others. At each flush it applies the
rules to the history and hands the findings to its ``deliver`` callback: the
monitor passes one that calls its other sinks' ``write_findings`` (TensorBoard's
text tab, :class:`gradscope.writers.MemoryWriter`), or none when no sink writes
findings. The rules run at every flush either way: a finding is an episode kept
for the whole run (:mod:`gradscope.findings.scan`), and the history thins its
older points, so each point is read once, when it is new. At close the sink
hands the final findings on once more and prints a short summary to stderr --
what holds now and what held before -- (``watch(..., summary=False)`` turns
that off).

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

from gradscope.findings.remedies import RunFacts
from gradscope.findings.rules import analyze, format_findings
from gradscope.findings.scan import Scan
from gradscope.findings.thresholds import Finding, Thresholds
from gradscope.history import History
from gradscope.records import counted
from gradscope.writers.base import Record, Sink

__all__ = ["FindingsSink", "findings_of"]


class FindingsSink(Sink):
    """Runs the findings rules for the other sinks, and prints their summary at close.

    Args:
        thresholds: the rules' thresholds.
        deliver: ``deliver(findings, step)`` hands each flush's findings on (``None``: nobody
            wants them, the rules run only for the summary at close).
        summary: print a summary of the findings to ``stream`` at :meth:`close`.
        where: a hint appended to the summary (the dashboard command).
        stream: where the summary goes (default ``sys.stderr``).
        facts: what the run already applies, for the remedies (set by ``watch()``).
    """

    def __init__(self, thresholds: Thresholds, *,
                 deliver: Optional[Callable[[list[Finding], int], None]] = None,
                 summary: bool = True, where: str = "", stream: Optional[TextIO] = None,
                 facts: Optional[RunFacts] = None) -> None:
        self.thresholds = thresholds
        self.deliver = deliver
        self.summary = summary
        self.where = where
        self.stream = stream
        self.facts = facts
        self.latest: list[Finding] = []
        self._history: Optional[History] = None
        self._scan = Scan()
        self._step = -1
        self._closed = False

    @property
    def reads(self) -> int:
        """Values the rules have read so far (each at most once)."""
        return self._scan.reads

    def write(self, records: Sequence[Record], history: History) -> None:
        """Apply the rules to the new points; hand the findings on when a sink writes them."""
        self._history = history
        if not records:
            return
        self.latest = self.findings(history)
        self._step = records[-1][0]
        if self.deliver is not None:
            self.deliver(self.latest, self._step)

    def findings(self, history: Optional[History] = None) -> list[Finding]:
        """The findings now, those holding and those resolved (reads only the new points)."""
        history = history if history is not None else self._history
        if history is None:
            return []
        return analyze(history, self.thresholds, scan=self._scan, facts=self.facts)

    def close(self) -> None:
        """Print the summary of the findings over the whole run (once; never raises)."""
        if self._closed:
            return
        self._closed = True
        if self._history is None:
            return
        try:
            ends = self._history.span()
            if ends is None:
                return
            found = self.findings()
            if self.deliver is not None:  # the text the sinks keep tells the whole run
                self.deliver(found, ends[1])
            if not self.summary:
                return
            span = f"steps {ends[0]}..{ends[1]}"
            stream = self.stream if self.stream is not None else sys.stderr
            if not found:
                print(f"gradscope: no findings over {span}{self.where}", file=stream)
            else:
                before = sum(f.resolved for f in found)
                now = len(found) - before
                print(f"gradscope: {counted(len(found), 'finding')} over {span} ({now} holding at the "
                      f"end, {before} resolved){self.where}\n"
                      f"{format_findings(found, limit=8)}", file=stream)
        except Exception as err:  # a summary must never break the user's program
            warnings.warn(f"gradscope: could not print the findings summary: {err}",
                          RuntimeWarning, stacklevel=2)

    def __repr__(self) -> str:
        return "FindingsSink()"


def findings_of(sinks: Sequence[Sink], history: History,
                thresholds: Optional[Thresholds] = None) -> list[Finding]:
    """``mon.findings()``: the findings sink's episodes of the whole run when its thresholds
    are asked for; else the rules over ``history`` as it is now (older points thinned)."""
    sink = next((s for s in sinks if isinstance(s, FindingsSink)), None)
    if sink is None or thresholds not in (None, sink.thresholds):
        return analyze(history, thresholds or Thresholds(),
                       facts=sink.facts if sink is not None else None)
    return sink.findings(history)
