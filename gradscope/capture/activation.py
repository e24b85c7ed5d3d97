"""Activation call-sites: what is recorded when an activation runs, whoever saw it run.

The module capture and the functional capture find a call and hand its input and
output to :meth:`ActivationRecorder.record`, which

* reduces the output (and the input, for families that need it) with the
  site's :class:`gradscope.plan.Plan` and defers the result on the queue;
* registers a tensor hook on the output that reduces the gradient flowing back
  into it (``grad_out_*``), once per step;
* registers a hook on the output's autograd node, which receives the gradient the
  activation passes to its input (``grad_in_*``, with respect to the
  pre-activation): exactly ``∂L/∂x`` of this call when the activation is one
  autograd operation whose first input is ``x`` (every built-in family but
  Softsign, which is ``x / (1 + |x|)``); otherwise ``grad_in_*`` is not recorded
  for the site, and the coverage says so;
* keeps the units that were on, for the unit window (``dead_units_window``),
  updated at the step's end by :meth:`ActivationRecorder.end_step`;
* on histogram steps, queues histograms of the output and of its gradient.

On unsampled steps only the every-step NaN/Inf check runs
(:class:`gradscope.capture.nancheck.NonfiniteChecker`, :attr:`ActivationRecorder.checks`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import Tensor

from gradscope import shards
from gradscope.activation_stats import resolve_unit_dim
from gradscope.activations import ActivationFamily, Source
from gradscope.capture.base import Context
from gradscope.capture.fused import FusedCapture
from gradscope.capture.nancheck import NonfiniteChecker
from gradscope.capture.site import Site, site_name
from gradscope.distributed import MaskDecoder
from gradscope.history import LayerInfo
from gradscope.plan import Plan
from gradscope.reductions import ActivationCall, GradCall

__all__ = ["ActivationRecorder", "Site", "input_node"]

_NEVER = -(2**62)  # "last active step" of a unit never seen active


def input_node(x: Any) -> Any:
    """The autograd node gradients of ``x`` flow into (``None`` when ``x`` needs none).

    Read *before* the activation runs (an in-place one rewrites ``x.grad_fn``). Autograd
    nodes cannot be traced by ``torch.compile``: while it traces, ``None`` (no ``grad_in_*``).
    """
    if isinstance(x, Tensor) and x.requires_grad and torch.is_grad_enabled() \
            and not torch.compiler.is_compiling():
        return torch.autograd.graph.get_gradient_edge(x).node
    return None


class ActivationRecorder:
    """Owns the call-sites and records their forward, backward and window statistics."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sites: dict[tuple[str, int], Site] = {}
        self._plans: dict[tuple[int, str], Plan] = {}
        self._backprop = Plan(None, "backprop", partial=ctx.combine)
        self._grad_in = Plan(None, "grad_in", partial=ctx.combine)
        self._windows: list[tuple[Site, Tensor, int]] = []
        self.fused = FusedCapture(ctx)  # the Triton kernels, where they take a tensor
        self.checks = NonfiniteChecker(ctx, self.fused)  # the every-step check of unsampled steps
        #: tensor parallel: each site's layout over the ranks, read by the rank combiner
        self._layouts: Optional[dict[str, str]] = getattr(ctx.queue.combine, "layouts", None)

    def site(self, base: str, call: int, family: ActivationFamily, *, module_name: str,
             type_name: str, shape: tuple[int, ...], unit_dim: Optional[int],
             function: Optional[str] = None) -> Site:
        """The call-site ``(base, call)``, declared in the history on first sight.

        ``base`` is the module's name (a module call-site) or ``module:function``.
        """
        key = (base, call)
        site = self.sites.get(key)
        if site is None:
            name = site_name(base, call)
            site = Site(name, module_name, call, family, self._plan(family, "activation"),
                        self._plan(family, "window"), function, unit_dim)
            self.sites[key] = site
            self.ctx.queue.declare(LayerInfo(
                name, kind="activation", order=len(self.sites) - 1, type=type_name,
                family=family.name, module=module_name, call=call, shape=shape))
        return site

    def _plan(self, family: ActivationFamily, kind: str) -> Plan:
        key = (id(family), kind)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = Plan(family, kind, partial=self.ctx.combine)
        return plan

    def record(self, site: Site, source: Source, x: Optional[Tensor], y: Tensor,
               x_node: Any = None) -> None:
        """Record one call of ``site`` (at most once per step); errors stop the site.

        ``source`` is the activation module or the call's :class:`~gradscope.activations.Params`;
        ``x_node`` the autograd node of the input before the call (:func:`input_node`).
        """
        step = self.ctx.state.step
        if site.failed or site.fwd_step == step:
            return
        site.fwd_step = step
        try:
            if self._layouts is not None and site.name not in self._layouts:
                self._layouts[site.name] = shards.tp_layout(
                    y.grad_fn if x_node is None else x_node, resolve_unit_dim(y.ndim, site.unit_dim))
            with torch._C.DisableTorchFunction():  # gradscope's own ops are not the model's
                self._forward(site, source, x, y, step)
            if self.ctx.options.backprop and y.requires_grad and torch.is_grad_enabled():
                y.register_hook(self._backprop_hook(site, step))
                self._hook_grad_in(site, y, x_node, step)
            if self.ctx.histogram_step():
                self._histograms(site, y, step)
        except Exception as err:
            self.fail(site, err)

    def fail(self, site: Site, err: Exception) -> None:
        """Stop monitoring ``site`` after an error in one of its hooks (or raise, if strict)."""
        site.failed = True
        self.ctx.failed(site.name, err)

    def _forward(self, site: Site, source: Source, x: Optional[Tensor], y: Tensor,
                 step: int) -> None:
        d = self.ctx.options.definitions
        with torch.no_grad():
            if self.fused.forward(site, source, x, y, step):  # one launch; its window too
                return
            call = ActivationCall(site.family, source, x, y.detach(), eps=d.eps,
                                  delta=d.delta, unit_dim=site.unit_dim)
            tensors, decode = site.plan.run(call, site.name)
            active = call.active
        self.ctx.queue.defer(step, y.device, tensors, decode)
        if self.ctx.combine and active is not None:  # the ranks' units are OR-ed at the flush
            self.ctx.queue.put(step, active.float(),
                               MaskDecoder(site.name, "activation", "active_units"))
        if active is not None and site.window.metrics:
            self._windows.append((site, active, step))

    # ------------------------------------------------------------ the backward
    def backprop(self, site: Site, step: int, grad: Tensor) -> None:
        """Reduce ``∂L/∂y`` of ``site`` (once per step)."""
        if site.bwd_step != step and self._gradient(site, step, grad, self._backprop):
            site.bwd_step = step

    def grad_in(self, site: Site, step: int, grad: Optional[Tensor]) -> None:
        """Reduce ``∂L/∂x`` of ``site`` (once per step)."""
        if site.gin_step != step and self._gradient(site, step, grad, self._grad_in):
            site.gin_step = step

    def _gradient(self, site: Site, step: int, grad: Optional[Tensor], plan: Plan) -> bool:
        """Run a gradient ``plan`` on ``grad`` and defer it; whether it was taken."""
        if grad is None or not self.ctx.state.attached or site.failed:
            return False
        try:
            with torch.no_grad():
                if self.fused.gradient(site.name, plan, grad, step):  # one launch
                    return True
                tensors, decode = plan.run(GradCall(grad, self.ctx.grad_scale()), site.name)
            self.ctx.queue.defer(step, grad.device, tensors, decode)
        except Exception as err:
            self.fail(site, err)
        return True

    def _backprop_hook(self, site: Site, step: int) -> Callable[[Tensor], None]:
        def backprop_hook(grad: Tensor) -> None:
            self.backprop(site, step, grad)

        return backprop_hook

    def _hook_grad_in(self, site: Site, y: Tensor, x_node: Any, step: int) -> None:
        """Hook ``y``'s autograd node when its first input edge is ``x``'s and it has no other
        input that needs a gradient: its ``grad_inputs[0]`` is then exactly ``∂L/∂x``."""
        node = y.grad_fn
        if x_node is None or node is None:  # no gradient reaches x: nothing to measure
            return
        exact = _one_op(node, x_node)
        site.grad_in = exact if site.grad_in is None else site.grad_in and exact
        if not exact:
            return

        def grad_in_hook(grad_inputs: Any, grad_outputs: Any) -> None:
            self.grad_in(site, step, grad_inputs[0])

        node.register_hook(grad_in_hook)

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

    # ------------------------------------------------------------ step's end
    def end_step(self) -> None:
        """Update the unit windows with this step's active units and defer the idle counts."""
        self.checks.end_step()
        self.fused.end_step()  # one finisher per device (the fused call-sites' windows too)
        if not self._windows:
            return
        windows, self._windows = self._windows, []
        window = self.ctx.options.definitions.dead_window
        with torch.no_grad():
            for site, active, step in windows:
                last = site.last_active
                if last is None or last.shape != active.shape or last.device != active.device:
                    last = site.last_active = torch.full(active.shape, _NEVER, dtype=torch.long,
                                                         device=active.device)
                last.masked_fill_(active, step)
                idle_mask = last <= max(step - window, _NEVER)
                idle = torch.count_nonzero(idle_mask)
                tensors, decode = site.window.queue([idle], site.name, 0, active.numel())
                self.ctx.queue.defer(step, active.device, tensors, decode)
                if self.ctx.combine:  # idle over the window on every rank: AND-ed at the flush
                    self.ctx.queue.put(step, idle_mask.float(),
                                       MaskDecoder(site.name, "window", "idle_units"))

    def clear(self) -> None:
        """Forget the step in progress (on detach)."""
        self._windows.clear()
        self.checks.clear()
        self.fused.clear()

    def held_numel(self) -> int:
        """Elements of the per-unit window state (O(units), independent of the batch)."""
        return self.fused.held_numel() + sum(s.last_active.numel() for s in self.sites.values()
                                             if s.last_active is not None)


def _one_op(node: Any, x_node: Any) -> bool:
    """Whether autograd node ``node`` takes its gradient to ``x_node`` by its first edge and
    to nothing else that needs one (parameters, like PReLU's weight, aside)."""
    edges = node.next_functions
    if not edges or edges[0][0] is not x_node:
        return False
    return all(n is None or (n is not x_node and type(n).__name__ == "AccumulateGrad")
               for n, _ in edges[1:])
