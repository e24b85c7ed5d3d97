"""Layer × step heat maps: one picture per key metric in which every layer is a labelled row.

The per-layer scalar charts colour their lines by run, so the layers of one run share a
colour. A heat map names each layer on its row (:mod:`gradscope.writers.labels`) and
shows the whole run at once: a dead or saturated layer is a bright band, a vanishing
gradient a dark band at the first rows. :data:`HEATMAP_METRICS` are drawn; fractions
of units on one 0-1 scale for every run, a metric whose positive values span more than
:data:`LOG_DECADES` decades on a log colour scale, the others on a linear one.

Cost is bounded: they are drawn when the writer draws its other images (at most once
per ``image_interval`` seconds, and at close); :func:`heatmap_data` copies at most
``max_steps`` columns (evenly spread over the run) per layer out of the history on the
caller's thread, and the writer's thread draws them (:func:`heatmap_image`, ~0.1-0.4 s
each on a CPU) while training goes on.

Example:
    >>> from gradscope.history import History, LayerInfo
    >>> h = History()
    >>> for i, g in enumerate([1e-5, 1e-2, 1.0]):
    ...     h.add_layer(LayerInfo(f"fc{i}", kind="layer", order=i, type="Linear", module=f"fc{i}"))
    ...     for step in range(3):
    ...         h.add(step, f"fc{i}", "grad_norm", g)
    >>> (data,) = heatmap_data(h, max_steps=10)
    >>> data.metric, data.rows, data.log
    ('grad_norm', ['fc0 · Linear', 'fc1 · Linear', 'fc2 · Linear'], True)
    >>> heatmap_image(data).shape[2]
    3
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gradscope.history import History
from gradscope.metrics import METRICS, series_kind
from gradscope.writers.labels import layer_labels

__all__ = ["HEATMAP_METRICS", "HEATMAP_TAG", "LOG_DECADES", "HeatmapData", "heatmap_data",
           "heatmap_image", "heatmap_images"]

#: The metrics drawn, in this order (those a run records).
HEATMAP_METRICS = ("saturation", "dead_units_window", "grad_out_rms", "grad_norm", "update_ratio")
#: The image tag of a metric's heat map: ``gradscope/heatmap/<metric>``.
HEATMAP_TAG = "gradscope/heatmap/"
#: Positive values spanning more than this many decades are coloured on a log scale.
LOG_DECADES = 2.0
#: Fractions of units, drawn on one fixed 0-1 scale (brightened like the unit-health map).
FRACTIONS = ("saturation", "dead_units_window")


@dataclass
class HeatmapData:
    """What one heat map draws: rows (layer labels, network order) × step columns."""

    metric: str
    rows: list[str]
    steps: list[int]
    grid: np.ndarray
    log: bool

    @property
    def tag(self) -> str:
        return HEATMAP_TAG + self.metric


def heatmap_data(history: History, *, max_steps: int = 200) -> list[HeatmapData]:
    """The data of each :data:`HEATMAP_METRICS` heat map the history has (a copy)."""
    names = history.layers()
    labels = layer_labels(history.info(n) for n in names)
    out = []
    for metric in HEATMAP_METRICS:
        kind = series_kind(metric)
        rows = [n for n in history.layers(kind) if metric in history.metrics(n)]
        if not rows:
            continue
        series = [history.series(n, metric) for n in rows]
        steps = sorted({s for st, _ in series for s in st})
        if len(steps) > max_steps:
            keep = np.unique(np.linspace(0, len(steps) - 1, max_steps).round().astype(int))
            steps = [steps[i] for i in keep]
        col = {s: j for j, s in enumerate(steps)}
        grid = np.full((len(rows), len(steps)), np.nan)
        for i, (st, vs) in enumerate(series):
            for s, v in zip(st, vs):
                j = col.get(s)
                if j is not None:
                    grid[i, j] = v
        positive = grid[np.isfinite(grid) & (grid > 0)]
        log = metric not in FRACTIONS and positive.size > 0 \
            and math.log10(positive.max() / positive.min()) > LOG_DECADES
        out.append(HeatmapData(metric, [labels.get(n, n) for n in rows], steps, grid, log))
    return out


#: Height of a row, inches; the figure's width, inches; dots per inch.
ROW_INCHES, WIDTH_INCHES, DPI = 0.22, 9.0, 90


def heatmap_image(data: HeatmapData) -> np.ndarray:
    """The heat map as an ``(H, W, 3)`` ``uint8`` image (``matplotlib.figure.Figure``, Agg)."""
    from matplotlib.colors import LogNorm, Normalize, PowerNorm
    from matplotlib.figure import Figure

    from gradscope.writers.figures import LABEL_CHARS, UNIT_GAMMA, render, short

    spec = METRICS.get(data.metric)
    grid = data.grid
    if data.log:
        positive = grid[np.isfinite(grid) & (grid > 0)]
        norm: Normalize = LogNorm(vmin=positive.min(), vmax=positive.max())
        grid = np.where(grid > 0, grid, np.nan)  # a zero has no place on a log scale
    elif data.metric in FRACTIONS:  # one fixed scale, comparable across runs
        norm = PowerNorm(UNIT_GAMMA, vmin=0.0, vmax=1.0)
    else:
        finite = grid[np.isfinite(grid)]
        top = float(finite.max()) if finite.size else 1.0
        norm = Normalize(vmin=min(0.0, float(finite.min()) if finite.size else 0.0),
                         vmax=top if top > 0 else 1.0)
    rows = max(len(data.rows), 4)
    height = 1.1 + ROW_INCHES * rows
    labels = short(data.rows, LABEL_CHARS + 14)
    left = min(0.6, (0.3 + 0.075 * max(len(t) for t in labels)) / WIDTH_INCHES)
    fig = Figure(figsize=(WIDTH_INCHES, height), dpi=DPI)  # fixed margins: no layout pass
    ax = fig.add_axes((left, 0.55 / height, 0.86 - left, 1 - 1.0 / height))
    bar = fig.add_axes((0.88, 0.55 / height, 0.02, 1 - 1.0 / height))
    first, last = data.steps[0], data.steps[-1]
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="inferno", norm=norm,
                      extent=(first - 0.5, last + 0.5, len(data.rows) - 0.5, -0.5))
    ax.set_yticks(range(len(data.rows)))
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_xlabel("step", fontsize=9)
    ax.tick_params(axis="x", labelsize=9)
    what = spec.label if spec is not None and spec.label else data.metric
    scale = "log colour scale" if data.log else \
        "fraction 0-1" if data.metric in FRACTIONS else "linear colour scale"
    fig.colorbar(image, cax=bar)
    bar.tick_params(labelsize=8)
    ax.set_title(f"{data.metric} ({what}): layers × steps, input at the top; {scale}",
                 fontsize=10)
    return render(fig)


def heatmap_images(history: History, *, max_steps: int = 200) -> list[tuple[str, np.ndarray]]:
    """``(tag, image)`` of every heat map, drawn at once (tests and scripts)."""
    return [(d.tag, heatmap_image(d)) for d in heatmap_data(history, max_steps=max_steps)]
