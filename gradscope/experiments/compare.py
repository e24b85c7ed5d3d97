"""``gradscope compare`` and ``gradscope preset``: the MNIST reference experiments.

``gradscope compare --quick`` trains the activation comparison (5 activations ×
3 initialisations (N(0,1), Xavier, He) × BatchNorm off/on, 5×256 MLPs, 1000 SGD
steps each) in a few minutes on 2 CPU cores; without ``--quick`` the full grid (5 activations × 6 inits × BatchNorm
off/on, 5×256, 3000 steps) is meant for a GPU or a long CPU run. Every axis can be
overridden (``--activations tanh relu --inits he``). ``gradscope preset NAME``
re-runs one classic result and prints a verdict computed from the measurements.

Outputs go to ``--results-dir`` (see :mod:`gradscope.experiments.grid`); view them
with ``tensorboard --logdir RESULTS_DIR/runs``.

Example:
    >>> import argparse
    >>> p = argparse.ArgumentParser(); configure(p)
    >>> p.parse_args(["--quick", "--device", "cpu"]).quick
    True
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Union

import torch

from gradscope.writers.paths import dir_problem

__all__ = ["EXAMPLES", "FULL", "HELP", "PRESET_EXAMPLES", "QUICK", "configure", "configure_preset",
           "preset_help", "run", "run_preset"]

# ---- settings ---------------------------------------------------------------
ACTIVATIONS = ["sigmoid", "tanh", "relu", "leaky_relu", "gelu"]
#: The full grid (a GPU, or a long CPU run: 60 runs).
FULL: dict[str, Any] = dict(
    activations=ACTIVATIONS,
    inits=["default", "normal", "standard", "xavier_uniform", "he", "orthogonal"],
    batchnorm=[False, True], depths=[5], widths=[256], optimizers=["sgd"], lrs=[0.1],
    dropouts=[0.0], steps=[3000], batch_sizes=[64], seeds=[0], eval_every=250, monitor_every=10,
)
#: ``--quick``: the activation comparison in a few minutes on 2 CPU cores (30 runs).
QUICK: dict[str, Any] = dict(
    FULL, inits=["normal", "xavier_uniform", "he"], steps=[1000], eval_every=100, monitor_every=5,
)
MNIST_TRAIN = 60_000
# ------------------------------------------------------------------------------

HELP = ("MNIST: MLPs over a grid of activations × initialisations × BatchNorm (and depth, width, "
        "optimiser, lr, ...), each under the monitor; a summary table, plots and TensorBoard runs")
EXAMPLES = """\
examples:
  gradscope compare --quick                        # 30 runs, minutes on 2 CPU cores
  tensorboard --logdir results/compare-quick/runs  # their dashboards and HParams table
  gradscope compare --quick --activations tanh relu --inits he xavier_uniform --batchnorm off
  gradscope compare --quick --optimizer sgd adam --lr 0.1 0.001 --steps 500
  gradscope compare --synthetic --quick --steps 20 # offline smoke test on random data
  gradscope compare                                # the full grid (60 runs: a GPU, or a long run)
  torchrun --nproc_per_node 2 -m gradscope compare --quick   # data-parallel (DDP)
"""
PRESET_EXAMPLES = """\
examples:
  gradscope preset --list                  # every preset: its claim and its setup
  gradscope preset glorot2010 --quick      # the small version, with its verdict
  gradscope preset rnn --device cuda       # full size on a GPU
  tensorboard --logdir results/glorot2010-quick/runs
"""


def preset_help() -> str:
    """``gradscope preset``'s one-line help, naming every preset of the registry."""
    from gradscope.experiments.presets import PRESETS

    return (f"MNIST: re-run one of {len(PRESETS)} classic results ({', '.join(PRESETS)}) "
            "and print a verdict computed from the measurements")


