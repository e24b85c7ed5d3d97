"""TensorBoard output through ``torch.utils.tensorboard.SummaryWriter``.

What a run contains (all tags are grouped with ``/`` so TensorBoard's UI groups them):

==============================  ==========================================================
tag                             content
==============================  ==========================================================
``<metric>/<layer>``            scalars of activation call-sites and parameterised layers,
                                one group per metric (``saturation/3``, ``grad_norm/fc1``)
``param/<metric>/<parameter>``  the same per parameter (``param/grad_norm/fc1.weight``);
                                only with ``TensorBoardWriter(parameters=True)``
``0_health/<metric>``           run-level health: one value per step for the whole network
                                (worst saturation, worst dead units, log10 first/last
                                backprop RMS, log10 of the smallest/largest update ratio
                                as ``min_update_ratio_log10``/``max_update_ratio_log10``,
                                non-finite count; :mod:`gradscope.runlevel`); the digit
                                sorts the group first in the Scalars and Time Series tabs
custom scalars                  the run-level charts first (one line per run, each titled
                                with the threshold of its finding), then one
                                category per per-layer health metric, then the forward,
                                backward and update sections (closed); per-layer charts
                                grouped by module block, at most ``chart_lines // runs``
                                series each; rewritten when a new series appears
``activations/<site>``          histogram of a call-site's output (device-side bins)
``backprop/<site>``             histogram of the gradient flowing back through it
``gradients/<parameter>``       histogram of a parameter's gradient
``weights/<parameter>``         histogram of a parameter
``gradscope/gradient_flow``     image per flush: gradient norm and activation std vs depth
``gradscope/unit_health``       image per flush: dead and saturated units, layers × steps
``gradscope/time_gradient``     image per flush (recurrent layers): ‖∂L/∂h_k‖ over time
                                steps × training steps
``gradscope/findings``          text, rewritten when the findings change
``gradscope/coverage``          text, once: activation call-sites captured by module and by
                                function, what no hook can see, unknown activation modules
``gradscope/layers``            text: the layer index, a table (order, name, kind, type,
                                family, module, call, shape) and, hidden in an HTML
                                comment, the JSON lines that ``gradscope report`` reads back
==============================  ==========================================================

Scalars use ``add_scalar`` only: ``add_scalars`` would create one run per key.

``add_scalar`` costs tens of microseconds per value, and a flush of a ResNet
carries tens of thousands of values, so by default the writer hands each flush
to one background thread and returns at once; only the images are drawn on the
caller's thread (at most once per ``image_interval`` seconds). The thread, the
event files and what could not be written belong to
:class:`gradscope.writers.worker.EventWorker`; this module decides what to write.

**One run per directory.** The first event of the file is the run marker
(:data:`gradscope.events.RUN_TAG`). A directory that already holds a gradscope
run is refused, unless ``resume=True`` adds to that run on purpose (``watch()`` picks
``<logdir>-2`` for a rerun first: :mod:`gradscope.writers.rundir`).

**Write errors** (a full disk) never stop training. TensorBoard's own writer
thread dies at its first error and refuses every later write, so after an error
this writer closes that event file and opens a new one in the same run at the
next flush; the values handed to the failed file since its last confirmed flush
are counted, and said once when writing works again and once at
:meth:`TensorBoardWriter.close` (:mod:`gradscope.writers.worker`).

Example:
    >>> import tempfile, torch, torch.nn as nn, gradscope
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with gradscope.watch(model, logdir=d) as mon:
    ...         model(torch.randn(16, 4)).mean().backward()
    ...     type(mon.writer.summary_writer).__name__
    'SummaryWriter'
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Optional, Union

from gradscope.events import claim_run
from gradscope.findings.thresholds import Thresholds
from gradscope.histograms import Histogram
from gradscope.history import History, LayerInfo
from gradscope.runlevel import run_records
from gradscope.writers.base import Record, Sink
from gradscope.writers.heatmaps import heatmap_data
from gradscope.writers.labels import layer_labels
from gradscope.writers.layout import (
    CHART_LINES,
    COVERAGE_TAG,
    FINDINGS_TAG,
    LAYERS_TAG,
    check_logdir,
    custom_scalars_layout,
    findings_markdown,
    layers_text,
    layout_summary,
    run_value,
    scalar_tag,
)
from gradscope.writers.tb_items import (
    add_histograms,
    check_arguments,
    figure_images,
    write_heatmaps,
    write_hparams,
)
from gradscope.writers.worker import EventWorker

__all__ = ["TensorBoardWriter"]


class TensorBoardWriter(Sink):
    """A sink that writes a gradscope dashboard into one TensorBoard run.

    The directory is created and checked at construction, so an unwritable
    ``logdir`` fails at once with a message naming the path. Writes run on a
    background thread (``background=True``); :meth:`flush` and :meth:`close` wait
    for it. A write that fails on that thread is raised by the next call on the
    caller's thread, where the monitor reports it (one warning) and goes on; the
    writer keeps taking writes (into a new event file of the same run when the
    file's writer died), so it writes again once the cause is gone, and says
    how much could not be written when it does and at :meth:`close`.

    Args:
        logdir: the run directory (one run per directory, as TensorBoard expects).
        images: write the gradient-flow and unit-health images at each flush.
        image_interval: seconds of wall time between two image flushes at least
            (drawing costs ~0.1-0.3 s on a CPU); the last state is always drawn at
            :meth:`close`. ``0`` draws at every flush, ``math.inf`` only at close.
        parameters: also write per-parameter scalars (``param/<metric>/<name>``);
            off by default: layers already aggregate their parameters, and this
            about doubles the number of values written.
        background: write on a background thread so that a flush never waits
            for ``add_scalar``; ``False`` writes on the caller's thread.
        flush_secs: how often the event file is flushed in the background (seconds);
            the writer also flushes after each monitor flush.
        max_queue: events buffered before the background thread writes them.
        image_steps: at most this many steps (columns) in the unit-health image,
            evenly spread over the run.
        runs: how many runs will be viewed side by side in TensorBoard (a grid's
            size; ``gradscope compare`` passes it): each per-layer custom-scalars
            chart then holds at most ``max(1, chart_lines // runs)`` series.
        chart_lines: the most lines a per-layer custom-scalars chart should draw.
        resume: add to the gradscope run already in ``logdir`` (its run id is
            kept) instead of refusing the directory.
        thresholds: the findings' thresholds named in the run-health charts' titles.
        hparams: at :meth:`close`, register the run's settings (:meth:`write_settings`:
            model, optimizer, batch size, ``every``; :mod:`gradscope.writers.hparams`)
            and its health series with the HParams tab; ``False`` when you write your
            own hparams into this run (``gradscope compare`` does).

    Attributes:
        summary_writer: the underlying ``SummaryWriter``; add your own scalars
            (``loss/train``), hparams or figures to the same run with it.
        logdir: the run directory as a :class:`pathlib.Path`.

    Example:
        >>> import tempfile
        >>> from gradscope.history import History
        >>> with tempfile.TemporaryDirectory() as d:
        ...     with TensorBoardWriter(d, images=False) as w:
        ...         w.write([(0, "fc1", "grad_norm", 0.5)], History())
        ...         w.summary_writer.add_scalar("loss/train", 2.3, 0)
    """

    def __init__(
        self,
        logdir: Union[str, os.PathLike],
        *,
        images: bool = True,
        image_interval: float = 30.0,
        parameters: bool = False,
        background: bool = True,
        flush_secs: int = 30,
        max_queue: int = 1000,
        image_steps: int = 200,
        runs: int = 1,
        chart_lines: int = CHART_LINES,
        resume: bool = False,
        thresholds: Optional[Thresholds] = None,
        hparams: bool = True,
    ) -> None:
        check_arguments(flush_secs=flush_secs, max_queue=max_queue, image_steps=image_steps, runs=runs,
               chart_lines=chart_lines, image_interval=image_interval)
        self.logdir = check_logdir(logdir)
        self.run_id = claim_run(self.logdir, logdir, resume=resume)
        self.images = images
        self.image_interval = float(image_interval)
        self._last_image_time = -math.inf if image_interval < math.inf else 0.0  # inf: at close
        self._image_pending: Optional[tuple[History, int]] = None
        self.parameters = parameters
        self.image_steps = image_steps
        if thresholds is not None and not isinstance(thresholds, Thresholds):
            raise TypeError(f"TensorBoardWriter(thresholds={thresholds!r}): pass a Thresholds")
        self.runs, self.chart_lines, self.thresholds = runs, chart_lines, thresholds
        self._series: dict[str, set[str]] = {}  # metric -> the series charted in the layout
        self._layers_written: tuple[str, ...] = ()
        self._findings_key: Optional[tuple[Any, ...]] = None
        #: the HParams tab's settings (write_settings) and the activation families seen
        self.hparams = hparams
        self._settings: dict[str, Any] = {}
        self._families: set[str] = set()
        self._closed = False
        #: the thread, the event files (reopened after an error) and the losses
        self._events = EventWorker(
            self.logdir, self.run_id, resume=resume, flush_secs=flush_secs, max_queue=max_queue,
            background=background, reopened=self._reopened,
            scalar_items=lambda *args: [(s, t) for s, t, _ in self._ordered(*args)])
        self.summary_writer = self._events.summary_writer
        self.losses = self._events.losses

    # ------------------------------------------------------------ sink api
    def write(self, records: Sequence[Record], history: History) -> None:
        """Write one flush: scalars in network order, layout and layer index when new, images."""
        if self._closed or not records:
            return
        # Snapshot what the worker needs: the history changes at the next flush.
        names = history.layers()
        infos = {n: history.info(n) for n in names if _has_info(history, n)}
        self._families |= {i.family for i in infos.values() if i.family}
        self._submit(self._write_scalars, list(records), names, infos, kind="scalars")
        if self.images:
            step = max(r[0] for r in records)
            if time.monotonic() - self._last_image_time >= self.image_interval:
                self._write_images(history, step)
            else:
                self._image_pending = (history, step)
        self._submit(self._events.flush_file, kind="flush")
        self._events.raise_error()
        self._events.say(self.losses.recovered(), "works again (in a new event file of the same run)")

    def write_histograms(self, histograms: Sequence[Histogram]) -> None:
        """Write device-computed histograms with ``add_histogram_raw``."""
        if self._closed:
            return
        self._submit(add_histograms, self.summary_writer, list(histograms), kind="histograms")

    def write_findings(self, findings: Sequence[Any], step: int) -> None:
        """Write the findings as markdown text when they differ from the last ones written
        (an episode began or resolved, or a message's figures moved; the findings sink
        delivers the final ones at close)."""
        if self._closed:
            return
        key = tuple((f.severity, f.rule, f.layer, f.message) for f in findings)
        if key == self._findings_key:
            return
        self._findings_key = key
        self._submit(self.summary_writer.add_text, FINDINGS_TAG, findings_markdown(findings), step)

    def write_coverage(self, coverage: Any) -> None:
        """Write what gradscope sees of the model's activations, as markdown text."""
        if self._closed:
            return
        self._submit(self.summary_writer.add_text, COVERAGE_TAG, coverage.markdown(),
                     coverage.step)

    def write_settings(self, settings: Mapping[str, Any]) -> None:
        """Keep the run's settings for the HParams tab, written at :meth:`close`."""
        self._settings.update(settings)

    def flush(self) -> None:
        """Wait for the background writes, then push buffered events to disk."""
        if self._closed:
            return
        self._events.flush()

    def close(self) -> None:
        """Draw the pending images, finish the background writes, close the file. Safe twice."""
        if self._closed:
            return
        try:
            if self._image_pending is not None:
                self._write_images(*self._image_pending)
            if self.hparams and self._settings:
                self._submit(write_hparams, self.summary_writer, self._settings, self._families)
        finally:
            self._closed = True
            self._events.close()
            self._events.say(self.losses.total(), "failed during this run")
        self._events.raise_error()

    def __repr__(self) -> str:
        return f"TensorBoardWriter({str(self.logdir)!r})"

    # ------------------------------------------------------------ internals
    def _submit(self, fn: Callable[..., Any], *args: Any, kind: str = "item") -> None:
        self._events.submit(fn, *args, kind=kind)

    def _reopened(self) -> None:
        """A new event file: the layer index and the layout are written into it again."""
        self._layers_written, self._series = (), {}

    def _ordered(self, records: Sequence[Record], names: Sequence[str],
                 infos: dict[str, LayerInfo]) -> list[tuple[int, str, float]]:
        """``(step, tag, value)`` to write: the run-level values, then the layers' in
        network order within a step."""
        kinds = {n: infos[n].kind for n in names if n in infos}
        rank = {n: i for i, n in enumerate(names)}
        out = [(step, scalar_tag("", metric, "run"), run_value(metric, value))
               for step, metric, value in run_records(records, kinds)]
        for step, layer, metric, value in sorted(
                records, key=lambda r: (r[0], r[2], rank.get(r[1], len(rank)))):
            info = infos.get(layer)
            kind = info.kind if info is not None else None
            if kind != "parameter" or self.parameters:
                out.append((step, scalar_tag(layer, metric, kind), value))
        return out

    def _write_scalars(self, records: Sequence[Record],
                       names: Sequence[str], infos: dict[str, LayerInfo]) -> None:
        ordered = self._ordered(records, names, infos)
        done = 0
        try:
            if tuple(names) != self._layers_written:
                step = min(r[0] for r in records)
                self.summary_writer.add_text(
                    LAYERS_TAG, layers_text([infos[n] for n in names if n in infos]), step)
                self._layers_written = tuple(names)
            kinds = {n: infos[n].kind for n in names if n in infos}
            self._write_layout(records, kinds, {n: i for i, n in enumerate(names)},
                               layer_labels(infos.values()) if self.runs == 1 else None)
            add = self.summary_writer.add_scalar
            for step, tag, value in ordered:
                add(tag, value, step)
                done += 1
        finally:
            self.losses.handed([(step, tag) for step, tag, _ in ordered], done)

    def _write_layout(self, records: Sequence[Record], kinds: dict[str, str],
                      rank: dict[str, int], labels: Optional[dict[str, str]]) -> None:
        """(Re)write the custom-scalars layout when the records bring a new series."""
        new = False
        for _, layer, metric, _ in records:
            if kinds.get(layer) != "parameter":
                have = self._series.setdefault(metric, set())
                if layer not in have:
                    have.add(layer)
                    new = True
        if new:
            last = len(rank)
            series = {m: sorted(have, key=lambda n: (rank.get(n, last), n))
                      for m, have in self._series.items()}
            layout = custom_scalars_layout(series, runs=self.runs, chart_lines=self.chart_lines,
                                           thresholds=self.thresholds, labels=labels)
            self.summary_writer._get_file_writer().add_summary(layout_summary(layout))

    def _write_images(self, history: History, step: int) -> None:
        self._image_pending = None
        self._last_image_time = time.monotonic()
        for tag, image in figure_images(history, step, self.image_steps):
            self._submit(self.summary_writer.add_image, tag, image, step, None, "HWC")
        self._submit(write_heatmaps, self.summary_writer,  # drawn on the writer's thread
                     heatmap_data(history, max_steps=self.image_steps), step)

def _has_info(history: History, name: str) -> bool:
    try:
        history.info(name)
    except KeyError:
        return False
    return True


