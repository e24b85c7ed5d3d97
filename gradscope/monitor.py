"""The monitor: options, hook handles and the wiring of the captures, the flush and the sinks.

:func:`gradscope.watch` attaches a :class:`Monitor` to a model. The captures
(:mod:`gradscope.capture`) compute small statistic vectors on the tensors' own
device and queue them (:mod:`gradscope.queue`); every ``flush_every`` steps the
queue crosses to the host in one transfer per device and lands in
:attr:`Monitor.history` and the sinks (TensorBoard, findings, ...), in the order
:mod:`gradscope.flush` owns. Off-steps cost one attribute check per hook.

What is a step (defined by the hooks of :mod:`gradscope.capture.step`, which the
monitor registers and owns):

* with ``optimizer=``, one ``optimizer.step()``. Parameter gradients are read in the
  optimizer's step pre-hook, when they are final: after gradient accumulation, and
  unscaled under ``torch.amp.GradScaler`` (``scaler.step`` unscales before it calls
  ``optimizer.step``). Update ratios compare the weights across the step.
  Activations are read from the first training forward of each step.
* without, one training forward of the model (and its backward). Parameter
  gradients are read when that backward finishes.
* with ``scaler=`` (a ``torch.amp.GradScaler``), one iteration ending at
  ``scaler.update()``, whether the scaler let the optimizer step or skipped it.

Only the training thread's forwards and optimizer steps count (the thread that
called ``watch()`` or ``attach()``; see :mod:`gradscope.capture.base`). A model is
watched by one attached monitor at a time. The model's hooks hold the monitor
weakly: a monitor dropped without :meth:`Monitor.close` is closed when it is
garbage-collected (its queue flushed, its hooks removed), with a warning.

Example:
    >>> import torch, torch.nn as nn, gradscope
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> with gradscope.watch(model, optimizer=opt) as mon:
    ...     for _ in range(3):
    ...         opt.zero_grad()
    ...         model(torch.randn(16, 4)).pow(2).mean().backward()
    ...         opt.step()
    >>> mon.history.layers("activation")
    ['1']
    >>> len(mon.history.series("0", "grad_norm")[0])
    3
"""

from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from dataclasses import replace
from typing import Any, Optional

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from gradscope import distributed, lifecycle, shards
from gradscope.capture import (
    ActivationRecorder,
    Context,
    Coverage,
    CoverageTracker,
    Forward,
    FunctionalCapture,
    ModuleCapture,
    ParamCapture,
    RecurrentCapture,
)
from gradscope.capture.base import unwrap
from gradscope.capture.compiled import CompiledSteps
from gradscope.capture.layers import parameter_shapes
from gradscope.capture.scaler import ScalerCapture
from gradscope.capture.step import StepHooks, training_mode
from gradscope.findings import Finding, Thresholds
from gradscope.findings.sink import findings_of
from gradscope.flush import Flush
from gradscope.history import History, Retention
from gradscope.options import Options, check_model
from gradscope.queue import Queue
from gradscope.reductions import combine_op
from gradscope.sinks import make_sinks
from gradscope.writers.base import Record, Sink, SinkFanout
from gradscope.writers.resume import resume_step

__all__ = ["Monitor"]

#: The attached monitor of each watched model (both held weakly).
_WATCHED: weakref.WeakKeyDictionary[nn.Module, weakref.ref[Monitor]] = weakref.WeakKeyDictionary()


