"""What every sink shares: the :class:`Record`, the :class:`Sink` base and the fan-out.

A sink receives what the monitor computed at each flush and only writes it. It
subclasses :class:`Sink` and overrides :meth:`Sink.write`; the other methods are
optional and do nothing unless overridden:

* ``write_histograms(histograms)``: on histogram steps only (a monitor takes
  histograms only when some sink overrides this);
* ``write_findings(findings, step)``: the findings of :mod:`gradscope.findings`,
  computed at each flush only when some sink overrides this;
* ``write_coverage(coverage)``: once, after the first monitored step, what
  gradscope sees of the model's activations (a :class:`gradscope.Coverage`);
* ``flush()`` and ``close()``.

Objects that do not subclass :class:`Sink` but have a ``write`` method are
accepted too (:func:`as_sink` wraps them).

The monitor calls its sinks through :class:`SinkFanout`, which isolates them: an
exception in one sink is reported once with a warning naming the sink and the
error, the other sinks and the training loop go on, and the failing sink is
called again at the next flush (so a sink whose disk filled up writes again
once there is space).

Example:
    >>> class Printer(Sink):
    ...     def write(self, records, history):
    ...         for r in records:
    ...             print(r.layer, r.metric, r.value)
    >>> Printer().write([Record(0, "fc1", "grad_norm", 0.5)], None)
    fc1 grad_norm 0.5
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gradscope.records import Coverage, Finding, Record, record

if TYPE_CHECKING:
    from gradscope.histograms import Histogram
    from gradscope.history import History

__all__ = ["Record", "Sink", "SinkFanout", "as_sink", "overrides", "record"]


class Sink:
    """Base class of the writers: override :meth:`write`, and the optional methods you need."""

    def write(self, records: Sequence[Record], history: History) -> None:
        """Called once per flush with the new records (``history`` already holds them)."""
        raise NotImplementedError(f"{type(self).__name__} must implement write(records, history)")

    def write_histograms(self, histograms: Sequence[Histogram]) -> None:
        """Called on histogram steps with the device-binned histograms (optional)."""

    def write_findings(self, findings: Sequence[Finding], step: int) -> None:
        """Called at each flush with the current findings (optional)."""

    def write_coverage(self, coverage: Coverage) -> None:
        """Called once, after the first monitored step, with the activation coverage (optional)."""

    def write_settings(self, settings: Mapping[str, Any]) -> None:
        """Called with settings of the run as the monitor learns them (optional): the model,
        optimizer and ``every`` at ``watch()``, the batch size at the first flush after
        the first training forward (:mod:`gradscope.writers.hparams`)."""

    def flush(self) -> None:
        """Push buffered output to its destination (optional)."""

    def close(self) -> None:
        """Release files; called once by the monitor's ``close()`` (optional)."""

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def overrides(sink: Sink, method: str) -> bool:
    """Whether ``sink`` implements the optional ``method`` rather than inheriting the no-op."""
    if isinstance(sink, _Duck):
        return sink.has(method)
    return getattr(type(sink), method, None) is not getattr(Sink, method)


class _Duck(Sink):
    """A sink-like object that does not subclass :class:`Sink`: its methods, looked up once."""

    _OPTIONAL = ("write_histograms", "write_findings", "write_coverage", "write_settings", "flush",
                 "close")

    def __init__(self, obj: Any) -> None:
        self.obj = obj
        self._methods = {m: getattr(obj, m) for m in self._OPTIONAL
                         if callable(getattr(obj, m, None))}

    def has(self, method: str) -> bool:
        return method == "write" or method in self._methods

    def write(self, records: Sequence[Record], history: History) -> None:
        self.obj.write(records, history)

    def write_histograms(self, histograms: Sequence[Histogram]) -> None:
        if "write_histograms" in self._methods:
            self._methods["write_histograms"](histograms)

    def write_findings(self, findings: Sequence[Finding], step: int) -> None:
        if "write_findings" in self._methods:
            self._methods["write_findings"](findings, step)

    def write_coverage(self, coverage: Coverage) -> None:
        if "write_coverage" in self._methods:
            self._methods["write_coverage"](coverage)

    def write_settings(self, settings: Mapping[str, Any]) -> None:
        if "write_settings" in self._methods:
            self._methods["write_settings"](settings)

    def flush(self) -> None:
        if "flush" in self._methods:
            self._methods["flush"]()

    def close(self) -> None:
        if "close" in self._methods:
            self._methods["close"]()

    def __repr__(self) -> str:
        return repr(self.obj)


def as_sink(obj: Any, *, argument: str = "sinks") -> Sink:
    """``obj`` as a :class:`Sink`: itself, or a wrapper for an object with a ``write`` method."""
    if isinstance(obj, Sink):
        return obj
    if callable(getattr(obj, "write", None)):
        return _Duck(obj)
    raise TypeError(
        f"watch({argument}=...): {obj!r} is not a sink: it has no write(records, history) "
        "method; subclass gradscope.writers.Sink, or use gradscope.writers.MemoryWriter / "
        "TensorBoardWriter")


class SinkFanout:
    """The monitor's sinks, called in order, each failure isolated.

    A sink that raises is reported by one warning (naming the sink, the method and
    the error) and is called again at the next flush; the other sinks still get
    their call. :attr:`failures` counts the failed calls per sink.
    """

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)
        self.failures: dict[int, int] = {}
        self._warned: set[int] = set()

    def wants(self, method: str) -> bool:
        """Whether any sink implements the optional ``method``."""
        return any(overrides(s, method) for s in self.sinks)

    def emit(self, method: str, *args: Any) -> None:
        """Call ``method(*args)`` on every sink that implements it, isolating failures."""
        for sink in self.sinks:
            if method != "write" and not overrides(sink, method):
                continue
            try:
                getattr(sink, method)(*args)
            except Exception as err:
                key = id(sink)
                self.failures[key] = self.failures.get(key, 0) + 1
                if key not in self._warned:
                    self._warned.add(key)
                    warnings.warn(
                        f"gradscope: sink {sink!r} failed in {method}() ({type(err).__name__}: "
                        f"{err}); training and the other sinks go on, and it is called again "
                        "at the next flush (this warning is not repeated)",
                        RuntimeWarning, stacklevel=3)

    def __iter__(self) -> Iterator[Sink]:
        return iter(self.sinks)

    def __len__(self) -> int:
        return len(self.sinks)
