"""Comparison plots of a grid (PNG, matplotlib, headless).

:func:`make_plots` reads each run's ``curves.json`` and ``history.json`` and writes
into ``<results_dir>/plots/``:

* ``test_accuracy.png``: test accuracy over steps, one panel per activation, one
  line per init (and BatchNorm);
* ``gradients_per_layer.png``: Glorot & Bengio's picture at step :data:`GRAD_STEP`
  (the first sampled step at or after it): top row, the RMS of the gradient
  back-propagated to each hidden activation; bottom row, the weight-gradient norm
  of each Linear; one panel per activation, one line per init;
* ``saturation.png``: saturated fraction of each layer over training, one panel
  per sigmoid/tanh/softsign run;
* ``dead_units.png``: fraction of units dead over the monitor's window for ReLU
  runs (``dead_units_window``) and, for LeakyReLU runs, of units stuck in the
  negative regime (``neg_units_window``; they still pass a gradient of 0.01).

* ``gradient_through_time.png`` (recurrent nets): ``‖∂L/∂h_0‖ / ‖∂L/∂h_T‖`` of each
  run's last recurrent layer over training (``test_accuracy.png`` gets a panel
  "recurrent nets"; the per-layer and per-activation plots are for the MLPs only).

A plot with nothing to show (no sigmoid run for ``saturation.png``) is not written.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

from gradscope.experiments.train import RunResult
from gradscope.history import History

__all__ = ["GRAD_STEP", "make_plots"]

# ---- settings ---------------------------------------------------------------
#: The step at which gradients per layer are compared (0 = at initialisation).
GRAD_STEP = 0
#: At most this many per-run panels in one figure.
MAX_PANELS = 16
SATURATING = ("sigmoid", "tanh", "softsign")
# ------------------------------------------------------------------------------


def _labeler(results: Sequence[RunResult]) -> Any:
    """A function naming a run by the config fields that vary in ``results`` (not activation)."""
    dicts = [r.config.to_dict() for r in results]
    keys = [k for k in dicts[0] if k != "activation" and len({str(d[k]) for d in dicts}) > 1] if dicts else []

    def label(r: RunResult) -> str:
        d = r.config.to_dict()
        parts = [("BN" if d[k] else "no BN") if k == "batchnorm" else
                 (str(d[k]) if k == "init" else f"{k}={d[k]}") for k in keys]
        return ", ".join(parts) or r.config.init

    return label


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, 4)
    return math.ceil(n / cols), cols


def _load(results_dir: Path, r: RunResult, name: str) -> Any:
    p = results_dir / "runs" / r.name / name
    if not p.exists():
        return None
    if name == "history.json":
        return History.load(p)
    with open(p, encoding="utf-8") as f:
        return json.load(f)


def _at_or_after(h: History, layer: str, metric: str, step: int) -> float:
    steps, values = h.series(layer, metric)
    for s, v in zip(steps, values):
        if s >= step:
            return v
    return float("nan")


def make_plots(results: Sequence[RunResult], results_dir: Union[str, os.PathLike]) -> list[Path]:
    """Write the comparison plots; return the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(results_dir)
    pdir = out / "plots"
    pdir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    recurrent = [r for r in results if r.config.model != "mlp"]
    mlps = [r for r in results if r.config.model == "mlp"]
    acts = sorted({r.config.activation for r in mlps})
    _label = _labeler(results)
    hist = {r.name: _load(out, r, "history.json") for r in results}
    curves = {r.name: _load(out, r, "curves.json") for r in results}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(pdir / name, dpi=90)
        plt.close(fig)
        written.append(pdir / name)

    # 1. test accuracy per activation (and the recurrent nets together)
    groups = [(act, [r for r in mlps if r.config.activation == act]) for act in acts]
    if recurrent:
        groups.append(("recurrent nets", recurrent))
    rows, cols = _grid(len(groups))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, (act, runs) in zip(axes.flat, groups):
        for r in runs:
            c = curves[r.name]
            if c:
                ax.plot(c["test_step"], c["test_acc"], marker=".", label=_label(r))
        ax.set(title=act, xlabel="step", ylabel="test accuracy", ylim=(0, 1))
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(groups):]:
        ax.axis("off")
    save(fig, "test_accuracy.png")
    if recurrent:
        save(_time_ratio_plot(plt, recurrent, hist, _label), "gradient_through_time.png")
    if not mlps:
        return written

    # 2. gradients per layer at GRAD_STEP
    fig, axes = plt.subplots(2, len(acts), figsize=(4 * len(acts), 6), squeeze=False)
    for j, act in enumerate(acts):
        for r in mlps:
            h = hist[r.name]
            if r.config.activation != act or h is None:
                continue
            sites = [s for s in h.layers("activation") if "grad_out_rms" in h.metrics(s)]
            axes[0, j].plot(range(1, len(sites) + 1),
                            [_at_or_after(h, s, "grad_out_rms", GRAD_STEP) for s in sites],
                            marker="o", label=_label(r))
            lins = [f"fc{i}" for i in range(1, r.config.depth + 1)] + ["out"]
            axes[1, j].plot(range(1, len(lins) + 1),
                            [_at_or_after(h, f"{n}.weight", "grad_norm", GRAD_STEP) for n in lins],
                            marker="o", label=_label(r))
        axes[0, j].set(title=f"{act}: back-propagated gradient", xlabel="hidden layer (input → output)",
                       ylabel="RMS of ∂loss/∂activation", yscale="log")
        axes[1, j].set(title=f"{act}: weight gradient", xlabel="Linear layer (last = output)",
                       ylabel="‖∇W‖", yscale="log")
        axes[0, j].legend(fontsize=7)
    fig.suptitle(f"gradient per layer at step {GRAD_STEP}")
    save(fig, "gradients_per_layer.png")

    # 3./4. per-run series over training
    for fname, families, metrics, ylabel in (
        ("saturation.png", SATURATING, ("saturation",), "saturated fraction"),
        ("dead_units.png", ("relu", "leaky_relu"), ("dead_units_window", "neg_units_window"),
         "dead (ReLU) / stuck negative (Leaky) fraction"),
    ):
        runs = [r for r in mlps if r.config.activation in families and hist[r.name] is not None]
        runs = runs[:MAX_PANELS]
        if not runs:
            continue
        rows, cols = _grid(len(runs))
        fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
        for ax, r in zip(axes.flat, runs):
            h = hist[r.name]
            for site in h.layers("activation"):
                for m in metrics:
                    if m in h.metrics(site):
                        ax.plot(*h.series(site, m), label=site)
            ax.set(title=f"{r.config.activation} {_label(r)}", xlabel="step", ylabel=ylabel,
                   ylim=(-0.02, 1.02))
            ax.title.set_fontsize(9)
            ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(runs):]:
            ax.axis("off")
        save(fig, fname)
    return written


def _time_ratio_plot(plt: Any, runs: Sequence[RunResult], hist: dict[str, Any], label: Any) -> Any:
    """``‖∂L/∂h_0‖ / ‖∂L/∂h_T‖`` of each recurrent run's last recurrent layer over training."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        h = hist[r.name]
        layers = [] if h is None else [n for n in h.layers("recurrent")
                                       if "grad_h_ratio" in h.metrics(n)]
        if layers:
            steps, values = h.series(layers[-1], "grad_h_ratio")
            ax.plot(steps, [v if v > 0 else float("nan") for v in values], label=label(r))
    ax.set(title="gradient through time: ‖∂L/∂h_0‖ / ‖∂L/∂h_T‖ (0 not drawn)",
           xlabel="step", ylabel="ratio", yscale="log")
    ax.legend(fontsize=7)
    return fig
