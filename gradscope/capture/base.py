"""What every capture shares with the monitor: options, the step, the queue.

A capture (module hooks, parameters and optimizer, ...) registers its hooks
through :meth:`Context.hook`, so that the monitor owns every handle; reads the
step and whether this forward is recorded (or only checked for NaN/Inf) from
:class:`StepState`, which only the monitor and its flush change; queues its statistics on
:attr:`Context.queue`; and reports an error in a hook through
:meth:`Context.failed` (one warning and that call-site stops, or a raise with
``strict=True``).

**The training thread** is the thread that attached the monitor (called
``watch()`` or ``attach()``). Only its forwards and optimizer steps are steps and
are recorded; a forward run by another thread (an evaluation thread, a
``DataParallel`` replica) is ignored, and said once (:meth:`Context.on_training_thread`).
So the monitor's state is only ever changed by one thread, and training one
model from two threads records the attaching thread's steps and never fails.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gradscope.histograms import Histogram, decode_histogram, histogram_vector
from gradscope.options import Options
from gradscope.queue import Entry, Queue
from gradscope.records import Record, record
from gradscope.schedules import verdict

__all__ = ["Context", "NonfiniteCheck", "StepState", "compiling", "tensors", "unwrap"]

#: Whether ``torch.compile`` is tracing the code that calls it.
compiling = torch.compiler.is_compiling


def unwrap(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper compiles (so that names have no
    ``_orig_mod.`` prefix), or ``model`` itself."""
    inner = getattr(model, "_orig_mod", None)
    if type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
        return inner
    return model


def tensors(obj: Any) -> Iterable[Tensor]:
    """Every tensor in a nested output (tensor, tuple, list, dict: a ``ModelOutput`` too)."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from tensors(o)


class NonfiniteCheck:
    """Decoder of the every-step NaN/Inf check: ``metric`` = 1 for each of ``names`` that
    has a value that is not finite among its ``per`` values (nothing for the others)."""

    __slots__ = ("metric", "names", "per")

    def __init__(self, names: Sequence[str], metric: str, per: int = 1) -> None:
        self.names, self.metric, self.per = list(names), metric, per

    def __call__(self, step: int, values: Sequence[float]) -> list[Record]:
        per = self.per
        return [record(step, name, self.metric, 1.0) for i, name in enumerate(self.names)
                if any(v - v != 0.0 for v in values[i * per:(i + 1) * per])]  # NaN or ±Inf


@dataclass
class StepState:
    """The monitor's current step, as the captures see it (the monitor alone changes it)."""

    step: int = 0
    sampled: bool = True  # the schedule samples this step
    recording: bool = False  # inside a training forward of a sampled step
    checking: bool = False  # inside a training forward of an unsampled step: NaN/Inf check only
    attached: bool = False
    thread: int = 0  # ident of the training thread (the one that attached)
    hist_step: int = -1  # the step ``hist_due`` was computed for
    hist_due: bool = False
    traced: bool = False  # a hook ran while torch.compile traced the model (and did nothing)
    batch: Optional[int] = None  # leading size of the first training forward's first tensor


