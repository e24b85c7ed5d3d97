"""A grid of runs: validated up front, resumable, summarised in one results directory.

:func:`expand_grid` turns axes (lists of values) into :class:`RunConfig` s and
reports *every* invalid value before anything trains. :func:`run_grid` trains them
in turn (or ``jobs`` at once: :mod:`gradscope.experiments.jobs`), skipping configs whose
``runs/<name>/result.json`` holds the same config, and writes into ``results_dir``:

* ``runs/<name>/``: one TensorBoard run per config (``tensorboard --logdir results_dir/runs``;
  the HParams tab compares the whole grid). Runs are named by the axes that vary
  in the grid (:func:`run_names`: ``sigmoid-xavier-bn``); the full config is in
  HParams, ``result.json`` and the summary files;
* ``summary.md``, ``summary.csv``, ``summary.json``: one row per config;
* ``plots/*.png``: see :mod:`gradscope.experiments.plots`.

An interrupt (Ctrl-C) keeps every finished run and still writes the summary of
those; a rerun continues where it stopped (an unfinished run directory is
cleared and trained again).

Example:
    >>> cfgs = expand_grid(activations=["relu", "tanh"], inits=["he", "xavier_uniform"],
    ...                    batchnorm=[False, True], steps=[10])
    >>> run_names(cfgs)[:3]
    ['relu-he', 'relu-he-bn', 'relu-xavier']
    >>> fixed_axes(cfgs)
    '5x256, sgd, lr0.1, bs64, 10steps, seed0, eval100, monitor5'
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

from gradscope.experiments import jobs as workers
from gradscope.experiments import parallel
from gradscope.experiments.data import Dataset
from gradscope.experiments.train import RunConfig, RunResult, load_result, train_run

__all__ = ["GridError", "expand_grid", "fixed_axes", "format_table", "format_terminal",
           "run_grid", "run_names", "write_summary"]


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
    # each value alone (the other fields at their defaults), so that every bad one is listed
    singles: list[tuple[str, Any]] = [(f, v) for f, vs in zip(fields, axes.values()) for v in vs]
    singles += [("eval_every", eval_every), ("monitor_every", monitor_every)]
    for field_name, value in singles:
        try:
            RunConfig(**{field_name: value})
        except ValueError as e:
            if str(e) not in errors:
                errors.append(str(e))
    if errors:
        raise GridError("invalid grid, nothing was trained:\n  " + "\n  ".join(errors))
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


# ---- run names ------------------------------------------------------------------
#: Shorter forms of init names in run names.
SHORT_INITS = {"xavier_uniform": "xavier"}
#: Each axis of a run name: the token of a config ("" leaves it out).
_TOKENS: tuple[tuple[str, Callable[[RunConfig], str]], ...] = (
    ("model", lambda c: "" if c.model == "mlp" else c.model),
    ("sequence", lambda c: "" if c.model == "mlp" else c.sequence),
    # activation, init, BatchNorm and dropout do not apply to the recurrent models
    ("activation", lambda c: c.activation if c.model == "mlp" else ""),
    ("init", lambda c: SHORT_INITS.get(c.init, c.init) if c.model == "mlp" else ""),
    ("batchnorm", lambda c: "bn" if c.batchnorm and c.model == "mlp" else ""),
    ("shape", lambda c: f"{c.depth}x{c.width}"),
    ("optimizer", lambda c: c.optimizer),
    ("lr", lambda c: f"lr{c.lr:g}"),
    ("batch_size", lambda c: f"bs{c.batch_size}"),
    ("steps", lambda c: f"{c.steps}steps"),
    ("dropout", lambda c: f"drop{c.dropout:g}" if c.dropout and c.model == "mlp" else ""),
    ("seed", lambda c: f"seed{c.seed}"),
    ("eval_every", lambda c: f"eval{c.eval_every}"),
    ("monitor_every", lambda c: f"monitor{c.monitor_every}"),
)


def _varying(configs: Sequence[RunConfig]) -> list[bool]:
    return [len({token(c) for c in configs}) > 1 for _, token in _TOKENS]


def run_names(configs: Sequence[RunConfig]) -> list[str]:
    """Run names made of the axes that vary across ``configs`` (``sigmoid-xavier-bn``).

    BatchNorm and dropout appear only when on. A lone config keeps its full name
    (:attr:`RunConfig.name`); when some config would get no token at all (only
    BatchNorm varies, say), every name starts with the activation. Distinct
    configs get distinct names.
    """
    if len(configs) == 1:
        return [configs[0].name]
    varying = _varying(configs)
    parts = [[t for (_, token), v in zip(_TOKENS, varying) if v and (t := token(c))]
             for c in configs]
    if not all(parts):
        parts = [[c.activation, *ps] for c, ps in zip(configs, parts)]
    return ["-".join(ps) for ps in parts]


def fixed_axes(configs: Sequence[RunConfig]) -> str:
    """The axes every config shares, as one line (``5x256, sgd, lr0.1, ...``)."""
    if not configs:
        return ""
    return ", ".join(t for (_, token), v in zip(_TOKENS, _varying(configs)) if not v
                     and (t := token(configs[0])))


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
    jobs: int = 1,
) -> list[RunResult]:
    """Train every config (skipping finished ones) and write the summary and plots.

    Args:
        configs: the runs, e.g. from :func:`expand_grid` or a preset.
        data: the data set (moved to ``device`` once, in each process that trains).
        results_dir: the output directory (created).
        device: where to train.
        progress: tqdm bars (over runs; with ``jobs=1`` also over the current run's steps).
        rerun: train finished configs again instead of skipping them.
        plots: write the PNG plots.
        title: heading of ``summary.md``.
        on_result: called with ``(result, skipped)`` after each config (with ``jobs > 1``
            the skipped ones first, then in the order runs finish).
        dashboard_images: draw the monitor's dashboard images in each TensorBoard run.
        jobs: runs trained at once, in worker processes
            (:mod:`gradscope.experiments.jobs`); ``1`` trains them one after another
            in this process. Every run uses one torch thread: the results are the same.
            With ``jobs > 1`` a script needs ``if __name__ == "__main__":`` (``spawn``).

    Returns:
        The results of the finished configs, in config order.

    Raises:
        RunsFailed: with ``jobs > 1``, some runs raised (the others are kept and summarised).
    """
    out = Path(results_dir)
    writer = parallel.is_writer()  # under torchrun, rank 0 alone touches files
    if writer:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    names = run_names(configs)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise GridError(f"configs share run names {dup}; remove the duplicates")
    found: dict[int, RunResult] = {}
    bar = None
    if progress and writer:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(configs), desc="runs", position=0, dynamic_ncols=True)

    def finished(i: int, result: RunResult, skipped: bool) -> None:
        found[i] = result
        if on_result is not None:
            on_result(result, skipped)
        if bar is not None:
            bar.update(1)

    try:
        if jobs <= 1:
            with workers.one_thread():  # as in a worker: the same numbers whatever ``jobs``
                _train_in_turn(configs, names, data.to(device), out, device, rerun, progress,
                               dashboard_images, finished)
        else:
            _train_at_once(configs, names, data, out, torch.device(device), rerun, jobs,
                           dashboard_images, finished)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {len(found)} of {len(configs)} runs finished and kept in {out}; "
              "rerun the same command to continue", file=sys.stderr)
        raise
    finally:
        if bar is not None:
            bar.close()
        results = [found[i] for i in sorted(found)]
        if results and writer:
            write_summary(results, out, title=title)
            if plots:
                from gradscope.experiments.plots import make_plots

                make_plots(results, out)
    return results


def _done_before(cfg: RunConfig, name: str, run_dir: Path, rerun: bool) -> Optional[RunResult]:
    """The run's result when it finished before with the same config (and not ``rerun``);
    else ``None``, after clearing what an unfinished or stale run left."""
    done = None if rerun else load_result(run_dir)
    if done is not None and done.config == cfg:
        done.name = name
        return done
    if parallel.is_writer() and run_dir.exists():  # unfinished or stale: never trust it
        shutil.rmtree(run_dir)
    return None


def _train_in_turn(configs: Sequence[RunConfig], names: list[str], data: Dataset, out: Path,
                   device: Union[str, torch.device], rerun: bool, progress: bool,
                   dashboard_images: bool, finished: Callable[[int, RunResult, bool], None]
                   ) -> None:
    """``jobs=1``: each config in turn, in this process."""
    for i, (cfg, name) in enumerate(zip(configs, names)):
        run_dir = out / "runs" / name
        done = _done_before(cfg, name, run_dir, rerun)
        result = done or train_run(cfg, data, device=device, run_dir=run_dir, progress=progress,
                                   dashboard_images=dashboard_images, name=name, grid=configs)
        finished(i, result, done is not None)


def _train_at_once(configs: Sequence[RunConfig], names: list[str], data: Dataset, out: Path,
                   device: torch.device, rerun: bool, jobs: int, dashboard_images: bool,
                   finished: Callable[[int, RunResult, bool], None]) -> None:
    """``jobs > 1``: the finished configs first, then the others in worker processes."""
    runs = [(i, c, n, out / "runs" / n) for i, (c, n) in enumerate(zip(configs, names))]
    done = {i: _done_before(cfg, name, run_dir, rerun) for i, cfg, name, run_dir in runs}
    for i, result in done.items():
        if result is not None:
            finished(i, result, True)
    todo = [run for run in runs if done[run[0]] is None]
    if todo:
        workers.train_parallel(todo, data, device=device, jobs=jobs,
                               dashboard_images=dashboard_images, grid=configs,
                               on_done=lambda i, result: finished(i, result, False))


# ---- summary ------------------------------------------------------------------
COLUMNS = ("run", "test_acc", "final_train_loss", "steps_to_90", "grad_ratio", "peak_saturation",
           "peak_dead", "wall_s", "device", "findings")
HEADERS = ("run", "test acc", "train loss", "steps to 90% train", "grad ratio first/last",
           "peak saturation", "peak dead", "wall s", "device", "findings")
#: Added after ``grad_ratio`` when some run is a recurrent net.
TIME_COLUMN = ("time_ratio", "∂L/∂h first/last step")


def _columns(results: Sequence[RunResult]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(COLUMNS, HEADERS)``, with :data:`TIME_COLUMN` when some run has a time ratio."""
    if all(r.time_ratio is None for r in results):
        return COLUMNS, HEADERS
    at = COLUMNS.index("grad_ratio") + 1
    return ((*COLUMNS[:at], TIME_COLUMN[0], *COLUMNS[at:]),
            (*HEADERS[:at], TIME_COLUMN[1], *HEADERS[at:]))


def _cell(key: str, r: RunResult) -> str:
    v: Any = r.name if key == "run" else getattr(r, key)
    if v is None or (key == "grad_ratio" and r.config.model != "mlp"):
        return "–"  # not measured, or not defined (fc1/out of an MLP; a recurrent run has time_ratio)
    if key == "findings":
        return "; ".join(v) if v else "–"
    if isinstance(v, float):
        if not math.isfinite(v):
            return "nan"
        if key in ("grad_ratio", "time_ratio"):
            return f"{v:.3g}"
        if key == "wall_s":
            return f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


def format_table(results: Sequence[RunResult]) -> str:
    """The results as a markdown table."""
    columns, headers = _columns(results)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(k, r) for k in columns) + " |" for r in results]
    return "\n".join(lines)


