"""TensorBoard output through ``torch.utils.tensorboard.SummaryWriter``.

What a run contains (all tags are grouped with ``/`` so TensorBoard's UI groups them):

==============================  ==========================================================
tag                             content
==============================  ==========================================================
``<metric>/<layer>``            scalars of activation call-sites and parameterised layers,
                                one group per metric (``saturation/3``, ``grad_norm/fc1``)
``param/<metric>/<parameter>``  the same per parameter (``param/grad_norm/fc1.weight``)
custom scalars                  one chart per metric with every layer as a line, in three
                                sections (forward, backward, updates); written once
``activations/<site>``          histogram of a call-site's output (device-side bins)
``backprop/<site>``             histogram of the gradient flowing back through it
``gradients/<parameter>``       histogram of a parameter's gradient
``weights/<parameter>``         histogram of a parameter
``gradscope/gradient_flow``     image per flush: gradient norm and activation std vs depth
``gradscope/unit_health``       image per flush: dead and saturated units, layers × steps
``gradscope/findings``          text, rewritten when the findings change
``gradscope/layers``            text: the layer index (kind, order, type, family, shape)
                                that ``gradscope report`` reads back
==============================  ==========================================================

Scalars use ``add_scalar`` only: ``add_scalars`` would create one run per key.

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

import json
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

from torch.utils.tensorboard import SummaryWriter

from gradscope.histograms import Histogram
from gradscope.history import History, LayerInfo

__all__ = ["LAYOUT", "TensorBoardWriter", "layers_text", "parse_layers_text", "scalar_tag"]

#: Sections of the custom-scalars layout: each metric becomes one multi-line chart.
LAYOUT: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("gradscope: forward (activations)", (
        "saturation", "dead_units", "dead_units_window", "zero_frac", "neg_units",
        "neg_units_window", "neg_frac", "small_deriv", "mean_deriv", "std", "mean",
        "min", "max", "nonfinite")),
    ("gradscope: backward (gradients)", (
        "grad_out_rms", "grad_out_norm", "grad_out_nonfinite", "grad_norm",
        "grad_weight_ratio", "grad_nonfinite")),
    ("gradscope: updates and weights", ("update_ratio", "update_norm", "weight_norm")),
)

#: Text tag holding the layer index.
LAYERS_TAG = "gradscope/layers"
#: Text tag holding the findings.
FINDINGS_TAG = "gradscope/findings"
#: Image tags.
GRADIENT_FLOW_TAG = "gradscope/gradient_flow"
UNIT_HEALTH_TAG = "gradscope/unit_health"


def scalar_tag(layer: str, metric: str, kind: Optional[str] = None) -> str:
    """The TensorBoard tag of one series: ``metric/layer``, or ``param/metric/name``.

    Example:
        >>> scalar_tag("features.3", "dead_units", "activation")
        'dead_units/features.3'
        >>> scalar_tag("fc1.weight", "grad_norm", "parameter")
        'param/grad_norm/fc1.weight'
    """
    if kind == "parameter":
        return f"param/{metric}/{layer}"
    return f"{metric}/{layer}"


def layers_text(infos: Sequence[LayerInfo]) -> str:
    """The ``gradscope/layers`` text: one JSON object per layer, as a markdown code block."""
    lines = ["gradscope layer index (read by `gradscope report`):", ""]
    for info in infos:
        d = {"name": info.name, "kind": info.kind, "order": info.order, "type": info.type,
             "family": info.family, "module": info.module, "call": info.call,
             "shape": list(info.shape) if info.shape is not None else None}
        lines.append("    " + json.dumps(d))
    return "\n".join(lines)


def parse_layers_text(text: str) -> list[LayerInfo]:
    """Inverse of :func:`layers_text` (lines that are not layer objects are skipped)."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            d = json.loads(line)
            if d.get("shape") is not None:
                d["shape"] = tuple(d["shape"])
            out.append(LayerInfo(**d))
        except (ValueError, TypeError):
            continue
    return out


