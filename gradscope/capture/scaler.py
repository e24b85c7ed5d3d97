"""Mixed precision: a ``torch.amp.GradScaler`` as a source of the step and of the scale.

Under a :class:`torch.amp.GradScaler` the backward runs on ``loss * scale``, so
every gradient seen *during* the backward (the ``grad_out_*`` metrics, the
``backprop`` histograms) is ``scale`` times too large, and ``scaler.step(opt)``
skips ``opt.step()`` when it found an inf/NaN gradient. The monitor learns about
the scaler from ``watch(..., scaler=scaler)``; this capture then

* hands the scale in force to the gradient hooks (:meth:`ScalerCapture.scale`):
  ``scaler._scale``, a tensor on the scaler's device, never ``get_scale()``
  (which reads it on the host: a synchronisation). The hooks divide their norms
  by it on the device;
* wraps the scaler's ``update`` (restored on detach, like a hook handle) so that
  the step ends there, once per iteration, whether the optimizer stepped or not:
  a skipped iteration ends its step too, and the activations and gradients of
  one iteration stay one step;
* records, every step, ``skipped`` (1.0 when the optimizer did not step) and
  ``scale`` (the scale this step's backward ran with) under the series
  :data:`SCALER_SERIES`.

Whether a step was skipped is known on the host for free: ``scaler.step`` calls
``optimizer.step()`` only when no inf was found, and the monitor's optimizer
hooks see that call or not. An optimizer that unscales inside its own fused
kernel (``Adam(fused=True)``: ``_step_supports_amp_scaling``) is always called;
``scaler.step`` then hands it ``grad_scale`` and ``found_inf`` tensors, which
the monitor reads on the device instead (:meth:`ScalerCapture.fused`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from gradscope.capture.base import Context
from gradscope.history import LayerInfo
from gradscope.records import SCALER_SERIES, Record

__all__ = ["SCALER_SERIES", "ScalerCapture"]


class _Patch:
    """A removable patch of one bound method on one object: the monitor owns it like a hook handle."""

    def __init__(self, obj: Any, name: str, wrapper: Callable[..., Any]) -> None:
        self.obj, self.name = obj, name
        obj.__dict__[name] = wrapper  # an instance attribute shadows the class's method

    def remove(self) -> None:
        """Restore the method (safe twice)."""
        if self.obj is not None:
            self.obj.__dict__.pop(self.name, None)
            self.obj = None


class ScalerCapture:
    """The scaler's part of a step: the scale for the gradient hooks, the step's end, skipped steps."""

    def __init__(self, ctx: Context, end_step: Callable[[], None]) -> None:
        self.ctx = ctx
        self._end_step = end_step
        self.stepped = False  # the watched optimizer stepped in this iteration
        self._found_inf: Optional[Tensor] = None  # a fused optimizer's verdict, on the device
        self._scale0: Optional[Tensor] = None  # 0-d view of the scaler's scale tensor

    @property
    def active(self) -> bool:
        """Whether a scaler is watched and enabled (the step then ends at its ``update``)."""
        scaler = self.ctx.options.scaler
        return scaler is not None and bool(scaler.is_enabled())

    def register(self) -> None:
        """Wrap the scaler's ``update`` while attached."""
        if not self.active:
            return
        scaler = self.ctx.options.scaler
        assert scaler is not None
        original = type(scaler).update.__get__(scaler)

        @functools.wraps(original)
        def update(*args: Any, **kwargs: Any) -> Any:
            if self.ctx.state.attached:
                self._before_update(scaler)
            return original(*args, **kwargs)

        self.ctx.hook(_Patch(scaler, "update", update))  # type: ignore[arg-type]
        self.ctx.grad_scale = self.scale
        self.ctx.queue.declare(LayerInfo(SCALER_SERIES, kind="step", order=0,
                                         type=type(scaler).__name__))

    def clear(self) -> None:
        """Forget the iteration in progress (on detach)."""
        self.stepped = False
        self._found_inf = None
        self.ctx.grad_scale = _no_scale

    def scale(self) -> Optional[Tensor]:
        """The scale the current backward runs with: a 0-d tensor on the scaler's device, or ``None``."""
        scale = getattr(self.ctx.options.scaler, "_scale", None)
        if scale is None:  # scaler.scale() has not run yet: nothing is scaled
            return None
        view = self._scale0
        if view is None or view._base is not scale:
            view = self._scale0 = scale.view(())
        return view

    def fused(self, optimizer: Any) -> Optional[Tensor]:
        """In the optimizer's pre-hook: the scale its gradients still carry, or ``None`` when unscaled.

        ``scaler.step`` hands an optimizer that unscales in its own kernel the
        tensors ``grad_scale`` and ``found_inf`` as attributes; its gradients are
        then still scaled, and it may skip the update itself.
        """
        found_inf = getattr(optimizer, "found_inf", None)
        self._found_inf = found_inf if isinstance(found_inf, Tensor) else None
        grad_scale = getattr(optimizer, "grad_scale", None)
        return grad_scale.reshape(()) if isinstance(grad_scale, Tensor) else None

    def _before_update(self, scaler: Any) -> None:
        """Queue this step's ``skipped`` and ``scale``, then end the step (before ``update`` changes the scale in place)."""
        state = self.ctx.state
        step, scale, found_inf = state.step, scaler._scale, self._found_inf
        skipped = None if found_inf is not None else float(not self.stepped)
        parts = [] if found_inf is None else [found_inf.reshape(()).to(scale.device)]
        if scale is not None:
            parts.append(scale.reshape(()))
            device = scale.device
        else:
            device = torch.device("cpu")
        self.ctx.queue.defer(step, device, parts, _ScalerDecoder(skipped, scale is not None))
        self.stepped, self._found_inf = False, None
        self._end_step()  # stacks (copies) the scale now: update() changes it in place


def _no_scale() -> Optional[Tensor]:
    return None


class _ScalerDecoder:
    """The scaler's values of one step: ``skipped`` (host-known, or a fused optimizer's found_inf) and ``scale``."""

    __slots__ = ("has_scale", "skipped")

    def __init__(self, skipped: Optional[float], has_scale: bool) -> None:
        self.skipped, self.has_scale = skipped, has_scale

    def __call__(self, step: int, values: Sequence[float]) -> list[Record]:
        values = list(values)
        skipped = self.skipped
        if skipped is None:
            skipped = float(values.pop(0) > 0)
        out = [Record(step, SCALER_SERIES, "skipped", skipped)]
        if self.has_scale:
            out.append(Record(step, SCALER_SERIES, "scale", values[0]))
        return out