@dataclass
class Context:
    """Options, step state and queue, shared by the monitor and its captures (no history:
    captures only defer to the queue, :mod:`gradscope.flush` writes the history)."""

    options: Options
    queue: Queue
    hook: Callable[[RemovableHandle], None]
    state: StepState = field(default_factory=StepState)
    histograms_on: bool = False  # some sink writes histograms
    ready_histograms: list[Histogram] = field(default_factory=list)
    #: the loss scale the current backward runs with (a 0-d device tensor), or None
    #: (set by :class:`gradscope.capture.scaler.ScalerCapture`)
    grad_scale: Callable[[], Optional[Tensor]] = field(default=lambda: None)
    #: statistics are combined across the ranks of torch.distributed at each flush:
    #: per-unit masks are queued too (:mod:`gradscope.distributed`)
    combine: bool = False
    #: sharded parameters' sums are added across the ranks at each flush (:mod:`gradscope.shards`)
    combine_params: bool = False
    #: module name -> what a capture sees inside it, for modules whose insides no
    #: module hook reaches (fused ``nn.LSTM``/``nn.GRU``/``nn.RNN``: their gates)
    covered: dict[str, str] = field(default_factory=dict)
    _said: set[str] = field(default_factory=set)  # the one-time warnings already given

    def on_training_thread(self) -> bool:
        """Whether the caller runs on the training thread; says once when it does not."""
        if threading.get_ident() == self.state.thread:
            return True
        self.once("thread", f"gradscope: a forward or optimizer step of the watched model ran "
                  f"on thread {threading.current_thread().name!r}, not on the training thread "
                  "(the one that called watch() or attach()); it is not recorded (nor are "
                  "later ones of other threads: this is said once). To monitor training that "
                  "runs on another thread, call watch() on that thread.")
        return False

    def sample(self, step: int, first: bool = False) -> bool:
        """The schedule's verdict for ``step``; a schedule that raises, or returns something
        else than a bool, samples nothing (said once). ``first`` (at ``watch()``): an answer
        that is not a bool is raised."""
        try:
            value = self.options.schedule(step)
        except Exception as err:
            if self.options.strict:
                raise
            self.once("schedule", f"gradscope: the sampling schedule (every=...) raised at step "
                      f"{step}: {type(err).__name__}: {err}. Steps where it raises are not "
                      "sampled; training goes on (pass strict=True to raise).")
            return False
        try:
            return verdict(value, step)
        except TypeError as err:
            if self.options.strict or first:
                raise
            self.once("schedule", f"gradscope: {err}. Steps where it does not are not sampled; "
                      "training goes on (pass strict=True to raise).")
            return False

    def once(self, key: str, message: str) -> None:
        """Warn ``message`` the first time ``key`` is given."""
        if key not in self._said:
            self._said.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def traced(self) -> bool:
        """Whether ``torch.compile`` is tracing the hook that asks (noted for the coverage
        report and :mod:`gradscope.capture.compiled`, which then runs the sampled steps
        eagerly). A traced hook does nothing: it adds no graph break and no op to the
        compiled graph, and records nothing."""
        if compiling():
            self.state.traced = True
            return True
        return False

    def recording(self) -> bool:
        """Whether a hook should record now: in a monitored forward, on the training
        thread, not traced."""
        return (not self.traced() and self.state.recording
                and threading.get_ident() == self.state.thread)

    def histogram_step(self) -> bool:
        """Whether the current step takes histograms (cached per step)."""
        schedule = self.options.histogram_schedule
        if schedule is None or not self.histograms_on:
            return False
        s = self.state
        if s.hist_step != s.step:
            s.hist_step, s.hist_due = s.step, bool(schedule(s.step))
        return s.hist_due

    def histogram_entry(self, step: int, group: str, name: str, x: Tensor) -> Entry:
        """The device-side histogram of ``x``, to queue; decoded at the flush into ``ready_histograms``."""
        with torch.no_grad():
            vec = histogram_vector(x, self.options.histogram_bins)
        numel, ready = x.numel(), self.ready_histograms

        def decode(step: int, values: list[float]) -> list[tuple[str, str, float]]:
            h = decode_histogram(step, group, name, values, numel)
            if h is not None:
                ready.append(h)
            return []

        return Entry(step, vec, decode)  # type: ignore[arg-type]

    def failed(self, what: str, err: Exception) -> None:
        """An error inside a hook: raise with ``strict=True``, else warn (the caller stops that site)."""
        if self.options.strict:
            raise err
        warnings.warn(
            f"gradscope: stopped monitoring {what!r} after an error in its hook: "
            f"{type(err).__name__}: {err}. Training goes on; pass strict=True to raise.",
            RuntimeWarning,
            stacklevel=3,
        )