def check_logdir(logdir: Union[str, os.PathLike], *, argument: str = "logdir") -> Path:
    """Create ``logdir`` if needed and prove it is writable; raise a clear error if not."""
    path = Path(logdir).expanduser()
    fix = (f"pass a directory you can write to, e.g. {argument}='runs/exp1', or fix its "
           "permissions")
    if path.exists() and not path.is_dir():
        raise ValueError(f"watch({argument}={str(logdir)!r}): this path is a file, not a "
                         f"directory; {fix}")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".gradscope-write-test-"):
            pass
    except OSError as err:
        raise ValueError(
            f"watch({argument}={str(logdir)!r}): cannot write TensorBoard events there "
            f"({type(err).__name__}: {err.strerror or err}); {fix}"
        ) from err
    return path


class TensorBoardWriter:
    """A sink that writes a gradscope dashboard into one TensorBoard run.

    The directory is created and checked at construction, so an unwritable
    ``logdir`` fails at once with a message naming the path. Afterwards a write
    error never reaches the training loop: it is reported with one warning and the
    next flush tries again.

    Args:
        logdir: the run directory (one run per directory, as TensorBoard expects).
        images: write the gradient-flow and unit-health images at each flush.
        image_interval: seconds of wall time between two image flushes at least
            (drawing costs ~0.1-0.3 s on a CPU); the last state is always drawn at
            :meth:`close`. ``0`` draws at every flush.
        parameters: also write per-parameter scalars (``param/<metric>/<name>``).
        flush_secs: how often the event file is flushed in the background (seconds);
            the writer also flushes after each monitor flush.
        max_queue: events buffered before the background thread writes them.
        image_steps: at most this many of the latest steps in the unit-health image.

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
        parameters: bool = True,
        flush_secs: int = 30,
        max_queue: int = 1000,
        image_steps: int = 200,
    ) -> None:
        if not isinstance(flush_secs, int) or flush_secs < 1:
            raise ValueError(f"TensorBoardWriter(flush_secs={flush_secs!r}): must be an int >= 1")
        if not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"TensorBoardWriter(max_queue={max_queue!r}): must be an int >= 1")
        if not isinstance(image_steps, int) or image_steps < 2:
            raise ValueError(f"TensorBoardWriter(image_steps={image_steps!r}): must be an int >= 2")
        if not isinstance(image_interval, (int, float)) or image_interval < 0:
            raise ValueError(f"TensorBoardWriter(image_interval={image_interval!r}): must be "
                             "a number of seconds >= 0 (0 draws at every flush)")
        self.logdir = check_logdir(logdir)
        self.images = images
        self.image_interval = float(image_interval)
        self._last_image_time = -math.inf
        self._image_pending: Optional[tuple[History, int]] = None
        self.parameters = parameters
        self.image_steps = image_steps
        self.summary_writer = SummaryWriter(
            log_dir=str(self.logdir), flush_secs=flush_secs, max_queue=max_queue)
        self._layout_metrics: tuple[str, ...] = ()
        self._layers_written: tuple[str, ...] = ()
        self._findings_key: Optional[tuple[Any, ...]] = None
        self._warned = False
        self._closed = False

    # ------------------------------------------------------------ sink api
    def write(self, records: Sequence[tuple[int, str, str, float]], history: History) -> None:
        """Write one flush: scalars in network order, layout and layer index when new, images."""
        if self._closed or not records:
            return
        self._guard(self._write_scalars, records, history)
        if self.images:
            step = max(r[0] for r in records)
            if time.monotonic() - self._last_image_time >= self.image_interval:
                self._guard(self._write_images, history, step)
            else:
                self._image_pending = (history, step)
        self._guard(self.summary_writer.flush)

    def write_histograms(self, histograms: Sequence[Histogram]) -> None:
        """Write device-computed histograms with ``add_histogram_raw``."""
        if self._closed:
            return
        self._guard(self._write_histograms, histograms)

    def write_findings(self, findings: Sequence[Any], step: int) -> None:
        """Write the findings as markdown text when they differ from the last ones written."""
        if self._closed:
            return
        key = tuple((f.rule, f.layer, f.severity) for f in findings)
        if key == self._findings_key:
            return
        self._findings_key = key
        self._guard(self.summary_writer.add_text, FINDINGS_TAG, findings_markdown(findings), step)

    def flush(self) -> None:
        """Push buffered events to disk."""
        if not self._closed:
            self._guard(self.summary_writer.flush)

    def close(self) -> None:
        """Flush and close the event file. Safe to call twice."""
        if self._closed:
            return
        if self._image_pending is not None:
            self._guard(self._write_images, *self._image_pending)
        self._closed = True
        self._guard(self.summary_writer.close)

    def __enter__(self) -> TensorBoardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TensorBoardWriter({str(self.logdir)!r})"

    # ------------------------------------------------------------ internals
    def _guard(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run one write; a failure warns once and never reaches the training loop."""
        try:
            fn(*args)
        except Exception as err:
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"gradscope: writing TensorBoard events to {str(self.logdir)!r} failed "
                    f"({type(err).__name__}: {err}); training goes on, later flushes retry "
                    "and further errors are not reported",
                    RuntimeWarning, stacklevel=3)

    def _kind(self, history: History, layer: str) -> Optional[str]:
        try:
            return history.info(layer).kind
        except KeyError:
            return None

    def _write_scalars(self, records: Sequence[tuple[int, str, str, float]],
                       history: History) -> None:
        names = history.layers()
        if tuple(names) != self._layers_written:
            self._layers_written = tuple(names)
            infos = [history.info(n) for n in names if _has_info(history, n)]
            step = min(r[0] for r in records)
            self.summary_writer.add_text(LAYERS_TAG, layers_text(infos), step)
        metrics = tuple(sorted({r[2] for r in records} | set(self._layout_metrics)))
        if metrics != self._layout_metrics:
            self._layout_metrics = metrics
            self.summary_writer.add_custom_scalars(custom_scalars_layout(metrics))
        rank = {n: i for i, n in enumerate(names)}
        add = self.summary_writer.add_scalar
        for step, layer, metric, value in sorted(
                records, key=lambda r: (r[0], r[2], rank.get(r[1], len(rank)))):
            kind = self._kind(history, layer)
            if kind == "parameter" and not self.parameters:
                continue
            add(scalar_tag(layer, metric, kind), value, step)

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
            self.summary_writer.add_image(GRADIENT_FLOW_TAG, flow, step, dataformats="HWC")
        health = figures.unit_health_image(history, max_steps=self.image_steps)
        if health is not None:
            self.summary_writer.add_image(UNIT_HEALTH_TAG, health, step, dataformats="HWC")


