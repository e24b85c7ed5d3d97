"""TensorBoard output through ``torch.utils.tensorboard.SummaryWriter``.

What a run contains (all tags are grouped with ``/`` so TensorBoard's UI groups them):

==============================  ==========================================================
tag                             content
==============================  ==========================================================
``<metric>/<layer>``            scalars of activation call-sites and parameterised layers,
                                one group per metric (``saturation/3``, ``grad_norm/fc1``)
``param/<metric>/<parameter>``  the same per parameter (``param/grad_norm/fc1.weight``);
                                only with ``TensorBoardWriter(parameters=True)``
``run/<metric>``                run-level health: one value per step for the whole network
                                (worst saturation, worst dead units, log10 first/last
                                backprop RMS, smallest/largest update ratio, non-finite
                                count; :mod:`gradscope.runlevel`)
custom scalars                  the run-level charts first (one line per run), then one
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
``gradscope/layers``            text: the layer index (kind, order, type, family, shape)
                                that ``gradscope report`` reads back
==============================  ==========================================================

Scalars use ``add_scalar`` only: ``add_scalars`` would create one run per key.

``add_scalar`` costs tens of microseconds per value, and a flush of a ResNet
carries tens of thousands of values, so by default the writer hands each flush
to one background thread and returns at once; only the images are drawn on the
caller's thread (at most once per ``image_interval`` seconds).

**One run per directory.** The first event of the file is the run marker
(:data:`gradscope.events.RUN_TAG`). A directory that already holds a gradscope
run is refused, unless ``resume=True`` adds to that run on purpose.

**Write errors** (a full disk) never stop training. TensorBoard's own writer
thread dies at its first error and refuses every later write (its traceback is
not printed: the error is said by this writer), so after an error this writer
closes that event file and opens a new one in the same run at the first write
job after a probe write into the directory succeeds (no file is opened while
the disk is full; a new file that fails at once is removed); the values handed
to the failed file since its last confirmed flush, and those of the jobs that
failed meanwhile, are counted, and said once when writing works again and once
at :meth:`close`.

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
import queue
import threading
import time
import warnings
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

from torch.utils.tensorboard import SummaryWriter

from gradscope.events import RUN_TAG, claim_run, marker_text, read_events, scalars
from gradscope.histograms import Histogram
from gradscope.history import History, LayerInfo
from gradscope.runlevel import run_records
from gradscope.writers.base import Record, Sink
from gradscope.writers.layout import (
    CHART_LINES,
    COVERAGE_TAG,
    FINDINGS_TAG,
    GRADIENT_FLOW_TAG,
    LAYERS_TAG,
    TIME_GRADIENT_TAG,
    UNIT_HEALTH_TAG,
    check_logdir,
    custom_scalars_layout,
    findings_markdown,
    layers_text,
    layout_summary,
    scalar_tag,
)
from gradscope.writers.losses import Losses

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
            :meth:`close`. ``0`` draws at every flush.
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
    ) -> None:
        if not isinstance(flush_secs, int) or flush_secs < 1:
            raise ValueError(f"TensorBoardWriter(flush_secs={flush_secs!r}): must be an int >= 1")
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"TensorBoardWriter(max_queue={max_queue!r}): must be an int >= 1")
        if not isinstance(image_steps, int) or image_steps < 2:
            raise ValueError(f"TensorBoardWriter(image_steps={image_steps!r}): must be an int >= 2")
        for name, v in (("runs", runs), ("chart_lines", chart_lines)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TensorBoardWriter({name}={v!r}): must be an int >= 1")
        if not isinstance(image_interval, (int, float)) or image_interval < 0:
            raise ValueError(f"TensorBoardWriter(image_interval={image_interval!r}): must be "
                             "a number of seconds >= 0 (0 draws at every flush)")
        self.logdir = check_logdir(logdir)
        self.run_id = claim_run(self.logdir, logdir, resume=resume)
        self.images = images
        self.image_interval = float(image_interval)
        self._last_image_time = -math.inf
        self._image_pending: Optional[tuple[History, int]] = None
        self.parameters = parameters
        self.image_steps = image_steps
        _quiet_writer_threads(self)
        self.summary_writer = SummaryWriter(
            log_dir=str(self.logdir), flush_secs=flush_secs, max_queue=max_queue)
        self.summary_writer.add_text(RUN_TAG, marker_text(self.run_id, resumed=resume), 0)
        self.losses = Losses()
        # the event file, and its size at its last successful flush
        self._confirmed: tuple[Optional[Path], int] = (_file_end(self.summary_writer)[0], 0)
        self.runs, self.chart_lines = runs, chart_lines
        self._series: dict[str, set[str]] = {}  # metric -> the series charted in the layout
        self._layers_written: tuple[str, ...] = ()
        self._findings_key: Optional[tuple[Any, ...]] = None
        self._error: Optional[Exception] = None  # raised on the background thread, not yet reported
        self._closed = False
        self._queue: Optional[queue.Queue[Optional[tuple[Callable[..., Any], tuple[Any, ...]]]]] = None
        self._thread: Optional[threading.Thread] = None
        if background:
            self._queue = queue.Queue()
            self._thread = threading.Thread(target=self._work, name="gradscope-tensorboard",
                                            daemon=True)
            self._thread.start()

    # ------------------------------------------------------------ sink api
    def write(self, records: Sequence[Record], history: History) -> None:
        """Write one flush: scalars in network order, layout and layer index when new, images."""
        if self._closed or not records:
            return
        # Snapshot what the worker needs: the history changes at the next flush.
        names = history.layers()
        infos = {n: history.info(n) for n in names if _has_info(history, n)}
        self._submit(self._write_scalars, list(records), names, infos)
        if self.images:
            step = max(r[0] for r in records)
            if time.monotonic() - self._last_image_time >= self.image_interval:
                self._write_images(history, step)
            else:
                self._image_pending = (history, step)
        self._submit(self._flush_file)
        self._raise_background_error()
        self._say(self.losses.recovered(), "works again (in a new event file of the same run)")

    def write_histograms(self, histograms: Sequence[Histogram]) -> None:
        """Write device-computed histograms with ``add_histogram_raw``."""
        if self._closed:
            return
        self._submit(self._write_histograms, list(histograms))

    def write_findings(self, findings: Sequence[Any], step: int) -> None:
        """Write the findings as markdown text when they differ from the last ones written."""
        if self._closed:
            return
        key = tuple((f.rule, f.layer, f.severity) for f in findings)
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

    def flush(self) -> None:
        """Wait for the background writes, then push buffered events to disk."""
        if self._closed:
            return
        if self._queue is not None:
            self._queue.join()
        self._run(self._flush_file, ())
        self._raise_background_error()

    def close(self) -> None:
        """Draw the pending images, finish the background writes, close the file. Safe twice."""
        if self._closed:
            return
        try:
            if self._image_pending is not None:
                self._write_images(*self._image_pending)
        finally:
            self._closed = True
            if self._queue is not None and self._thread is not None:
                self._queue.put(None)
                self._thread.join()
            try:
                if self.losses.broken:  # nothing left to flush: count what the file holds
                    self._settle()
                else:
                    self._run(self._flush_file, ())
                self.summary_writer.close()
            except Exception as err:  # counted, and said just below
                if self._error is None:
                    self._error = err
            _OPEN.discard(self)
            self._say(self.losses.total(), "failed during this run")
        self._raise_background_error()

    def __repr__(self) -> str:
        return f"TensorBoardWriter({str(self.logdir)!r})"

    # ------------------------------------------------------------ internals
    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run a write on the background thread (or here without one)."""
        if self._queue is not None:
            self._queue.put((fn, args))
        else:
            self._run(fn, args)

    def _work(self) -> None:
        """The background thread: run queued writes until the ``None`` sentinel."""
        assert self._queue is not None
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                self._run(*job)
            except Exception as err:  # reported on the caller's thread by the next call
                if self._error is None:
                    self._error = err
            finally:
                self._queue.task_done()

    def _run(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        """One write job; after a failure that killed the event file, a new file first."""
        ran = False
        try:
            if self.losses.broken:
                self._reopen()
            ran = True
            fn(*args)
        except Exception as err:
            scalar_job = fn == self._write_scalars
            if scalar_job and not ran:
                self.losses.handed([(s, t) for s, t, _ in self._ordered(*args)], 0)
            items = len(args[0]) if fn == self._write_histograms else int(fn != self._flush_file)
            self.losses.failed(err, 0 if scalar_job else items)
            raise

    def _reopen(self) -> None:
        """Close the event file whose writer thread died and open a new one, once a probe
        write succeeds (on a full disk no file is opened; the job fails and is counted).
        A new file that fails at once is removed: nothing of the run is in it."""
        _probe(self.logdir)
        self._settle()
        sw = self.summary_writer
        writers: list[Any] = list((sw.all_writers or {}).values())
        for w in writers:
            try:
                w.close()
            except Exception:  # the dead writer re-raises its error
                pass
        sw.file_writer = sw.all_writers = None  # SummaryWriter opens a new file on next use
        _quiet_writer_threads(self)
        before = set(self.logdir.glob(_EVENT_FILES))
        try:
            sw.add_text(RUN_TAG, marker_text(self.run_id, resumed=True), 0)
        except Exception:
            for path in set(self.logdir.glob(_EVENT_FILES)) - before:
                path.unlink(missing_ok=True)
            sw.file_writer = sw.all_writers = None
            raise
        self._confirmed = (_file_end(sw)[0], 0)
        self._layers_written, self._series = (), {}  # again, into the new file
        self.losses.broken = False

    def _flush_file(self) -> None:
        """Flush the event file: what was handed to it is then on disk."""
        self.summary_writer.flush()
        self.losses.confirmed()
        self._confirmed = _file_end(self.summary_writer)

    def _settle(self) -> None:
        """Count what reached the dead file since its last flush; the rest is lost."""
        path, offset = self._confirmed
        found: set[tuple[int, str]] = set()
        pending = self.losses.pending()
        if path is not None and pending:
            for s in scalars(read_events(path, start=offset)):
                if (s.step, s.tag) in pending:
                    found.add((s.step, s.tag))
        if path is not None and path.exists() and path.stat().st_size == 0:
            path.unlink()  # opened during the outage, nothing reached it
        self.losses.settle(found)
        self._confirmed = (None, 0)

    def _say(self, what: Optional[str], how: str) -> None:
        if what:
            warnings.warn(f"gradscope: writing TensorBoard events to {str(self.logdir)!r} {how}: "
                          f"{what}", RuntimeWarning, stacklevel=3)

    def _raise_background_error(self) -> None:
        """Raise (once) an error the background thread met since the last call."""
        err, self._error = self._error, None
        if err is not None:
            raise RuntimeError(f"writing TensorBoard events to {str(self.logdir)!r} failed: "
                               f"{type(err).__name__}: {err}") from err

    def _ordered(self, records: Sequence[Record], names: Sequence[str],
                 infos: dict[str, LayerInfo]) -> list[tuple[int, str, float]]:
        """``(step, tag, value)`` to write: the run-level values, then the layers' in
        network order within a step."""
        kinds = {n: infos[n].kind for n in names if n in infos}
        rank = {n: i for i, n in enumerate(names)}
        out = [(step, scalar_tag("", metric, "run"), value)
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
            self._write_layout(records, kinds, {n: i for i, n in enumerate(names)})
            add = self.summary_writer.add_scalar
            for step, tag, value in ordered:
                add(tag, value, step)
                done += 1
        finally:
            self.losses.handed([(step, tag) for step, tag, _ in ordered], done)

    def _write_layout(self, records: Sequence[Record], kinds: dict[str, str],
                      rank: dict[str, int]) -> None:
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
            layout = custom_scalars_layout(series, runs=self.runs, chart_lines=self.chart_lines)
            self.summary_writer._get_file_writer().add_summary(layout_summary(layout))

    def _write_histograms(self, histograms: Sequence[Histogram]) -> None:
        for h in histograms:
            self.summary_writer.add_histogram_raw(
                f"{h.group}/{h.name}", min=h.min, max=h.max, num=h.num, sum=h.sum,
                sum_squares=h.sum_squares, bucket_limits=h.bucket_limits,
                bucket_counts=h.bucket_counts, global_step=h.step)

    def _write_images(self, history: History, step: int) -> None:
        from gradscope.writers import figures

        self._image_pending = None
        self._last_image_time = time.monotonic()
        flow = figures.gradient_flow_image(history, step)
        if flow is not None:
            self._submit(self.summary_writer.add_image, GRADIENT_FLOW_TAG, flow, step, None, "HWC")
        health = figures.unit_health_image(history, max_steps=self.image_steps)
        if health is not None:
            self._submit(self.summary_writer.add_image, UNIT_HEALTH_TAG, health, step, None, "HWC")
        through_time = figures.time_gradient_image(history, max_steps=self.image_steps)
        if through_time is not None:
            self._submit(self.summary_writer.add_image, TIME_GRADIENT_TAG, through_time, step,
                         None, "HWC")


_EVENT_FILES = "events.out.tfevents.*"
_PROBE_BYTES = 4096  # a probe write this large must succeed before a new event file opens


def _probe(logdir: Path) -> None:
    """Raise the ``OSError`` a write into ``logdir`` meets now (a full disk), leaving no
    file; written as TensorBoard writes its event files."""
    from tensorboard.compat import tf

    path = logdir / f".gradscope-probe-{os.getpid()}-{threading.get_ident()}"
    try:
        with tf.io.gfile.GFile(str(path), "wb") as f:
            f.write(bytes(_PROBE_BYTES))
    finally:
        path.unlink(missing_ok=True)


#: The open writers, whose event files' dying writer threads are not printed.
_OPEN: weakref.WeakSet[TensorBoardWriter] = weakref.WeakSet()


def _quiet_writer_threads(writer: TensorBoardWriter) -> None:
    """Stop Python printing ``Exception in thread`` when TensorBoard's writer thread of one
    of ``writer``'s event files dies (a full disk): the writer counts what is lost and says
    it in its warnings. Other threads' errors go to the ``threading.excepthook`` in place."""
    _OPEN.add(writer)
    previous = threading.excepthook
    if getattr(previous, "_gradscope", False):
        return

    def hook(args: Any) -> None:
        gfile = getattr(getattr(args.thread, "_record_writer", None), "_writer", None)
        name = getattr(gfile, "filename", None) or getattr(gfile, "name", None)
        if not isinstance(name, (str, bytes)) or not any(
                Path(os.fsdecode(name)).parent == w.logdir for w in list(_OPEN)):
            previous(args)

    hook._gradscope = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _file_end(sw: SummaryWriter) -> tuple[Optional[Path], int]:
    """The current event file and its size (``(None, 0)`` if TensorBoard hides it)."""
    name = getattr(getattr(sw.file_writer, "event_writer", None), "_file_name", None)
    try:
        return (Path(name), os.path.getsize(name)) if name else (None, 0)
    except OSError:
        return None, 0


def _has_info(history: History, name: str) -> bool:
    try:
        history.info(name)
    except KeyError:
        return False
    return True


