"""The fused path of the captures: where a hook's tensors go to the Triton kernels.

:class:`FusedCapture` is asked by the recorder (forward, gradients, step's end) and by the
every-step check (a tensor tested at its call) whether it takes a tensor; when it does,
it launches one kernel (:class:`gradscope.kernels.engine.FusedStats`) and defers a view of
the results vector with a decoder told where each value is, as the eager plan would.
It takes a tensor when ``watch(fused=True)`` (the default), the tensor is on a device the
kernels run on (:func:`gradscope.kernels.available`: CUDA with Triton), it holds float32,
bfloat16 or float16 and is not empty, ranks are not combined (the per-unit masks that
combining needs come from the eager path), ``torch.compile`` is not tracing, and, forward,
the family and its metrics are covered (:func:`gradscope.kernels.config.forward_spec`);
everything else runs eagerly, with the same values.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from gradscope import kernels
from gradscope.activation_stats import resolve_unit_dim
from gradscope.activations import Source
from gradscope.capture.base import Context, NonfiniteCheck
from gradscope.capture.site import Site
from gradscope.kernels import config
from gradscope.kernels.engine import FusedStats
from gradscope.plan import Plan

__all__ = ["FusedCapture"]

_GRAD_CODE = [0, 1]  # (norm, nonfinite) of the gradient results (norm, nonfinite, flag)


class FusedCapture:
    """Routes hook tensors to the fused kernels when they can take them (see the module)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.on = bool(ctx.options.fused) and not ctx.combine
        self.stats = FusedStats(ctx.options.definitions.dead_window)
        self._specs: dict[int, Optional[config.ForwardSpec]] = {}  # id(site) -> its constants

    def takes(self, t: Tensor) -> bool:
        """Whether ``t`` goes through the kernels."""
        return (self.on and t.numel() > 0 and config.storage_dtype_ok(t)
                and kernels.available(t.device) and not torch.compiler.is_compiling())

    def forward(self, site: Site, source: Source, x: Optional[Tensor], y: Tensor,
                step: int) -> bool:
        """Launch the forward statistics of one call and defer them; whether it was taken."""
        if not self.takes(y) or y.ndim == 0:
            return False
        spec = self._spec(site, source)
        if spec is None:
            return False
        if spec.needs_x and (x is None or x.shape != y.shape or not config.storage_dtype_ok(x)):
            return False
        code = config.decoder_code(spec, site.plan.needs, y.numel(), spec.delta)
        if code is None:
            return False
        unit_dim = resolve_unit_dim(y.ndim, site.unit_dim) if spec.regime else None
        window = spec.regime > 0 and bool(site.window.metrics)
        try:
            out = self.stats.forward(spec, x.detach() if spec.needs_x and x is not None
                                     else None, y.detach(), unit_dim, step,
                                     site.name if window else None)
        except Exception as err:  # a kernel that cannot compile or launch here
            self._off(err)
            return False
        units = y.shape[unit_dim] if unit_dim is not None else 0
        queue = self.ctx.queue
        queue.defer(step, y.device, [out], site.plan.coded_decoder(
            site.name, y.numel(), units, code, len(config.FORWARD_VALUES)))
        if window:
            queue.defer(step, y.device, [out[-1:]], site.window.vector_decoder(site.name, 0, units))
        return True

    def gradient(self, name: str, plan: Plan, grad: Tensor, step: int) -> bool:
        """Launch a gradient's norm and NaN/Inf count and defer them; whether it was taken."""
        if not self.takes(grad) or set(plan.needs) - {"norm", "nonfinite"}:
            return False
        scale = self.ctx.grad_scale()
        if scale is not None:
            scale = scale.to(grad.device, non_blocking=True)
        try:
            out = self.stats.gradient(grad.detach(), scale)
        except Exception as err:
            self._off(err)
            return False
        code = [_GRAD_CODE[("norm", "nonfinite").index(n)] for n in plan.needs]
        self.ctx.queue.defer(step, grad.device, [out], plan.coded_decoder(
            name, grad.numel(), 0, code, 3))
        return True

    def probe(self, y: Tensor, step: int, decode: NonfiniteCheck) -> bool:
        """The every-step NaN/Inf test of one tensor in one launch, deferred with ``decode``
        (a :class:`~gradscope.capture.base.NonfiniteCheck` of one value); whether it was taken."""
        if not self.takes(y):
            return False
        try:
            flag = self.stats.probe(y.detach())
        except Exception as err:
            self._off(err)
            return False
        self.ctx.queue.defer(step, y.device, [flag], decode)
        return True

    def _off(self, err: Exception) -> None:
        """The kernels failed (compiling, launching): the eager path from now on, said once."""
        self.on = False
        self.ctx.failed("the fused statistics kernels (the eager statistics run instead; "
                        "watch(fused=False) skips them)", err)

    def _spec(self, site: Site, source: Source) -> Optional[config.ForwardSpec]:
        key = id(site)
        if key not in self._specs:  # the module's settings are read once per call-site
            d = self.ctx.options.definitions
            self._specs[key] = config.forward_spec(site.family, source, d.eps, d.delta)
        return self._specs[key]

    def end_step(self) -> None:
        """The step's end: one finisher per device for everything launched in it (if it
        fails, what it would have finished reads NaN and the eager path takes over)."""
        try:
            self.stats.finish()
        except Exception as err:
            self._off(err)

    def clear(self) -> None:
        """Forget what was launched and not finished (on detach)."""
        self.stats.clear()

    def held_numel(self) -> int:
        """Elements of the unit windows kept on the device."""
        return self.stats.held_numel()
