"""The deferral queue: hook results wait on the device, then cross in one transfer per device.

Hooks hand the queue small 0-d tensors with a **decoder** that was told, when it
was made, which value is which (never inferring a layout from lengths). Inside a
hook on the CPU every operation is slow (the training kernels just flushed the
caches), so :meth:`Queue.defer` only keeps the tensors; at the step's end
:meth:`Queue.end_step` stacks them, one vector per step and device. At a flush
:meth:`Queue.drain` concatenates everything queued per device, reads it with
**one** ``tolist()`` (the only host transfer), and turns the values back into
records with the decoders.

The queue also carries what the captures declare for the history (the layers
they saw, :meth:`Queue.declare`) and the profiles their decoders produce
(:attr:`Queue.profiles`): the flush (:mod:`gradscope.flush`) puts them there, so
that no capture writes to the history itself.

Example:
    >>> import torch
    >>> q = Queue()
    >>> q.defer(0, torch.device("cpu"), [torch.tensor(2.0)],
    ...         lambda step, v: [Record(step, "fc1", "grad_norm", v[0])])
    >>> q.end_step()
    >>> q.drain()
    [Record(step=0, layer='fc1', metric='grad_norm', value=2.0)]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
from torch import Tensor

from gradscope.records import Record

if TYPE_CHECKING:
    from gradscope.history import LayerInfo

__all__ = ["Decoder", "Entry", "Profile", "Queue"]

#: ``(step, values) -> [Record, ...]``; ``values`` are exactly the values of the
#: tensors the decoder was queued with, in order. When ranks are combined, decoders
#: of activation statistics return :mod:`gradscope.distributed` partial values instead.
Decoder = Callable[[int, Sequence[float]], Iterable[Any]]
#: ``(step, layer, metric, positions, values)``: one profile for :meth:`History.add_profile
#: <gradscope.history.History.add_profile>`.
Profile = tuple[int, str, str, Sequence[int], Sequence[float]]


@dataclass
class Entry:
    """A queued device vector and the decoder of its values."""

    step: int
    tensor: Tensor
    decode: Decoder


class Queue:
    """Statistics waiting on their device for the next flush."""

    def __init__(self, combine: Optional[Callable[[list[Any]], list[Record]]] = None) -> None:
        #: under torch.distributed: combines the decoders' partial values across ranks
        #: (:class:`gradscope.distributed.RankCombiner`), called once per drain
        self.combine = combine
        self._pending: list[Entry] = []
        # hook results of the current step, stacked at its end
        self._deferred: dict[tuple[int, torch.device], tuple[list[Tensor], list[tuple[int, Decoder]]]] = {}
        self._layers: list[LayerInfo] = []  # declared since the last flush, in order
        #: profiles decoded since the last flush (decoders append here)
        self.profiles: list[Profile] = []

    def declare(self, info: LayerInfo) -> None:
        """A layer the history should know (declared at the next flush, before its records)."""
        self._layers.append(info)

    def take_layers(self) -> list[LayerInfo]:
        """The layers declared since the last call, in order."""
        out, self._layers = self._layers, []
        return out

    def take_profiles(self) -> list[Profile]:
        """The profiles decoded since the last call."""
        out, self.profiles = self.profiles, []
        return out

    def defer(self, step: int, device: torch.device, parts: list[Tensor], decode: Decoder) -> None:
        """Keep a hook's results (0-d or 1-d tensors) until :meth:`end_step`; ``decode`` gets their values."""
        batch = self._deferred.get((step, device))
        if batch is None:
            batch = self._deferred[(step, device)] = ([], [])
        batch[0].extend(parts)
        batch[1].append((sum(p.numel() for p in parts), decode))

    def put(self, step: int, tensor: Tensor, decode: Decoder) -> None:
        """Queue a ready vector (every element goes to ``decode``)."""
        self._pending.append(Entry(step, tensor, decode))

    def add(self, *entries: Entry) -> None:
        """Queue ready entries."""
        self._pending.extend(entries)

    def end_step(self) -> None:
        """Stack the deferred results: one queued vector per step and device."""
        if not self._deferred:
            return
        deferred, self._deferred = self._deferred, {}
        with torch.no_grad():
            for (step, device), (parts, layout) in deferred.items():
                vec = (torch.cat([(p if p.dtype == torch.float32 else p.float()).reshape(-1)
                                  for p in parts])
                       if parts else torch.zeros(0, device=device))
                self._pending.append(Entry(step, vec, _batch_decoder(layout)))

    def drain(self) -> list[Record]:
        """Everything queued, read with one transfer per device, as records sorted by step."""
        self.end_step()
        entries, self._pending = self._pending, []
        by_device: dict[torch.device, list[Entry]] = {}
        for e in entries:
            by_device.setdefault(e.tensor.device, []).append(e)
        records: list[Record] = []
        for group in by_device.values():
            flat = torch.cat([e.tensor.reshape(-1) for e in group]).tolist()  # ok-sync: the flush
            pos = 0
            for e in group:
                n = e.tensor.numel()
                records.extend(e.decode(e.step, flat[pos:pos + n]))
                pos += n
        if self.combine is not None:  # decoders made partial values: one collective, then records
            partial = [r for r in records if not isinstance(r, tuple)]
            records = [r for r in records if isinstance(r, tuple)] + self.combine(partial)
            records.sort(key=lambda r: r[0])
        elif len(by_device) > 1:  # each device's records are in step order already
            records.sort(key=lambda r: r[0])
        return records

    def clear(self) -> None:
        """Drop what is deferred (the queued vectors and declarations stay for the next drain)."""
        self._deferred.clear()

    def held_bytes(self) -> int:
        """Bytes of the queued device vectors (what the queue holds between flushes)."""
        return sum(e.tensor.numel() * e.tensor.element_size() for e in self._pending)

    def __len__(self) -> int:
        return len(self._pending) + len(self._deferred)


def _batch_decoder(layout: list[tuple[int, Decoder]]) -> Decoder:
    """Decode a stacked batch: each part's decoder gets its own slice, by its told size."""
    def decode(step: int, values: Sequence[float]) -> list[Record]:
        out: list[Record] = []
        pos = 0
        for n, sub in layout:
            out.extend(sub(step, values[pos:pos + n]))
            pos += n
        return out

    return decode
