"""The monitor: hooks on any ``torch.nn`` model, device-side statistics, one flush.

:func:`watch` attaches a :class:`Monitor` to a model. On sampled steps its hooks
compute small statistic vectors on the tensors' own device and queue them; every
``flush_every`` steps the queue crosses to the host in one transfer per device and
lands in :attr:`Monitor.history` and the sinks (TensorBoard, ...). Off-steps cost
one attribute check per hook.

What is a step:

* with ``optimizer=``, one ``optimizer.step()``. Parameter gradients are read in the
  optimizer's step pre-hook, when they are final: after gradient accumulation, and
  unscaled under ``torch.amp.GradScaler`` (``scaler.step`` unscales before it calls
  ``optimizer.step``). Update ratios compare the weights across the step.
  Activations are read from the first training forward of each step.
* without, one training forward of the model (and its backward). Parameter
  gradients are read when that backward finishes.

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

import fnmatch
import math
import os
import sys
import warnings
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Union

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from gradscope import stats
from gradscope.activations import (
    ActivationFamily,
    activation_sums,
    family_of,
    metric_names,
    window_metric,
)
from gradscope.findings import Finding, Thresholds, analyze, format_findings
from gradscope.histograms import Histogram, decode_histogram, histogram_vector
from gradscope.history import History, LayerInfo
from gradscope.schedules import Schedule, as_schedule

__all__ = ["Monitor", "Record", "Sink", "watch"]

#: One flushed value: ``(step, layer, metric, value)``.
Record = tuple[int, str, str, float]

#: Metrics of the gradient flowing back through an activation call-site's output.
BACKPROP_METRICS = ("grad_out_norm", "grad_out_nonfinite")

_NEVER = -(2**62)  # "last active step" of a unit never seen active


class Sink(Protocol):
    """Receives flushed records. Writers (TensorBoard, memory) implement this."""

    def write(self, records: Sequence[Record], history: History) -> None:
        """Called once per flush with the new records (the history already holds them)."""

    def close(self) -> None:
        """Release files; called by :meth:`Monitor.close`."""


# Optional sink methods, called when a sink defines them:
#   write_histograms(histograms: Sequence[Histogram]) -> None   (histogram steps only)
#   write_findings(findings: Sequence[Finding], step: int) -> None   (each flush)


@dataclass
class _ActSite:
    """One activation call-site: module name + call index."""

    name: str
    module_name: str
    call: int
    family: ActivationFamily
    names: tuple[str, ...]
    window_name: Optional[str]
    last_active: Optional[Tensor] = None
    fwd_step: int = -1
    bwd_step: int = -1
    failed: bool = False


@dataclass
class _Entry:
    """A queued device tensor and how to turn its values into records."""

    step: int
    tensor: Tensor
    decode: Callable[[int, list[float]], Iterable[tuple[str, str, float]]]


@dataclass
class _ParamRef:
    layer: str
    name: str
    ref: Callable[[], Optional[Tensor]]


@dataclass
class _ParamGroup:
    """Live parameters of one device, and what a step computes for all of them at once."""

    refs: list[_ParamRef]
    params: list[Tensor]  # detached
    wnorm: Optional[Tensor] = None  # weight norms before the update
    before: Optional[list[Tensor]] = None  # weight copies (update ratios)


class Monitor:
    """Hooks on a model that record activation and gradient statistics.

    Use :func:`watch` to create and attach one. The monitor owns every hook handle
    it makes and removes them all in :meth:`detach` (also when leaving a ``with``
    block through an exception). It keeps no strong reference to the model or its
    parameters, and no activation or gradient tensor outlives the hook that read it.

    Args:
        model: any ``nn.Module``; its code and outputs are left unchanged.
        optimizer: when given, a step is one ``optimizer.step()``; gradients are read
            in its step pre-hook and update ratios across the step.
        every: sample one step in ``every`` (an int) or a schedule ``step -> bool``.
        flush_every: steps between host transfers (one per device per flush).
        eps: saturation tolerance (an output within ``eps`` of a family's limit).
        delta: a local derivative ``f'(x) < delta`` counts as "small" (``small_deriv``).
        dead_window: a ReLU unit is dead over the window when it was not positive on
            any sampled step of the last ``dead_window`` steps.
        unit_dim: which dimension indexes units for dead-unit statistics; ``None``
            is the default of :func:`gradscope.stats.resolve_unit_dim`.
        activations: record forward statistics of activation call-sites.
        backprop: record the norm of the gradient flowing back through each
            activation call-site's output.
        gradients: record parameter gradient and weight norms.
        update_ratio: with ``optimizer``, record ``‖Δw‖/‖w‖`` across each sampled
            step (keeps a copy of the weights between the step's pre- and post-hook).
        record_eval: also record forwards made in eval mode (they are steps too
            without ``optimizer``).
        include: only monitor modules whose name matches one of these
            ``fnmatch`` patterns, or for which this callable ``(name, module)`` is true.
        sinks: writers that receive records at each flush.
        strict: raise errors from inside hooks instead of warning once and
            disabling the call-site that failed.
        logdir: write a TensorBoard run (a :class:`gradscope.writers.TensorBoardWriter`)
            into this directory; it is created and checked for write access here, so
            a bad path fails now rather than at the first flush. The writer is
            :attr:`writer`, its ``SummaryWriter`` ``writer.summary_writer``.
        histogram_every: take activation, back-propagated gradient, parameter
            gradient and weight histograms on these steps (an int or a schedule;
            ``None`` for never). A step must also be sampled by ``every``. Bins are
            counted on the device; only the counts cross to the host, at the flush.
            Histograms are only taken when a sink writes them (``write_histograms``).
        histogram_bins: number of equal-width bins per histogram.
        findings: run the rules of :mod:`gradscope.findings` at each flush for the
            sinks that write findings (TensorBoard text) and for the summary at
            :meth:`close`: ``True`` (default thresholds), a
            :class:`gradscope.findings.Thresholds`, or ``False``.
        summary: print a short summary of the findings to stderr at :meth:`close`.

    Example:
        >>> import torch.nn as nn, gradscope
        >>> mon = gradscope.watch(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), every=10)
        >>> mon.detach()
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: Optional[torch.optim.Optimizer] = None,
        every: Union[int, Schedule] = 1,
        flush_every: int = 50,
        eps: float = 0.01,
        delta: float = 0.01,
        dead_window: int = 100,
        unit_dim: Optional[int] = None,
        activations: bool = True,
        backprop: bool = True,
        gradients: bool = True,
        update_ratio: bool = True,
        record_eval: bool = False,
        include: Union[Sequence[str], Callable[[str, nn.Module], bool], None] = None,
        sinks: Sequence[Sink] = (),
        strict: bool = False,
        logdir: Union[str, os.PathLike, None] = None,
        histogram_every: Union[int, Schedule, None] = 500,
        histogram_bins: int = 64,
        findings: Union[bool, Thresholds] = True,
        summary: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"watch(model=...) needs a torch.nn.Module, got {type(model).__name__}"
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"watch(optimizer=...) needs a torch.optim.Optimizer, got "
                f"{type(optimizer).__name__}; pass the optimizer whose step() ends a step"
            )
        self._schedule = as_schedule(every, name="every")
        _check_int("flush_every", flush_every, 1)
        _check_int("dead_window", dead_window, 1)
        _check_open_unit("eps", eps)
        _check_open_unit("delta", delta)
        if unit_dim is not None and not isinstance(unit_dim, int):
            raise TypeError(f"watch(unit_dim={unit_dim!r}) must be an int or None")
        for sink in sinks:
            if not (hasattr(sink, "write") and hasattr(sink, "close")):
                raise TypeError(f"watch(sinks=...): {sink!r} has no write()/close() methods")
        self._hist_schedule = (None if histogram_every is None
                               else as_schedule(histogram_every, name="histogram_every"))
        _check_int("histogram_bins", histogram_bins, 1)
        if isinstance(findings, Thresholds):
            self._thresholds: Optional[Thresholds] = findings
        elif findings is True or findings is False:
            self._thresholds = Thresholds() if findings else None
        else:
            raise TypeError(f"watch(findings={findings!r}): pass True, False or a "
                            "gradscope.findings.Thresholds(...)")
        if not isinstance(summary, bool):
            raise TypeError(f"watch(summary={summary!r}): pass True or False")
        self.summary = summary
        if logdir is not None and not isinstance(logdir, (str, os.PathLike)):
            raise TypeError(f"watch(logdir={logdir!r}): pass a directory path (str or Path)")
        self.flush_every = flush_every
        self.eps = float(eps)
        self.delta = float(delta)
        self.dead_window = dead_window
        self.unit_dim = unit_dim
        self.record_activations = activations
        self.record_backprop = backprop
        self.record_gradients = gradients
        self.record_update_ratio = update_ratio and optimizer is not None
        self.record_eval = record_eval
        self.strict = strict
        self.sinks: list[Sink] = list(sinks)
        self.history = History()

        self._include = _make_filter(include)
        self._model_ref = weakref.ref(model)
        self._optimizer_ref = weakref.ref(optimizer) if optimizer is not None else None
        self._handles: list[RemovableHandle] = []
        self._attached = False
        self._closed = False

        self._step = 0
        self._sampled = self._schedule(0)
        self._recording = False
        self._step_has_forward = False
        self._last_flush_step = 0
        self._calls: dict[str, int] = {}
        self._sites: dict[tuple[str, int], _ActSite] = {}
        self._order = 0
        self._layer_order: dict[str, int] = {}
        self._params: list[_ParamRef] = []
        self._pending: list[_Entry] = []
        # hook results of the current step, stacked at its end (_stack_deferred)
        self._deferred: dict[tuple[int, torch.device], tuple[list[Tensor], list[Any]]] = {}
        self._windows: list[tuple[_ActSite, Tensor, int]] = []
        self._param_entry: Optional[list[_Entry]] = None
        self._weights_before: Optional[list[_ParamGroup]] = None
        self._snapshot: list[Tensor] = []  # reused weight-copy buffers (update ratios)
        self._stash: dict[int, Tensor] = {}
        self._bw_queued = False
        self.histogram_bins = histogram_bins
        self._hist_due_step = -1
        self._hist_due = False
        self._param_hists: list[_Entry] = []
        self._hist_ready: list[Histogram] = []

        #: The TensorBoard writer made from ``logdir`` (else the first one in ``sinks``).
        self.writer: Optional[Any] = None
        if logdir is not None:
            from gradscope.writers import TensorBoardWriter

            self.writer = TensorBoardWriter(logdir)  # raises here on a bad logdir
            self.sinks.append(self.writer)
        else:
            self.writer = next((s for s in self.sinks if hasattr(s, "summary_writer")), None)
        if not any(hasattr(s, "write_histograms") for s in self.sinks):
            self._hist_schedule = None

    # ------------------------------------------------------------------ api
    @property
    def step(self) -> int:
        """The current step index (0-based)."""
        return self._step

    @property
    def attached(self) -> bool:
        """Whether the hooks are on the model."""
        return self._attached

    @property
    def model(self) -> Optional[nn.Module]:
        """The watched model, or ``None`` if it has been garbage-collected."""
        return self._model_ref()

    def attach(self) -> Monitor:
        """Register the hooks (no-op when attached). Returns ``self``."""
        if self._closed:
            raise RuntimeError("this Monitor is closed; create a new one with gradscope.watch()")
        if self._attached:
            return self
        model = self._model_ref()
        if model is None:
            raise RuntimeError("the watched model no longer exists")
        try:
            self._register(model)
        except BaseException:
            self._remove_handles()
            raise
        self._attached = True
        return self

    def detach(self) -> None:
        """Flush what is queued and remove every hook. Safe to call twice."""
        if not self._attached:
            return
        try:
            self._commit_param_entry()
            self.flush()
        finally:
            self._remove_handles()
            self._attached = False
            self._stash.clear()
            self._deferred.clear()
            self._windows.clear()
            self._weights_before = None
            self._snapshot = []

    def close(self) -> None:
        """:meth:`detach`, then close the sinks. Safe to call twice."""
        if self._closed:
            return
        try:
            self.detach()
            if self.summary and self._thresholds is not None:
                self._print_summary()
        finally:
            self._closed = True
            for sink in self.sinks:
                sink.close()

    def _print_summary(self) -> None:
        """A few lines of findings on stderr; never raises."""
        try:
            steps = self.history.steps()
            if not steps:
                return
            found = analyze(self.history, self._thresholds)
            span = f"steps {steps[0]}..{steps[-1]}"
            where = f"; dashboard: tensorboard --logdir {self.writer.logdir}" \
                if self.writer is not None and hasattr(self.writer, "logdir") else ""
            if not found:
                print(f"gradscope: no findings over {span}{where}", file=sys.stderr)
            else:
                print(f"gradscope: {len(found)} finding(s) over {span}{where}\n"
                      f"{format_findings(found, limit=8)}", file=sys.stderr)
        except Exception as err:  # a summary must never break the user's program
            warnings.warn(f"gradscope: could not print the findings summary: {err}",
                          RuntimeWarning, stacklevel=3)

    def __enter__(self) -> Monitor:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def flush(self) -> list[Record]:
        """Move queued statistics to the host (one transfer per device) and write them.

        Returns the new records. Called automatically every ``flush_every`` steps and
        on :meth:`detach`.
        """
        self._stack_deferred()
        entries, self._pending = self._pending, []
        self._last_flush_step = self._step
        if not entries:
            return []
        records = _decode(entries)
        records = _add_layer_aggregates(records)
        for step, layer, metric, value in records:
            self.history.add(step, layer, metric, value)
        hists, self._hist_ready = self._hist_ready, []
        found = None
        if self._thresholds is not None and any(hasattr(s, "write_findings") for s in self.sinks):
            found = analyze(self.history, self._thresholds)
        for sink in self.sinks:
            sink.write(records, self.history)
            if hists and hasattr(sink, "write_histograms"):
                sink.write_histograms(hists)
            if found is not None and hasattr(sink, "write_findings"):
                sink.write_findings(found, records[-1][0])
        return records

    def findings(self, thresholds: Optional[Thresholds] = None) -> list[Finding]:
        """Apply the rules of :mod:`gradscope.findings` to the history so far.

        Args:
            thresholds: override the monitor's thresholds (its ``findings=``
                argument, or the defaults).

        Example:
            >>> import torch, torch.nn as nn, gradscope
            >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
            >>> with gradscope.watch(model, summary=False) as mon:
            ...     model(torch.randn(16, 4)).mean().backward()
            >>> mon.findings()
            []
        """
        return analyze(self.history, thresholds or self._thresholds or Thresholds())

    # -------------------------------------------------------------- hooks
    def _register(self, model: nn.Module) -> None:
        self._handles.append(model.register_forward_pre_hook(self._root_pre_hook))
        self._handles.append(model.register_forward_hook(self._root_hook))
        seen: set[int] = set()
        for name, module in model.named_modules():
            if not self._include(name, module):
                continue
            fam = family_of(module)
            if fam is not None and self.record_activations:
                if fam.needs_input and getattr(module, "inplace", False):
                    self._handles.append(
                        module.register_forward_pre_hook(self._make_stash_hook())
                    )
                self._handles.append(module.register_forward_hook(self._make_act_hook(name, fam)))
            own = [(n, p) for n, p in module.named_parameters(recurse=False)
                   if p.requires_grad and id(p) not in seen]
            if own and self.record_gradients:
                layer = name or "(root)"
                self._layer_order.setdefault(layer, len(self._layer_order))
                self.history.add_layer(LayerInfo(
                    layer, kind="layer", order=self._layer_order[layer],
                    type=type(module).__name__, module=name))
                for pname, p in own:
                    seen.add(id(p))
                    full = f"{name}.{pname}" if name else pname
                    self._params.append(_ParamRef(layer, full, weakref.ref(p)))
                    self.history.add_layer(LayerInfo(
                        full, kind="parameter", order=len(self._params) - 1,
                        type="Parameter", module=name, shape=tuple(p.shape)))
        opt = self._optimizer_ref() if self._optimizer_ref is not None else None
        if opt is not None:
            self._handles.append(opt.register_step_pre_hook(self._opt_pre_hook))
            self._handles.append(opt.register_step_post_hook(self._opt_post_hook))

    def _remove_handles(self) -> None:
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()

    def _counts_as_forward(self, module: nn.Module) -> bool:
        return module.training or self.record_eval

    def _root_pre_hook(self, module: nn.Module, args: Any) -> None:
        counted = self._counts_as_forward(module)
        if self._optimizer_ref is None and counted:
            if self._step_has_forward:
                self._end_step()
            self._step_has_forward = True
        self._calls.clear()
        self._recording = counted and self._sampled

    def _root_hook(self, module: nn.Module, args: Any, output: Any) -> None:
        if not (self._recording and self.record_gradients and self._optimizer_ref is None):
            return
        if not torch.is_grad_enabled():
            return
        # Read parameter gradients when this forward's backward finishes.
        for t in _tensors(output):
            if t.requires_grad:
                t.register_hook(self._backward_started)

    def _backward_started(self, grad: Tensor) -> None:
        if not self._bw_queued and self._attached:
            self._bw_queued = True
            step = self._step
            torch.autograd.Variable._execution_engine.queue_callback(
                lambda: self._backward_finished(step)
            )

    def _backward_finished(self, step: int) -> None:
        self._bw_queued = False
        if self._attached and step == self._step:
            # Accumulated gradients: the last backward of the step wins.
            self._param_entry = self._param_stats(step)
            if self._histogram_step():
                self._param_hists = self._param_histograms(step)

    def _opt_pre_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        if not (self._sampled and self.record_gradients):
            return
        step = self._step
        groups = self._param_groups()
        self._pending.extend(self._param_stats(step, groups))
        if self._histogram_step():
            self._pending.extend(self._param_histograms(step))
        if self.record_update_ratio and groups:
            with torch.no_grad():
                bufs = self._snapshot_buffers([p for g in groups for p in g.params])
                start = 0
                for g in groups:
                    g.before = bufs[start:start + len(g.params)]
                    start += len(g.params)
                    torch._foreach_copy_(g.before, g.params)
            self._weights_before = groups

    def _opt_post_hook(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        groups, self._weights_before = self._weights_before, None
        for g in groups or ():
            params = [p for p in (r.ref() for r in g.refs) if p is not None]
            if len(params) != len(g.refs) or g.wnorm is None or g.before is None:
                continue
            with torch.no_grad():
                torch._foreach_sub_(g.before, [p.detach() for p in params])
                unorm = stats.foreach_norms(g.before)
                vec = torch.cat([unorm, unorm / g.wnorm])
            names = [r.name for r in g.refs]
            self._pending.append(_Entry(self._step, vec, _param_update_decoder(names)))
        self._end_step()

    def _snapshot_buffers(self, params: list[Tensor]) -> list[Tensor]:
        """Buffers shaped like ``params``, kept across steps (no per-step allocation)."""
        bufs = self._snapshot
        if len(bufs) != len(params) or any(
                b.shape != p.shape or b.dtype != p.dtype or b.device != p.device
                for b, p in zip(bufs, params)):
            bufs = self._snapshot = _flat_buffers(params)
        return bufs

    def _end_step(self) -> None:
        self._stack_deferred()
        self._commit_param_entry()
        self._step += 1
        self._sampled = self._schedule(self._step)
        self._recording = False
        self._step_has_forward = False
        if self._step - self._last_flush_step >= self.flush_every:
            self.flush()

    def _commit_param_entry(self) -> None:
        if self._param_entry is not None:
            self._pending.extend(self._param_entry)
            self._param_entry = None
        if self._param_hists:
            self._pending.extend(self._param_hists)
            self._param_hists = []

    def _live_params(self, *, with_grad: bool) -> tuple[list[_ParamRef], list[Tensor]]:
        refs, params = [], []
        for r in self._params:
            p = r.ref()
            if p is None or (with_grad and (p.grad is None or p.grad.is_sparse)):
                continue
            refs.append(r)
            params.append(p.detach())
        return refs, params

    def _param_groups(self) -> list[_ParamGroup]:
        """The live parameters that have a (dense) gradient, one group per device."""
        groups: dict[torch.device, _ParamGroup] = {}
        for r, p in zip(*self._live_params(with_grad=True)):
            g = groups.get(p.device)
            if g is None:
                g = groups[p.device] = _ParamGroup([], [])
            g.refs.append(r)
            g.params.append(p)
        return list(groups.values())

    def _param_stats(self, step: int, groups: Optional[list[_ParamGroup]] = None) -> list[_Entry]:
        """Gradient norms, weight norms and non-finite gradient counts, one entry per device.

        Also sets each group's ``wnorm`` (the weights before the update) for update ratios.
        """
        entries = []
        with torch.no_grad():
            for g in self._param_groups() if groups is None else groups:
                grads = [p.grad for p in (r.ref() for r in g.refs)]  # type: ignore[union-attr]
                gnorm = stats.foreach_norms(grads)  # type: ignore[arg-type]
                g.wnorm = stats.foreach_norms(g.params)
                if stats.known_finite(gnorm):  # no NaN/Inf in any gradient: counts are 0
                    vec = torch.cat([gnorm, g.wnorm])
                else:
                    vec = torch.cat([gnorm, g.wnorm,
                                     stats.foreach_nonfinite_counts(grads)])  # type: ignore[arg-type]
                names = [r.name for r in g.refs]
                entries.append(_Entry(step, vec, _param_grad_decoder(names)))
        return entries

    def _make_stash_hook(self) -> Callable[[nn.Module, Any], None]:
        def stash_input(module: nn.Module, args: Any) -> None:
            if self._recording and args and isinstance(args[0], Tensor):
                self._stash[id(module)] = args[0].detach().clone()

        return stash_input

    def _make_act_hook(
        self, module_name: str, family: ActivationFamily
    ) -> Callable[[nn.Module, Any, Any], None]:
        def activation_hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self._recording:
                return
            x = self._stash.pop(id(module), None)
            call = self._calls.get(module_name, 0)
            self._calls[module_name] = call + 1
            if not isinstance(output, Tensor) or not output.is_floating_point():
                return
            site = self._site(module_name, call, family, module, output)
            if site.failed or site.fwd_step == self._step:
                return
            site.fwd_step = self._step
            if family.needs_input and x is None and args and isinstance(args[0], Tensor):
                x = args[0]
            try:
                self._record_activation(site, module, x, output)
                if self._histogram_step():
                    self._activation_histograms(site, output)
            except Exception as err:
                self._site_failed(site, err)

        return activation_hook

    def _site(
        self, module_name: str, call: int, family: ActivationFamily, module: nn.Module, y: Tensor
    ) -> _ActSite:
        site = self._sites.get((module_name, call))
        if site is None:
            base = module_name or "(root)"
            if any(True for _ in module.parameters(recurse=False)):
                base += ".out"  # the module is also a parameterised layer (PReLU)
            name = base if call == 0 else f"{base}[{call}]"
            site = _ActSite(name, module_name, call, family, metric_names(family),
                            window_metric(family))
            self._sites[(module_name, call)] = site
            self.history.add_layer(LayerInfo(
                name, kind="activation", order=len(self._sites) - 1,
                type=type(module).__name__, family=family.name, module=module_name,
                call=call, shape=tuple(y.shape)))
        return site

    def _record_activation(
        self, site: _ActSite, module: nn.Module, x: Optional[Tensor], y: Tensor
    ) -> None:
        step = self._step
        with torch.no_grad():
            sums = activation_sums(
                site.family, module, x, y.detach(), eps=self.eps, delta=self.delta,
                unit_dim=self.unit_dim)
        self._defer(step, y.device, sums.tensors(), _fixed_decoder(site.name, site.names,
                                                                   sums.finish))
        if sums.active is not None and site.window_name is not None:
            self._windows.append((site, sums.active, step))
        if self.record_backprop and y.requires_grad and torch.is_grad_enabled():
            y.register_hook(self._make_grad_hook(site, step, y.numel()))

    def _defer(self, step: int, device: torch.device, parts: list[Tensor],
               decode: Callable[[int, list[float]], Iterable[tuple[str, str, float]]]) -> None:
        """Keep a hook's 0-d results; :meth:`_stack_deferred` queues them at the step's end.

        Inside a hook on the CPU every operation is slow (the training kernels just
        flushed the caches), so hooks do only the reductions that must see the
        tensor; stacking, conversions and window updates run later, back to back,
        one stack per step and device.
        """
        batch = self._deferred.get((step, device))
        if batch is None:
            batch = self._deferred[(step, device)] = ([], [])
        batch[0].extend(parts)
        batch[1].append((len(parts), decode))

    def _stack_deferred(self) -> None:
        """Window updates of the step's activation sites, then one queued vector per batch."""
        windows, self._windows = self._windows, []
        with torch.no_grad():
            for site, active, step in windows:
                if site.last_active is None or site.last_active.shape != active.shape \
                        or site.last_active.device != active.device:
                    site.last_active = torch.full(active.shape, _NEVER, dtype=torch.long,
                                                  device=active.device)
                site.last_active.masked_fill_(active, step)
                idle = torch.count_nonzero(site.last_active <= step - self.dead_window)
                self._defer(step, active.device, [idle], _window_decoder(
                    site.name, site.window_name or "", max(active.numel(), 1)))
            deferred, self._deferred = self._deferred, {}
            for (step, device), (parts, layout) in deferred.items():
                vec = (torch.stack([p if p.dtype == torch.float32 else p.float() for p in parts])
                       if parts else torch.zeros(0, device=device))
                self._pending.append(_Entry(step, vec, _batch_decoder(layout)))

    def _make_grad_hook(self, site: _ActSite, step: int, numel: int) -> Callable[[Tensor], None]:
        def backprop_hook(grad: Tensor) -> None:
            if not self._attached or site.failed or site.bwd_step == step:
                return
            site.bwd_step = step
            try:
                with torch.no_grad():
                    norm = stats.l2_norm(grad)
                    if stats.known_finite(norm):  # then no NaN/Inf: nothing to count
                        parts = [norm]
                    else:
                        parts = [norm, stats.nonfinite_count(grad)]
                self._defer(step, grad.device, parts, _backprop_decoder(site.name, numel))
            except Exception as err:
                self._site_failed(site, err)

        return backprop_hook

    # ---------------------------------------------------------- histograms
    def _histogram_step(self) -> bool:
        """Whether the current step is a histogram step (cached per step)."""
        if self._hist_schedule is None:
            return False
        if self._hist_due_step != self._step:
            self._hist_due_step = self._step
            self._hist_due = bool(self._hist_schedule(self._step))
        return self._hist_due

    def _hist_entry(self, step: int, group: str, name: str, x: Tensor) -> _Entry:
        """Queue the device-side histogram of ``x``; it is decoded at the flush."""
        with torch.no_grad():
            vec = histogram_vector(x, self.histogram_bins)
        numel = x.numel()

        def decode(step: int, values: list[float]) -> Iterable[tuple[str, str, float]]:
            h = decode_histogram(step, group, name, values, numel)
            if h is not None:
                self._hist_ready.append(h)  # handed to the sinks by flush()
            return ()

        return _Entry(step, vec, decode)

    def _activation_histograms(self, site: _ActSite, y: Tensor) -> None:
        """Histogram of a call-site's output, and of the gradient flowing back through it."""
        step = self._step
        self._pending.append(self._hist_entry(step, "activations", site.name, y.detach()))
        if self.record_backprop and y.requires_grad and torch.is_grad_enabled():
            done = [False]

            def backprop_histogram(grad: Tensor) -> None:
                if done[0] or not self._attached or site.failed:
                    return
                done[0] = True
                try:
                    self._pending.append(self._hist_entry(step, "backprop", site.name, grad))
                except Exception as err:
                    self._site_failed(site, err)

            y.register_hook(backprop_histogram)

    def _param_histograms(self, step: int) -> list[_Entry]:
        """Histograms of each parameter's gradient and of the parameter itself."""
        refs, params = self._live_params(with_grad=True)
        entries = []
        for r, p in zip(refs, params):
            grad = r.ref().grad  # type: ignore[union-attr]
            entries.append(self._hist_entry(step, "gradients", r.name, grad))  # type: ignore[arg-type]
            entries.append(self._hist_entry(step, "weights", r.name, p))
        return entries

    def _site_failed(self, site: _ActSite, err: Exception) -> None:
        if self.strict:
            raise err
        site.failed = True
        warnings.warn(
            f"gradscope: stopped monitoring {site.name!r} after an error in its hook: "
            f"{type(err).__name__}: {err}. Training goes on; pass strict=True to raise.",
            RuntimeWarning,
            stacklevel=2,
        )

    def __repr__(self) -> str:
        state = "attached" if self._attached else "detached"
        return (f"Monitor({state}, step={self._step}, activation_sites={len(self._sites)}, "
                f"parameters={len(self._params)})")


def watch(model: nn.Module, **options: Any) -> Monitor:
    """Attach a :class:`Monitor` to ``model`` and return it.

    Takes the keyword options of :class:`Monitor`. Use it as a context manager, or
    call :meth:`Monitor.close` (or :meth:`Monitor.detach`) when done.

    Example:
        >>> import torch, torch.nn as nn, gradscope
        >>> model = nn.Sequential(nn.Linear(4, 4), nn.Sigmoid())
        >>> with gradscope.watch(model) as mon:
        ...     _ = model(torch.randn(8, 4)).sum().backward()
        >>> sorted(mon.history.metrics("1"))[:3]
        ['grad_out_nonfinite', 'grad_out_norm', 'grad_out_rms']
    """
    monitor = Monitor(model, **options)
    try:
        return monitor.attach()
    except BaseException:
        if monitor.writer is not None and options.get("logdir") is not None:
            monitor.writer.close()  # the writer made here; user sinks stay theirs
        raise


# ---------------------------------------------------------------- helpers
def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"watch({name}={value!r}): must be an int >= {low}")


