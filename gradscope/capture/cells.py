"""Recurrent cells (``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell``) called in a loop, and
the call-site both halves of :mod:`gradscope.capture.recurrent` keep.

Each call of a cell in a forward is one time step (the call index is ``t``). A
forward hook recomputes the call's gates from its input, state and weights and adds
their reductions to the step's sums; a tensor hook on its ``h`` reads ``∂L/∂h_t``
(``h_t`` feeds the next call, so this includes every later step). The sums and the
profile are queued at the step's end (:meth:`CellHooks._queue_cells`).
:class:`CellHooks` is the cell half of :class:`~gradscope.capture.recurrent.RecurrentCapture`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, cast

import torch
from torch import Tensor, nn

from gradscope import stats
from gradscope.capture.base import Context
from gradscope.metrics import by_kind
from gradscope.plan import Plan
from gradscope.queue import Decoder, Entry
from gradscope.recurrence import Unit, batched, bounded_hidden, cell_gates
from gradscope.recurrent_stats import GateCall

__all__ = ["PROFILE", "CellHooks"]

#: The history profile of ``‖∂L/∂h_k‖`` over processing positions ``k``.
PROFILE = "grad_h"


@dataclass
class _Site:
    """A fused recurrent module or a cell, and what this step has recorded of it."""

    name: str
    mode: str
    fused: bool
    declared: set[int] = field(default_factory=set)  # units already in the history
    plans: dict[frozenset[str], Plan] = field(default_factory=dict)
    fwd_step: int = -1
    failed: bool = False
    # cells: this step's calls
    step: int = -1
    calls: int = 0
    sums: Optional[Tensor] = None  # gate reductions summed over the calls, in plan order
    plan: Optional[Plan] = None
    numel: int = 0
    norms: dict[int, Tensor] = field(default_factory=dict)  # t -> ‖∂L/∂h_t‖

    def series(self, unit: Optional[Unit] = None) -> str:
        base = self.name or "(root)"
        return f"{base}.{unit.suffix}" if unit is not None else f"{base}.h"

    def plan_for(self, call: GateCall) -> Plan:
        plan = self.plans.get(call.available)
        if plan is None:
            metrics = [m for m in by_kind("gates") if set(m.needs) <= call.available]
            plan = self.plans[call.available] = Plan(None, "gates", metrics)
        return plan


class CellHooks:
    """The cell hooks of :class:`~gradscope.capture.recurrent.RecurrentCapture` (a base class:
    the capture provides the context, the sites and the shared helpers declared here)."""

    ctx: Context
    sites: dict[str, _Site]
    _calls: dict[str, int]
    _fail: Callable[[_Site, Exception], None]
    _declare: Callable[[_Site, nn.Module, int, Optional[Unit], tuple[int, ...]], None]
    _profile_decoder: Callable[[list[str], list[bool], int], Decoder]

    def _cell_hook(self, site: _Site) -> Callable[..., None]:
        def cell_hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            state = self.ctx.state
            if not state.recording:
                return
            t = self._calls.get(site.name, 0)
            self._calls[site.name] = t + 1
            if site.failed:
                return
            try:
                self._cell_call(site, module, args, kwargs, output, t, state.step)
            except Exception as err:
                self._fail(site, err)

        return cell_hook

    def _cell_call(self, site: _Site, module: nn.Module, args: Any, kwargs: Any, output: Any,
                   t: int, step_: int) -> None:
        if site.step != step_:
            _reset_cell(site, step_)
        x = args[0] if args else kwargs.get("input")
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        h = output[0] if isinstance(output, tuple) else output
        site.calls = max(site.calls, t + 1)
        self._declare(site, module, 0, None, tuple(h.shape if h.dim() == 2 else (1, *h.shape)))
        opts = self.ctx.options
        if opts.activations:
            with torch.no_grad():
                call = GateCall(cell_gates(site.mode, cast(nn.RNNCellBase, module), x, hx),
                                batched(h.detach()) if bounded_hidden(site.mode) else None,
                                eps=opts.definitions.eps)
                if call.available:
                    plan = site.plan = site.plan_for(call)
                    parts = [call.part(n) for n in plan.needs]
                    vec = torch.stack([p if isinstance(p, Tensor) else torch.tensor(p) for p in parts])
                    site.sums = vec if site.sums is None else site.sums + vec
                    site.numel += call.numel
        if opts.backprop and torch.is_grad_enabled() and h.requires_grad:
            h.register_hook(self._cell_grad_hook(site, t, step_))

    def _cell_grad_hook(self, site: _Site, t: int, step_: int) -> Callable[[Tensor], None]:
        def cell_grad(grad: Tensor) -> None:
            if not self.ctx.state.attached or site.failed or site.step != step_:
                return
            try:
                with torch.no_grad():
                    site.norms[t] = stats.l2_norm(grad)
            except Exception as err:
                self._fail(site, err)

        return cell_grad

    def _queue_cells(self) -> None:
        """Queue each cell's gate sums and gradient profile of the step that ends."""
        with torch.no_grad():
            for site in self.sites.values():
                if site.fused or site.step < 0 or site.failed:
                    continue
                name = site.series()
                if site.sums is not None and site.plan is not None:
                    tensors, decode = site.plan.queue(list(site.sums.unbind()), name, site.numel, 0)
                    self.ctx.queue.defer(site.step, site.sums.device, tensors, decode)
                if site.norms:
                    zero = torch.zeros((), device=next(iter(site.norms.values())).device)
                    vec = torch.stack([site.norms.get(t, zero) for t in range(site.calls)])
                    self.ctx.queue.add(Entry(site.step, vec,
                                             self._profile_decoder([name], [False], site.calls)))
                _reset_cell(site, -1)


def _reset_cell(site: _Site, step_: int) -> None:
    site.step, site.calls, site.sums, site.numel = step_, 0, None, 0
    site.norms = {}

