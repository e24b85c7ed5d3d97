"""Several processes: statistics combined across the ranks of ``torch.distributed`` at each flush.

Under DDP every rank sees its own shard of the batch. Each rank reduces its
tensors on its own device as usual; with ``combine_ranks`` (the default when a
process group of several ranks is initialised) the activation and backprop
decoders return :class:`Partial` values (the reductions by name, before the host
finishes them) instead of records, and at the flush :class:`RankCombiner`

1. lays every partial of the flush out as floats, in queue order: element count,
   the reductions in the plan's order, then the per-unit masks (a unit "on" in
   this batch for dead units, a unit idle over the window for the window metrics);
2. exchanges them with **one** ``torch.distributed.all_gather`` per flush
   (a header holds the length and a checksum of the layout);
3. combines each reduction by the op its name declares in
   :data:`gradscope.reductions.COMBINE` (sums and counts add, min/max, norms as
   the root of the summed squares, fractions weighted by element counts, centred
   sums of squares exactly with the ranks' means, per-unit masks OR-ed / AND-ed),
   then finishes the metrics as one process seeing the union of the batches would.

Parameter statistics: under DDP the monitor reads them in the optimizer's step
pre-hook, after DDP's all-reduce, where every rank holds the same gradients and
weights, so they are not combined. Sharded parameters (FSDP2 ``fully_shard``,
tensor-parallel DTensors) are read from each rank's local shard as sums over the
ranks (:mod:`gradscope.shards`): their :class:`SumPartial` values travel in the
same collective and are added. Under tensor parallelism the ranks of a group see the
same rows: each call-site is combined within each group by its layout (units split,
rows split, replicated: :func:`gradscope.shards.tp_layout`), then across the groups.
Histograms are rank 0's. Every rank's history ends up the same; only rank 0 writes
the sinks and prints (:func:`world`).

The layout must be the same on every rank: the same call-sites recorded at the
same steps, which DDP's own requirement of one graph on every rank gives. The
payload is padded to a power of two and carries its length and a checksum, so a
rank whose layout differs is reported (one warning; that flush keeps each rank's
own values) rather than combined into wrong numbers.

FSDP1 (``FullyShardedDataParallel``) is refused by :func:`check_model`: its flat
parameters mix the layers' parameters.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import nn

from gradscope.records import Record

__all__ = ["MaskPart", "Partial", "RankCombiner", "SumPartial", "check_model", "roles", "world"]

#: Floats before the payload: its length and the checksum of its layout.
HEADER = 2
#: Unit counts without a mask: added when the ranks hold different units (tensor parallel).
UNIT_COUNTS = frozenset({"bad_units"})


def world() -> tuple[int, int]:
    """``(rank, world size)`` of the default process group; ``(0, 1)`` without one."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def roles(model: nn.Module, optimizer: Optional[Any], *, combine_ranks: bool,
          gradients: bool) -> tuple[bool, bool]:
    """``(combine, writes)`` for a monitor of ``model``: whether it combines ranks, whether it writes.

    Refuses FSDP1 (:func:`check_model`), and, when ranks are combined,
    parameter gradients without an optimizer: they must be read in its step
    pre-hook, after DDP's all-reduce, not when this rank's backward ends.
    """
    check_model(model)
    rank, ranks = world()
    combine = combine_ranks and ranks > 1
    if combine and optimizer is None and gradients:
        raise TypeError(
            f"watch(): under torch.distributed ({ranks} ranks) pass optimizer=...: parameter "
            "gradients are read in its step pre-hook, after DDP's all-reduce; or pass "
            "gradients=False, or combine_ranks=False to record each rank on its own")
    return combine, not combine or rank == 0


