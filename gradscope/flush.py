"""The end of a step and the flush: one owner, one order.

The captures (:mod:`gradscope.capture`) only hook, reduce and defer to the queue.
What happens when a step is over, and at a flush, is decided here, always in this
order:

1. **end of step** (:meth:`Flush.end_step`): the coverage report of the first
   monitored step is taken (printed, handed to the sinks); the unit windows are
   updated (:meth:`ActivationRecorder.end_step
   <gradscope.capture.activation.ActivationRecorder.end_step>`), the recurrent
   captures queue their step, the queue stacks the step's results, the parameters'
   entries are committed; the step advances; every ``flush_every`` steps a flush;
2. **drain** (:meth:`Flush.flush`): the queue crosses to the host, one transfer per
   device, and its decoders turn the values into records;
3. **layer aggregates**: layers whose parameters sit on several devices are
   combined on the host (:func:`combine_split_layers`; every other layer was
   combined by its device's decoder);
4. **history**: the layers the captures declared, the records, the profiles;
5. **sinks and findings**: ``write`` to every sink (the findings sink first: it
   runs the rules and hands the findings on through a callback), then
   ``write_histograms``.

A flush between two step ends (:meth:`gradscope.Monitor.flush`, called by the user
or on detach) first settles what the step in progress has left (coverage, unit
windows) so that it is written too.

Example:
    >>> import torch, torch.nn as nn, gradscope
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> with gradscope.watch(model, summary=False) as mon:
    ...     model(torch.randn(16, 4)).mean().backward()
    ...     records = mon.flush()  # the step in progress is written now
    >>> ("1", "dead_units") in {(r.layer, r.metric) for r in records}
    True
"""

from __future__ import annotations

import sys
from typing import Callable

from gradscope.capture.activation import ActivationRecorder
from gradscope.capture.base import Context
from gradscope.capture.compiled import CompiledSteps
from gradscope.capture.coverage import CoverageTracker
from gradscope.capture.params import ParamCapture
from gradscope.capture.recurrent import RecurrentCapture
from gradscope.distributed import world
from gradscope.history import History
from gradscope.metrics import METRICS, layer_values
from gradscope.records import Record
from gradscope.writers.base import SinkFanout

__all__ = ["Flush", "combine_split_layers"]


class Flush:
    """Ends steps and flushes, in the order of the module's docstring.

    Args:
        ctx: the monitor's context (its queue and step state).
        history: the monitor's history.
        sinks: the monitor's sinks (isolated from failures by the fan-out).
        recorder, coverage, recurrent, params, compiled: the captures whose step
            ends here.
        step_over: called when a step ends, before the step advances (the step hooks
            forget the forward they saw).
    """

    def __init__(self, ctx: Context, history: History, sinks: SinkFanout, *, recorder: ActivationRecorder,
                 coverage: CoverageTracker, recurrent: RecurrentCapture, params: ParamCapture,
                 compiled: CompiledSteps, step_over: Callable[[], None] = lambda: None) -> None:
        self.ctx, self.history, self.sinks = ctx, history, sinks
        self.recorder, self.coverage, self.recurrent = recorder, coverage, recurrent
        self.params, self.compiled = params, compiled
        self.step_over = step_over
        self.last_flush_step = ctx.options.start_step
        self.told_batch = False  # the sinks know the batch size (``write_settings``)

    # ---------------------------------------------------------- the step's end
    def end_step(self) -> None:
        """The step is over: its captures settle, the step advances, a flush when due."""
        self.settle(whole=True)
        state = self.ctx.state
        state.step += 1
        state.sampled = self.ctx.sample(state.step)
        self.compiled.next_step()
        state.recording = state.checking = False
        self.step_over()
        if state.step - self.last_flush_step >= self.ctx.options.flush_every:
            self.write()

    def settle(self, *, whole: bool) -> None:
        """What the captures do when a step ends: the first step's coverage, the unit windows,
        and with ``whole`` (the step is over, or the monitor detaches) the recurrent captures'
        step, the stacking and the parameters' entries. A flush inside a step settles only
        the first two (the parameters of a step in progress may still be read again)."""
        cov = self.coverage.end_step()
        if cov is not None:
            if self.ctx.options.summary and (not self.ctx.combine_params or world()[0] == 0):
                print(cov.line(), file=sys.stderr)  # ranks combined: rank 0 prints
            self.sinks.emit("write_coverage", cov)
        self.recorder.end_step()
        if whole:
            self.recurrent.end_step()
            self.ctx.queue.end_step()
            self.params.commit()

    # ---------------------------------------------------------------- the flush
    def flush(self) -> list[Record]:
        """Settle the step in progress, then :meth:`write`. Returns the new records."""
        self.settle(whole=False)
        return self.write()

    def write(self) -> list[Record]:
        """Drain the queue, combine split layers, extend the history, call the sinks."""
        queue, history = self.ctx.queue, self.history
        records = queue.drain()
        split = self.params.split_layers()
        if split:
            records = combine_split_layers(records, split)
        self.last_flush_step = self.ctx.state.step
        for info in queue.take_layers():
            history.add_layer(info)
        history.extend(records)
        for profile in queue.take_profiles():
            history.add_profile(*profile)
        hists, self.ctx.ready_histograms[:] = list(self.ctx.ready_histograms), []
        if self.ctx.state.batch is not None and not self.told_batch:
            self.told_batch = True
            self.sinks.emit("write_settings", {"batch_size": self.ctx.state.batch})
        if records:
            self.sinks.emit("write", records, history)
        if hists:
            self.sinks.emit("write_histograms", hists)
        return records


def combine_split_layers(records: list[Record], split: dict[str, str]) -> list[Record]:
    """Layer values of layers whose parameters sit on several devices (``split``: parameter -> layer)."""
    acc: dict[tuple[int, str], dict[str, list[float]]] = {}
    for step, name, metric, value in records:
        layer = split.get(name)
        spec = METRICS.get(metric)
        if layer is not None and spec is not None and spec.aggregate is not None:
            acc.setdefault((step, layer), {}).setdefault(metric, []).append(value)
    out = list(records)
    for (step, layer), values in acc.items():
        out += [Record(step, layer, m, v) for m, v in layer_values(values).items()]
    out.sort(key=lambda r: r[0])
    return out
