"""One rank of the sharded tests: ``torchrun --nproc_per_node 2 tests/sharded_worker.py OUT``.

One launch runs every case (:data:`CASES`) on the shared tiny model and global
batches of :mod:`tests.distributed_worker`, each rank writing ``OUT/<case>.rank<r>.json``
(its history, the warnings said, the collectives counted):

* ``fsdp``: FSDP2, ``fully_shard`` on each ``Linear`` and the root, each rank its shard of
  each batch; the collectives of the training loop are counted with and without
  gradscope (FSDP's own all-gathers and reduce-scatters are the difference's baseline);
* ``fsdp_keep``: ``reshard_after_forward=False``; ``fsdp_bf16``: ``MixedPrecisionPolicy(
  param_dtype=torch.bfloat16)``; ``fsdp_offload``: ``CPUOffloadPolicy``;
* ``tp``: tensor parallel on the 2-rank mesh, ``ColwiseParallel`` then ``RowwiseParallel``
  and a plain last ``Linear`` (sharded and plain parameters mixed); every rank sees the
  whole batch;
* ``fsdp_nan``: as ``fsdp`` with ``every=2``; rank 1 puts a NaN in its piece of a gradient
  at an unsampled step.

With ``--nproc_per_node 4`` it runs :data:`CASES_4` instead: ``hsdp`` (``fully_shard`` on a
2 x 2 (replicate, shard) mesh) and ``fsdp_tp`` (tensor parallel on the ``tp`` dim of a
(dp, tp) mesh, ``fully_shard`` on ``dp``).

``tests/test_sharded.py`` runs it and compares with one process (unsharded model, the
union of the batches).
"""

from __future__ import annotations

import gc
import json
import math
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.distributed_worker import WORLD, build, global_batches, options

CASES = ("fsdp", "fsdp_keep", "fsdp_bf16", "fsdp_offload", "tp", "fsdp_nan")
#: ``fsdp_nan``: the step at which rank 1 puts a NaN in its piece of layer 2's bias gradient
#: (an unsampled step with ``every=2``: the every-step check must see it)
NAN_STEP = 5
#: run with ``--nproc_per_node 4``: HSDP, ``fully_shard`` on a 2 x 2 mesh (replicate x shard);
#: FSDP x TP on a 2 x 2 (dp, tp) mesh
CASES_4 = ("hsdp", "fsdp_tp")


def dtype(case: str) -> torch.dtype:
    """float64, so that the comparison shows the combination's error, not float32 training
    noise (a weight one ulp apart after a differently ordered sum); bfloat16 compute on
    float32 weights for ``fsdp_bf16``."""
    return torch.float32 if case == "fsdp_bf16" else torch.float64


def batches(case: str, rank: Optional[int] = None, world: int = WORLD
            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batches in ``case``'s dtype; with ``rank``, that rank's rows."""
    out = [(x.to(dtype(case)), y) for x, y in global_batches()]
    return out if rank is None else [(x[rank::world], y[rank::world]) for x, y in out]
#: the collectives a rank can call, by module (``dist`` and DTensor's functional ones)
_COLLECTIVES = {
    "dist": ("all_gather", "all_reduce", "broadcast", "gather", "all_gather_object",
             "all_gather_into_tensor", "reduce_scatter_tensor", "reduce", "scatter", "barrier",
             "all_to_all_single", "reduce_scatter"),
    "funcol": ("all_gather_tensor", "all_reduce", "reduce_scatter_tensor", "broadcast",
               "all_to_all_single", "all_gather_tensor_autograd", "all_reduce_coalesced"),
}


def sharded(case: str) -> nn.Module:
    """The shared model, sharded as ``case`` says."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    mesh = init_device_mesh("cpu", (WORLD,))
    if case in CASES_4:
        names = ("replicate", "shard") if case == "hsdp" else ("dp", "tp")
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=names)
    model = build().to(dtype(case))
    if case in ("tp", "fsdp_tp"):
        model = parallelize_module(model, mesh["tp"] if case == "fsdp_tp" else mesh,
                                   {"0": ColwiseParallel(), "2": RowwiseParallel()})
        if case == "tp":
            return model
        mesh = mesh["dp"]
    kw: dict[str, Any] = {"mesh": mesh}
    if case == "fsdp_keep":
        kw["reshard_after_forward"] = False
    if case == "fsdp_bf16":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16)
    if case == "fsdp_offload":
        kw["offload_policy"] = CPUOffloadPolicy(pin_memory=False)
    for i in (0, 2, 4):
        fully_shard(model[i], **kw)
    return fully_shard(model, **kw)


