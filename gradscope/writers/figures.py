"""Dashboard images drawn from a :class:`gradscope.History` with matplotlib's Agg canvas.

Both functions are pure: a history in, an ``(H, W, 3)`` ``uint8`` array out (or
``None`` when there is nothing to draw). They use ``matplotlib.figure.Figure``
directly, never ``pyplot``, so they touch no global state and need no display.

* :func:`gradient_flow_image`: per-layer gradient norm and per-call-site activation
  std against depth, on log axes; vanishing or exploding gradients show as a
  slope of several decades.
* :func:`unit_health_image`: layers × steps heat maps of the fraction of dead units
  (ReLU-like call-sites) and of saturated outputs (sigmoid, tanh, ...).
* :func:`time_gradient_image`: per recurrent layer, a steps × time-step heat map of
  ``‖∂L/∂h_k‖`` relative to its largest value (log scale): a gradient vanishing back
  through time shows as a dark band at the first steps.

Example:
    >>> from gradscope.history import History, LayerInfo
    >>> h = History()
    >>> for i, g in enumerate([1e-4, 1e-2, 1.0]):
    ...     h.add_layer(LayerInfo(f"fc{i}", kind="layer", order=i, type="Linear"))
    ...     h.add(0, f"fc{i}", "grad_norm", g)
    >>> gradient_flow_image(h).shape[2]
    3
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Optional

import numpy as np

from gradscope.history import History
from gradscope.metrics import METRICS, Metric, series_kind

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["gradient_flow_figure", "gradient_flow_image", "panel_metric", "render", "short",
           "time_gradient_figure", "time_gradient_image", "unit_health_figure",
           "unit_health_image"]


def _value(history: History, layer: str, metric: str, step: Optional[int]) -> float:
    """The value at ``step`` (or the last one before it), ``nan`` if none."""
    if metric not in history.metrics(layer):
        return math.nan
    steps, values = history.series(layer, metric)
    if not steps:
        return math.nan
    if step is None:
        return values[-1]
    i = int(np.searchsorted(np.asarray(steps), step, side="right")) - 1
    return values[i] if i >= 0 else math.nan


def render(fig: Figure) -> np.ndarray:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


#: Height of one layer's row in the images, inches (at 80 dpi: 12 px for 8-point labels).
ROW_INCHES = 0.16
#: Names longer than this are shortened (``…enseblock4.denselayer16.relu2``).
LABEL_CHARS = 40


def gradient_flow_image(history: History, step: Optional[int] = None) -> Optional[np.ndarray]:
    """Gradient norm per layer and activation std per call-site against depth (log scale).

    Returns:
        An ``(H, W, 3)`` ``uint8`` image of :func:`gradient_flow_figure`, or ``None``
        when neither gradient norms nor activation stds are recorded.
    """
    fig = gradient_flow_figure(history, step)
    return None if fig is None else render(fig)


def gradient_flow_figure(history: History, step: Optional[int] = None) -> Optional[Figure]:
    """The gradient-flow figure: depth runs down, one labelled row per layer.

    The left panel has the gradient norm of each parameterised layer, the right
    one the activation std and back-propagated gradient RMS of each call-site,
    on log axes; a non-finite value is a red band across its row. The figure
    grows with the number of layers (:data:`ROW_INCHES` per row), so every
    layer keeps a legible name at 50, 100 or more layers.

    Args:
        history: the run's history.
        step: draw the values at this step (the latest at or before it); the last
            recorded values when ``None``.
    """
    from matplotlib.figure import Figure

    drawn = [m for m in METRICS.values() if m.image == "gradient_flow"]
    per_layer = [m for m in drawn if series_kind(m.name) == "layer"]
    per_site = [m for m in drawn if series_kind(m.name) == "activation"]
    layers = [n for n in history.layers("layer")
              if per_layer and per_layer[0].name in history.metrics(n)]
    acts = [n for n in history.layers("activation")
            if per_site and per_site[0].name in history.metrics(n)]
    if not layers and not acts:
        return None
    labels = _labels(history)
    rows = max(len(layers), len(acts), 12)
    fig = Figure(figsize=(10, 1.4 + ROW_INCHES * rows), dpi=80, layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    shown = "last step" if step is None else f"step {step}"
    for i, m in enumerate(per_layer):
        _depth_plot(ax1, [labels.get(n, n) for n in layers],
                    [_value(history, n, m.name, step) for n in layers],
                    f"{m.label} per layer", f"C{3 + i}")
    if per_site:
        first = per_site[0]
        _depth_plot(ax2, [labels.get(n, n) for n in acts],
                    [_value(history, n, first.name, step) for n in acts],
                    "activations and the gradient reaching them", "C0", label=first.label)
    for i, m in enumerate(per_site[1:]):
        values = [_value(history, n, m.name, step) for n in acts]
        if any(math.isfinite(v) and v > 0 for v in values):
            ax2.plot([v if v > 0 else math.nan for v in values], list(range(len(acts))), "s--",
                     color=f"C{1 + i}", label=m.label, markersize=4)
    if acts:
        ax2.legend(loc="best", fontsize=8)
    fig.suptitle(f"gradient flow ({shown}): input at the top, output at the bottom, log scale",
                 fontsize=11)
    return fig


def _depth_plot(ax: Axes, names: list[str], values: list[float], title: str,
                color: str, label: Optional[str] = None) -> None:
    """One log-scale line of ``values`` down the layers, one labelled row per layer."""
    ys = list(range(len(names)))
    xs = [v if math.isfinite(v) and v > 0 else math.nan for v in values]
    ax.set_title(title, fontsize=10)
    if not names:
        ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
        return
    ax.plot(xs, ys, "o-", color=color, label=label, markersize=4)
    if any(math.isfinite(x) for x in xs):
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.set_xscale("log")  # at most 5 labelled decades, so that the labels never overlap
        ax.xaxis.set_major_locator(LogLocator(base=10, numticks=5))
        finite = [x for x in xs if math.isfinite(x)]
        narrow = max(finite) / min(finite) < NARROW  # no decade may fall inside: 2 and 5 too
        ax.xaxis.set_minor_formatter(FuncFormatter(_two_five) if narrow else NullFormatter())
    for y, v in zip(ys, values):
        if not math.isfinite(v):
            ax.axhline(y, color="red", alpha=0.4)
    ax.set_yticks(ys)
    ax.set_yticklabels(short(names, LABEL_CHARS), fontsize=8)
    ax.set_ylim(len(names) - 0.5, -0.5)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(True, which="both", alpha=0.3)


#: Values spanning less than this factor get the 2s and 5s of the log axis labelled too.
NARROW = 30.0


def _two_five(x: float, _: object = None) -> str:
    """A log axis' minor tick label: ``0.2``, ``5e-05`` for the 2s and 5s, else nothing."""
    if x <= 0:
        return ""
    m = x / 10.0 ** math.floor(math.log10(x))
    return f"{x:g}" if min(abs(m - 2), abs(m - 5)) < 1e-6 else ""


