"""``gradscope compare --jobs``: the grid's wall time one run at a time and several at once,
and what the per-run costs that the workers pay once are.

    python benchmarks/grid_jobs.py            # the quick grid (30 runs), --jobs 1 then the default
    python benchmarks/grid_jobs.py --grid --activations relu tanh sigmoid gelu --inits he --steps 200
    python benchmarks/grid_jobs.py --costs    # start-up and per-run costs, each timed alone

``--grid`` runs ``python -m gradscope compare --quick ARGS --no-progress`` with
``--jobs 1`` and then without ``--jobs`` (the default: the CPU cores), each into a
fresh directory, prints their wall times, the load average (``os.getloadavg``) before
and after each, and compares the two ``summary.json`` files: every value but the wall
time, exactly, and the terminal table as printed. The workers run with ``cores // jobs``
torch threads and ``--jobs 1`` with all of them: MKL splits small matrix products by
thread count, so the last bits of a run may differ (see docs/experiments.md).

``--costs`` times, on the MNIST of the data cache (median of ``--repeat``): a spawned
worker's start-up (a fresh interpreter importing torch and gradscope), loading MNIST,
one test-set evaluation of the quick grid's 5×256 MLP (10,000 images in one batch,
one torch thread as in a run; ``--quick`` evaluates every 100 steps), and drawing the two dashboard
images of a 200-step run once (what drawing them only after training saves per run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _compare(args: list[str], out: Path) -> tuple[float, tuple[float, ...], tuple[float, ...]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "gradscope", "compare", "--quick", *args, "--no-progress",
           "--results-dir", str(out)]
    print("$", " ".join(cmd[1:]), flush=True)
    before = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"exit status {proc.returncode}:\n{proc.stderr[-3000:]}")
    (out / "stdout.txt").write_text(proc.stdout)
    return wall, before, os.getloadavg()


def grid(args: list[str], work: Path) -> dict[str, object]:
    """Both commands, their wall times and whether their runs' numbers are the same."""
    from gradscope.experiments.grid import format_terminal
    from gradscope.experiments.train import RunResult

    walls = {}
    for jobs in ("1", "default"):
        out = work / f"jobs-{jobs}"
        wall, before, after = _compare(args + (["--jobs", "1"] if jobs == "1" else []), out)
        walls[jobs] = wall
        print(f"  --jobs {jobs}: {wall:.1f} s (load average 1/5/15 min: before "
              f"{'/'.join(f'{x:.1f}' for x in before)}, after "
              f"{'/'.join(f'{x:.1f}' for x in after)})", flush=True)
    rows = {j: json.loads((work / f"jobs-{j}" / "summary.json").read_text()) for j in walls}
    for r in (*rows["1"], *rows["default"]):
        r["wall_s"] = 0.0
    exact = rows["1"] == rows["default"]
    tables = {j: format_terminal([RunResult.from_dict(r) for r in rows[j]]) for j in rows}
    same_table = tables["1"] == tables["default"]
    print(f"  every value but the wall time identical: {exact}; the table as printed "
          f"identical: {same_table}")
    if not same_table:
        print(tables["1"], tables["default"], sep="\n\n")
    return {"walls_s": walls, "exact": exact, "same_table": same_table}


def _median_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _imported() -> bool:
    """What a new worker does first: import torch and gradscope's training code."""
    import gradscope.experiments.jobs  # noqa: F401

    return True


def costs(repeat: int) -> dict[str, float]:
    """Seconds, each the median of ``repeat``."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from gradscope.experiments.data import load_mnist
    from gradscope.experiments.jobs import one_thread
    from gradscope.experiments.models import build_mlp
    from gradscope.experiments.results import _evaluate
    from gradscope.experiments.train import RunConfig, train_run
    from gradscope.writers import figures

    def start() -> None:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            pool.submit(_imported).result()

    out = {"worker_start": _median_time(start, repeat)}
    out["load_mnist"] = _median_time(lambda: load_mnist(quiet=True), repeat)
    data = load_mnist(quiet=True)
    model = build_mlp(in_features=784, classes=10, depth=5, width=256, activation="relu",
                      init="he", batchnorm=False, dropout=0.0)
    with one_thread():  # as in a grid's run
        out["evaluation"] = _median_time(lambda: _evaluate(model, data.x_test, data.y_test),
                                         repeat)
    with tempfile.TemporaryDirectory() as d:
        cfg = RunConfig(activation="sigmoid", init="xavier_uniform", steps=200, eval_every=100,
                        monitor_every=5)
        import gradscope

        model = build_mlp(in_features=784, classes=10, depth=5, width=256,
                          activation=cfg.activation, init=cfg.init, batchnorm=False, dropout=0.0)
        train_run(cfg, data, run_dir=Path(d) / "r", progress=False, dashboard_images=False)
        history = gradscope.History.load(Path(d) / "r" / "history.json")
    figures.gradient_flow_image(history, 199)  # matplotlib's import, once per process
    out["images"] = _median_time(lambda: (figures.gradient_flow_image(history, 199),
                                          figures.unit_health_image(history)), repeat)
    for k, v in out.items():
        print(f"  {k}: {v:.3f} s")
    return out


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", action="store_true", help="time the grid only")
    p.add_argument("--costs", action="store_true", help="time the per-run costs only")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--out", default=None, help="directory for the runs (default: a temporary one)")
    args, rest = p.parse_known_args(argv)
    both = not (args.grid or args.costs)
    result: dict[str, object] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                 "cpu_cores": os.cpu_count(), "grid_args": rest}
    if args.costs or both:
        result["costs_s"] = costs(args.repeat)
    if args.grid or both:
        with tempfile.TemporaryDirectory() as tmp:
            result["grid"] = grid(rest, Path(args.out) if args.out else Path(tmp))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