def _check_open_unit(name: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"watch({name}={value!r}): must be a number in (0, 1), e.g. 0.01")


def _make_filter(
    include: Union[Sequence[str], Callable[[str, nn.Module], bool], None]
) -> Callable[[str, nn.Module], bool]:
    if include is None:
        return lambda name, module: True
    if callable(include):
        return include
    if isinstance(include, str):
        include = [include]
    patterns = list(include)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError(
            f"watch(include={include!r}): pass fnmatch patterns (strings) or a callable "
            "(name, module) -> bool"
        )
    return lambda name, module: name == "" or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _tensors(obj: Any) -> Iterable[Tensor]:
    """Every tensor in a nested output (tensor, tuple, list, dict)."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for o in obj:
            yield from _tensors(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _tensors(o)


def _fixed_decoder(
    layer: str, names: tuple[str, ...], finish: Callable[[list[float]], list[float]]
) -> Callable[[int, list[float]], Iterable[tuple[str, str, float]]]:
    def decode(step: int, values: list[float]) -> Iterable[tuple[str, str, float]]:
        return [(layer, n, v) for n, v in zip(names, finish(values))]

    return decode


def _window_decoder(layer: str, name: str, units: int) -> Callable[[int, list[float]], Iterable[tuple[str, str, float]]]:
    def decode(step: int, values: list[float]) -> Iterable[tuple[str, str, float]]:
        return [(layer, name, values[0] / units)]

    return decode


def _batch_decoder(layout: list[tuple[int, Any]]) -> Callable[[int, list[float]], Iterable[tuple[str, str, float]]]:
    """Decode a stacked batch: each part's decoder gets its own slice of the values."""
    def decode(step: int, values: list[float]) -> Iterable[tuple[str, str, float]]:
        out: list[tuple[str, str, float]] = []
        pos = 0
        for n, sub in layout:
            out.extend(sub(step, values[pos:pos + n]))
            pos += n
        return out

    return decode


