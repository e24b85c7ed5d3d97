"""Long runs stay flat: flush time, memory and the work of the findings per flush.

Trains a tiny MLP (8 -> 16 -> 16 -> 2, tanh/ReLU) for ``--steps`` steps under
``gradscope.watch`` with a TensorBoard logdir (so the findings sink runs at every
flush) and the default retention, and reports, per block of steps: the median
flush time, the process's resident memory (RSS), the values the history keeps
and has recorded, and the values the findings rules read per flush. A run whose
flush cost grew with its length would show it in the flush-time and reads columns;
one whose memory grew without bound, in the RSS and kept columns.

Settings (one visible block): ``--steps`` (default 100000), ``--blocks`` (rows of
the table, default 10), ``--out`` (a JSON file; default ``benchmarks/results/soak.json``
and a markdown table next to it). ``--smoke`` runs 2000 steps.

Usage::

    nice -n 10 python benchmarks/soak.py            # 10^5 steps, a few minutes
    python benchmarks/soak.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

import gradscope

STEPS = 100_000
BLOCKS = 10
BATCH = 16
FLUSH_EVERY = 50  # watch()'s default


def rss_mib() -> float:
    """Resident memory of this process now (Linux ``/proc``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def soak(steps: int, blocks: int, logdir: str) -> dict[str, Any]:
    """Train, time each flush, and summarise each block of ``steps // blocks`` steps."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(),
                          nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(BATCH, 8), torch.randint(0, 2, (BATCH,))
    mon = gradscope.watch(model, optimizer=opt, logdir=logdir, summary=False,
                          flush_every=FLUSH_EVERY, histogram_every=None)
    findings = next(s for s in mon.sinks if isinstance(s, gradscope.findings.FindingsSink))
    flush = mon.flush
    times: list[float] = []

    def timed_flush() -> None:
        t0 = time.perf_counter()
        flush()
        times.append(time.perf_counter() - t0)

    mon.flush = timed_flush  # type: ignore[method-assign]
    per = steps // blocks
    rows = []
    reads_before, t_start = 0, time.perf_counter()
    for b in range(blocks):
        n0 = len(times)
        for _ in range(per):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        block = times[n0:]
        rows.append({
            "steps": (b + 1) * per,
            "flush_ms_median": 1e3 * statistics.median(block) if block else float("nan"),
            "flush_ms_max": 1e3 * max(block) if block else float("nan"),
            "rss_mib": rss_mib(),
            "history_kept": len(mon.history),
            "history_recorded": mon.history.recorded(),
            "findings_reads_per_flush": (findings.reads - reads_before) / max(1, len(block)),
        })
        reads_before = findings.reads
    wall = time.perf_counter() - t_start
    mon.close()
    return {"steps": steps, "batch": BATCH, "flush_every": FLUSH_EVERY, "wall_s": wall,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "torch": torch.__version__, "rows": rows}


def markdown(result: dict[str, Any]) -> str:
    """The table of one soak run."""
    lines = [f"Soak: {result['steps']:,} steps of a tiny MLP (batch {result['batch']}, flush "
             f"every {result['flush_every']} steps, TensorBoard + findings), "
             f"{result['wall_s']:.0f} s, torch {result['torch']}",
             "",
             "| steps | flush ms (median) | flush ms (max) | RSS MiB | history kept | "
             "recorded | findings reads / flush |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        lines.append(f"| {r['steps']:,} | {r['flush_ms_median']:.2f} | {r['flush_ms_max']:.1f} | "
                     f"{r['rss_mib']:.0f} | {r['history_kept']:,} | {r['history_recorded']:,} | "
                     f"{r['findings_reads_per_flush']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: Any = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=STEPS)
    p.add_argument("--blocks", type=int, default=BLOCKS)
    p.add_argument("--smoke", action="store_true", help="2000 steps")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "soak.json")
    args = p.parse_args(argv)
    steps = 2000 if args.smoke else args.steps
    with tempfile.TemporaryDirectory() as logdir, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        result = soak(steps, min(args.blocks, steps), logdir)
    table = markdown(result)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table)
    return result


if __name__ == "__main__":
    main()