#: The terminal table's columns: ``(key, header)``; findings take the width left.
TERMINAL = (("run", "run"), ("test_acc", "acc"), ("final_train_loss", "loss"),
            ("steps_to_90", "to 90%"), ("grad_ratio", "grad f/l"), ("peak_saturation", "sat"),
            ("peak_dead", "dead"), ("wall_s", "s"))
#: The longest run name the terminal table shows whole.
RUN_WIDTH = 40


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(width - 1, 0)] + "…"


def format_terminal(results: Sequence[RunResult], *, width: int = 120) -> str:
    """The results as an aligned text table no wider than ``width`` columns.

    Long run names and findings are cut with ``…`` (``summary.md`` has them whole);
    the device and the axes every run shares go in the lines after the table.
    """
    rows = [[h for _, h in TERMINAL] + ["findings"]]
    rows += [[_fit(_cell(k, r), RUN_WIDTH) for k, _ in TERMINAL] + [_cell("findings", r)]
             for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(len(TERMINAL))]
    room = max(width - sum(widths) - 2 * len(widths), len("findings"))
    widths.append(min(room, max(len(row[-1]) for row in rows)))
    lines = ["  ".join(c.ljust(w) if i in (0, len(row) - 1) else c.rjust(w)
                       for i, (c, w) in enumerate(zip([*row[:-1], _fit(row[-1], room)], widths)))
             .rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line[:width] for line in lines)