def _backprop_decoder(layer: str, numel: int) -> Callable[[int, list[float]], Iterable[tuple[str, str, float]]]:
    def decode(step: int, values: list[float]) -> Iterable[tuple[str, str, float]]:
        norm, nonfinite = values if len(values) == 2 else (values[0], 0.0)  # 0: known_finite
        rms = norm / math.sqrt(numel) if numel else float("nan")
        return [(layer, "grad_out_norm", norm), (layer, "grad_out_rms", rms),
                (layer, "grad_out_nonfinite", nonfinite)]

    return decode


def _param_grad_decoder(names: list[str]) -> Callable[[int, list[float]], Iterable[tuple[str, str, float]]]:
    def decode(step: int, values: list[float]) -> Iterable[tuple[str, str, float]]:
        n = len(names)
        out = []
        for i, name in enumerate(names):
            # without the counts, the gradients were known to be finite (known_finite)
            g, w = values[i], values[n + i]
            nf = values[2 * n + i] if len(values) == 3 * n else 0.0
            out += [(name, "grad_norm", g), (name, "weight_norm", w),
                    (name, "grad_nonfinite", nf), (name, "grad_weight_ratio", _ratio(g, w))]
        return out

    return decode


def _param_update_decoder(names: list[str]) -> Callable[[int, list[float]], Iterable[tuple[str, str, float]]]:
    def decode(step: int, values: list[float]) -> Iterable[tuple[str, str, float]]:
        n = len(names)
        out = []
        for i, name in enumerate(names):
            out += [(name, "update_norm", values[i]), (name, "update_ratio", values[n + i])]
        return out

    return decode


