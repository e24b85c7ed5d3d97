"""One rank of the DDP test: ``torchrun --nproc_per_node 2 tests/distributed_worker.py OUT``.

Each rank trains the shared tiny model (:func:`build`) with DDP on its shard of
each global batch (:func:`global_batches`, rows ``rank::2``) under
``gradscope.watch`` with a GradScaler-free SGD loop, counting the collectives that
gradscope's flushes make (``torch.distributed.all_gather`` patched) and the
flushes (``Queue.drain``). It writes ``OUT/rank<r>.json``: its history, the
counts, whether it writes sinks. Then it checks that a model wrapped in FSDP1
(``FullyShardedDataParallel``) is refused with a clear message. ``tests/test_distributed.py``
runs it and compares with one process that sees the union of the batches.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

STEPS = 7
FLUSH_EVERY = 3
WORLD = 2


def build() -> nn.Sequential:
    """ReLU units that die on some rows only, and a sigmoid that saturates on some."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Sigmoid(),
                          nn.Linear(16, 3))
    with torch.no_grad():
        model[0].bias[:2] = -100.0  # two units dead on every row
        model[2].weight.mul_(4.0)  # a sigmoid that saturates on some rows
    return model


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    out = []
    for _ in range(STEPS):
        x = torch.randn(16, 6, generator=g).abs() * 3.0
        x[1::WORLD] *= -1  # rank 1's rows: the units dead on rank 0's rows fire there
        out.append((x, torch.randint(0, 3, (16,), generator=g)))
    return out


def options() -> dict[str, Any]:
    return dict(every=1, flush_every=FLUSH_EVERY, dead_window=2, histogram_every=None)


def train(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], **watch: Any) -> Any:
    import gradscope

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with gradscope.watch(model, optimizer=opt, **options(), **watch) as mon:
        for x, y in batches:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return mon


def main(out: Path) -> None:
    import torch.distributed as dist

    from gradscope.queue import Queue

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(build())
    counts = {"collectives": 0, "flushes": 0}
    gather, drain = dist.all_gather, Queue.drain

    def counted_gather(*a: Any, **k: Any) -> Any:
        counts["collectives"] += 1
        return gather(*a, **k)

    def counted_drain(self: Queue) -> Any:
        counts["flushes"] += 1
        return drain(self)

    for name in ("all_reduce", "broadcast", "gather", "all_gather_object", "all_gather_into_tensor",
                 "reduce", "scatter"):  # any other Python-level collective would be counted too
        setattr(dist, name, _counting(getattr(dist, name), counts))
    dist.all_gather, Queue.drain = counted_gather, counted_drain  # type: ignore[method-assign]
    shards = [(x[rank::WORLD], y[rank::WORLD]) for x, y in global_batches()]
    mon = train(model, shards, logdir=str(out / "tb"))
    dist.all_gather, Queue.drain = gather, drain  # type: ignore[method-assign]
    result = {"rank": rank, "writes": mon.writes, "writer": mon.writer is not None,
              "history": mon.history.to_dict(), **counts}
    result["fsdp"] = fsdp_refusal()
    result["no_optimizer"] = no_optimizer_refusal()
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def _counting(fn: Any, counts: dict[str, int]) -> Any:
    def wrapper(*a: Any, **k: Any) -> Any:
        counts["collectives"] += 1
        return fn(*a, **k)

    return wrapper


def no_optimizer_refusal() -> str:
    """The error ``watch`` raises under several ranks without an optimizer (empty if none)."""
    import gradscope

    try:
        gradscope.watch(build())
    except TypeError as err:
        return str(err)
    return ""


def fsdp_refusal() -> str:
    """The error ``watch`` raises for a model wrapped in FSDP1 (``FullyShardedDataParallel``,
    whose flat parameters mix the layers'); empty if it did not raise. FSDP2's
    ``fully_shard`` is watched (``tests/sharded_worker.py``)."""
    import gradscope

    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - older torch
        return "no FullyShardedDataParallel in this torch"
    model = FullyShardedDataParallel(build(), device_id=torch.device("cpu"))
    try:
        gradscope.watch(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    except ValueError as err:
        return str(err)
    finally:
        del model
    return ""


if __name__ == "__main__":
    main(Path(sys.argv[1]))
