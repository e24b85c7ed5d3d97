"""Parameters and the optimizer: gradient norms, weight norms, update ratios.

Every module with parameters of its own is a layer; each of its parameters is
read through a weak reference (the monitor never keeps the model alive). A
parameter replaced after ``watch()`` (``model.to_empty(device=...)`` of a model
built on the meta device, ``load_state_dict(assign=True)``, a parametrization) is
noticed at the next sampled step (its module no longer holds it: one dictionary
look-up per parameter), and the parameters are looked up again. The
monitor calls :meth:`ParamCapture.read` when a step's gradients are final (in
the optimizer's step pre-hook, or when the backward finishes), and, with update
ratios on, :meth:`ParamCapture.snapshot` before the optimizer step and
:meth:`ParamCapture.updates` after it. Norms are fused over all parameters of a
device (``torch._foreach_norm``); each device's values are queued as one vector
whose decoder is told which values are which.

On unsampled steps :meth:`ParamCapture.check` is the every-step NaN/Inf check of the
gradients: each layer's smallest parameter gradient (its bias or norm scale,
usually: the sum of the gradient reaching the layer over the batch, so a NaN or Inf
reaching the layer shows there), one test per device. A layer whose
parameters all exceed :data:`CHECK_MAX_ELEMENTS` (an embedding table) is not read:
the gradient reaching it comes through the layers above, which are.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from gradscope import distributed, shards, stats
from gradscope.capture.base import Context, NonfiniteCheck
from gradscope.capture.layers import layers
from gradscope.history import LayerInfo
from gradscope.metrics import Shape, copies, emitted, layer_values
from gradscope.queue import Decoder, Entry
from gradscope.records import Record, record

_NO_SHAPE = Shape(0)

__all__ = ["CHECK_MAX_ELEMENTS", "ParamCapture"]

#: The every-step check reads no parameter gradient larger than this (elements).
CHECK_MAX_ELEMENTS = 1 << 20


@dataclass
class _ParamRef:
    layer: str
    name: str
    ref: Callable[[], Optional[Tensor]]
    holder: Callable[[], Optional[nn.Module]]  # the module whose ``_parameters`` holds it
    attr: str  # its key there
    checked: bool = False  # its layer's parameter the every-step check reads

    def current(self) -> bool:
        """Whether the parameter is still the one its module holds (not replaced by
        ``to_empty``, ``load_state_dict(assign=True)`` or a parametrization)."""
        p, holder = self.ref(), self.holder()
        return p is not None and holder is not None and holder._parameters.get(self.attr) is p


@dataclass
class _Group:
    """Live parameters of one device that have a gradient, and what a step computes for them."""

    refs: list[_ParamRef]
    params: list[Tensor]  # detached (a DTensor's local shard)
    layers: dict[str, list[int]] = field(default_factory=dict)  # layer -> indices in refs
    wnorm: Optional[Tensor] = None  # weight norms before the update
    before: Optional[list[Tensor]] = None  # weight copies (update ratios)
    shares: Optional[tuple[float, ...]] = None  # sharded, ranks combined: each rank's weight


class ParamCapture:
    """The parameters of a model's layers, and their per-step gradient and update statistics."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.refs: list[_ParamRef] = []
        self._checked: list[_ParamRef] = []  # per layer, the parameter the every-step check reads
        self._layer_order: dict[str, int] = {}
        self._snapshot: list[Tensor] = []  # reused weight-copy buffers
        self._pending_update: Optional[list[_Group]] = None
        self._staged: list[Entry] = []  # this step's entries, queued by commit()
        self._split: set[str] = set()  # layers with parameters on several devices
        self._decoders: dict[tuple[object, ...], Decoder] = {}
        self._model: Callable[[], Optional[nn.Module]] = lambda: None
        self._graded: set[str] = set()  # layers that had a gradient at a sampled step
        self._reads = 0  # sampled steps whose gradients were read

    def register(self, model: nn.Module) -> None:
        """Find the included layers' parameters (again on each attach, and at a sampled
        step when a parameter was replaced: never twice). The parameters of a
        parametrization (``torch.nn.utils.parametrize``) belong to the module it
        parametrizes: ``0.weight`` (its ``original``), ``0.weight.original0``."""
        self._model = weakref.ref(model)
        self.refs, self._checked = [], []
        declare = self.ctx.queue.declare
        for name, module, own in layers(model, self.ctx.options.include_fn):
            layer = name or "(root)"
            self._layer_order.setdefault(layer, len(self._layer_order))
            declare(LayerInfo(layer, kind="layer", order=self._layer_order[layer],
                              type=shards.module_type(module), module=name))
            for pname, p, holder, attr in own:
                full = f"{name}.{pname}" if name else pname
                self.refs.append(_ParamRef(layer, full, weakref.ref(p), weakref.ref(holder), attr))
                declare(LayerInfo(full, kind="parameter", order=len(self.refs) - 1,
                                  type="Parameter", module=name, shape=tuple(p.shape)))
            smallest = min(range(len(own)), key=lambda i: own[i][1].numel())
            if own[smallest][1].numel() <= CHECK_MAX_ELEMENTS:
                ref = self.refs[len(self.refs) - len(own) + smallest]
                ref.checked = True
                self._checked.append(ref)

    def say_never_graded(self) -> None:
        """Say once which layers' trainable parameters got no gradient at any sampled step
        (unused in the forward, or cut from the loss): they are listed with no values."""
        never = list(dict.fromkeys(r.layer for r in self.refs if r.layer not in self._graded))
        if not never or not self._reads:
            return
        shown = ", ".join(repr(n) for n in never[:8]) + (f" ({len(never)} in all)"
                                                         if len(never) > 8 else "")
        self.ctx.once("never_graded", (
            f"gradscope: the trainable parameters of {shown} never received a gradient over "
            f"the {self._reads} sampled steps read: unused in the forward, or cut from the loss "
            "(detach(), no_grad). They are listed with no gradient values; freeze them "
            "(requires_grad_(False)) or leave them out (include=...) if that is intended."))

    def split_layers(self) -> dict[str, str]:
        """Parameter -> layer, for the layers whose parameters sit on several devices (usually
        none; the flush adds their values, every other layer is combined by its device's decoder)."""
        if not self._split:
            return {}
        return {r.name: r.layer for r in self.refs if r.layer in self._split}

    def commit(self) -> None:
        """Queue the step's entries (a later read of the same step replaced earlier ones)."""
        staged, self._staged = self._staged, []
        self.ctx.queue.add(*staged)

    def clear(self) -> None:
        """Forget the step in progress and the snapshot buffers (on detach), after saying
        which layers never received a gradient."""
        self._pending_update = None
        self._snapshot = []
        self._staged = []
        self.say_never_graded()

    def held(self) -> bool:
        """Whether a step's weight snapshot is waiting for its update."""
        return self._pending_update is not None

    # ------------------------------------------------------------ one step
    def read(self, step: int, *, snapshot: bool = False,
             grad_scale: Optional[Tensor] = None) -> None:
        """Stage gradient norms, weight norms and non-finite gradient counts, one vector per device.

        A later read in the same step (another backward without an optimizer, with
        gradients accumulated) replaces this one; :meth:`commit` queues the last.
        With ``snapshot``, also copy the weights for :meth:`updates`. ``grad_scale``:
        the gradients are still multiplied by this loss scale (a 0-d device tensor; an
        optimizer that unscales in its own kernel), divided out of the norms on the device.
        """
        model = self._model()
        if model is not None and not all(r.current() for r in self.refs):
            self.register(model)  # replaced parameters: read the model's new ones
        groups = self._groups()
        staged = self._staged = []
        with torch.no_grad():
            for g in groups:
                grads = [shards.local(r.ref().grad) for r in g.refs]  # type: ignore[union-attr,arg-type]
                gnorm = stats.foreach_norms(grads)
                if grad_scale is not None:
                    gnorm = gnorm / grad_scale.to(gnorm.device, non_blocking=True)
                g.wnorm = stats.foreach_norms(g.params)
                if g.shares is None and stats.known_finite(gnorm):  # no NaN/Inf: counts are 0
                    vec, counted = torch.cat([gnorm, g.wnorm]), False
                else:
                    vec = torch.cat([gnorm, g.wnorm, stats.foreach_nonfinite_counts(grads)])
                    counted = True
                names = [r.name for r in g.refs]
                parts = ("grad_norm", "weight_norm", "grad_nonfinite") if counted \
                    else ("grad_norm", "weight_norm")
                consts = {} if counted else {"grad_nonfinite": 0.0}
                staged.append(Entry(step, vec, self._decoder(names, g.layers, parts, consts,
                                                             shares=g.shares)))
            if self.ctx.histogram_step():
                for g in groups:
                    for r, p in zip(g.refs, g.params):
                        grad = shards.local(r.ref().grad)  # type: ignore[union-attr,arg-type]
                        staged.append(self.ctx.histogram_entry(step, "gradients", r.name, grad))
                        staged.append(self.ctx.histogram_entry(step, "weights", r.name, p))
            if snapshot and groups:
                bufs = self._snapshot_buffers([p for g in groups for p in g.params])
                start = 0
                for g in groups:
                    g.before = bufs[start:start + len(g.params)]
                    start += len(g.params)
                    torch._foreach_copy_(g.before, g.params)
                self._pending_update = groups

    def updates(self, step: int) -> None:
        """After the optimizer step: queue ``‖w_after - w_before‖`` per parameter."""
        groups, self._pending_update = self._pending_update, None
        for g in groups or ():
            params = [shards.local(p) for p in (r.ref() for r in g.refs) if p is not None]
            if len(params) != len(g.refs) or g.wnorm is None or g.before is None:
                continue
            with torch.no_grad():
                torch._foreach_sub_(g.before, [p.detach() for p in params])
                vec = torch.cat([stats.foreach_norms(g.before), g.wnorm])
            names = [r.name for r in g.refs]
            self._staged.append(Entry(step, vec, self._decoder(
                names, g.layers, ("update_norm", "weight_norm"), {}, context=("weight_norm",),
                shares=g.shares)))

    def check(self, step: int, every_parameter: bool = False) -> None:
        """The every-step NaN/Inf check of an unsampled step's gradients (when they are final).

        ``every_parameter``: test each parameter's gradient, not only each layer's
        smallest, when the step's forward gave outputs that are not finite but no
        activation output was (a NaN entering after the last activation, or in a layer's
        input, reaches its weight's gradient but not its bias's).

        Stages ``grad_nonfinite_check`` = 1 for each layer whose checked gradient is
        not finite; like :meth:`read`, a later check in the same step (another backward,
        gradients accumulated) replaces this one and :meth:`commit` queues the last. On
        the CPU each checked gradient is tested with :func:`gradscope.stats.all_finite`
        (one sum each: concatenating them first allocates a buffer, which right after a
        backward measured 3x slower on a 6-layer MLP); on an accelerator the gradients'
        max-abs values (``torch._foreach_norm(…, inf)``: one fused kernel, NaN
        propagates, nothing overflows) are queued and decoded at the flush.
        """
        if self.ctx.combine_params:  # a sharded model: the ranks' pieces (shards.check_entries)
            entries = shards.check_entries(step, [(r.layer, r.ref()) for r in self._checked],
                                           distributed.world()[0])
            if entries is not None:
                self._staged = entries
                return
        by_device: dict[torch.device, list[tuple[str, Tensor]]] = {}
        for r in self.refs if every_parameter else self._checked:
            p = r.ref()
            grad = shards.local(p.grad) if p is not None and p.grad is not None else None
            if grad is None or grad.is_sparse or not grad.is_floating_point():
                continue
            if every_parameter and not r.checked and not stats.host_readable(grad):
                continue  # (only the CPU path knows the outputs were not finite)
            by_device.setdefault(grad.device, []).append((r.layer, grad))
        self._staged = []
        for grads in by_device.values():
            names, vec = _check_gradients(grads)
            if names and vec is not None:
                self._staged.append(Entry(step, vec, NonfiniteCheck(names, "grad_nonfinite_check")))

    def _groups(self) -> list[_Group]:
        """The live parameters that have a (dense) gradient, one group per device."""
        groups: dict[torch.device, _Group] = {}
        for r in self.refs:
            p = r.ref()
            if p is None or p.grad is None or p.grad.is_sparse:
                continue
            g = groups.get(p.device)
            if g is None:
                g = groups[p.device] = _Group([], [])
            g.layers.setdefault(r.layer, []).append(len(g.refs))
            g.refs.append(r)
            g.params.append(shards.local(p).detach())
        self._graded.update(r.layer for g in groups.values() for r in g.refs)
        self._reads += 1
        seen: set[str] = set()
        self._split = set()
        for g in groups.values():
            self._split |= seen & set(g.layers)
            seen |= set(g.layers)
        for g in groups.values():
            for layer in self._split & set(g.layers):
                del g.layers[layer]
            if self.ctx.combine_params:
                g.shares = self._shares(g)
        return list(groups.values())

    def _shares(self, g: _Group) -> Optional[tuple[float, ...]]:
        """Each parameter's weight in the sum over ranks when some are sharded
        (:func:`gradscope.shards.share`); ``None`` when none is (read after DDP's all-reduce)."""
        live = [r.ref() for r in g.refs]
        if not any(shards.is_sharded(p) for p in live):
            return None
        rank, world = distributed.world()
        out = []
        for r, p in zip(g.refs, live):
            w = shards.share(p, rank=rank, world=world)  # type: ignore[arg-type]
            if w is None:
                self.ctx.once("partial", f"gradscope: parameter {r.name!r} is a DTensor with a "
                              "Partial() placement (a pending sum): its norms cannot be combined "
                              "from the ranks' pieces; rank 0's piece is shown (said once)")
                w = 1.0 if rank == 0 else 0.0
            out.append(w)
        return tuple(out)

    def _decoder(self, names: list[str], layers: dict[str, list[int]], parts: Sequence[str],
                 consts: dict[str, float], context: Sequence[str] = (),
                 shares: Optional[tuple[float, ...]] = None) -> Decoder:
        """:func:`_decoder`, made once per layout (the same parameters step after step); with
        ``shares``, its values summed over the ranks first (:func:`gradscope.shards.summed_decoder`)."""
        key = (tuple(names), tuple((k, tuple(v)) for k, v in layers.items()), tuple(parts),
               tuple(consts.items()), tuple(context), shares)
        dec = self._decoders.get(key)
        if dec is None:
            dec = _decoder(names, layers, parts, consts, context)
            if shares is not None:
                dec = shards.summed_decoder(dec, parts, shares, f"params:{','.join(parts)}")
            self._decoders[key] = dec
        return dec

    def _snapshot_buffers(self, params: list[Tensor]) -> list[Tensor]:
        """Buffers shaped like ``params``, kept across steps (no per-step allocation)."""
        bufs = self._snapshot
        if len(bufs) != len(params) or any(
                b.shape != p.shape or b.dtype != p.dtype or b.device != p.device
                for b, p in zip(bufs, params)):
            bufs = self._snapshot = _flat_buffers(params)
        return bufs


