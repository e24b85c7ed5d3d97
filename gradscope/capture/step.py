"""What a step is: the root hooks, the backward's end, the optimizer hooks, the step's end.

The :class:`~gradscope.Monitor` registers these hooks and owns their handles; this
class decides, from them, when a step begins and ends and what each capture does then:

* with ``optimizer=``, a step is one ``optimizer.step()``. Parameter gradients are
  read in its pre-hook (after accumulation, and unscaled under a ``GradScaler``), update
  norms in its post-hook, which ends the step (or ``scaler.update()`` does, see
  :mod:`gradscope.capture.scaler`);
* without, one training forward of the watched module and its backward: gradients are
  read when that backward finishes, and the next forward ends the step.

What happens at the step's end is :mod:`gradscope.flush`'s (``end_step``).

A training forward of a sampled step is recorded (``StepState.recording``); one of an
unsampled step only checked for NaN/Inf (``StepState.checking``, with
``check_nonfinite``), and so are its gradients (:meth:`ParamCapture.check
<gradscope.capture.params.ParamCapture.check>`) where a sampled step reads them.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from gradscope.capture.activation import ActivationRecorder
from gradscope.capture.base import Context, tensors
from gradscope.capture.modules import ModuleCapture
from gradscope.capture.params import ParamCapture
from gradscope.capture.recurrent import RecurrentCapture
from gradscope.capture.scaler import ScalerCapture

__all__ = ["StepHooks", "training_mode"]


class StepHooks:
    """The hooks that define a step: they say when it ends, :mod:`gradscope.flush` ends it.

    Args:
        ctx: the monitor's context (its ``state`` is the step).
        optimizer: whether ``optimizer=`` was given (a step is one ``optimizer.step()``).
        update_ratio: whether update ratios are recorded (they need ``optimizer=``).
        ends: what ends a step (:meth:`gradscope.flush.Flush.end_step`; the monitor sets it).
    """

    def __init__(self, ctx: Context, *, optimizer: bool, update_ratio: bool,
                 recorder: ActivationRecorder, modules: ModuleCapture, params: ParamCapture,
                 recurrent: RecurrentCapture, ends: Callable[[], None] = lambda: None) -> None:
        self.ctx = ctx
        self.optimizer, self.update_ratio = optimizer, update_ratio
        self.recorder, self.modules, self.params, self.recurrent = recorder, modules, params, recurrent
        self.ends = ends
        self.scaler: Optional[ScalerCapture] = None  # set by the monitor (it ends steps too)
        self._has_forward = False  # without an optimizer: this step's forward has run
        self._bw_queued = False
        self._depth = 0  # forwards of the watched module in progress (a model may call itself)
        self._suspect = False  # outputs not finite, no activation output explains it

    # ------------------------------------------------------------ the forward
    def root_pre_hook(self, module: nn.Module, args: Any) -> None:
        """A forward of the watched module starts: a new step without an optimizer, and
        whether this forward is recorded, checked or neither."""
        ctx = self.ctx
        if ctx.traced() or not ctx.on_training_thread():
            return
        counted = module.training or ctx.options.record_eval
        if not self.optimizer and counted:
            if self._has_forward:
                self.end_step()
            self._has_forward = True
        self.modules.start_forward()
        self.recurrent.start_forward()
        state = ctx.state
        if counted and state.batch is None:
            state.batch = _batch_size(args)
        state.recording = counted and state.sampled
        state.checking = counted and not state.sampled and bool(ctx.options.check_nonfinite)
        announced = isinstance(module, _Mode)  # by an integration: no forward hook will end it
        if not announced:
            self._depth += 1
        self.recorder.checks.forward_ends = not announced

    def root_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        """The watched module's forward ended (also when it raised): the every-step check of
        its held activations, and, without an optimizer, read (or check) parameter
        gradients when this forward's backward finishes."""
        state, options = self.ctx.state, self.ctx.options
        if self.ctx.traced() or threading.get_ident() != state.thread:
            return
        if self._depth:
            self._depth -= 1
            if not self._depth and state.checking:
                checks = self.recorder.checks
                if checks.check_forward(output) is False and checks.nonfinite_step != state.step:
                    self._suspect = True  # gradients: each parameter's, not each layer's smallest
            elif not self._depth and state.recording:  # a sampled step: outputs too
                self.recorder.checks.check_outputs(output)
        if self.optimizer or not options.gradients or not (state.recording or state.checking):
            return
        if not torch.is_grad_enabled():
            return
        for t in tensors(output):
            if t.requires_grad:
                t.register_hook(self._backward_started)

    def _backward_started(self, grad: Tensor) -> None:
        if not self._bw_queued and self.ctx.state.attached:
            self._bw_queued = True
            step = self.ctx.state.step
            torch.autograd.Variable._execution_engine.queue_callback(
                lambda: self._backward_finished(step))

    def _backward_finished(self, step: int) -> None:
        self._bw_queued = False
        state = self.ctx.state
        if state.attached and step == state.step:  # accumulated gradients: the last backward wins
            if state.sampled:
                self.params.read(step)
            else:
                self.params.check(step, every_parameter=self._suspect)

    # ---------------------------------------------------------- the optimizer
    def opt_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> Any:
        """Read the gradients when they are final (or check them, on an unsampled step)."""
        scaler = self.scaler
        scale = scaler.fused(optimizer) if scaler is not None and scaler.active else None
        ctx = self.ctx
        if not (ctx.options.gradients and ctx.on_training_thread()):
            return None
        step, snapshot = ctx.state.step, self.update_ratio
        if not ctx.state.sampled:
            if not ctx.options.check_nonfinite:
                return None
            return read_gradients(args, kwargs, lambda: self.params.check(
                step, every_parameter=self._suspect))

        def read() -> None:
            if ctx.state.attached and step == ctx.state.step:
                self.params.read(step, snapshot=snapshot, grad_scale=scale)

        return read_gradients(args, kwargs, read)

    def opt_post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        """The update norms; the step ends here (or at ``scaler.update()``)."""
        if not self.ctx.on_training_thread():
            return
        self.params.updates(self.ctx.state.step)
        if self.scaler is not None and self.scaler.active:  # ends at scaler.update()
            self.scaler.stepped = True
        else:
            self.end_step()

    def clear(self) -> None:
        """Forget the forwards in progress (on detach)."""
        self._depth = 0

    def end_step(self) -> None:
        """The step is over (the flush decides what that does)."""
        self.ends()

    def step_over(self) -> None:
        """The step ended (called by :meth:`gradscope.flush.Flush.end_step`): a new one starts."""
        self._has_forward = self._suspect = False


