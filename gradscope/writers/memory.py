"""A sink that keeps what it is given, for tests and notebooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradscope.histograms import Histogram
from gradscope.history import History
from gradscope.writers.base import Record, Sink

__all__ = ["MemoryWriter"]


class MemoryWriter(Sink):
    """Keeps every record, histogram and findings update it receives, in order.

    Attributes:
        records: every :class:`gradscope.Record` (``step, layer, metric, value``),
            in arrival order.
        histograms: every :class:`gradscope.histograms.Histogram`.
        findings: ``(step, findings)`` per flush at which findings were written.
        writes: how many flushes delivered records.
        closed: whether :meth:`close` was called.

    Example:
        >>> from gradscope.history import History
        >>> w = MemoryWriter()
        >>> w.write([Record(0, "fc1", "grad_norm", 0.5)], History())
        >>> w.records, w.writes
        ([Record(step=0, layer='fc1', metric='grad_norm', value=0.5)], 1)
    """

    def __init__(self) -> None:
        self.records: list[Record] = []
        self.histograms: list[Histogram] = []
        self.findings: list[tuple[int, list[Any]]] = []
        self.writes = 0
        self.closed = False

    def write(self, records: Sequence[Record], history: History) -> None:
        """Append the flushed records."""
        self.records.extend(records)
        self.writes += 1

    def write_histograms(self, histograms: Sequence[Histogram]) -> None:
        """Append the flushed histograms."""
        self.histograms.extend(histograms)

    def write_findings(self, findings: Sequence[Any], step: int) -> None:
        """Append the findings computed at this flush."""
        self.findings.append((step, list(findings)))

    def close(self) -> None:
        """Mark the writer closed (the lists stay readable)."""
        self.closed = True