def _flat_buffers(params: list[Tensor]) -> list[Tensor]:
    """Contiguous buffers shaped like ``params``, carved from one allocation per device/dtype."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    out: list[Optional[Tensor]] = [None] * len(params)
    for (device, dtype), idx in groups.items():
        flat = torch.empty(sum(params[i].numel() for i in idx), dtype=dtype, device=device)
        pos = 0
        for i in idx:
            n = params[i].numel()
            out[i] = flat[pos:pos + n].view(params[i].shape)
            pos += n
    return out  # type: ignore[return-value]


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return float("inf") if a else float("nan")
    return a / b


def _decode(entries: list[_Entry]) -> list[Record]:
    """One host transfer per device, then each entry's values back into records."""
    by_device: dict[torch.device, list[_Entry]] = {}
    for e in entries:
        by_device.setdefault(e.tensor.device, []).append(e)
    records: list[Record] = []
    for group in by_device.values():
        flat = torch.cat([e.tensor.reshape(-1) for e in group]).tolist()  # ok-sync: the flush
        pos = 0
        for e in group:
            n = e.tensor.numel()
            for layer, metric, value in e.decode(e.step, flat[pos:pos + n]):
                records.append((e.step, layer, metric, value))
            pos += n
    records.sort(key=lambda r: r[0])
    return records


