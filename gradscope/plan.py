"""A family's plan and its decoder: which reductions a kind of call needs, and how the host
reads them back.

A hook hands its tensors to a :class:`Plan` (one per activation family and kind,
built from the :mod:`gradscope.metrics` specs). The plan asks the call object
(:mod:`gradscope.reductions`) for the reductions its metrics need, each once, and
returns the 0-d device tensors to queue and a decoder, told which value is which,
that finishes the metrics on the host at the flush.

Example:
    >>> import torch, torch.nn as nn
    >>> from gradscope.activations import family_of
    >>> m = nn.ReLU()
    >>> v = summarize(family_of(m), m, None, torch.tensor([[1.0, -1.0], [2.0, -3.0]]),
    ...               eps=0.01, delta=0.01, unit_dim=None)
    >>> v["zero_frac"], v["dead_units"], v["mean"]
    (0.5, 0.5, -0.25)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Callable, Optional, Protocol, Union

import torch
from torch import Tensor

from gradscope.activations import ActivationFamily, Source
from gradscope.distributed import Partial
from gradscope.metrics import Metric, Shape, for_family
from gradscope.records import Record
from gradscope.records import record as _record
from gradscope.reductions import ActivationCall, Affine, Part

__all__ = ["Call", "Decoder", "Plan", "summarize"]

Decoder = Callable[[int, Sequence[float]], list[Record]]


class Call(Protocol):
    """What a :class:`Plan` reduces: element and unit counts, and reductions by name."""

    numel: int
    units: int

    def part(self, name: str) -> Part: ...


class Plan:
    """The metrics of one kind for one family, and the reductions they need, in order.

    Args:
        family: the activation family (``None`` for backprop metrics).
        kind: ``"activation"``, ``"window"``, ``"backprop"``, ``"grad_in"`` or ``"gates"``.
        metrics: these metrics instead of the family's (a recurrent unit's gates).
    """

    def __init__(self, family: Optional[ActivationFamily], kind: str,
                 metrics: Optional[Sequence[Metric]] = None, *, partial: bool = False) -> None:
        self.kind = kind
        self.partial = partial  # decoders return distributed.Partial values (combining ranks)
        self.metrics: tuple[Metric, ...] = tuple(for_family(family, kind) if metrics is None
                                                 else metrics)
        needs: list[str] = []
        for m in self.metrics:
            needs += [n for n in m.needs if n not in needs]
        self.needs = tuple(needs)
        self._identity: list[Union[float, int, tuple[int, float, float]]] = list(range(len(needs)))

    @property
    def names(self) -> tuple[str, ...]:
        """The metric names, in order."""
        return tuple(m.name for m in self.metrics)

    def run(self, call: Call, layer: str) -> tuple[list[Tensor], Decoder]:
        """Reduce ``call``; return the device tensors to queue and their decoder."""
        if call.numel == 0:
            if self.partial:  # nothing to count on this rank: the others' values stand
                return [], _Decode(self, layer, 0, call.units, [math.nan] * len(self.needs), 0)
            empty = [(m.name, m.empty) for m in self.metrics]
            return [], lambda step, values: [Record(step, layer, n, v) for n, v in empty]
        return self.queue([call.part(n) for n in self.needs], layer, call.numel, call.units)

    def queue(self, parts: Sequence[Part], layer: str, numel: int, units: int
              ) -> tuple[list[Tensor], Decoder]:
        """The tensors among ``parts`` and a decoder told where each part is."""
        tensors: list[Tensor] = []
        code: list[Union[float, int, tuple[int, float, float]]] = []
        for p in parts:
            if type(p) is float:  # known on the host
                code.append(p)
                continue
            if isinstance(p, Affine):  # a shared count may be queued twice: a float, not a pass
                code.append((len(tensors), p.scale, p.offset))
                tensors.append(p.source)
            else:
                code.append(len(tensors))
                tensors.append(p)  # type: ignore[arg-type]
        return tensors, _Decode(self, layer, numel, units, code, len(tensors))

    def vector_decoder(self, layer: str, numel: int, units: int) -> Decoder:
        """The decoder of one vector holding the value of each of :attr:`needs`, in order."""
        return _Decode(self, layer, numel, units, self._identity, len(self.needs))

    def coded_decoder(self, layer: str, numel: int, units: int,
                      code: Sequence[Union[float, int, tuple[int, float, float]]],
                      expected: int) -> Decoder:
        """The decoder of one vector of ``expected`` values in which ``code`` says where each
        of :attr:`needs` is (an index, or ``(index, scale, offset)``): the fused kernels'."""
        return _Decode(self, layer, numel, units, list(code), expected)

    def finish(self, step: int, layer: str, values: dict[str, float], numel: int,
               units: int) -> list[Record]:
        """The records of one call, from its reduced values by name."""
        shape = Shape(numel, units)
        return [_record(step, layer, m.name, m.finish(values, shape)) for m in self.metrics]


class _Decode:
    """One call's decoder: which queued value (or host constant, or affine of one) is which reduction.

    A small object rather than a closure: hooks make one per call, and every
    allocation that lives until the flush adds to the garbage collector's work.
    """

    __slots__ = ("code", "expected", "layer", "numel", "plan", "units")

    def __init__(self, plan: Plan, layer: str, numel: int, units: int,
                 code: list[Union[float, int, tuple[int, float, float]]], expected: int) -> None:
        self.plan, self.layer, self.numel, self.units = plan, layer, numel, units
        self.code, self.expected = code, expected

    def __call__(self, step: int, values: Sequence[float]) -> list[Record]:
        if len(values) != self.expected:
            raise ValueError(f"decoder for {self.layer!r} expected {self.expected} values, got "
                             f"{len(values)} (internal error: queue layout)")
        v: dict[str, float] = {}
        for name, c in zip(self.plan.needs, self.code):
            if type(c) is float:
                v[name] = c
            elif type(c) is int:
                v[name] = values[c]
            else:
                i, a, b = c  # type: ignore[misc]
                v[name] = values[i] * a + b
        if self.plan.partial:
            return [Partial(step, self.layer, self.plan.kind, self.plan.needs, v,  # type: ignore[list-item]
                            self.numel, self.units, self.plan.finish)]
        return self.plan.finish(step, self.layer, v, self.numel, self.units)


def summarize(family: ActivationFamily, module: Source, x: Optional[Tensor], y: Tensor, *,
              eps: float, delta: float, unit_dim: Optional[int]) -> dict[str, float]:
    """The forward metrics of one activation call, read back on the host (tests, notebooks).

    The same computation as the monitor's hooks; it reads the values at once, so
    on a GPU it synchronises. ``x`` is only read when ``family.needs_input``.
    """
    call = ActivationCall(family, module, x if family.needs_input else None, y, eps=eps,
                          delta=delta, unit_dim=unit_dim)
    tensors, decode = Plan(family, "activation").run(call, "")
    values = torch.stack([t.float() for t in tensors]).tolist() if tensors else []  # ok-sync: a host read by design
    return {r.metric: r.value for r in decode(0, values)}
