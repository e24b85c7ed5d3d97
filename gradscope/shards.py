"""Sharded parameters (FSDP2 ``fully_shard``, tensor-parallel DTensors): full statistics from shards.

A rank of a sharded model holds a shard of each parameter (a ``DTensor`` whose
``to_local()`` is the rank's piece) and of its gradient. gradscope reads only the
local pieces (a ``DTensor`` operation would start collectives of its own) and
turns each parameter statistic into a **sum over ranks**: a sum of squares for a
norm, a count for the non-finite gradients. Each rank's sum is weighted by
:func:`share` so that adding every rank's value gives the full parameter's:

* a ``DTensor``: ``1 / copies``, where ``copies`` is how many ranks hold each element
  (the world size over the product of the mesh sizes of its ``Shard(d)`` dims):
  ``Shard(d)`` pieces add up, a ``Replicate()`` dim (HSDP's replicas, a replicated
  tensor-parallel weight) is not counted twice, and a sub-mesh (the tensor-parallel
  dim of a 2-D mesh) counts the other groups' copies;
* a plain parameter (not sharded; under DDP or unsynchronised): rank 0's value.

At the flush these sums travel in the same single collective as the activation
statistics (:class:`gradscope.distributed.SumPartial`); norms are the roots of the
summed squares, then the decoder finishes the layer values as one process would.
A ``Partial()`` placement (a pending reduction) has no such sum: said once, that
parameter keeps rank 0's local value.

The every-step NaN/Inf check of unsampled steps probes each rank's pieces the same way
(:func:`check_entries`). Under tensor parallelism the ranks of a group see the same
rows, and an activation's units are split over them or replicated: each call-site's
layout is read from its input's autograd node (:func:`tp_layout`) and each rank's group
from a tensor-parallel parameter's mesh (:func:`tp_place`), for the rank combiner.

Example:
    >>> import torch
    >>> share(torch.zeros(3), rank=1, world=2)  # a plain tensor: rank 0's value
    0.0
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Optional

import torch
from torch import Tensor, nn

from gradscope import stats
from gradscope.distributed import SumPartial
from gradscope.queue import Decoder, Entry
from gradscope.records import Record

__all__ = ["activations_combine", "check_entries", "checked_decoder", "is_sharded", "local",
           "module_type", "share", "summed_decoder", "tensor_parallel", "tp_layout", "tp_place"]


def _dtensor() -> Optional[type]:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without torch.distributed
        return None
    return DTensor


_DTENSOR = _dtensor()


def is_sharded(t: Any) -> bool:
    """Whether ``t`` is a ``DTensor`` (its values are spread over ranks)."""
    return _DTENSOR is not None and isinstance(t, _DTENSOR)


def _is_shard(placement: Any) -> bool:
    """``Shard(d)``, and FSDP x TP's ``_StridedShard`` (neither a ``Shard`` nor ``is_shard()``
    in torch 2.14): a placement that splits a dim."""
    return placement.is_shard() or isinstance(getattr(placement, "dim", None), int)


def local(t: Tensor) -> Tensor:
    """The rank's own piece of a ``DTensor`` (``to_local()``), or ``t`` itself."""
    return t.to_local() if is_sharded(t) else t  # type: ignore[attr-defined]


def share(t: Tensor, *, rank: int, world: int) -> Optional[float]:
    """The weight of this rank's sum for ``t``: adding every rank's weighted sum gives the
    full tensor's (module docstring); ``None`` for a ``Partial()`` placement."""
    if not is_sharded(t):
        return 1.0 if rank == 0 else 0.0
    mesh, placements = t.device_mesh, t.placements  # type: ignore[attr-defined]
    if any(p.is_partial() for p in placements):
        return None
    pieces = math.prod(mesh.size(d) for d, p in enumerate(placements) if _is_shard(p))
    return pieces / world  # 1 / copies


