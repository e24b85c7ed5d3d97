"""Recurrent layers: the gradient through time, hidden states and gates of RNNs, LSTMs and GRUs.

Two sources, each hooked through :meth:`Context.hook`:

* **fused modules** (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``; any number of layers,
  ``batch_first`` either way, bidirectional, packed or unbatched sequences): a
  forward hook. On a sampled training forward whose output needs a gradient it
  registers a one-shot multi-grad hook (``torch.autograd.graph.register_multi_grad_hook``)
  on the output sequence and the final states. When their gradients arrive (during
  the backward, before the module's own backward and any optimizer step, so the
  weights are the forward's) the module is replayed
  (:func:`gradscope.recurrence.replay`) with a zero tensor added to every hidden
  state, and one ``torch.autograd.grad`` through the replay gives ``∂L/∂h_t`` for
  every layer, direction and time step: one device vector of per-``t`` norms per
  call. The same replay's gates and hidden states give the ``gates`` metrics. A
  recorded forward without a backward (``record_eval``) replays under ``no_grad``,
  for the gates only. A hook on the output sequence alone could not do this: it
  sees the gradient flowing *into* ``output[t]`` from above, not the gradient
  with respect to ``h_t`` through the later steps (zero for ``t < T-1`` when the
  loss reads the last step only).
* **cells** (``nn.RNNCell``, ``nn.LSTMCell``, ``nn.GRUCell``) called in a loop:
  each call in a forward is one time step (the call index is ``t``). A forward
  hook recomputes the call's gates from its input, state and weights and adds
  their reductions to the step's sums; a tensor hook on its ``h`` reads
  ``∂L/∂h_t`` (``h_t`` feeds the next call, so this includes every later step).
  The sums and the profile are queued at the step's end (:mod:`gradscope.capture.cells`,
  :class:`~gradscope.capture.cells.CellHooks`, a base of :class:`RecurrentCapture`).

Series (kind ``recurrent``): ``<module>.l<k>`` and ``<module>.l<k>_reverse`` per
layer and direction of a fused module, as PyTorch names their parameters;
``<cell>.h`` per cell. Profiles are in processing order: position ``k`` is the
``k``-th step a direction processes (``t = k`` forward, ``t = T-1-k`` reverse);
each is summarised by the ``through_time`` metrics and kept, downsampled, as the
history profile ``grad_h``.

What a module's ``dropout`` between layers does to this: in training its masks
cannot be replayed, so only layer 0's gates and hidden states are recorded and no
gradient through time (a warning says so once, and :attr:`Context.covered` too).
"""

from __future__ import annotations

import warnings
import weakref
from typing import Any, Callable, Optional, cast

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.hooks import RemovableHandle

from gradscope.capture.base import Context
from gradscope.capture.cells import PROFILE, CellHooks, _reset_cell, _Site
from gradscope.history import LayerInfo
from gradscope.metrics import Shape, by_kind
from gradscope.queue import Decoder, Entry
from gradscope.records import Record, record
from gradscope.recurrence import (
    GATES,
    Hidden,
    Unit,
    bounded_hidden,
    cell_mode,
    module_mode,
    replay,
    row_order,
    time_major,
    time_norms,
)
from gradscope.recurrent_stats import GateCall, downsample, profile_summary

__all__ = ["PROFILE", "RecurrentCapture"]

