"""Do torchrun jobs that use gradscope exit cleanly on every rank? Repeated, counted.

A rank that leaves gloo's worker threads running into interpreter exit can abort
(SIGABRT, "terminate called without an active exception") after a successful run,
intermittently, and torchrun then reports the whole job failed. Each scenario here is a
2-rank ``torchrun`` job on the CPU (gloo), repeated; a run fails when torchrun exits
non-zero or any rank printed ``terminate called``.

Scenarios:

* ``compare``: ``torchrun -m gradscope compare --synthetic`` (the data-parallel grid,
  as ``tests/test_distributed.py::test_compare_runs_data_parallel_under_torchrun``);
* ``ddp-worker``: ``tests/distributed_worker.py`` (DDP with counted collectives);
* ``user-open`` / ``user-close`` / ``user-destroy``: ``tests/torchrun_user_script.py``,
  a user's script that ends without ``mon.close()`` or ``destroy_process_group()``,
  with ``mon.close()`` only, or with ``destroy_process_group()`` while the monitor is open;
* ``torch-destroy`` (not run by default, never gated): ``user-destroy``'s script without
  gradscope, the control that shows PyTorch's own exit abort with gloo (see
  ``gradscope/lifecycle.py``) and how often it happens on this machine.

Usage::

    python benchmarks/torchrun_exit.py --repeats 20            # every scenario, 20 times
    python benchmarks/torchrun_exit.py --scenarios user-open --repeats 5
    python benchmarks/torchrun_exit.py --root /path/to/other/checkout   # its gradscope

Exits 1 when any run failed (``.ci/run`` runs it), and writes a JSON summary with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = ["compare", "--synthetic", "--activations", "relu", "tanh", "--inits", "he",
        "--batchnorm", "off", "--depth", "2", "--width", "32", "--steps", "30",
        "--eval-every", "10", "--monitor-every", "1", "--no-plots", "--no-progress",
        "--no-dashboard-images"]


def scenario_args(name: str, work: Path) -> list[str]:
    """The arguments after ``torchrun --nproc_per_node 2 ...`` for one scenario."""
    if name == "compare":
        return ["-m", "gradscope", *GRID, "--results-dir", str(work / "results")]
    if name == "ddp-worker":
        return [str(ROOT / "tests" / "distributed_worker.py"), str(work)]
    if name.startswith("user-"):
        return [str(ROOT / "tests" / "torchrun_user_script.py"), name.removeprefix("user-")]
    if name in CONTROLS:
        return [str(ROOT / "tests" / "torchrun_user_script.py"), name]
    raise ValueError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")


SCENARIOS = ("compare", "ddp-worker", "user-open", "user-close", "user-destroy")
#: Runs without gradscope: reported, never a failure of this check.
CONTROLS = ("torch-destroy",)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_once(name: str, python: str, gradscope_root: Path, timeout: float) -> dict[str, object]:
    """One 2-rank job: its exit code, whether a rank aborted, its time and output's tail."""
    with tempfile.TemporaryDirectory(prefix=f"gradscope-exit-{name}-") as tmp:
        work = Path(tmp)
        env = {**os.environ, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(gradscope_root), str(ROOT),
                                              os.environ.get("PYTHONPATH", "")])}
        cmd = [python, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
               *scenario_args(name, work)]
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            rc, out = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as e:
            rc, out = -999, f"timed out after {timeout} s: {e}"
        aborted = "terminate called" in out
        ok = rc == 0 and not aborted
        lines = out.splitlines()
        cause = [ln for ln in lines if "terminate called" in ln or "what():" in ln
                 or "exitcode" in ln or "Error" in ln]
        return {"rc": rc, "aborted": aborted, "ok": ok,
                "seconds": round(time.perf_counter() - t0, 1),
                "tail": "" if ok else "\n".join([*cause[:12], *lines[-5:]])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", nargs="+", choices=SCENARIOS + CONTROLS,
                   default=list(SCENARIOS),
                   help="which jobs to repeat (default: every gradscope scenario; "
                        "torch-destroy is the control without gradscope)")
    p.add_argument("--repeats", type=int, default=5, help="runs of each scenario (default 5)")
    p.add_argument("--python", default=sys.executable,
                   help="the interpreter of the jobs (e.g. a fresh virtualenv's)")
    p.add_argument("--root", type=Path, default=ROOT,
                   help="the checkout whose gradscope the jobs import (default: this one)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per job")
    p.add_argument("--out", type=Path, help="write the counts and failures as JSON here")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: use 1 or more")
    summary: dict[str, dict[str, object]] = {}
    for name in args.scenarios:
        runs = []
        for i in range(args.repeats):
            r = run_once(name, args.python, args.root.resolve(), args.timeout)
            runs.append(r)
            print(f"{name} {i + 1}/{args.repeats}: {'ok' if r['ok'] else 'FAILED'} "
                  f"(rc {r['rc']}, {r['seconds']} s)", file=sys.stderr, flush=True)
            if not r["ok"]:
                print(str(r["tail"]), file=sys.stderr)
        failed = sum(not r["ok"] for r in runs)
        summary[name] = {"runs": len(runs), "failed": failed,
                         "aborted": sum(bool(r["aborted"]) for r in runs),
                         "seconds_per_run": round(sum(float(r["seconds"]) for r in runs)  # type: ignore[arg-type]
                                                  / len(runs), 1),
                         "failures": [r["tail"] for r in runs if not r["ok"]]}
    print(f"{'scenario':<14} {'runs':>5} {'failed':>7} {'aborted':>8} {'s/run':>6}")
    for name, s in summary.items():
        print(f"{name:<14} {s['runs']:>5} {s['failed']:>7} {s['aborted']:>8} "
              f"{s['seconds_per_run']:>6}{'  (control: no gradscope)' if name in CONTROLS else ''}")
    if args.out is not None:
        args.out.write_text(json.dumps({"python": args.python, "root": str(args.root),
                                        "scenarios": summary}, indent=1))
    return 1 if any(s["failed"] for n, s in summary.items() if n not in CONTROLS) else 0


if __name__ == "__main__":
    sys.exit(main())
