"""Several runs of a grid at once: ``gradscope compare --jobs N`` (and ``preset``).

:func:`train_parallel` trains runs in ``N`` worker processes of a
:class:`concurrent.futures.ProcessPoolExecutor` started with ``spawn`` (a fresh
interpreter: a process holding torch's threads is never forked). Each worker:

* is given the data set once, when it starts: as its recipe where it has one
  (:class:`~gradscope.experiments.data.Dataset`: MNIST is read again from its
  verified files), else as tensors; it holds it on the run's device for every run it
  trains;
* imports torch and gradscope once, and trains with :data:`RUN_THREADS` torch thread,
  as the main process does with ``jobs=1`` (:func:`one_thread`): ``jobs`` workers
  use ``jobs`` cores, and a run's numbers do not depend on ``jobs``;
* ignores Ctrl-C: the main process takes it, keeps the finished runs and ends the
  workers (their unfinished run directories are cleared and trained again by a rerun).

A run is the same computation in a worker as in the main process (:func:`train_run`
with the same config: the seed sets the initialisation, the batch order and dropout),
and its ``result.json`` is written by the worker as soon as it finishes. A run that
raises is reported (:class:`RunsFailed`, after the others have finished); a worker
that dies (killed, out of memory) fails the runs it and the pool had left.

Example:
    >>> default_jobs("cpu", runs=30, ncores=2)
    2
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch

from gradscope.experiments.data import Dataset
from gradscope.experiments.train import RunConfig, RunResult, train_run

__all__ = ["GPU_JOBS", "GPU_JOB_BYTES", "RUN_THREADS", "RunsFailed", "cores", "default_jobs",
           "one_thread", "train_parallel"]

# ---- settings ---------------------------------------------------------------
#: torch threads of every run of a grid, whatever ``jobs``: MKL splits small matrix
#: products (a weight gradient over a batch of 64) by the thread count, so another
#: count changes a run's last bits, and a chaotic run's third digit after a few hundred
#: steps (docs/experiments.md). Runs are many and small: one thread each, one run per core.
RUN_THREADS = 1
#: At most this many runs share one GPU by default (not measured: no GPU was at hand
#: when it was chosen; small MLP steps are bound by Python and kernel launches, so a
#: few processes keep one device busier than one).
GPU_JOBS = 8
#: GPU memory set aside per worker when the default is chosen on a GPU: a CUDA
#: context (~0.5 GiB), MNIST held on the device (0.2 GiB) and a small model, with room.
GPU_JOB_BYTES = 2 << 30
# ------------------------------------------------------------------------------


class RunsFailed(RuntimeError):
    """Some runs of a grid raised; the others finished and were kept.

    Attributes:
        failures: ``(run name, "ExceptionType: message")`` for each failed run.
    """

    def __init__(self, failures: Sequence[tuple[str, str]]) -> None:
        self.failures = list(failures)
        lines = "\n  ".join(f"{name}: {why}" for name, why in self.failures)
        super().__init__(f"{len(self.failures)} run(s) failed (the others finished and are "
                         f"kept; a rerun trains the failed ones again):\n  {lines}")


def cores() -> int:
    """The CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_jobs(device: Union[str, torch.device], runs: int, *,
                 ncores: Optional[int] = None) -> int:
    """``--jobs`` when not given: the CPU cores on the CPU; on a GPU, ``min(GPU_JOBS, runs)``
    bounded by the free memory (:data:`GPU_JOB_BYTES` each). Never more than ``runs``."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        n = min(GPU_JOBS, max(1, free // GPU_JOB_BYTES))
    else:
        n = ncores if ncores is not None else cores()
    return max(1, min(n, runs))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """torch uses :data:`RUN_THREADS` threads inside (the thread count is restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(RUN_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---- the worker's side ------------------------------------------------------------
#: What a worker holds across the runs it trains: the data on the device, the device.
_WORKER: dict[str, Any] = {}


def _start_worker(data: Dataset, device: str) -> None:
    """A worker's initializer: Ctrl-C is the main process's, one thread, the data on the device."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(RUN_THREADS)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    _WORKER["device"] = dev
    _WORKER["data"] = data.to(dev)


def _train_one(cfg: RunConfig, name: str, run_dir: Path, dashboard_images: bool,
               grid: Sequence[RunConfig]) -> RunResult:
    return train_run(cfg, _WORKER["data"], device=_WORKER["device"], run_dir=run_dir,
                     progress=False, dashboard_images=dashboard_images, name=name, grid=grid)


# ---- the main process's side --------------------------------------------------------
def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel what has not started and end the workers now (Ctrl-C): their runs are unfinished."""
    # the processes are private to the pool (Python 3.14 adds terminate_workers())
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(timeout=10)
        if p.is_alive():  # SIGTERM not acted on yet (a heavily loaded machine)
            p.kill()
            p.join()


def train_parallel(
    todo: Sequence[tuple[int, RunConfig, str, Path]],
    data: Dataset,
    *,
    device: torch.device,
    jobs: int,
    dashboard_images: bool,
    grid: Sequence[RunConfig],
    on_done: Callable[[int, RunResult], None],
    train: Callable[..., RunResult] = _train_one,
) -> None:
    """Train ``todo`` (``(index, config, name, run_dir)``) in ``jobs`` worker processes.

    ``on_done(index, result)`` is called in the main process as each run finishes
    (in the order they finish). Every run is trained even when some fail. ``train``,
    called in a worker as ``train(config, name, run_dir, dashboard_images, grid)``,
    trains one run there (a module-level function: it is sent by name).

    Raises:
        RunsFailed: after the others finished, when some runs raised.
        KeyboardInterrupt: Ctrl-C; the workers are ended, finished runs were reported.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs={jobs!r}: use an integer >= 1")
    workers = min(jobs, len(todo))
    ctx = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_start_worker,
                               initargs=(data.to("cpu"), str(device)))
    failures: list[tuple[int, str, str]] = []
    try:
        pending: dict[Future[RunResult], tuple[int, str]] = {
            pool.submit(train, cfg, name, run_dir, dashboard_images, grid): (i, name)
            for i, cfg, name, run_dir in todo}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                i, name = pending.pop(fut)
                try:
                    result = fut.result()
                except Exception as e:  # the run raised, or its worker died
                    print(f"\nrun {name} failed: {_why(e)}", file=sys.stderr)
                    failures.append((i, name, _why(e)))
                    continue
                on_done(i, result)
    except BaseException:
        _end_workers(pool)
        raise
    pool.shutdown(wait=True)
    if failures:
        raise RunsFailed([(name, why) for _, name, why in sorted(failures)])