def short(names: list[str], width: int = LABEL_CHARS) -> list[str]:
    """Names cut to ``width`` characters: their start goes (``…16.block3.linear``), or,
    when that makes two names alike, their middle (``encoder.l…block3.linear``)."""
    tails = [n if len(n) <= width else "…" + n[1 - width:] for n in names]
    if len(set(tails)) == len(set(names)):
        return tails
    half = (width - 1) // 2
    return [n if len(n) <= width else f"{n[:half]}…{n[half + 1 - width:]}" for n in names]


def panel_metric(history: History, site: str, candidates: Sequence[str]) -> Optional[str]:
    """The first of ``candidates`` a call-site has (``dead_units_window``, else ``dead_units``)."""
    ms = history.metrics(site)
    return next((m for m in candidates if m in ms), None)


def unit_health_image(history: History, *, max_steps: int = 200) -> Optional[np.ndarray]:
    """Layers × steps heat maps of dead units and saturated outputs.

    Returns:
        An ``(H, W, 3)`` ``uint8`` image of :func:`unit_health_figure`, or ``None``
        when no call-site has a dead-unit or saturation metric.
    """
    fig = unit_health_figure(history, max_steps=max_steps)
    return None if fig is None else render(fig)


def unit_health_figure(history: History, *, max_steps: int = 200) -> Optional[Figure]:
    """The unit-health figure: one heat map per panel, one labelled row per call-site.

    Rows are call-sites in network order, columns the recorded steps (at most
    ``max_steps`` of them, evenly spread over the whole run); colour is the
    fraction (0 to 1). Dead units use
    ``dead_units_window`` (dead over the monitor's window) when recorded. The
    figure grows by :data:`ROW_INCHES` per row and leaves room for the longest name.
    """
    from matplotlib.colors import PowerNorm
    from matplotlib.figure import Figure

    labels = _labels(history)
    panels: list[tuple[str, list[tuple[str, str]]]] = []
    acts = history.layers("activation")
    groups: dict[str, list[Metric]] = {}
    for m in METRICS.values():
        if m.image == "unit_health":
            groups.setdefault(m.header or m.name, []).append(m)
    for specs in groups.values():
        specs.sort(key=lambda spec: spec.report if spec.report is not None else math.inf)
        names = [spec.name for spec in specs]
        rows = [(site, name) for site in acts
                if (name := panel_metric(history, site, names)) is not None]
        if rows:
            label = next(spec.label for spec in specs if spec.name == rows[0][1])
            panels.append((f"{label} ({rows[0][1]})", rows))
    if not panels:
        return None
    all_steps = sorted({st for _, rows in panels for site, name in rows
                        for st in history.series(site, name)[0]})
    if not all_steps:
        return None
    if len(all_steps) > max_steps:
        keep = np.unique(np.linspace(0, len(all_steps) - 1, max_steps).round().astype(int))
        all_steps = [all_steps[i] for i in keep]
    col = {st: j for j, st in enumerate(all_steps)}
    heights = [max(len(rows), 3) for _, rows in panels]
    fig = Figure(figsize=(10, 1.0 + ROW_INCHES * sum(heights) + 0.6 * len(panels)), dpi=80,
                 layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False,
                        gridspec_kw={"height_ratios": heights})[:, 0]
    image = None
    for ax, (title, rows) in zip(axes, panels):
        grid = np.full((len(rows), len(all_steps)), np.nan)
        for i, (site, name) in enumerate(rows):
            for st, v in zip(*history.series(site, name)):
                j = col.get(st)
                if j is not None:
                    grid[i, j] = v
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="inferno",
                          norm=PowerNorm(UNIT_GAMMA, vmin=0.0, vmax=1.0),
                          extent=(all_steps[0] - 0.5, all_steps[-1] + 0.5, len(rows) - 0.5, -0.5))
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(short([labels.get(s, s) for s, _ in rows]), fontsize=8)
        ax.set_title(title, fontsize=10)
    axes[-1].set_xlabel("step", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes), fraction=0.03, pad=0.02, label="fraction of units")
    fig.suptitle("unit health: layers × steps (bright = dead / saturated)", fontsize=11)
    return fig