def _common(parser: argparse.ArgumentParser, default_dir: str) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="the small version: minutes on 2 CPU cores")
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="auto (CUDA when available), cpu or cuda[:N] (default: auto)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="MNIST cache (default: $GRADSCOPE_DATA or ~/.cache/gradscope)")
    parser.add_argument("--results-dir", default=None, metavar="DIR",
                        help=f"output directory (default: {default_dir}, with -quick for --quick)")
    parser.add_argument("--rerun", action="store_true",
                        help="train finished configs again instead of skipping them")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--no-dashboard-images", action="store_true",
                        help="no gradient-flow/unit-health images in the TensorBoard runs (faster)")
    parser.add_argument("--jobs", type=_jobs_value, default=None, metavar="N",
                        help="runs trained at once, in worker processes, each with one torch "
                        "thread; the results are the same (default: the CPU cores on the CPU, "
                        "up to 8 on a GPU; 1: one after another in this process)")
    parser.add_argument("--synthetic", action="store_true",
                        help="train on a small synthetic data set instead of MNIST "
                        "(offline smoke test; the numbers mean nothing)")


def _jobs_value(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: use an integer >= 1 (1: one run at a time)")
    return n


def _jobs(args: argparse.Namespace, dev: torch.device, runs: int) -> int:
    """How many runs train at once: ``--jobs``, or its default for ``dev`` (one under torchrun)."""
    from gradscope.experiments import jobs, parallel

    if parallel.world()[1] > 1:
        if args.jobs not in (None, 1) and parallel.is_writer():
            print(f"--jobs {args.jobs} ignored under torchrun: the ranks train each run "
                  "together (data-parallel), one run after another", file=sys.stderr)
        return 1
    n = args.jobs if args.jobs is not None else jobs.default_jobs(dev, runs)
    if min(n, runs) > 1:
        print(f"{min(n, runs)} runs at once (--jobs {n}), in worker processes", file=sys.stderr)
    return n


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradscope compare``."""
    _common(parser, "results/compare")
    from gradscope.experiments.models import ACTIVATIONS, INITS
    from gradscope.experiments.optimizers import OPTIMIZERS

    quick, full = QUICK, FULL
    g = parser.add_argument_group(
        "grid axes", textwrap.fill(
            "Each takes one or more values and overrides the --quick/full default. The whole "
            "grid is validated before anything trains: every invalid value is listed at once.",
            77))
    g.add_argument("--activations", nargs="+", metavar="ACT",
                   help=f"{', '.join(ACTIVATIONS)} (default: {' '.join(full['activations'])})")
    g.add_argument("--inits", nargs="+", metavar="INIT",
                   help=f"{', '.join(INITS)} (default: {' '.join(quick['inits'])} with --quick, "
                   f"else {' '.join(full['inits'])})")
    g.add_argument("--batchnorm", nargs="+", choices=["off", "on"],
                   help="BatchNorm1d between each hidden Linear and its activation: off, on "
                   "(default: off on)")
    g.add_argument("--depth", nargs="+", type=int, dest="depths", metavar="N",
                   help=f"hidden layers, >= 1 (default: {full['depths'][0]})")
    g.add_argument("--width", nargs="+", type=int, dest="widths", metavar="N",
                   help=f"units per hidden layer, >= 1 (default: {full['widths'][0]})")
    g.add_argument("--optimizer", nargs="+", dest="optimizers", metavar="OPT",
                   help=f"{', '.join(OPTIMIZERS)} (default: {full['optimizers'][0]})")
    g.add_argument("--lr", nargs="+", type=float, dest="lrs", metavar="LR",
                   help=f"learning rate, > 0 (default: {full['lrs'][0]:g})")
    g.add_argument("--dropout", nargs="+", type=float, dest="dropouts", metavar="P",
                   help="dropout probability after each hidden activation, in [0, 1) "
                   f"(default: {full['dropouts'][0]:g})")
    g.add_argument("--steps", nargs="+", type=int, metavar="N",
                   help=f"SGD steps per run, >= 1 (default: {quick['steps'][0]} with --quick, "
                   f"else {full['steps'][0]})")
    g.add_argument("--epochs", type=float, default=None, metavar="E",
                   help="train this many passes over the 60k MNIST images (sets --steps), > 0")
    g.add_argument("--batch-size", nargs="+", type=int, dest="batch_sizes", metavar="N",
                   help=f"examples per step, >= 1 (default: {full['batch_sizes'][0]})")
    g.add_argument("--seed", nargs="+", type=int, dest="seeds", metavar="INT",
                   help="seeds of initialisation, batch order and dropout, integers >= 0 "
                   f"(default: {full['seeds'][0]})")
    g.add_argument("--eval-every", type=int, metavar="N",
                   help=f"steps between test-set evaluations, >= 1 (default: "
                   f"{quick['eval_every']} with --quick, else {full['eval_every']})")
    g.add_argument("--monitor-every", type=int, metavar="N",
                   help=f"the monitor samples one step in N, >= 1 (default: "
                   f"{quick['monitor_every']} with --quick, else {full['monitor_every']})")


def _grid_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw = dict(QUICK if args.quick else FULL)
    for key in ("activations", "inits", "depths", "widths", "optimizers", "lrs", "dropouts",
                "steps", "batch_sizes", "seeds", "eval_every", "monitor_every"):
        v = getattr(args, key, None)
        if v is not None:
            kw[key] = v
    if args.batchnorm is not None:
        kw["batchnorm"] = [b == "on" for b in args.batchnorm]
    if args.epochs is not None:
        if not (args.epochs > 0):
            raise ValueError(f"--epochs {args.epochs}: use a number > 0")
        kw["steps"] = [max(1, math.ceil(args.epochs * MNIST_TRAIN / b)) for b in kw["batch_sizes"]]
    return kw


def _data(args: argparse.Namespace, command: str) -> Any:
    """The training data, or ``None`` after saying why it could not be had (a :class:`DataError`).

    Under several processes rank 0 fetches and verifies MNIST first, the others then read it.
    """
    from gradscope.experiments import data, parallel

    if args.synthetic:
        return data.synthetic_dataset(n_train=2048, n_test=512, features=784)
    if not parallel.is_writer():
        parallel.barrier()
    try:
        mnist = data.load_mnist(args.data_dir)
    except data.DataError as e:
        print(f"gradscope {command}: {e}", file=sys.stderr)
        mnist = None
    if parallel.is_writer():
        parallel.barrier()
    return mnist


def _results_dir(args: argparse.Namespace, default: str) -> Path:
    """The results directory; checked (a directory, or creatable) before any data is loaded."""
    out = Path(args.results_dir) if args.results_dir else Path(default + ("-quick" if args.quick
                                                                         else ""))
    problem = dir_problem(out)
    if problem is not None:
        raise ValueError(f"--results-dir {str(out)!r}: {problem}; pass a directory you can "
                         "write to (it is created if missing)")
    return out


def _setup(args: argparse.Namespace) -> torch.device:
    from gradscope.experiments import parallel
    from gradscope.experiments.train import resolve_device

    dev = parallel.start(resolve_device(args.device))  # under torchrun: this rank's device
    rank, ranks = parallel.world()
    if ranks > 1:
        print(f"rank {rank} of {ranks} (data-parallel, DDP)", file=sys.stderr)
        if rank != 0:
            return dev
    if dev.type == "cpu":
        from gradscope.experiments.jobs import RUN_THREADS, cores

        print(f"device: cpu ({cores()} cores; {RUN_THREADS} torch thread per run)",
              file=sys.stderr)
    else:
        print(f"device: {dev} ({torch.cuda.get_device_name(dev)})", file=sys.stderr)
    return dev


def _run(args: argparse.Namespace, configs: list[Any], data: Any, out: Path,
         dev: torch.device, title: str, on_result: Any) -> Union[list[Any], int]:
    """Train ``configs`` with the command-line switches: their results, or the exit status
    when interrupted (Ctrl-C: 130) or when some runs failed (1, said on stderr; the
    others are kept)."""
    from gradscope.experiments.grid import run_grid
    from gradscope.experiments.jobs import RunsFailed

    try:
        return run_grid(configs, data, results_dir=out, device=dev,
                        progress=not args.no_progress, rerun=args.rerun,
                        plots=not args.no_plots, title=title,
                        dashboard_images=not args.no_dashboard_images, on_result=on_result,
                        jobs=_jobs(args, dev, len(configs)))
    except RunsFailed as e:
        print(f"{title}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _counter() -> tuple[list[bool], Any]:
    """A list of skipped flags and the ``on_result`` callback that fills it."""
    skipped: list[bool] = []
    return skipped, lambda result, was_skipped: skipped.append(was_skipped)


def _done_line(results: list[Any], skipped: list[bool], seconds: float, dev: torch.device) -> str:
    trained = len(skipped) - sum(skipped)
    train_s = sum(r.wall_s for r in results)
    return (f"{len(results)} runs ({trained} trained now, {sum(skipped)} finished before, "
            f"skipped); {seconds:.0f} s for this command, {train_s:.0f} s of training in all; "
            f"device {dev}")


def run(args: argparse.Namespace) -> int:
    """``gradscope compare``: validate the grid, get MNIST, train, summarise."""
    from gradscope.experiments.grid import GridError, expand_grid

    try:
        configs = expand_grid(**_grid_kwargs(args))
        out = _results_dir(args, "results/compare")
        dev = _setup(args)
    except (GridError, ValueError) as e:
        print(f"gradscope compare: {e}", file=sys.stderr)
        return 2
    from gradscope.experiments import parallel

    writer = parallel.is_writer()
    try:
        if writer:
            print(f"{len(configs)} runs -> {out}", file=sys.stderr)
        data = _data(args, "compare")
        if data is None:
            return 2
        t0 = time.perf_counter()
        skipped, on_result = _counter()
        results = _run(args, configs, data, out, dev, "gradscope compare", on_result)
    finally:
        parallel.stop()
    if isinstance(results, int):
        return results
    if not writer:
        return 0
    _print_table(results)
    print(f"\n{_done_line(results, skipped, time.perf_counter() - t0, dev)}")
    print(f"summary, plots and TensorBoard runs in {out} (tensorboard --logdir {out / 'runs'})")
    return 0


def _print_table(results: list[Any]) -> None:
    """The results table within 120 columns, and the axes every run shares."""
    from gradscope.experiments.grid import fixed_axes, format_terminal

    print(format_terminal(results))
    fixed = fixed_axes([r.config for r in results])
    if fixed:
        print(f"every run: {fixed} (full tables in summary.md)")


def configure_preset(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``gradscope preset``."""
    from gradscope.experiments.presets import PRESETS

    parser.add_argument("name", nargs="?", choices=list(PRESETS), metavar="NAME",
                        help=f"the preset to run: {', '.join(PRESETS)}")
    parser.add_argument("--list", action="store_true", help="describe every preset and exit")
    _common(parser, "results/<name>")


def run_preset(args: argparse.Namespace) -> int:
    """``gradscope preset NAME``: train the preset's runs and print its verdict."""
    from gradscope.experiments.grid import write_summary
    from gradscope.experiments.presets import PRESETS

    if args.list or args.name is None:
        print("\n\n".join(p.describe() for p in PRESETS.values()))
        return 0 if args.list else 2
    preset = PRESETS[args.name]
    try:
        out = _results_dir(args, f"results/{preset.name}")
        dev = _setup(args)
    except ValueError as e:
        print(f"gradscope preset: {e}", file=sys.stderr)
        return 2
    configs = preset.configs(quick=args.quick)
    print(preset.describe(), file=sys.stderr)
    data = _data(args, "preset")
    if data is None:
        return 2
    t0 = time.perf_counter()
    skipped, on_result = _counter()
    results = _run(args, configs, data, out, dev, f"gradscope preset {preset.name}", on_result)
    if isinstance(results, int):
        return results
    verdict = preset.verdict(results, out)
    write_summary(results, out, title=f"gradscope preset {preset.name}",
                  extra=f"{preset.describe()}\n\n```\n{verdict}\n```")
    with open(out / "verdict.json", "w", encoding="utf-8") as f:
        json.dump({"preset": preset.name, "quick": args.quick, "held": verdict.held,
                   "lines": verdict.lines}, f, indent=1)
    _print_table(results)
    print(f"\n{preset.name}: {_done_line(results, skipped, time.perf_counter() - t0, dev)}")
    print(verdict)
    return 0