def _decoder(names: list[str], layers: dict[str, list[int]], parts: Sequence[str],
             consts: dict[str, float], context: Sequence[str] = ()) -> Decoder:
    """Decode ``len(parts)`` vectors of one value per parameter, in the order of ``parts``.

    ``layers`` maps each layer whose parameters all sit in this vector to their
    indices: its values are combined here (:func:`gradscope.metrics.layer_values`).
    ``consts`` are values known without reading (0 non-finite gradients when every
    norm was finite); ``context`` parts are read to finish other metrics but not
    recorded again.
    """
    metrics = emitted([p for p in parts if p not in context] + list(consts), context)
    wanted = {m.name for m in metrics}
    n, expected = len(names), len(parts) * len(names)

    def decode(step: int, values: Sequence[float]) -> list[Record]:
        if len(values) != expected:
            raise ValueError(f"parameter decoder expected {expected} values, got {len(values)} "
                             "(internal error: queue layout)")
        cols: dict[str, Sequence[float]] = {
            part: values[k * n:(k + 1) * n] for k, part in enumerate(parts)}
        cols.update({c: [value] * n for c, value in consts.items()})
        out = []
        for m in metrics:
            source = copies(m)
            if source is not None:
                out += [record(step, name, m.name, v) for name, v in zip(names, cols[source])]
            else:
                needed = [cols[need] for need in m.needs]
                out += [record(step, name, m.name, m.finish(dict(zip(m.needs, vs)), _NO_SHAPE))
                        for name, *vs in zip(names, *needed)]
        for layer, idx in layers.items():
            per = {part: [col[i] for i in idx] for part, col in cols.items()}
            out += [record(step, layer, m, value) for m, value in layer_values(per).items()
                    if m in wanted]
        return out

    return decode


def _check_gradients(grads: list[tuple[str, Tensor]]) -> tuple[list[str], Optional[Tensor]]:
    """The layers to decode and the vector to queue for one device's checked gradients
    (none: every one is finite, seen on the CPU)."""
    if stats.host_readable(grads[0][1]):  # each layer once (several gradients: every_parameter)
        bad = list(dict.fromkeys(layer for layer, g in grads if not stats.all_finite(g)))
        return bad, (torch.full((len(bad),), math.nan) if bad else None)
    return [layer for layer, _ in grads], stats.foreach_finite_probe([g for _, g in grads])


def _flat_buffers(params: list[Tensor]) -> list[Tensor]:
    """Contiguous buffers shaped like ``params``, carved from one allocation per device/dtype."""
    groups: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    out: list[Optional[Tensor]] = [None] * len(params)
    for (device, dtype), idx in groups.items():
        flat = torch.empty(sum(params[i].numel() for i in idx), dtype=dtype, device=device)
        pos = 0
        for i in idx:
            k = params[i].numel()
            out[i] = flat[pos:pos + k].view(params[i].shape)
            pos += k
    return out  # type: ignore[return-value]