class RecurrentCapture(CellHooks):
    """Hooks on recurrent modules and cells, feeding the queue with gates and gradients through time."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sites: dict[str, _Site] = {}
        self._calls: dict[str, int] = {}
        self._order = 0
        self._pending: list[RemovableHandle] = []  # multi-grad hooks waiting for a backward
        self._warned: set[str] = set()

    # ------------------------------------------------------------ set-up
    def register(self, model: nn.Module) -> None:
        """Hook every included stock recurrent module and cell of ``model``."""
        opts = self.ctx.options
        if not (opts.activations or opts.backprop):
            return
        for name, module in model.named_modules():
            if not opts.include_fn(name, module):
                continue
            mode, fused = module_mode(module), True
            if mode is None:
                mode, fused = cell_mode(module), False
            if mode is None:
                continue
            site = self.sites.get(name)
            if site is None:
                site = self.sites[name] = _Site(name, mode, fused)
            hook = self._fused_hook(site) if fused else self._cell_hook(site)
            self.ctx.hook(module.register_forward_hook(hook, with_kwargs=True))
            self.ctx.covered[name] = self._describe(module, site)

    def _describe(self, module: nn.Module, site: _Site) -> str:
        """What this capture sees inside ``module`` (for coverage reports)."""
        opts = self.ctx.options
        seen = []
        if opts.backprop:
            seen.append("∂L/∂h_t at every step" + (" per layer and direction" if site.fused else ""))
        if opts.activations and GATES[site.mode]:
            seen.append("gates (" + ", ".join(GATES[site.mode]) + ")")
        if opts.activations and bounded_hidden(site.mode, getattr(module, "proj_size", 0)):
            seen.append("hidden-state saturation")
        how = ("replayed from its inputs and weights on sampled steps" if site.fused
               else "each call one time step, gates recomputed from its inputs")
        text = f"{type(module).__name__}: {', '.join(seen)}; {how}"
        if site.fused and _interlayer_dropout(module):
            text += (f"; dropout={module.dropout} between layers cannot be replayed: in training "
                     "only layer 0's gates, no gradient through time")
        return text

    def start_forward(self) -> None:
        """A new forward of the model begins: cell call indices start again at 0."""
        self._calls.clear()

    def clear(self) -> None:
        """Forget the step in progress and drop waiting backward hooks (on detach)."""
        for h in self._pending:
            h.remove()
        self._pending.clear()
        for site in self.sites.values():
            _reset_cell(site, -1)

    def held(self) -> int:
        """Backward hooks waiting for their gradients (0 between steps)."""
        return len(self._pending)

    # ------------------------------------------------------- fused modules
    def _fused_hook(self, site: _Site) -> Callable[..., None]:
        def recurrent_hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            state = self.ctx.state
            if not state.recording or site.failed or site.fwd_step == state.step:
                return
            site.fwd_step = state.step
            try:
                self._fused_call(site, cast(nn.RNNBase, module), args, kwargs, output, state.step)
            except Exception as err:
                self._fail(site, err)

        return recurrent_hook

    def _fused_call(self, site: _Site, module: nn.RNNBase, args: Any, kwargs: Any, output: Any,
                    step: int) -> None:
        inp = args[0] if args else kwargs.get("input")
        hx = args[1] if len(args) > 1 else kwargs.get("hx")
        out, hidden = output
        h_n, c_n = hidden if isinstance(hidden, tuple) else (hidden, None)
        out_t = out.data if isinstance(out, PackedSequence) else out
        layers = module.num_layers
        if module.training and _interlayer_dropout(module):
            layers = 1
            self._warn_once(site.name, f"gradscope: {site.name or '(root)'} applies "
                            f"dropout={module.dropout} between its layers, and in training "
                            "those masks cannot be replayed: only layer 0's gates and hidden "
                            "state are recorded, and no gradient through time")
        opts = self.ctx.options
        if (opts.backprop and layers == module.num_layers and torch.is_grad_enabled()
                and out_t.requires_grad):
            self._await_backward(site, module, inp, hx, (out_t, h_n, c_n), step)
        elif opts.activations:
            with torch.no_grad():
                rows, sizes = time_major(inp, batch_first=module.batch_first)
                r = replay(module, rows, sizes, row_order(inp, hx), layers=layers)
            self._queue_gates(site, module, r.units, step, (len(sizes), sizes[0] if sizes else 0))

    def _await_backward(self, site: _Site, module: nn.RNNBase, inp: Any, hx: Hidden,
                        outputs: tuple[Tensor, Tensor, Optional[Tensor]], step: int) -> None:
        """Replay the module when the gradients of its outputs arrive (see the module docstring)."""
        roles = [(role, t) for role, t in zip(("out", "h_n", "c_n"), outputs)
                 if t is not None and t.requires_grad]
        ref = weakref.ref(module)
        version = _version(inp)
        handle: list[RemovableHandle] = []

        def through_time(grads: Any) -> None:
            handle[0].remove()  # one backward per recorded forward
            if not self.ctx.state.attached or site.failed or self.ctx.state.step != step:
                return
            m = ref()
            if m is None:
                return
            if _version(inp) != version:
                self._warn_once(site.name + "/version", f"gradscope: the input of "
                                f"{site.name or '(root)'} was modified in place between its "
                                "forward and backward; its gradient through time is not recorded")
                return
            try:
                self._through_time(site, cast(nn.RNNBase, m), inp, hx, dict(zip((r for r, _ in roles), grads)), step)
            except Exception as err:
                self._fail(site, err)

        handle.append(torch.autograd.graph.register_multi_grad_hook(
            [t for _, t in roles], through_time))
        self._pending.append(handle[0])

    def _through_time(self, site: _Site, module: nn.RNNBase, inp: Any, hx: Hidden,
                      grads: dict[str, Optional[Tensor]], step: int) -> None:
        rows, sizes = time_major(inp, batch_first=module.batch_first)
        with torch.enable_grad():
            r = replay(module, rows, sizes, row_order(inp, hx), inject=True)
            outs, ups = [], []
            g_out = grads.get("out")
            if g_out is not None:
                outs.append(r.output)
                ups.append(g_out if isinstance(inp, PackedSequence)
                           else time_major(g_out, batch_first=module.batch_first)[0])
            for role, rec in (("h_n", r.h_n), ("c_n", r.c_n)):
                g = grads.get(role)
                if g is not None and rec is not None:
                    outs.append(rec)
                    ups.append(cast(Tensor, row_order(inp, g.unsqueeze(1) if g.dim() == 2 else g)))
            if not outs:
                return
            assert r.inject is not None
            (gz,) = torch.autograd.grad(outs, [r.inject], [u.to(o.dtype) for u, o in zip(ups, outs)])
        with torch.no_grad():
            norms = time_norms(gz, sizes).reshape(-1)
            units = r.units
            for k, unit in enumerate(units):
                self._declare(site, module, k, unit, (len(sizes), sizes[0] if sizes else 0))
            self.ctx.queue.add(Entry(step, norms, self._profile_decoder(
                [site.series(u) for u in units], [u.reverse for u in units], len(sizes))))
            if self.ctx.options.activations:
                self._queue_gates(site, module, units, step, (len(sizes), sizes[0] if sizes else 0))

    def _queue_gates(self, site: _Site, module: nn.Module, units: list[Unit], step: int,
                     shape: tuple[int, int]) -> None:
        bounded = bounded_hidden(site.mode, getattr(module, "proj_size", 0))
        eps = self.ctx.options.definitions.eps
        for k, unit in enumerate(units):
            self._declare(site, module, k, unit, shape)
            call = GateCall({g: t.detach() for g, t in unit.gates.items()},
                            unit.hidden.detach() if bounded else None, eps=eps)
            if call.available:
                tensors, decode = site.plan_for(call).run(call, site.series(unit))
                self.ctx.queue.defer(step, unit.hidden.device, tensors, decode)

    def _declare(self, site: _Site, module: nn.Module, k: int, unit: Optional[Unit],
                 shape: tuple[int, ...]) -> None:
        """Declare a series in the history on first sight."""
        if k in site.declared:
            return
        site.declared.add(k)
        width = unit.hidden.shape[-1] if unit is not None else shape[-1]
        self.ctx.queue.declare(LayerInfo(
            site.series(unit), kind="recurrent", order=self._order, type=type(module).__name__,
            family=site.mode.lower(), module=site.name, call=unit.layer if unit is not None else 0,
            shape=(*shape, width) if unit is not None else shape))
        self._order += 1

    def _profile_decoder(self, series: list[str], reverse: list[bool], length: int) -> Decoder:
        """Decode ``len(series)`` profiles of ``length`` norms each (in time order)."""
        metrics = by_kind("through_time")
        profiles, shape = self.ctx.queue.profiles, Shape(length)

        def decode(step: int, values: Any) -> list[Record]:
            if len(values) != len(series) * length:
                raise ValueError(f"profile decoder expected {len(series) * length} values, got "
                                 f"{len(values)} (internal error: queue layout)")
            out = []
            for u, name in enumerate(series):
                prof = list(values[u * length:(u + 1) * length])
                if reverse[u]:
                    prof.reverse()
                summary = profile_summary(prof)
                out += [record(step, name, m.name, m.finish(summary, shape)) for m in metrics]
                profiles.append((step, name, PROFILE, *downsample(prof)))
            return out

        return decode

    def end_step(self) -> None:
        """Queue each cell's gate sums and gradient profile of the step that ends."""
        if not self.sites and not self._pending:
            return
        self._queue_cells()
        for h in self._pending:  # fired ones are removed already; the others never will be
            h.remove()
        self._pending.clear()

    # ---------------------------------------------------------------- errors
    def _fail(self, site: _Site, err: Exception) -> None:
        site.failed = True
        self.ctx.failed(site.name or "(root)", err)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=4)


# ------------------------------------------------------------------ helpers
def _interlayer_dropout(module: nn.Module) -> bool:
    return bool(getattr(module, "dropout", 0)) and getattr(module, "num_layers", 1) > 1


def _version(inp: Any) -> int:
    t = inp.data if isinstance(inp, PackedSequence) else inp
    return int(t._version)