def write_summary(results: Sequence[RunResult], results_dir: Union[str, os.PathLike], *,
                  title: str = "gradscope compare", extra: str = "") -> None:
    """Write ``summary.md``, ``summary.csv`` and ``summary.json`` into ``results_dir``."""
    out = Path(results_dir)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(r.wall_s for r in results)
    devices = sorted({r.device for r in results})
    fixed = fixed_axes([r.config for r in results])
    md = [f"# {title}", "",
          f"{len(results)} runs, {total:.0f} s of training on {', '.join(devices)}.",
          *([f"Every run: {fixed}. Run names are the axes that vary."] if fixed else []), "",
          format_table(results), "",
          "train loss: mean over the last 50 steps (nan: the run diverged). "
          "grad ratio first/last: median over sampled steps of ‖∇W‖ of the first Linear over "
          "that of the output Linear. peak saturation/dead: largest fraction over layers and "
          "sampled steps (– where the activation has none)." + (
              " ∂L/∂h first/last step (recurrent nets): median over sampled steps of the last "
              "recurrent layer's ‖∂L/∂h_t‖ at the first time step over that at the last."
              if _columns(results)[0] != COLUMNS else ""), ""]
    if extra:
        md += [extra, ""]
    (out / "summary.md").write_text("\n".join(md), encoding="utf-8")
    buf = io.StringIO()
    w = csv.writer(buf)
    cfg_keys = list(results[0].config.to_dict()) if results else []
    columns = _columns(results)[0]
    w.writerow(["run", *cfg_keys, *columns[1:]])
    for r in results:
        d = r.to_dict()
        row = [r.name, *(d["config"][k] for k in cfg_keys)]
        row += ["; ".join(d[k]) if k == "findings" else d[k] for k in columns[1:]]
        w.writerow(row)
    (out / "summary.csv").write_text(buf.getvalue(), encoding="utf-8")
    with open(out / "summary.json", "w", encoding="utf-8") as f:
        json.dump([r.to_dict() for r in results], f, indent=1)