class Monitor:
    """Hooks on a model that record activation and gradient statistics.

    Use :func:`gradscope.watch` to create and attach one (its docstring lists the options).
    The monitor owns every hook handle it makes and removes them all in
    :meth:`detach` (also when leaving a ``with`` block through an exception). It
    keeps no strong reference to the model or its parameters, and no activation
    or gradient tensor outlives the hook that read it.

    Args:
        model: any ``nn.Module``; its code and outputs are left unchanged.
        optimizer: when given, a step is one ``optimizer.step()``.
        options: the validated :class:`gradscope.options.Options`; or pass the
            flat keywords of :func:`gradscope.watch` instead.

    Attributes:
        history: the :class:`gradscope.History` of everything flushed so far.
        writer: the TensorBoard writer made from ``logdir`` (else the first
            TensorBoard writer among the sinks), or ``None``.
        options: the :class:`gradscope.options.Options` in force.

    Example:
        >>> import torch.nn as nn, gradscope
        >>> mon = gradscope.watch(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), every=10)
        >>> mon.detach()
    """

    def __init__(self, model: nn.Module, *, optimizer: Optional[torch.optim.Optimizer] = None,
                 options: Optional[Options] = None, **flat: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"watch(model=...) needs a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"watch(optimizer=...) needs a torch.optim.Optimizer, got "
                f"{type(optimizer).__name__}; pass the optimizer whose step() ends a step")
        if options is None:
            options = Options.build(**flat)
        elif flat:
            raise TypeError(f"Monitor(): pass options=... or flat keywords, not both ({sorted(flat)})")
        options = _checked(options, model, optimizer)
        self.options = options
        self.history = History(options.retention or Retention(recent=None))
        self._model_ref = weakref.ref(model)
        self._optimizer_ref = weakref.ref(optimizer) if optimizer is not None else None
        self._handles: list[RemovableHandle] = []
        self._closed = False

        if options.scaler is not None and optimizer is None:
            raise TypeError("watch(scaler=...) needs optimizer=...: the scaler unscales the "
                            "gradients inside scaler.step(optimizer); pass that optimizer")
        combine, writes = distributed.roles(model, optimizer, combine_ranks=options.combine_ranks,
                                            gradients=options.gradients)
        self.writes = writes  #: this process writes the sinks and prints (rank 0 when combined)
        self._sinks, self.writer = make_sinks(options, model, optimizer) \
            if self.writes else (SinkFanout([]), None)

        self._queue = Queue(distributed.RankCombiner(combine_op) if combine else None)
        self._ctx = Context(options, self._queue, self._handles.append, combine_params=combine,
                            histograms_on=self._sinks.wants("write_histograms"),
                            combine=shards.activations_combine(model, self._queue.combine))
        self._ctx.state.step = options.start_step
        self._ctx.state.sampled = self._ctx.sample(options.start_step, first=True)
        self._recorder = ActivationRecorder(self._ctx)
        self._compiled = CompiledSteps(self._ctx, optimizer=optimizer is not None)
        self._coverage = CoverageTracker(self._ctx, self._recorder, self._compiled)
        forward = Forward(self._ctx)
        self._modules = ModuleCapture(self._ctx, self._recorder, forward)
        self._functional = FunctionalCapture(self._ctx, self._recorder, forward, self._coverage)
        self._params = ParamCapture(self._ctx)
        self._recurrent = RecurrentCapture(self._ctx)
        self._steps = StepHooks(
            self._ctx, optimizer=optimizer is not None, update_ratio=self.record_update_ratio,
            recorder=self._recorder, modules=self._modules, params=self._params,
            recurrent=self._recurrent)
        self._flush = Flush(self._ctx, self.history, self._sinks, recorder=self._recorder,
                            coverage=self._coverage, recurrent=self._recurrent,
                            params=self._params, compiled=self._compiled,
                            step_over=self._steps.step_over)
        self._steps.ends = self._flush.end_step
        self._scaler = self._steps.scaler = ScalerCapture(self._ctx, self._steps.end_step)
        lifecycle.opened(self)  # closed at exit if still open

    # ------------------------------------------------------------------ api
    @property
    def step(self) -> int:
        """The current step index (0-based)."""
        return self._ctx.state.step

    @property
    def attached(self) -> bool:
        """Whether the hooks are on the model."""
        return self._ctx.state.attached

    @property
    def model(self) -> Optional[nn.Module]:
        """The watched model, or ``None`` if it has been garbage-collected."""
        return self._model_ref()

    @property
    def sinks(self) -> list[Sink]:
        """Every sink the monitor writes to (the findings sink first, when findings are on)."""
        return list(self._sinks)

    @property
    def record_update_ratio(self) -> bool:
        """Whether update ratios are recorded (they need ``optimizer=``)."""
        return self.options.update_ratio and self._optimizer_ref is not None

    def attach(self) -> Monitor:
        """Register the hooks (no-op when attached). Returns ``self``."""
        if self._closed:
            raise RuntimeError("this Monitor is closed; create a new one with gradscope.watch()")
        if self.attached:
            return self
        model = self._model_ref()
        if model is None:
            raise RuntimeError("the watched model no longer exists")
        ref = _WATCHED.get(model)
        other = ref() if ref is not None else None
        if other is not None and other is not self and other.attached:
            raise RuntimeError(
                f"this {type(model).__name__} is already watched by an attached {other!r}; two "
                "monitors would hook it twice and record every step twice. Close that one "
                "first (mon.close()), or give the one monitor several sinks=[...]")
        try:
            self._register(model)
        except BaseException:
            self._remove_handles()
            raise
        self._ctx.state.thread = threading.get_ident()
        self._ctx.state.attached = True
        _WATCHED[model] = weakref.ref(self)
        self._compiled.start(model)  # a compiled model's sampled steps run eagerly
        return self

    def detach(self) -> None:
        """Flush what is queued and remove every hook. Safe to call twice."""
        if not self.attached:
            return
        try:
            self._flush.settle(whole=True)
            self._flush.write()
        finally:
            self._remove_handles()
            self._ctx.state.attached = False
            self._functional.clear()
            model = self._model_ref()
            if model is not None and _WATCHED.get(model, lambda: None)() is self:
                del _WATCHED[model]
            self._modules.clear()
            self._recurrent.clear()
            self._recorder.clear()
            self._steps.clear()
            self._queue.clear()
            self._scaler.clear()
            self._compiled.stop()  # the prior torch.compile stance, always
            self._params.clear()  # last: it may warn (layers that never got a gradient)

    def close(self) -> None:
        """:meth:`detach`, then close the sinks (the findings summary first). Safe to call twice."""
        if self._closed:
            return
        try:
            self.detach()
        finally:
            self._closed = True
            lifecycle.closed(self)
            self._sinks.emit("close")

    def __enter__(self) -> Monitor:
        return self.attach()

    def __del__(self) -> None:
        if getattr(self, "_closed", True) or not hasattr(self, "_params"):  # closed, or half-made
            return
        if self.attached:
            warnings.warn(
                f"gradscope: {self!r} was garbage-collected without close(): it was closed "
                "now (what it had queued was flushed to its sinks, its hooks removed). Keep "
                "it (mon = gradscope.watch(...)) and call mon.close(), or use `with "
                "gradscope.watch(...) as mon:`", RuntimeWarning, stacklevel=2)
        with contextlib.suppress(Exception):  # nothing may be raised from a finaliser
            self.close()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> list[Record]:
        """Move queued statistics to the host (one transfer per device) and write them.

        Returns the new records. Called automatically every ``flush_every`` steps and
        on :meth:`detach`.
        """
        return self._flush.flush()

    def findings(self, thresholds: Optional[Thresholds] = None) -> list[Finding]:
        """The findings so far (:mod:`gradscope.findings`): those holding, then those resolved.

        Args:
            thresholds: override the monitor's (``findings=``, or the defaults).

        Example:
            >>> import torch, torch.nn as nn, gradscope
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
            >>> with gradscope.watch(model, summary=False) as mon:
            ...     model(torch.randn(16, 4)).mean().backward()
            >>> mon.findings()
            []
        """
        return findings_of(self._sinks.sinks, self.history, thresholds)

    def coverage(self) -> Coverage:
        """What gradscope sees of the model's activations: call-sites captured by module and
        by function, unknown activation-like modules, what no hook can see (a
        :class:`gradscope.Coverage`; printed once after the first monitored step)."""
        return self._coverage.report()

    def held_bytes(self) -> int:
        """Bytes of statistics waiting on the device for the next flush (O(layers))."""
        return self._queue.held_bytes()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return (f"Monitor({state}, step={self.step}, {_sites(self)}, "
                f"parameters={len(self._params.refs)})")

    # -------------------------------------------------------------- hooks
    def _register(self, model: nn.Module) -> None:
        hook = self._handles.append
        hook(model.register_forward_pre_hook(_weak(self._steps.root_pre_hook)))
        hook(model.register_forward_hook(_weak(self._steps.root_hook), always_call=True))
        model = unwrap(model)  # torch.compile(model): hook and name the compiled module's parts
        if self.options.activations:
            self._modules.register(model)
            self._functional.register(model, self._modules.hooked)
            self._coverage.register(model)
        self._recurrent.register(model)
        if self.options.gradients:
            self._params.register(model)
        opt = self._optimizer_ref() if self._optimizer_ref is not None else None
        if opt is not None:
            hook(opt.register_step_pre_hook(_weak(self._steps.opt_pre_hook)))
            hook(opt.register_step_post_hook(_weak(self._steps.opt_post_hook)))
        self._scaler.register(model)

    def _remove_handles(self) -> None:
        handles = list(self._handles)
        self._handles.clear()
        for h in handles:
            h.remove()

    def forward_starts(self, training: bool = True) -> None:
        """Tell the monitor that a forward of the model starts.

        The watched module's own forward pre-hook does this; an integration calls
        it when a framework's training step may run the model's submodules without
        calling the watched module (a LightningModule's ``training_step``).
        """
        self._steps.root_pre_hook(training_mode(training), ())