#: The unit-health colour scale's exponent: a fraction ``f`` is drawn at ``f ** UNIT_GAMMA``
#: of the scale, so 0.2-0.35 (a saturation finding) is clearly lit, not near-black.
UNIT_GAMMA = 0.5


def _labels(history: History) -> dict[str, str]:
    """Readable labels of the history's layers (:func:`gradscope.writers.labels.layer_labels`)."""
    from gradscope.writers.labels import layer_labels

    return layer_labels(history.info(n) for n in history.layers())


#: ``time_gradient_image``: relative norms below this are drawn as the floor colour.
TIME_FLOOR = 1e-8


def time_gradient_image(history: History, *, profile: str = "grad_h", max_panels: int = 6,
                        max_steps: int = 200) -> Optional[np.ndarray]:
    """:func:`time_gradient_figure` as an ``(H, W, 3)`` ``uint8`` image (``None``: no profile)."""
    fig = time_gradient_figure(history, profile=profile, max_panels=max_panels,
                               max_steps=max_steps)
    return None if fig is None else render(fig)


def time_gradient_figure(history: History, *, profile: str = "grad_h", max_panels: int = 6,
                         max_steps: int = 200) -> Optional[Figure]:
    """Per recurrent layer, ``log10(‖∂L/∂h_k‖ / max_k ‖∂L/∂h_k‖)`` over training steps × time steps.

    Rows of the history profile ``profile`` (position ``k`` in processing order, as
    :mod:`gradscope.capture.recurrent` records them) become columns of one heat map
    per series (at most ``max_panels`` series, ``max_steps`` columns evenly spread
    over the run); each column is scaled by its own maximum, so the colour says how
    much of the gradient at the best-served step reaches step ``k``.

    Returns:
        The figure, or ``None`` when no profile is recorded.
    """
    from matplotlib.figure import Figure

    names = [layer for layer, metric in history.profiles() if metric == profile][:max_panels]
    if not names:
        return None
    fig = Figure(figsize=(10, 1.2 + 2.0 * len(names)), dpi=80, layout="constrained")
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    image = None
    for ax, name in zip(axes, names):
        steps, positions, values = history.profile(name, profile)
        if len(steps) > max_steps:
            keep = np.unique(np.linspace(0, len(steps) - 1, max_steps).round().astype(int))
            steps = [steps[i] for i in keep]
            positions = [positions[i] for i in keep]
            values = [values[i] for i in keep]
        ks = max(positions, key=len)
        grid = np.full((len(ks), len(steps)), np.nan)
        for j, (pos, vals) in enumerate(zip(positions, values)):
            v = np.asarray(vals, dtype=float)
            top = np.nanmax(v) if v.size and np.isfinite(v).any() else 0.0
            if top > 0:
                rel = np.log10(np.clip(v / top, TIME_FLOOR, 1.0))
                grid[:, j] = np.interp(ks, pos, rel) if tuple(pos) != tuple(ks) else rel
        image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="viridis",
                          vmin=math.log10(TIME_FLOOR), vmax=0.0, origin="lower",
                          extent=(steps[0] - 0.5, steps[-1] + 0.5, ks[0] - 0.5, ks[-1] + 0.5))
        ax.set_ylabel("time step k", fontsize=8)
        ax.set_title(f"{name}: ‖∂L/∂h_k‖ / max_k (log10)", fontsize=10)
    axes[-1].set_xlabel("training step", fontsize=9)
    if image is not None:
        fig.colorbar(image, ax=list(axes), fraction=0.03, pad=0.02, label="log10 of the share")
    fig.suptitle("gradient through time (k in processing order; dark = vanished)", fontsize=11)
    return fig