def run(model: nn.Module, data: list[Any], watched: bool, nan: bool = False, **watch: Any) -> Any:
    """Train ``model`` on ``data`` (SGD), under ``gradscope.watch`` when ``watched``; with
    ``nan``, rank 1 spoils its gradient piece at :data:`NAN_STEP`."""
    import gradscope

    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    mon = gradscope.watch(model, optimizer=opt, **{**options(), **watch}) if watched else None
    for step, (x, y) in enumerate(data):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if nan and step == NAN_STEP and dist.get_rank() == 1:
            model[2].bias.grad.to_local()[0] = math.nan  # type: ignore[index]
        opt.step()
    if mon is not None:
        mon.close()
    return mon


def counting(counts: dict[str, int]) -> Callable[[], None]:
    """Count every collective call (``dist`` and functional); returns the undo."""
    import torch.distributed._functional_collectives as funcol

    saved = []
    for mod, names in ((dist, _COLLECTIVES["dist"]), (funcol, _COLLECTIVES["funcol"])):
        for name in names:
            fn = getattr(mod, name, None)
            if fn is None:
                continue
            saved.append((mod, name, fn))

            def wrapper(*a: Any, _fn: Any = fn, _name: str = name, **k: Any) -> Any:
                counts[_name] = counts.get(_name, 0) + 1
                return _fn(*a, **k)

            setattr(mod, name, wrapper)

    def undo() -> None:
        for mod, name, fn in saved:
            setattr(mod, name, fn)

    return undo


def case_result(case: str, out: Path, rank: int) -> dict[str, Any]:
    """Run ``case`` on this rank; what the test reads back."""
    # data parallel: this rank's rows (FSDP x TP: its data-parallel group's)
    world = dist.get_world_size()
    data = (batches(case) if case == "tp" else batches(case, rank // 2, 2) if case == "fsdp_tp"
            else batches(case, rank, world))
    result: dict[str, Any] = {"case": case}
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            if case == "fsdp":
                base: dict[str, int] = {}
                undo = counting(base)
                run(sharded(case), data, watched=False)
                undo()
                from gradscope.queue import Queue

                seen: dict[str, int] = {}
                undo, drain = counting(seen), Queue.drain

                def counted_drain(self: Queue) -> Any:
                    seen["flushes"] = seen.get("flushes", 0) + 1
                    return drain(self)

                Queue.drain = counted_drain  # type: ignore[method-assign]
                try:
                    mon = run(sharded(case), data, watched=True, logdir=str(out / "tb"))
                finally:
                    Queue.drain = drain  # type: ignore[method-assign]
                    undo()
                result.update(baseline=base, counted=seen, writes=mon.writes,
                              writer=mon.writer is not None)
            elif case == "fsdp_nan":
                mon = run(sharded(case), data, watched=True, nan=True, every=2)
            else:
                mon = run(sharded(case), data, watched=True)
                result["layouts"] = mon._queue.combine.layouts  # tensor parallel: per site
        result["history"] = mon.history.to_dict()
        result["warnings"] = [str(w.message) for w in said if "gradscope" in str(w.message)]
    except Exception as err:  # reported to the test, which fails on it
        result["error"] = f"{type(err).__name__}: {err}"
    gc.collect()
    return result


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for case in CASES_4 if dist.get_world_size() == 4 else CASES:
        (out / f"{case}.rank{rank}.json").write_text(json.dumps(case_result(case, out, rank)))
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
