"""The fused path's host side: launches, one workspace per device, one finisher per batch.

A :class:`FusedStats` belongs to one monitor. Each hook call launches **one** partials
kernel (:meth:`FusedStats.forward`, :meth:`FusedStats.gradient`, :meth:`FusedStats.probe`)
that writes into the device's workspace and returns a view of a results vector that the
queue defers as usual; the values are there once :meth:`FusedStats.finish` (at the step's
end, before the queue stacks the step) has launched **one** finisher kernel per device for
every segment of the step. Nothing is read on the host and nothing is synchronised:
the descriptor table of a batch is cached on the device by its layout (the same every
step), the workspace and the unit-window state grow only when a new call-site or a larger
tensor appears, and a batch that would overflow them is finished early.

The unit window (``dead_units_window``) lives here too: per call-site, per unit, the last
step the unit was on, updated by the finisher.

Example:
    >>> from gradscope.kernels.engine import FusedStats
    >>> FusedStats(window=100).pending()
    0
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor

from gradscope.kernels import config, kernels_for, missing
from gradscope.kernels.config import ForwardSpec

__all__ = ["LAUNCHES", "NEVER", "READ_BYTES", "FusedStats", "launching"]

#: Kernel launches by name, counted as they are made (tests and benchmarks read it).
LAUNCHES: Counter[str] = Counter()
#: Bytes of tensor data the partials kernels read, by kernel name (each element once).
READ_BYTES: Counter[str] = Counter()
#: The last active step of a unit never seen active.
NEVER = -(2**62)
#: At most this many programs per partials launch: a few per streaming multiprocessor on
#: a large GPU, and few enough partials for one finisher program to merge quickly.
MAX_PROGRAMS = 2048
#: At most this many per-unit partials (chunks x units) per forward segment.
MAX_UNIT_PARTIALS = 1 << 17
#: Elements per program at most: the per-program counts are exact in float32.
MAX_PER_PROGRAM = 1 << 24
_FORWARD, _GRADIENT = 0, 1
_GRAD_BLOCK = 4096
_FINISH_BLOCK = 256
_MIN_WORKSPACE = 1 << 16
_MIN_OUT = 1 << 10


@dataclass
class _Batch:
    """The segments launched on one device since its last finisher."""

    ws: Tensor  # float32 partials
    units: Tensor  # float32 per-unit partials
    out: Tensor  # float32 results (fresh per batch: the queue holds views until the flush)
    desc: list[tuple[int, ...]] = field(default_factory=list)
    ws_used: int = 0
    units_used: int = 0
    out_used: int = 0
    step: Optional[int] = None  # the step of its forward segments (the window's)
    limit: int = NEVER


class FusedStats:
    """Fused statistics of one monitor (see the module docstring).

    Args:
        window: ``dead_window``: a unit not on for this many steps is idle.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._batches: dict[torch.device, _Batch] = {}
        self._spare: dict[torch.device, tuple[Tensor, Tensor]] = {}  # workspaces between batches
        self._out_size: dict[torch.device, int] = {}  # results per batch, learnt
        self._last: dict[torch.device, Tensor] = {}  # unit windows, all call-sites
        self._last_used: dict[torch.device, int] = {}
        self._slots: dict[Hashable, tuple[int, int]] = {}  # call-site -> (offset, units)
        self._desc_cache: dict[tuple[Any, ...], Tensor] = {}

    # ------------------------------------------------------------ launches
    def forward(self, spec: ForwardSpec, x: Optional[Tensor], y: Tensor, unit_dim: Optional[int],
                step: int, window_key: Hashable = None) -> Tensor:
        """Launch the forward partials of one call; a view of its :data:`config.FORWARD_VALUES`.

        ``unit_dim`` is the resolved unit dimension (``None``: no unit statistics);
        ``window_key`` names the call-site whose unit window the finisher updates.
        """
        k = self._kernels(y.device)
        units_on = unit_dim is not None and spec.regime > 0
        if units_on:
            assert unit_dim is not None
            y, view = _unit_layout(y, unit_dim)
            outer, U, inner, so, su, si = view
            xv: tuple[int, int, int] = (0, 0, 0)
            if spec.needs_x:
                assert x is not None
                x, (_, _, _, xo, xu, xi) = _unit_layout(x, unit_dim)
                xv = (xo, xu, xi)
            rows = outer * inner
            if su == 1 or inner == 1:
                block_u = min(config.next_pow2(U), 64)
            else:
                block_u = 1 if inner >= 256 else min(config.next_pow2(U), 16)
        else:
            y = config.flat_view(y)
            if spec.needs_x:  # read in the same order as y
                assert x is not None
                if x.stride() != y.stride():
                    x, y = x.contiguous(), y.contiguous()
            U, rows, inner, so, su, si = 1, y.numel(), y.numel(), 0, 0, 1
            xv = (0, 0, 1)
            block_u = 1
        block_r = min(config.next_pow2(rows), max(16, (4096 if block_u == 1 else 2048) // block_u))
        n_u = _cdiv(U, block_u)
        chunks = min(_cdiv(rows, block_r), max(1, MAX_PROGRAMS // n_u))
        if units_on:
            chunks = min(chunks, max(1, MAX_UNIT_PARTIALS // U))
        chunks = max(chunks, _cdiv(rows * block_u, MAX_PER_PROGRAM))
        rows_per = _cdiv(_cdiv(rows, chunks), block_r) * block_r
        chunks = _cdiv(rows, rows_per)
        n_progs = chunks * n_u
        window = units_on and window_key is not None
        b = self._reserve(y.device, config.FORWARD_PARTIALS * n_progs,
                          chunks * U if units_on else 0, len(config.FORWARD_VALUES),
                          step if window else None)
        p_off, u_off, r_off = b.ws_used, b.units_used, b.out_used
        l_off = self._slot(y.device, window_key, U) if window else -1
        b.ws_used += config.FORWARD_PARTIALS * n_progs
        b.units_used += chunks * U if units_on else 0
        b.out_used += len(config.FORWARD_VALUES)
        b.desc.append((_FORWARD, p_off, n_progs, r_off, u_off, U if units_on else 0, chunks,
                       l_off, spec.regime, 0, 0, 0))
        READ_BYTES["forward_partials"] += _nbytes(y) + (_nbytes(x) if spec.needs_x and x is not None
                                                          else 0)
        _launch("forward_partials", k.forward_partials, (chunks, n_u),
            y, x if spec.needs_x else y, b.ws[p_off:], b.units[u_off:],
            rows, U, inner, so, su, si, *xv, rows_per, n_progs,
            spec.sat_a, spec.sat_b, spec.in_lo, spec.in_hi, spec.delta, spec.p1, spec.p2,
            HAS_X=spec.needs_x, SAT_LO=spec.sat_lo, SAT_HI=spec.sat_hi, INSIDE=spec.inside,
            DERIV=spec.deriv, REGIME=spec.regime, SRC_X=spec.src_x, UNITS=units_on,
            BLOCK_R=block_r, BLOCK_U=block_u, num_warps=8)
        return b.out[r_off:r_off + len(config.FORWARD_VALUES)]

    def gradient(self, g: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        """Launch the partials of a gradient's norm and NaN/Inf count (the norm divided by
        ``scale``, a loss scale on the device, when given); a view of ``(norm, nonfinite,
        flag)`` where ``flag`` is NaN when an element is not finite, else 0."""
        k = self._kernels(g.device)
        g = config.flat_view(g)
        n = g.numel()
        per = max(_GRAD_BLOCK, _cdiv(_cdiv(n, MAX_PROGRAMS), _GRAD_BLOCK) * _GRAD_BLOCK)
        n_progs = max(1, _cdiv(n, per))  # one program writes the zeros of an empty tensor
        b = self._reserve(g.device, 2 * n_progs, 0, 3, None)
        p_off, r_off = b.ws_used, b.out_used
        b.ws_used += 2 * n_progs
        b.out_used += 3
        b.desc.append((_GRADIENT, p_off, n_progs, r_off, 0, 0, 0, -1, 0, 0, 0, 0))
        has_scale = scale is not None
        READ_BYTES["grad_partials"] += _nbytes(g)
        _launch("grad_partials", k.grad_partials, (n_progs,), g, b.ws[p_off:],
                scale if has_scale else g, n, per, n_progs, HAS_SCALE=has_scale,
                BLOCK=min(_GRAD_BLOCK, config.next_pow2(n)), num_warps=8)
        return b.out[r_off:r_off + 3]

    def probe(self, y: Tensor) -> Tensor:
        """The every-step NaN/Inf check of one tensor: a 1-vector, NaN when an element is
        not finite, else 0 (one launch; the finisher completes it)."""
        return self.gradient(y)[2:3]

    # ------------------------------------------------------------ the batch's end
    def finish(self) -> None:
        """Launch one finisher per device for every segment launched since the last."""
        batches, self._batches = self._batches, {}
        for device, b in batches.items():
            try:
                self._finish(device, b)
            except Exception:
                b.out.fill_(math.nan)  # what the queue holds of this batch: unknown, not garbage
                raise

    def pending(self) -> int:
        """Segments launched and not yet finished (all devices)."""
        return sum(len(b.desc) for b in self._batches.values())

    def held_numel(self) -> int:
        """Elements of the unit-window state (O(units), independent of the batch)."""
        return sum(self._last_used.values())

    def clear(self) -> None:
        """Forget the batches in progress (their views are never finished; on detach)."""
        self._batches.clear()

    def _finish(self, device: torch.device, b: _Batch) -> None:
        if not b.desc:
            return
        k = self._kernels(device)
        key = (device, tuple(b.desc))
        desc = self._desc_cache.get(key)
        if desc is None:  # a new layout (the first steps): one copy, then cached
            host = torch.tensor(b.desc, dtype=torch.int64)
            if device.type == "cuda":
                desc = host.pin_memory().to(device, non_blocking=True)
            else:
                desc = host.to(device)
            if len(self._desc_cache) > 64:
                self._desc_cache.clear()
            self._desc_cache[key] = desc
        last = self._last.get(device)
        _launch("finish", k.finish, (len(b.desc),), b.ws, b.units, desc, b.out,
                last if last is not None else desc, b.step if b.step is not None else 0,
                b.limit, NDESC=len(b.desc[0]), BLOCK=_FINISH_BLOCK, num_warps=4)
        self._out_size[device] = max(self._out_size.get(device, 0), b.out_used)
        self._spare[device] = (b.ws, b.units)

    def _reserve(self, device: torch.device, ws: int, units: int, out: int,
                 step: Optional[int]) -> _Batch:
        """The open batch of ``device`` with room for one more segment (finishing the
        current one first when it is full, or when the window's step changed)."""
        b = self._batches.get(device)
        if b is not None and (b.ws_used + ws > b.ws.numel()
                              or b.units_used + units > b.units.numel()
                              or b.out_used + out > b.out.numel()
                              or (step is not None and b.step is not None and step != b.step)):
            self._finish(device, b)
            del self._batches[device]
            b = None
        if b is None:
            ws_buf, unit_buf = self._spare.pop(device, (None, None))
            if ws_buf is None or ws_buf.numel() < ws:
                ws_buf = torch.empty(max(_MIN_WORKSPACE, 2 * ws), dtype=torch.float32,
                                     device=device)
            if unit_buf is None or unit_buf.numel() < units:
                unit_buf = torch.empty(max(_MIN_WORKSPACE, 2 * units), dtype=torch.float32,
                                       device=device)
            size = max(self._out_size.get(device, 0), _MIN_OUT, 2 * out)
            b = self._batches[device] = _Batch(
                ws_buf, unit_buf, torch.empty(size, dtype=torch.float32, device=device))
        if step is not None and b.step is None:
            b.step = step
            b.limit = max(step - self.window, NEVER)
        return b

    def _slot(self, device: torch.device, key: Hashable, units: int) -> int:
        """The offset of call-site ``key``'s unit window (``units`` long) in ``device``'s state."""
        slot = self._slots.get((device, key))
        if slot is not None and slot[1] == units:
            return slot[0]
        used = self._last_used.get(device, 0)
        last = self._last.get(device)
        if last is None or used + units > last.numel():
            grown = torch.full((max(1024, 2 * (used + units)),), NEVER, dtype=torch.long,
                               device=device)
            if last is not None and used:
                grown[:used].copy_(last[:used])  # in stream order: after every finisher so far
            self._last[device] = last = grown
        self._slots[(device, key)] = (used, units)
        self._last_used[device] = used + units
        return used

    @staticmethod
    def _kernels(device: torch.device) -> Any:
        k = kernels_for(device)
        if k is None:
            raise RuntimeError(f"the fused statistics kernels cannot run on {device} "
                               f"({missing(device.type == 'cpu')}); pass watch(fused=False)")
        return k


_inside = [0]  # > 0 while a kernel is being launched


def _launch(name: str, kernel: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    """Launch ``kernel`` on ``grid``, counted in :data:`LAUNCHES`."""
    LAUNCHES[name] += 1
    _inside[0] += 1
    try:
        kernel[grid](*args, **meta)
    finally:
        _inside[0] -= 1


def _nbytes(t: Tensor) -> int:
    return t.numel() * t.element_size()


def launching() -> bool:
    """Whether a kernel launch is in progress: what Triton's interpreter does with tensors
    then (copies) is the emulation of a device, not gradscope's work (operation counts)."""
    return _inside[0] > 0


def _unit_layout(t: Tensor, unit_dim: int) -> tuple[Tensor, tuple[int, int, int, int, int, int]]:
    """``t`` (a contiguous copy when its dimensions cannot be merged) and its unit view."""
    view = config.unit_view(t, unit_dim)
    if view is None:
        t = t.contiguous()
        view = config.unit_view(t, unit_dim)
        assert view is not None
    return t, view


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)
