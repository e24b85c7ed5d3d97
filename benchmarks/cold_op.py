"""Why per-hook work costs more on a CPU than a micro-benchmark says.

A hook runs right after a training kernel that streamed megabytes through the
caches. This script times a trivial PyTorch operation (``torch.zeros(())``) and a
small reduction right after such a kernel (a 128x1000 @ 1000x1000 matmul) and
again immediately after, with torch pinned to one thread. The difference is what
every operation in a hook pays for the interpreter and dispatcher to come back
into cache; it is why gradscope's hooks aim for few operations.

Usage::

    python benchmarks/cold_op.py
"""

from __future__ import annotations

import statistics
import time

import torch


def main(repeats: int = 300) -> dict[str, float]:
    """Median microseconds of each probe, cold (after the matmul) and warm."""
    torch.set_num_threads(1)
    a, w = torch.randn(128, 1000), torch.randn(1000, 1000)
    probes = {"zeros": lambda y: torch.zeros(()), "sum": lambda y: y.sum()}
    out: dict[str, float] = {}
    for name, probe in probes.items():
        cold, warm = [], []
        for _ in range(repeats):
            y = a @ w
            t0 = time.perf_counter()
            probe(y)
            t1 = time.perf_counter()
            probe(y)
            t2 = time.perf_counter()
            cold.append(t1 - t0)
            warm.append(t2 - t1)
        out[f"{name}_cold_us"] = statistics.median(cold) * 1e6
        out[f"{name}_warm_us"] = statistics.median(warm) * 1e6
    return out


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key:16s} {value:7.2f}")
