"""Fused statistics (opt-in, ``watch(fused="on")``): one compiled kernel per activation call.

Every operation inside a hook pays a fixed price (the dispatcher on a CPU, a
kernel launch on a GPU), so an activation's ten or so reductions cost far more
than their arithmetic on small tensors. :class:`Fuser` compiles each activation
plan (:class:`gradscope.plan.Plan`) with ``torch.compile`` into one
kernel that reads the tensor once or twice and returns every reduction the
plan's metrics need, plus the per-unit "on" mask for the unit window. The same
reductions, traced on their accelerator path (no host reads, no scratch
buffers), so the values agree with the eager path to float32 rounding.

One compiled function serves every call-site with the same family, module
settings, definitions, input dtype and rank (shapes are dynamic), and lives for
the process: a model compiles a handful of kernels once (seconds; inductor
caches them on disk for later runs). Where ``torch.compile`` cannot work — no
C++ compiler, an inductor error — the eager path runs, and gradscope says once
which path is in use; a family that keeps tensors in its module (PReLU) always
runs eagerly.

It is off by default because on a CPU it does not pay: measured on the 6x256
MLP benchmark, a compiled call costs about what the eager plan does (the
compiled function's guards and wrapper cost ~40 us, as much as the small
operations it replaces), and the first step waits 5-20 s per kernel. On a GPU it
turns ~10 kernel launches per call into one or two (``benchmarks/kernel_counts.py``
counts the eager ones); that has not been measured on a GPU.

Example:
    >>> from gradscope.fused import Fuser
    >>> Fuser("off").enabled
    False
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from gradscope.activations import ActivationFamily, Source
from gradscope.plan import Plan
from gradscope.reductions import ActivationCall, Affine

__all__ = ["MODES", "Fuser"]

#: ``fused=`` values: ``"off"`` never compiles (the default); ``"on"`` compiles
#: and falls back to eager, with one warning, where compiling fails;
#: ``"strict"`` raises instead of falling back.
MODES = ("off", "on", "strict")
_ENV = "GRADSCOPE_FUSED"

_Kernel = Callable[[Optional[Tensor], Tensor], tuple[Tensor, Optional[Tensor]]]
# (plan, family name, module type, module settings, eps, delta, unit_dim, needs x, dtype, rank)
_kernels: dict[tuple[Any, ...], _Kernel] = {}
_state: dict[str, Any] = {"broken": None, "announced": False}


def _settings(module: Source) -> Optional[tuple[tuple[str, Any], ...]]:
    """The module's (or a functional call's :class:`~gradscope.activations.Params`') plain
    settings (slopes, limits, dims), or ``None`` if it holds tensors."""
    if not isinstance(module, nn.Module):
        if any(isinstance(v, Tensor) for v in vars(module).values()):
            return None
    elif any(True for _ in module.parameters(recurse=False)) or \
            any(True for _ in module.buffers(recurse=False)):
        return None
    return tuple(sorted((k, v) for k, v in vars(module).items()
                        if not k.startswith("_") and isinstance(v, (bool, int, float, str))))


class Fuser:
    """Runs activation plans as compiled kernels where it can.

    Args:
        mode: one of :data:`MODES`; the environment variable ``GRADSCOPE_FUSED``
            (one of :data:`MODES`), when set, overrides it.
    """

    def __init__(self, mode: str = "off") -> None:
        if mode not in MODES:
            raise ValueError(f"watch(fused={mode!r}): pass one of {MODES}")
        env = os.environ.get(_ENV, "").strip().lower()
        if env:
            if env not in MODES:
                raise ValueError(f"{_ENV}={env!r}: use one of {MODES}, or unset it")
            mode = env
        self.mode = mode

    @property
    def enabled(self) -> bool:
        """Whether calls are compiled (``"off"``, or a compiler that failed, disables it)."""
        return self.mode != "off" and _state["broken"] is None

    def run(self, plan: Plan, family: ActivationFamily, module: Source, x: Optional[Tensor],
            y: Tensor, *, eps: float, delta: float, unit_dim: Optional[int]
            ) -> Optional[tuple[Tensor, Optional[Tensor]]]:
        """``(values of plan.needs, active units)`` from one compiled kernel, or ``None`` (eager)."""
        if not self.enabled or y.numel() == 0 or y.ndim == 0 or torch.compiler.is_dynamo_compiling():
            return None
        settings = _settings(module)
        if settings is None:
            return None
        key = (id(plan), family.name, type(module), settings, eps, delta, unit_dim,
               x is not None, y.dtype, y.ndim, y.device.type)
        kernel = _kernels.get(key)
        if kernel is None:
            kernel = _kernels[key] = _compile(plan, family, module, eps, delta, unit_dim)
        try:
            t0 = time.perf_counter()
            out = kernel(x, y)
            self._announce(time.perf_counter() - t0)
            return out
        except Exception as err:  # no compiler, an inductor limitation, ...
            if self.mode == "strict":
                raise
            _state["broken"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            _kernels.clear()
            warnings.warn(
                f"gradscope: cannot compile fused statistics kernels ({_state['broken']}); "
                "statistics run eagerly (the same values, more overhead per call). "
                "Pass watch(fused='off') to skip the attempt.", RuntimeWarning, stacklevel=2)
            return None

    def _announce(self, seconds: float) -> None:
        if _state["announced"]:
            return
        _state["announced"] = True
        print(f"gradscope: compiled fused statistics kernels with torch.compile ({seconds:.1f} s, "
              "once per process; inductor caches them on disk); watch(fused='off') uses the "
              "eager path instead", file=sys.stderr)


def _compile(plan: Plan, family: ActivationFamily, module: Source, eps: float, delta: float,
             unit_dim: Optional[int]) -> _Kernel:
    """A compiled ``(x, y) -> (values of plan.needs, active units)`` for one configuration."""

    def reduce(x: Optional[Tensor], y: Tensor) -> tuple[Tensor, Optional[Tensor]]:
        call = ActivationCall(family, module, x, y, eps=eps, delta=delta, unit_dim=unit_dim)
        parts = []
        for name in plan.needs:
            p = call.part(name)
            if isinstance(p, Affine):
                p = p.source * p.scale + p.offset
            parts.append(p.to(torch.float32) if isinstance(p, Tensor)
                         else torch.full((), p, dtype=torch.float32, device=y.device))
        return torch.stack(parts), call.active

    # dynamic=None: specialised to the first shape (fastest), dynamic after a second one
    return torch.compile(reduce, fullgraph=True)