_PARAM_SUMS = ("grad_norm", "weight_norm", "update_norm")


def _add_layer_aggregates(records: list[Record]) -> list[Record]:
    """Per-layer values from per-parameter ones: norms combine as sqrt(sum of squares)."""
    acc: dict[tuple[int, str], dict[str, float]] = {}
    for step, name, metric, value in records:
        if metric in _PARAM_SUMS or metric == "grad_nonfinite":
            layer = _param_layer(name)
            d = acc.setdefault((step, layer), {})
            if metric == "grad_nonfinite":
                d[metric] = d.get(metric, 0.0) + value
            else:
                d[metric] = d.get(metric, 0.0) + value * value
    out = list(records)
    for (step, layer), d in acc.items():
        vals = {m: math.sqrt(v) if m in _PARAM_SUMS else v for m, v in d.items()}
        for m, v in vals.items():
            out.append((step, layer, m, v))
        if "grad_norm" in vals and "weight_norm" in vals:
            out.append((step, layer, "grad_weight_ratio", _ratio(vals["grad_norm"], vals["weight_norm"])))
        if "update_norm" in vals:
            # weight_norm of the same step was measured before the update
            w = vals.get("weight_norm")
            if w is not None:
                out.append((step, layer, "update_ratio", _ratio(vals["update_norm"], w)))
    out.sort(key=lambda r: r[0])
    return out


def _param_layer(param_name: str) -> str:
    layer, _, _ = param_name.rpartition(".")
    return layer or "(root)"
