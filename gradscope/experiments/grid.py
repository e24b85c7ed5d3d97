"""A grid of runs: validated up front, resumable, summarised in one results directory.

:func:`expand_grid` turns axes (lists of values) into :class:`RunConfig` s and
reports *every* invalid value before anything trains. :func:`run_grid` trains
them one by one, skipping configs whose ``runs/<name>/result.json`` already holds
the same config, and writes into ``results_dir``:

* ``runs/<name>/``: one TensorBoard run per config (``tensorboard --logdir results_dir/runs``;
  the HParams tab compares the whole grid);
* ``summary.md``, ``summary.csv``, ``summary.json``: one row per config;
* ``plots/*.png``: see :mod:`gradscope.experiments.plots`.

An interrupt (Ctrl-C) keeps every finished run and still writes the summary of
those; a rerun continues where it stopped (an unfinished run directory is
cleared and trained again).

Example:
    >>> cfgs = expand_grid(activations=["relu", "tanh"], inits=["he"], steps=[10])
    >>> [c.name for c in cfgs]
    ['relu-he-5x256-sgd-lr0.1-bs64-10steps-seed0', 'tanh-he-5x256-sgd-lr0.1-bs64-10steps-seed0']
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from gradscope.experiments import parallel
from gradscope.experiments.data import Dataset
from gradscope.experiments.train import RunConfig, RunResult, load_result, train_run

__all__ = ["GridError", "expand_grid", "format_table", "run_grid", "write_summary"]


class GridError(ValueError):
    """One or more values of a grid are invalid (all of them are listed)."""


def expand_grid(
    *,
    activations: Sequence[str] = ("relu",),
    inits: Sequence[str] = ("he",),
    batchnorm: Sequence[bool] = (False,),
    depths: Sequence[int] = (5,),
    widths: Sequence[int] = (256,),
    optimizers: Sequence[str] = ("sgd",),
    lrs: Sequence[float] = (0.1,),
    dropouts: Sequence[float] = (0.0,),
    steps: Sequence[int] = (1000,),
    batch_sizes: Sequence[int] = (64,),
    seeds: Sequence[int] = (0,),
    eval_every: int = 100,
    monitor_every: int = 5,
) -> list[RunConfig]:
    """The product of the axes as validated configs, in a stable order, without duplicates.

    Raises:
        GridError: listing every invalid value (unknown activation, negative width, …)
            and every empty axis, before any run starts.
    """
    axes = {"activations": activations, "inits": inits, "batchnorm": batchnorm, "depths": depths,
            "widths": widths, "optimizers": optimizers, "lrs": lrs, "dropouts": dropouts,
            "steps": steps, "batch_sizes": batch_sizes, "seeds": seeds}
    errors = [f"{k}=[]: give at least one value" for k, v in axes.items() if len(list(v)) == 0]
    configs: list[RunConfig] = []
    seen: set[RunConfig] = set()
    fields = ("activation", "init", "batchnorm", "depth", "width", "optimizer", "lr", "dropout",
              "steps", "batch_size", "seed")
    for combo in itertools.product(*axes.values()):
        kw: dict[str, Any] = dict(zip(fields, combo))
        try:
            cfg = RunConfig(**kw, eval_every=eval_every, monitor_every=monitor_every)
        except ValueError as e:
            if str(e) not in errors:
                errors.append(str(e))
            continue
        if cfg not in seen:
            seen.add(cfg)
            configs.append(cfg)
    if errors:
        raise GridError("invalid grid, nothing was trained:\n  " + "\n  ".join(errors))
    return configs


def run_grid(
    configs: Sequence[RunConfig],
    data: Dataset,
    *,
    results_dir: Union[str, os.PathLike],
    device: Union[str, torch.device] = "cpu",
    progress: bool = True,
    rerun: bool = False,
    plots: bool = True,
    title: str = "gradscope compare",
    on_result: Optional[Callable[[RunResult, bool], None]] = None,
    dashboard_images: bool = True,
) -> list[RunResult]:
    """Train every config (skipping finished ones) and write the summary and plots.

    Args:
        configs: the runs, e.g. from :func:`expand_grid` or a preset.
        data: the data set (moved to ``device`` once).
        results_dir: the output directory (created).
        device: where to train.
        progress: tqdm bars (one over runs, one over the current run's steps).
        rerun: train finished configs again instead of skipping them.
        plots: write the PNG plots.
        title: heading of ``summary.md``.
        on_result: called with ``(result, skipped)`` after each config.
        dashboard_images: draw the monitor's dashboard images in each TensorBoard run.

    Returns:
        The results of the finished configs, in config order.
    """
    out = Path(results_dir)
    writer = parallel.is_writer()  # under torchrun, rank 0 alone touches files
    if writer:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    names = [c.name for c in configs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GridError(f"configs share run names {dup}; remove the duplicates")
    data = data.to(device)
    results: list[RunResult] = []
    bar = None
    if progress and writer:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(configs), desc="runs", position=0, dynamic_ncols=True)
    try:
        for cfg in configs:
            run_dir = out / "runs" / cfg.name
            done = None if rerun else load_result(run_dir)
            skipped = done is not None and done.config == cfg
            if skipped:
                assert done is not None
                result = done
            else:
                if writer and run_dir.exists():  # unfinished or stale: never trust it
                    shutil.rmtree(run_dir)
                result = train_run(cfg, data, device=device, run_dir=run_dir, progress=progress,
                                   dashboard_images=dashboard_images)
            results.append(result)
            if on_result is not None:
                on_result(result, skipped)
            if bar is not None:
                bar.update(1)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(results)} of {len(configs)} runs finished and kept in {out}; "
              "rerun the same command to continue", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
        if results and writer:
            write_summary(results, out, title=title)
            if plots:
                from gradscope.experiments.plots import make_plots

                make_plots(results, out)
    return results


# ---- summary ------------------------------------------------------------------
COLUMNS = ("run", "test_acc", "final_train_loss", "steps_to_90", "grad_ratio", "peak_saturation",
           "peak_dead", "wall_s", "device", "findings")
HEADERS = ("run", "test acc", "train loss", "steps to 90% train", "grad ratio first/last",
           "peak saturation", "peak dead", "wall s", "device", "findings")


def _cell(key: str, r: RunResult) -> str:
    v: Any = r.name if key == "run" else getattr(r, key)
    if v is None:
        return "–"
    if key == "findings":
        return "; ".join(v) if v else "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan"
        if key == "grad_ratio":
            return f"{v:.3g}"
        if key == "wall_s":
            return f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


def format_table(results: Sequence[RunResult]) -> str:
    """The results as a markdown table."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_cell(k, r) for k in COLUMNS) + " |" for r in results]
    return "\n".join(lines)


def write_summary(results: Sequence[RunResult], results_dir: Union[str, os.PathLike], *,
                  title: str = "gradscope compare", extra: str = "") -> None:
    """Write ``summary.md``, ``summary.csv`` and ``summary.json`` into ``results_dir``."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(r.wall_s for r in results)
    devices = sorted({r.device for r in results})
    md = [f"# {title}", "",
          f"{len(results)} runs, {total:.0f} s of training on {', '.join(devices)}.", "",
          format_table(results), "",
          "train loss: mean over the last 50 steps (nan: the run diverged). "
          "grad ratio first/last: median over sampled steps of ‖∇W‖ of the first Linear over "
          "that of the output Linear. peak saturation/dead: largest fraction over layers and "
          "sampled steps (– where the activation has none).", ""]
    if extra:
        md += [extra, ""]
    (out / "summary.md").write_text("\n".join(md), encoding="utf-8")
    buf = io.StringIO()
    w = csv.writer(buf)
    cfg_keys = list(results[0].config.to_dict()) if results else []
    w.writerow(["run", *cfg_keys, *COLUMNS[1:]])
    for r in results:
        d = r.to_dict()
        row = [r.name, *(d["config"][k] for k in cfg_keys)]
        row += ["; ".join(d[k]) if k == "findings" else d[k] for k in COLUMNS[1:]]
        w.writerow(row)
    (out / "summary.csv").write_text(buf.getvalue(), encoding="utf-8")
    with open(out / "summary.json", "w", encoding="utf-8") as f:
        json.dump([r.to_dict() for r in results], f, indent=1)