def _has_info(history: History, name: str) -> bool:
    try:
        history.info(name)
    except KeyError:
        return False
    return True


def custom_scalars_layout(metrics: Sequence[str]) -> dict[str, dict[str, list[Any]]]:
    """The custom-scalars layout: per section, one ``Multiline`` chart per metric.

    Each chart matches ``^<metric>/`` so every layer of that metric is a line,
    including layers that appear later in the run.

    Example:
        >>> custom_scalars_layout(["saturation", "grad_norm"])["gradscope: backward (gradients)"]
        {'grad_norm': ['Multiline', ['^grad_norm/']]}
    """
    present = set(metrics)
    layout: dict[str, dict[str, list[Any]]] = {}
    known = set()
    for section, names in LAYOUT:
        known.update(names)
        charts = {m: ["Multiline", [f"^{re.escape(m)}/"]] for m in names if m in present}
        if charts:
            layout[section] = charts
    other = {m: ["Multiline", [f"^{re.escape(m)}/"]] for m in metrics if m not in known}
    if other:
        layout["gradscope: other"] = other
    return layout


def findings_markdown(findings: Sequence[Any]) -> str:
    """The findings as a markdown list (the ``gradscope/findings`` text)."""
    if not findings:
        return "No findings: no rule of `gradscope.findings` fires on this run so far."
    lines = []
    for f in findings:
        where = f" · layer `{f.layer}`" if f.layer else ""
        lines.append(f"- **{f.severity}** · `{f.rule}`{where} · since step {f.first_step}: "
                     f"{f.message}")
    return "\n".join(lines)