def check_model(model: nn.Module) -> None:
    """Refuse FSDP1 (``FullyShardedDataParallel``): its flat parameters mix the layers'."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:  # pragma: no cover - torch without torch.distributed
        return
    for name, module in model.named_modules():
        if isinstance(module, FullyShardedDataParallel):
            raise ValueError(
                f"watch(model=...): module {name or '(root)'!r} is FullyShardedDataParallel "
                "(FSDP1), whose flat parameters mix the layers' parameters. Shard the model "
                "with FSDP2 instead (torch.distributed.fsdp.fully_shard), which gradscope "
                "reads per layer, or use DDP")


@dataclass
class Partial:
    """One call's reductions before the host finishes them (a decoder's output when combining)."""

    step: int
    layer: str
    kind: str
    needs: tuple[str, ...]
    values: dict[str, float]
    numel: int
    units: int
    finish: Callable[[int, str, dict[str, float], int, int], list[Record]]
    masks: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class SumPartial:
    """Values summed over the ranks, then finished (sharded parameters' sums of squares and
    counts, each weighted by its rank's share: :mod:`gradscope.shards`)."""

    step: int
    key: str
    values: list[float]
    finish: Callable[[list[float]], list[Record]]


@dataclass
class MaskPart:
    """A per-unit 0/1 mask of one call (``need`` names the reduction it replaces when combining)."""

    step: int
    layer: str
    kind: str
    need: str
    mask: list[float]


class MaskDecoder:
    """Decoder of a queued per-unit mask: hands the values on as a :class:`MaskPart`."""

    __slots__ = ("kind", "layer", "need")

    def __init__(self, layer: str, kind: str, need: str) -> None:
        self.layer, self.kind, self.need = layer, kind, need

    def __call__(self, step: int, values: Sequence[float]) -> list[MaskPart]:
        return [MaskPart(step, self.layer, self.kind, self.need, list(values))]


# --------------------------------------------------------------- combining
def _finite_or_nan(values: list[float], fn: Callable[[list[float]], float]) -> float:
    return math.nan if any(v != v for v in values) else fn(values)


def combine_values(op: str, values: list[float], numels: list[int],
                   sums: Optional[list[float]] = None) -> float:
    """One reduction combined across ranks (ranks with no element left out).

    Example:
        >>> combine_values("centered", [2.0, 0.0], [2, 2], sums=[2.0, 6.0])  # [0,2] and [3,3]
        6.0
    """
    keep = [i for i, n in enumerate(numels) if n > 0]
    vs = [values[i] for i in keep]
    if not vs:
        return math.nan
    if op == "grad":  # DDP averages gradients: the objective is the mean of the ranks' losses
        return math.sqrt(math.fsum(v * v for v in vs)) / len(values)
    if op == "sum":
        return math.fsum(vs)
    if op == "min":
        return _finite_or_nan(vs, min)
    if op == "max":
        return _finite_or_nan(vs, max)
    if op == "norm":
        return math.sqrt(math.fsum(v * v for v in vs))
    ns = [numels[i] for i in keep]
    if op == "mean":  # a fraction of elements (or of rows): weighted by each rank's count
        return math.fsum(v * n for v, n in zip(vs, ns)) / sum(ns)
    if op == "centered":  # Σ (y - mean)²: exact from each rank's count, sum and centred sum
        if sums is None:
            raise ValueError("the 'centered' combine op needs each rank's 'sum'")
        ss = [sums[i] for i in keep]
        total = sum(ns)
        mean = math.fsum(ss) / total
        return math.fsum(v + n * (s / n - mean) ** 2 for v, n, s in zip(vs, ns, ss))
    raise ValueError(f"unknown combine op {op!r}")


def combine_masks(op: str, masks: list[list[float]]) -> float:
    """Units that are on in ``any`` rank's mask, or in ``all`` of them, counted."""
    if op == "any":
        return float(sum(1 for col in zip(*masks) if any(v > 0 for v in col)))
    if op == "all":
        return float(sum(1 for col in zip(*masks) if all(v > 0 for v in col)))
    raise ValueError(f"unknown mask combine op {op!r}")


class RankCombiner:
    """Combines a flush's :class:`Partial` values across the ranks with one collective.

    Args:
        ops: the combine op of a reduction name (:func:`gradscope.reductions.combine_op`).
    """

    def __init__(self, ops: Callable[[str], Optional[str]]) -> None:
        self.ops = ops
        self.collectives = 0
        self._warned: set[str] = set()
        self._work: Optional[Any] = None  # the last collective's work (see _all_gather)
        #: tensor parallel (:func:`gradscope.shards.activations_combine`): each call-site's
        #: layout over the ranks (``units``, ``rows``, ``replicate``, ``unknown``); ``None``:
        #: every rank sees its own rows of the batch (DDP, FSDP)
        self.layouts: Optional[dict[str, str]] = None
        self._me = 0  # this rank's index in the gathered payloads
        #: tensor parallel: this rank's group (its first rank) and index in it, exchanged at
        #: the head of the payload; the groups of ranks (indices in the gathered payloads)
        self.tp_place: tuple[float, float] = (0.0, 0.0)
        self._groups: list[list[int]] = []

    def __call__(self, items: Sequence[Any]) -> list[Record]:
        partials, sums = _merge(items)
        payload, layout = self._payload(partials, sums)
        if not torch.distributed.is_initialized():
            self._warn("destroyed", "the process group was destroyed before this flush; it "
                       "keeps this rank's own values. Close the monitor (mon.close()) before "
                       "torch.distributed.destroy_process_group()")
            gathered, mine = [payload], payload
        else:
            gathered = self._all_gather(payload)
            mine = gathered[torch.distributed.get_rank()]
        self._me = torch.distributed.get_rank() if len(gathered) > 1 else 0
        self._groups = _groups(gathered) if self.layouts is not None else []
        if any(g[:HEADER] != mine[:HEADER] for g in gathered):
            self._warn("layout", "the ranks recorded different call-sites or steps in this "
                       "flush (a hook failed on one rank, or the graphs differ); this flush "
                       "keeps each rank's own values")
            gathered, self._me, self._groups = [mine], 0, [[0]]
        out: list[Record] = []
        for p, (start, sizes) in zip(partials, layout):
            out += self._combine(p, [g[start:start + sum(sizes)] for g in gathered])
        for s, (start, sizes) in zip(sums, layout[len(partials):]):
            end = start + sizes[0]
            out += s.finish([math.fsum(col) for col in zip(*(g[start:end] for g in gathered))])
        return out

    # ------------------------------------------------------------ the payload
    def _mask_needs(self, p: Partial) -> list[str]:
        return [n for n in p.needs if self.ops(n) in ("any", "all")]

    def _payload(self, partials: list[Partial], sums: list[SumPartial]
                 ) -> tuple[list[float], list[tuple[int, list[int]]]]:
        body: list[float] = list(self.tp_place) if self.layouts is not None else []
        layout: list[tuple[int, list[int]]] = []
        signature = []
        for p in partials:
            start = HEADER + len(body)
            body.append(float(p.numel))
            body += [float(p.values[n]) for n in p.needs]
            sizes = [1 + len(p.needs)]
            for n in self._mask_needs(p):
                mask = p.masks.get(n)
                if mask is None or len(mask) != p.units:
                    mask = [math.nan] * p.units
                body += mask
                sizes.append(p.units)
            layout.append((start, sizes))
            signature.append(f"{p.step}:{p.layer}:{p.kind}:{p.units}:{len(p.needs)}")
        for s in sums:
            layout.append((HEADER + len(body), [len(s.values)]))
            body += s.values
            signature.append(f"{s.step}:{s.key}:{len(s.values)}")
        check = float(zlib.crc32("|".join(signature).encode()))
        payload = [float(len(body)), check, *body]
        size = 16
        while size < len(payload):
            size *= 2
        return payload + [0.0] * (size - len(payload)), layout

    def _all_gather(self, payload: list[float]) -> list[list[float]]:
        dist = torch.distributed
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        t = torch.tensor(payload, dtype=torch.float64, device=device)
        out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
        work = dist.all_gather(out, t, async_op=True)
        if work is not None:
            work.wait()
        self.collectives += 1
        # The work is kept until the next flush, so that this thread frees it, never
        # gloo's worker: freeing it releases the tensors' Python objects, which needs the
        # GIL, and a worker that waits for the GIL while the interpreter exits (a monitor
        # closed just before exit) aborts the process ("terminate called without an
        # active exception"; seen in its core dump: ~AsyncAllgatherWork -> take_gil).
        self._work = work
        return torch.stack(out).tolist()  # ok-sync: the flush

    # ------------------------------------------------------------ combining
    def _combine(self, p: Partial, ranks: list[list[float]]) -> list[Record]:
        units = p.units
        if self.layouts is not None:  # tensor parallel: within each group by the layout first
            layout = self._layout(p.layer)
            if layout == "unknown":
                ranks = [ranks[self._me]]
            else:
                ranks = [self._within(p, [ranks[i] for i in g], layout) for g in self._groups]
                units = p.units * len(self._groups[0]) if layout == "units" else p.units
        numels = [int(r[0]) for r in ranks]  # then across the ranks' (or groups') rows
        cols = {n: [r[1 + i] for r in ranks] for i, n in enumerate(p.needs)}
        values: dict[str, float] = {}
        pos = 1 + len(p.needs)
        for n in p.needs:
            op = self.ops(n)
            if op in ("any", "all"):
                values[n] = combine_masks(op, [r[pos:pos + units] for r in ranks])
                pos += units
            elif op is None:
                self._warn(n, f"the reduction {n!r} declares no combine op; its metrics show "
                           "this rank's own values")
                values[n] = p.values[n]
            else:
                values[n] = combine_values(op, cols[n], numels, cols.get("sum"))
        return p.finish(p.step, p.layer, values, sum(numels), units)

    def _within(self, p: Partial, members: list[list[float]], layout: str) -> list[float]:
        """One tensor-parallel group's payloads as one row (numel, values, masks): units split
        (masks joined, unit counts added), rows split (masks OR-ed / AND-ed), replicated (the
        first member's); gradient norms are not averaged within a group."""
        if layout == "replicate":
            return members[0]
        numels = [int(r[0]) for r in members]
        row, masks = [float(sum(numels))], []
        pos = 1 + len(p.needs)
        for i, n in enumerate(p.needs):
            op = self.ops(n)
            col = [r[1 + i] for r in members]
            if op in ("any", "all"):
                ms = [r[pos:pos + p.units] for r in members]
                pos += p.units
                test = any if op == "any" else all
                masks += ([v for m in ms for v in m] if layout == "units"
                          else [float(test(v > 0 for v in c)) for c in zip(*ms)])
                row.append(0.0)  # (the mask carries it)
            elif op is None:
                row.append(col[0])
            else:
                op = "sum" if layout == "units" and n in UNIT_COUNTS else \
                    "norm" if op == "grad" else op
                row.append(combine_values(op, col, numels, [r[1 + p.needs.index("sum")]
                                                            for r in members]
                                          if "sum" in p.needs else None))
        return row + masks

    def _layout(self, layer: str) -> str:
        """A tensor-parallel call-site's layout; an unknown one is said once."""
        layout = (self.layouts or {}).get(layer, "unknown")
        if layout == "unknown":
            self._warn(f"tp:{layer}", f"tensor parallel: the layout of {layer!r} over the ranks "
                       "(units split, or replicated) could not be read from its input (no "
                       "ColwiseParallel/RowwiseParallel output just before it, or no autograd "
                       "graph); its activation and backprop statistics are this rank's own")
        return layout

    def _warn(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(f"gradscope: {message}", RuntimeWarning, stacklevel=4)


def _groups(gathered: list[list[float]]) -> list[list[int]]:
    """The tensor-parallel groups of the gathered payloads (each rank's group and index in it
    head its body), each in index order."""
    by: dict[float, list[tuple[float, int]]] = {}
    for i, g in enumerate(gathered):
        by.setdefault(g[HEADER], []).append((g[HEADER + 1], i))
    return [[i for _, i in sorted(v)] for v in by.values()]


def _merge(items: Sequence[Any]) -> tuple[list[Partial], list[SumPartial]]:
    """Partials in first-seen order, with their masks attached; the summed values in order."""
    partials: dict[tuple[int, str, str], Partial] = {}
    masks: list[MaskPart] = []
    sums: list[SumPartial] = []
    for it in items:
        if isinstance(it, Partial):
            partials.setdefault((it.step, it.layer, it.kind), it)
        elif isinstance(it, SumPartial):
            sums.append(it)
        else:
            masks.append(it)
    for m in masks:
        p = partials.get((m.step, m.layer, m.kind))
        if p is not None:
            p.masks[m.need] = m.mask
    return list(partials.values()), sums
