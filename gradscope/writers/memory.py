"""A sink that keeps what it is given, for tests and notebooks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gradscope.histograms import Histogram
from gradscope.history import History

__all__ = ["MemoryWriter"]


class MemoryWriter:
    """Keeps every record, histogram and findings update it receives, in order.

    Attributes:
        records: every ``(step, layer, metric, value)`` record, in arrival order.
        histograms: every :class:`gradscope.histograms.Histogram`.
        findings: ``(step, findings)`` per flush at which findings were written.
        writes: how many flushes delivered records.
        closed: whether :meth:`close` was called.

    Example:
        >>> from gradscope.history import History
        >>> w = MemoryWriter()
        >>> w.write([(0, "fc1", "grad_norm", 0.5)], History())
        >>> w.records, w.writes
        ([(0, 'fc1', 'grad_norm', 0.5)], 1)
    """

    def __init__(self) -> None:
        self.records: list[tuple[int, str, str, float]] = []
        self.histograms: list[Histogram] = []
        self.findings: list[tuple[int, list[Any]]] = []
        self.writes = 0
        self.closed = False

    def write(self, records: Sequence[tuple[int, str, str, float]], history: History) -> None:
        """Append the flushed records."""
        self.records.extend(records)
        self.writes += 1

    def write_histograms(self, histograms: Sequence[Histogram]) -> None:
        """Append the flushed histograms."""
        self.histograms.extend(histograms)

    def write_findings(self, findings: Sequence[Any], step: int) -> None:
        """Append the findings computed at this flush."""
        self.findings.append((step, list(findings)))

    def flush(self) -> None:
        """Nothing to flush: everything is in memory."""

    def close(self) -> None:
        """Mark the writer closed (the lists stay readable)."""
        self.closed = True

    def __enter__(self) -> MemoryWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