def module_type(module: nn.Module) -> str:
    """The user's class name of ``module``: ``Linear``, not FSDP2's ``FSDPLinear``."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without torch.distributed
        return type(module).__name__
    for cls in type(module).__mro__:
        if not issubclass(cls, FSDPModule):
            return cls.__name__
    return type(module).__name__  # pragma: no cover - FSDPModule itself


def summed_decoder(decode: Decoder, parts: Sequence[str], shares: Sequence[float],
                   key: str) -> Decoder:
    """A parameter decoder whose values are summed over the ranks before ``decode`` reads them.

    ``parts`` name the vectors of one value per parameter (norm parts end in ``_norm``);
    ``shares`` are the parameters' :func:`share` weights. The decoder returns one
    :class:`SumPartial`: each norm squared and each count, times its share; once summed
    over the ranks the norms' roots are taken and ``decode`` finishes the records.
    """
    n = len(shares)
    norms = [p.endswith("_norm") for p in parts]

    def decode_sum(step: int, values: Sequence[float]) -> list[Any]:
        mine = [(v * v if norms[i // n] else v) * shares[i % n] for i, v in enumerate(values)]

        def finish(summed: Sequence[float]) -> list[Any]:
            full = [math.sqrt(v) if norms[i // n] and v >= 0 else v for i, v in enumerate(summed)]
            return list(decode(step, full))

        return [SumPartial(step, key, mine, finish)]

    return decode_sum


def check_entries(step: int, live: Sequence[tuple[str, Optional[Tensor]]], rank: int
                  ) -> Optional[list[Entry]]:
    """The every-step NaN/Inf check of a sharded model's checked parameters (``(layer,
    parameter)``), ranks combined: each gradient's local piece probed on every rank, one
    vector per device (:func:`gradscope.stats.foreach_finite_probe`: nothing read back), decoded
    by :func:`checked_decoder`; ``None`` when no parameter is sharded."""
    if not any(is_sharded(p) for _, p in live):
        return None
    got = [(layer, local(p.grad), is_sharded(p)) for layer, p in live
           if p is not None and p.grad is not None and p.grad.is_floating_point()]
    out = []
    for device in dict.fromkeys(g.device for _, g, _ in got):
        mine = [x for x in got if x[1].device == device]
        vec = stats.foreach_finite_probe([g for _, g, _ in mine])
        out.append(Entry(step, vec, checked_decoder([x[0] for x in mine], [x[2] for x in mine],
                                                    rank)))
    return out


def checked_decoder(layers: Sequence[str], sharded: Sequence[bool], rank: int) -> Decoder:
    """Decoder of the every-step NaN/Inf check of a sharded model (one probe per layer: 0, or
    NaN when its gradient's local piece is not finite): ``grad_nonfinite_check`` = 1 for the
    layers that any rank finds not finite (a plain parameter: rank 0's), summed over the ranks."""
    weights = [1.0 if s or rank == 0 else 0.0 for s in sharded]

    def decode(step: int, values: Sequence[float]) -> list[Any]:
        mine = [w if v - v != 0.0 else 0.0 for v, w in zip(values, weights)]  # NaN or ±Inf

        def finish(summed: Sequence[float]) -> list[Any]:
            return [Record(step, layer, "grad_nonfinite_check", 1.0)
                    for layer, n in zip(layers, summed) if n > 0]

        return [SumPartial(step, "check", mine, finish)]

    return decode


def tensor_parallel(model: nn.Module) -> bool:
    """Whether some parameter is sharded over a tensor-parallel mesh dim (:func:`_tp_params`)."""
    return bool(_tp_params(model))


def _tp_params(model: nn.Module) -> list[Tensor]:
    """The parameters sharded over a tensor-parallel mesh dim: a ``DTensor`` that no
    ``fully_shard`` manages, or one whose placements go on after FSDP's ``Shard`` (FSDP x TP:
    ``(_StridedShard(0), Shard(1))``; HSDP's ``(Replicate(), Shard(0))`` is data parallel)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without torch.distributed
        return []
    managed = {id(p) for m in model.modules() if isinstance(m, FSDPModule) for p in m.parameters()}
    out: list[Tensor] = []
    for p in model.parameters():
        if not is_sharded(p):
            continue
        kinds = [_is_shard(pl) for pl in p.placements]  # type: ignore[attr-defined]
        if id(p) not in managed or (True in kinds and kinds.index(True) < len(kinds) - 1):
            out.append(p)
    return out


#: Said once when a tensor-parallel model's mesh could not be read.
TP_ACTIVATIONS = (
    "gradscope: this model is tensor parallel, but its tensor-parallel mesh dim could not be "
    "read from its parameters: parameter statistics are those of the full parameters, "
    "combined from the shards, but activation and backprop statistics are not combined "
    "across ranks: rank 0's own are written (its shard of the units). Said once.")


def tp_place(model: nn.Module, rank: int) -> Optional[tuple[float, float]]:
    """``(group, index)``: this rank's tensor-parallel group (its first rank) and its index in
    it, from a tensor-parallel parameter's mesh (its last dim: a 1-D mesh, or FSDP x TP's
    (dp, tp)); ``None`` when no parameter shows it."""
    for p in _tp_params(model):
        grid = p.device_mesh.mesh  # type: ignore[attr-defined]
        at = (grid == rank).nonzero()
        if len(at):
            group = grid[tuple(at[0][:-1].tolist())].tolist()  # ok-sync: a DeviceMesh is a CPU tensor; once, at watch()
            return float(min(group)), float(group.index(rank))
    return None


def activations_combine(model: nn.Module, combiner: Any) -> bool:
    """Whether activation statistics combine across ranks (``combiner``: the queue's
    :class:`~gradscope.distributed.RankCombiner`, ``None`` when ranks are not combined): as
    under DDP; under tensor parallelism within each tensor-parallel group by each site's
    layout (``combiner.layouts``: site -> :func:`tp_layout`, filled by the hooks), then
    across the groups as under DDP; not when the mesh cannot be read (said once)."""
    if combiner is None or not tensor_parallel(model):
        return combiner is not None
    place = tp_place(model, torch.distributed.get_rank())
    if place is None:
        warnings.warn(TP_ACTIVATIONS, RuntimeWarning, stacklevel=4)
        return False
    combiner.layouts, combiner.tp_place = {}, place
    return True


#: How far back from an activation's input the autograd graph is followed to find the
#: ``to_local()`` of a tensor-parallel module's output (through single-input nodes only).
TP_SEARCH = 4


def tp_layout(node: Any, unit_dim: int) -> str:
    """How a tensor-parallel activation is spread over the ranks, read from the autograd node of
    its input (``to_local()`` of a ``ColwiseParallel``/``RowwiseParallel`` output keeps the
    ``DTensor``'s spec): ``"units"`` (``Shard`` of the unit dim ``unit_dim``, non-negative),
    ``"rows"`` (``Shard`` of another dim: sequence parallel), ``"replicate"``, or
    ``"unknown"`` (no such node within :data:`TP_SEARCH` single-input steps, a ``Partial()``)."""
    for _ in range(TP_SEARCH):
        if node is None:
            break
        spec = getattr(node, "dtensor_spec", None)
        if spec is not None:
            ndim = len(spec.shape)
            shards = [p.dim % ndim for p in spec.placements if p.is_shard()]
            if any(p.is_partial() for p in spec.placements):
                return "unknown"
            if not shards:
                return "replicate"
            return "units" if unit_dim in shards else "rows"
        inputs = [f for f, _ in node.next_functions if f is not None]
        node = inputs[0] if len(inputs) == 1 else None
    return "unknown"