# ---------------------------------------------------------------- helpers
def _checked(options: Options, model: nn.Module, optimizer: Any) -> Options:
    """``options`` checked against the model (:func:`gradscope.options.check_model`), with
    the ``start_step`` that continues the run in ``logdir`` when resuming (the same model
    only: :func:`gradscope.writers.resume.resume_step`)."""
    check_model(options, model, optimizer)
    if not options.resume or options.logdir is None:
        return options
    return replace(options, start_step=resume_step(
        options.logdir, start_step=options.start_step,
        parameters=parameter_shapes(model, options.include_fn),
        modules={n: type(m).__name__ for n, m in model.named_modules()}))


def _sites(mon: Monitor) -> str:
    """The call-sites seen, or before the first forward (none seen) the modules hooked."""
    seen, hooked = len(mon._recorder.sites), len(mon._modules.hooked)
    return f"activation_sites={seen}" if seen or not hooked else \
        f"activation_modules={hooked} (call-sites are found at the first forward)"


def _weak(method: Any) -> Any:
    """A hook calling ``method`` while its object lives: the model must not keep the monitor alive."""
    ref = weakref.WeakMethod(method)

    def call(*args: Any) -> Any:
        if torch.compiler.is_compiling():  # traced by torch.compile: stay out of the graph
            return None  # (a WeakMethod call would break it; see Context.traced)
        m = ref()
        return m(*args) if m is not None else None

    return call
