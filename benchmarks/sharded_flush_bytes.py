"""What a flush exchanges under FSDP2: bytes per rank, against layers and parameters.

Each setting trains an MLP (``depth`` blocks of ``Linear(width, width)`` + ReLU) with
``fully_shard`` on each ``Linear`` and the root, on 2 ranks (gloo, CPU), under
``gradscope.watch(every=1, flush_every=1)`` for a few steps, and records the payload of
gradscope's one ``all_gather`` per flush (float64 values: the activation partials, the
per-unit masks of the dead-unit metrics, the sharded parameters' sums). The payload grows
with the layers and the units of the activations, not with the parameters' elements.

Usage::

    python benchmarks/sharded_flush_bytes.py --out benchmarks/results/sharded_flush_bytes
    python benchmarks/sharded_flush_bytes.py --quick      # two settings

It launches ``torchrun --nproc_per_node 2`` on itself; JSON and a markdown table go to
``--out`` (``.json``, ``.md``), the table to stdout.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

# ---- settings ---------------------------------------------------------------------
DEPTHS = (2, 8)
WIDTHS = (16, 256, 1024)
STEPS = 3
BATCH = 8
ROOT = Path(__file__).resolve().parents[1]


def measure(depth: int, width: int) -> dict[str, Any]:
    """One setting on this rank: the payload of each flush's collective."""
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    import gradscope
    from gradscope.distributed import HEADER, RankCombiner

    torch.manual_seed(0)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers)
    params = sum(p.numel() for p in model.parameters())
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for m in model:
        if isinstance(m, nn.Linear):
            fully_shard(m, mesh=mesh)
    fully_shard(model, mesh=mesh)
    sent: list[int] = []
    used: list[int] = []
    gather = RankCombiner._all_gather

    def counted(self: RankCombiner, payload: list[float]) -> list[list[float]]:
        sent.append(len(payload))
        used.append(int(payload[0]) + HEADER)  # before the padding to a power of two
        return gather(self, payload)

    RankCombiner._all_gather = counted  # type: ignore[method-assign]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    try:
        with gradscope.watch(model, optimizer=opt, every=1, flush_every=1, summary=False,
                             findings=False, histogram_every=None):
            for _ in range(STEPS):
                opt.zero_grad()
                model(torch.randn(BATCH, width)).pow(2).mean().backward()
                opt.step()
    finally:
        RankCombiner._all_gather = gather  # type: ignore[method-assign]
    del model, opt
    gc.collect()
    floats = max(sent)
    return {"depth": depth, "width": width, "parameters": params, "flushes": len(sent),
            "values": max(used), "payload_floats": floats, "bytes_sent_per_rank": floats * 8,
            "bytes_per_parameter": floats * 8 / params}


def rank_main(out: str, quick: bool) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    grid = [(2, 16), (2, 1024)] if quick else [(d, w) for d in DEPTHS for w in WIDTHS]
    rows = [measure(d, w) for d, w in grid]
    if dist.get_rank() == 0:
        Path(out + ".json").write_text(json.dumps(rows, indent=1))
    dist.barrier()
    dist.destroy_process_group()


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| depth | width | parameters | flushes | values | padded payload (float64) | "
             "bytes sent per rank per flush | bytes per parameter |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['depth']} | {r['width']} | {r['parameters']:,} | {r['flushes']} | "
              f"{r['values']:,} | {r['payload_floats']:,} | {r['bytes_sent_per_rank']:,} | "
              f"{r['bytes_per_parameter']:.2g} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sharded_flush_bytes"),
                    help="path without suffix: .json and .md are written")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rank-main", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank_main:
        rank_main(args.out, args.quick)
        return
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(port), __file__, "--rank-main",
           "--out", args.out] + (["--quick"] if args.quick else [])
    subprocess.run(cmd, env=env, check=True)
    rows = json.loads(Path(args.out + ".json").read_text())
    md = table(rows)
    Path(args.out + ".md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
