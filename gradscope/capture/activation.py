"""Activation call-sites: what is recorded when an activation runs, whoever saw it run.

The module capture (and any other source of activation calls) finds a call and
hands its input and output to :meth:`ActivationRecorder.record`, which

* reduces the output (and the input, for families that need it) with the
  site's :class:`gradscope.reductions.Plan` and defers the result on the queue;
* registers a tensor hook on the output that reduces the gradient flowing back
  into it (``grad_out_*``), once per step;
* keeps the units that were on, for the unit window (``dead_units_window``),
  updated at the step's end by :meth:`ActivationRecorder.end_step`;
* on histogram steps, queues histograms of the output and of its gradient.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from gradscope.activations import ActivationFamily
from gradscope.capture.base import Context
from gradscope.distributed import MaskDecoder
from gradscope.fused import Fuser
from gradscope.history import LayerInfo
from gradscope.reductions import ActivationCall, GradCall, Plan

__all__ = ["ActivationRecorder", "Site"]

_NEVER = -(2**62)  # "last active step" of a unit never seen active


@dataclass
class Site:
    """One activation call-site: a module (or function) and its call index in a forward."""

    name: str
    module_name: str
    call: int
    family: ActivationFamily
    plan: Plan
    window: Plan
    last_active: Optional[Tensor] = None  # per unit: the last step it was on
    fwd_step: int = -1
    bwd_step: int = -1
    failed: bool = False


class ActivationRecorder:
    """Owns the call-sites and records their forward, backward and window statistics."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sites: dict[tuple[str, int], Site] = {}
        self._plans: dict[tuple[int, str], Plan] = {}
        self._backprop = Plan(None, "backprop", partial=ctx.combine)
        self._windows: list[tuple[Site, Tensor, int]] = []
        self.fuser = Fuser(ctx.options.fused)

    def site(self, module_name: str, call: int, family: ActivationFamily, name: str,
             type_name: str, shape: tuple[int, ...]) -> Site:
        """The call-site ``(module_name, call)``, declared in the history on first sight."""
        key = (module_name, call)
        site = self.sites.get(key)
        if site is None:
            site = Site(name, module_name, call, family, self._plan(family, "activation"),
                        self._plan(family, "window"))
            self.sites[key] = site
            self.ctx.history.add_layer(LayerInfo(
                name, kind="activation", order=len(self.sites) - 1, type=type_name,
                family=family.name, module=module_name, call=call, shape=shape))
        return site

    def _plan(self, family: ActivationFamily, kind: str) -> Plan:
        key = (id(family), kind)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = Plan(family, kind, partial=self.ctx.combine)
        return plan

    def record(self, site: Site, module: nn.Module, x: Optional[Tensor], y: Tensor) -> None:
        """Record one call of ``site`` (at most once per step); errors stop the site."""
        step = self.ctx.state.step
        if site.failed or site.fwd_step == step:
            return
        site.fwd_step = step
        try:
            self._forward(site, module, x, y, step)
            if self.ctx.histogram_step():
                self._histograms(site, y, step)
        except Exception as err:
            self.fail(site, err)

    def fail(self, site: Site, err: Exception) -> None:
        """Stop monitoring ``site`` after an error in one of its hooks (or raise, if strict)."""
        site.failed = True
        self.ctx.failed(site.name, err)

    def _forward(self, site: Site, module: nn.Module, x: Optional[Tensor], y: Tensor,
                 step: int) -> None:
        d = self.ctx.options.definitions
        with torch.no_grad():
            fused = self.fuser.run(site.plan, site.family, module, x, y.detach(), eps=d.eps,
                                   delta=d.delta, unit_dim=d.unit_dim)
            if fused is not None:
                vec, active = fused
                tensors = [vec]
                decode = site.plan.vector_decoder(site.name, y.numel(),
                                                  active.numel() if active is not None else 0)
            else:
                call = ActivationCall(site.family, module, x, y.detach(), eps=d.eps,
                                      delta=d.delta, unit_dim=d.unit_dim)
                tensors, decode = site.plan.run(call, site.name)
                active = call.active
        self.ctx.queue.defer(step, y.device, tensors, decode)
        if self.ctx.combine and active is not None:  # the ranks' units are OR-ed at the flush
            self.ctx.queue.put(step, active.float(),
                               MaskDecoder(site.name, "activation", "active_units"))
        if active is not None and site.window.metrics:
            self._windows.append((site, active, step))
        if self.ctx.options.backprop and y.requires_grad and torch.is_grad_enabled():
            y.register_hook(self._backprop_hook(site, step, y.numel()))

    def _backprop_hook(self, site: Site, step: int, numel: int) -> Callable[[Tensor], None]:
        def backprop_hook(grad: Tensor) -> None:
            if not self.ctx.state.attached or site.failed or site.bwd_step == step:
                return
            site.bwd_step = step
            try:
                with torch.no_grad():
                    call = GradCall(grad, self.ctx.grad_scale())
                    tensors, decode = self._backprop.run(call, site.name)
                self.ctx.queue.defer(step, grad.device, tensors, decode)
            except Exception as err:
                self.fail(site, err)

        return backprop_hook

    def _histograms(self, site: Site, y: Tensor, step: int) -> None:
        """Histogram of a call-site's output, and of the gradient flowing back through it."""
        self.ctx.queue.add(self.ctx.histogram_entry(step, "activations", site.name, y.detach()))
        if not (self.ctx.options.backprop and y.requires_grad and torch.is_grad_enabled()):
            return
        done = [False]

        def backprop_histogram(grad: Tensor) -> None:
            if done[0] or not self.ctx.state.attached or site.failed:
                return
            done[0] = True
            try:
                scale = self.ctx.grad_scale()
                unscaled = grad if scale is None else grad.float() / scale.to(grad.device)
                self.ctx.queue.add(self.ctx.histogram_entry(step, "backprop", site.name, unscaled))
            except Exception as err:
                self.fail(site, err)

        y.register_hook(backprop_histogram)

    def end_step(self) -> None:
        """Update the unit windows with this step's active units and defer the idle counts."""
        windows, self._windows = self._windows, []
        window = self.ctx.options.definitions.dead_window
        with torch.no_grad():
            for site, active, step in windows:
                last = site.last_active
                if last is None or last.shape != active.shape or last.device != active.device:
                    last = site.last_active = torch.full(active.shape, _NEVER, dtype=torch.long,
                                                         device=active.device)
                last.masked_fill_(active, step)
                idle_mask = last <= step - window
                idle = torch.count_nonzero(idle_mask)
                tensors, decode = site.window.queue([idle], site.name, 0, active.numel())
                self.ctx.queue.defer(step, active.device, tensors, decode)
                if self.ctx.combine:  # idle over the window on every rank: AND-ed at the flush
                    self.ctx.queue.put(step, idle_mask.float(),
                                       MaskDecoder(site.name, "window", "idle_units"))

    def clear(self) -> None:
        """Forget the step in progress (on detach)."""
        self._windows.clear()

    def held_numel(self) -> int:
        """Elements of the per-unit window state (O(units), independent of the batch)."""
        return sum(s.last_active.numel() for s in self.sites.values() if s.last_active is not None)
