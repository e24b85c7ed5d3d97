"""The every-step NaN/Inf check of the steps ``every`` does not sample.

On an unsampled step the module capture hands each activation call to
:meth:`NonfiniteChecker.check`, which is lazy where it costs no memory: an output that
the activation's own backward keeps (ReLU, sigmoid, tanh, softmax save their result) is
held (a reference, no copy) until the model's forward ends, when
:meth:`NonfiniteChecker.check_forward` tests the model's outputs. A NaN or ±Inf in an
activation reaches them (or, masked on the way, a parameter gradient, which is checked
too), so on the CPU the usual step costs one sum per model output, whatever the number
of call-sites; only when an output is not finite is each held activation tested, in
forward order. The test is one sum read on the host (:func:`gradscope.stats.all_finite`;
a sum that is not finite is confirmed by a min/max pass). On an accelerator nothing is
read: the held outputs' max-abs values (``torch._foreach_norm(..., inf)``, one fused
call per device) are queued like any statistic and the decoder keeps only the non-finite
ones. A non-finite output gives a record ``nonfinite_check`` = 1 at that step and call-
site: "NaN/Inf seen here, not counted". An output is tested at its call instead
(:meth:`NonfiniteChecker.check_now`) when autograd may not keep it, so that holding it
could raise the peak memory (a family whose backward saves its input: GELU, SiLU,
LeakyReLU, ELU, whose output a dropout after them would free; a forward without
autograd; an output that needs no gradient, a frozen layer's); for a site whose output a
later operation modified in place (seen by its version counter; from then on); and with
``check_nonfinite="all"`` (each output at its call, whether or not a NaN reaches the
model's outputs). The model's outputs are checked on sampled steps too
(:meth:`NonfiniteChecker.check_outputs`). When they are not finite and no activation
output is, :class:`gradscope.capture.step.StepHooks` has every parameter's gradient
checked. Gradients of unsampled steps are checked at the parameters
(:meth:`gradscope.capture.params.ParamCapture.check`): a hook on every call-site's
output gradient at every step would cost more than the rest of the check together.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch
from torch import Tensor

from gradscope import stats
from gradscope.capture.base import Context, NonfiniteCheck, tensors
from gradscope.capture.fused import FusedCapture
from gradscope.capture.site import Site
from gradscope.history import LayerInfo

__all__ = ["OUTPUT_SERIES", "NonfiniteChecker"]

#: The series of the model's outputs' NaN/Inf check (kind ``step``).
OUTPUT_SERIES = "(output)"
_FUSED_OUTPUT = NonfiniteCheck([OUTPUT_SERIES], "output_nonfinite")  # the fused probe's one value


class NonfiniteChecker:
    """Holds an unsampled forward's activation outputs and checks them, the model's outputs
    and (through :class:`gradscope.capture.step.StepHooks`) escalates the gradient check."""

    def __init__(self, ctx: Context, fused: Optional[FusedCapture] = None) -> None:
        self.ctx = ctx
        self.fused = fused  # tests an output at its call in one launch where it can
        self._held: list[tuple[Site, Tensor, int]] = []  # (site, output, its version)
        self._lazy = ctx.options.check_nonfinite is True  # "all": each output at its call
        #: this forward ends in the watched module's forward hook (it is not one announced by
        #: an integration, which has none), so outputs may be held until then
        self.forward_ends = False
        self.nonfinite_step = -1  # the last step whose check found a non-finite output (CPU)

    def check(self, site: Site, y: Tensor) -> None:
        """The every-step NaN/Inf check of an unsampled step's call (once per step): hold
        the output for :meth:`check_forward`, or test it now (see the module's docstring)."""
        step = self.ctx.state.step
        if site.failed or site.fwd_step == step:
            return
        site.fwd_step = step
        if self._lazy and self.forward_ends and not site.at_call and y.requires_grad \
                and torch.is_grad_enabled():
            if site.hold is None:  # decided once: the family's backward is the same every step
                site.hold = hasattr(y.grad_fn, "_saved_result")
            if site.hold:
                self._held.append((site, y, y._version))
                return
        self.check_now(site, y)

    def check_now(self, site: Site, y: Tensor) -> None:
        """Test ``y`` of ``site`` for NaN/Inf now: a sum read on the CPU, a min/max queued
        on an accelerator."""
        try:
            x = y.detach()
            step = self.ctx.state.step
            if stats.host_readable(x):
                if stats.all_finite(x):
                    return  # nothing to record (the usual case on the CPU)
                self.nonfinite_step = step
            elif self.fused is not None and self.fused.probe(x, step, site.fused_checks):
                return
            self.ctx.queue.defer(step, x.device, [stats.finite_probe(x)], site.checks)
        except Exception as err:
            self._fail(site, err)

    def check_outputs(self, output: Any) -> Optional[bool]:
        """The NaN/Inf check of the watched model's outputs (``output``: what its forward
        returned), on every counted step: whether they are finite (``None``: not known
        without a host read, an accelerator's, or no tensor). Outputs that are not finite
        give ``output_nonfinite`` = 1 at series :data:`OUTPUT_SERIES` (a NaN that enters
        after the last activation, with finite gradients, is seen nowhere else); on an
        accelerator their min/max are queued and decoded at the flush."""
        try:
            outs = [t.detach() for t in tensors(output) if t.is_floating_point() and t.numel()]
            if not outs:
                return None
            step = self.ctx.state.step
            if all(stats.host_readable(t) for t in outs):
                if all(stats.all_finite(t) for t in outs):
                    return True
                self._declare_output()
                self.ctx.queue.defer(step, outs[0].device, [torch.full((1,), math.nan)],
                                     NonfiniteCheck([OUTPUT_SERIES], "output_nonfinite"))
                return False
            self._declare_output()
            for t in outs:
                if self.fused is not None and self.fused.probe(t, step, _FUSED_OUTPUT):
                    continue
                self.ctx.queue.defer(step, t.device, [stats.finite_probe(t)],
                                     NonfiniteCheck([OUTPUT_SERIES], "output_nonfinite", per=2))
        except Exception as err:
            self._lazy = False  # from now on each activation output at its call
            self.ctx.failed("the NaN/Inf check of the model's outputs", err)
        return None

    def _declare_output(self) -> None:
        self.ctx.queue.declare(LayerInfo(OUTPUT_SERIES, kind="step", order=1,
                                         type="model output"))

    def check_forward(self, output: Any) -> Optional[bool]:
        """An unsampled forward of the watched model ended (``output``: what it returned):
        test its outputs (:meth:`check_outputs`) and, unless they are finite, the held
        activation outputs (see the module's docstring). Whether the outputs are finite."""
        held, self._held = self._held, []
        host: list[tuple[Site, Tensor]] = []
        device: dict[torch.device, list[tuple[Site, Tensor]]] = {}
        for site, y, version in held:
            if y._version != version:  # modified in place after its call: from now on at the call
                site.at_call = True
            if stats.host_readable(y):
                host.append((site, y))
            elif not site.failed:
                device.setdefault(y.device, []).append((site, y.detach()))
        for items in device.values():
            self._probe(items)
        finite = self.check_outputs(output)
        if finite is not True:
            for site, y in host:
                if not site.failed:
                    self.check_now(site, y)
        return finite

    def _probe(self, items: list[tuple[Site, Tensor]]) -> None:
        """Queue one device's held outputs' :func:`gradscope.stats.foreach_finite_probe`
        (one fused call); nothing is read back."""
        try:
            with torch.no_grad():
                vec = stats.foreach_finite_probe([y for _, y in items])
            self.ctx.queue.defer(self.ctx.state.step, vec.device, [vec], NonfiniteCheck(
                [site.name for site, _ in items], "nonfinite_check"))
        except Exception as err:
            for site, _ in items:
                self._fail(site, err)

    def end_step(self) -> None:
        """The step ends: outputs still held (a forward whose end was not seen) are tested."""
        if self._held:
            self.check_forward(None)

    def clear(self) -> None:
        """Forget the held outputs (on detach)."""
        self._held.clear()

    def held(self) -> int:
        """Activation outputs held until the forward ends (0 between forwards)."""
        return len(self._held)

    def _fail(self, site: Site, err: Exception) -> None:
        site.failed = True
        self.ctx.failed(site.name, err)