def training_mode(training: bool) -> nn.Module:
    """What :meth:`StepHooks.root_pre_hook` reads of a module (its ``training`` flag), for a
    forward announced by an integration rather than run by the watched module."""
    return _Mode(training)  # type: ignore[return-value]


class _Mode:
    def __init__(self, training: bool) -> None:
        self.training = training


def read_gradients(args: tuple[Any, ...], kwargs: dict[str, Any], read: Callable[[], None]
                   ) -> Optional[tuple[tuple[Any, ...], dict[str, Any]]]:
    """In an optimizer's step pre-hook: ``read()`` the gradients when they are final.

    Usually they are final already and ``read()`` runs now. Given a closure
    (``opt.step(closure)``: Lightning, LBFGS), the optimizer runs the forward and
    backward inside ``step()``: the closure is wrapped to read after it returns
    (the last call wins), and the new arguments are returned for the hook to hand on.
    """
    closure = kwargs.get("closure", args[1] if len(args) > 1 else None)  # args[0]: the optimizer
    if not callable(closure):
        read()
        return None

    def read_after(*a: Any, **k: Any) -> Any:
        loss = closure(*a, **k)
        read()
        return loss

    if "closure" in kwargs:
        return args, {**kwargs, "closure": read_after}
    return (args[0], read_after, *args[2:]), kwargs


def _batch_size(args: Any) -> Optional[int]:
    """The leading size of a forward's first tensor argument (the batch, usually), or ``None``."""
    first = next(iter(tensors(args)), None)
    return int(first.shape[0]) if first is not None and first.dim() > 0 else None
