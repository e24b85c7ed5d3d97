"""One monitored forward, as the captures share it: call indices, running modules, layouts.

* **Call indices**: a call-site is a module (or a function inside a module) and its
  call index within one forward (``relu``, ``relu[1]``; ``block:gelu[2]``), counted
  here for module and functional sites alike and reset when the forward starts.
* **The running modules**: the innermost module running when a function is called
  names its call-site. Only modules that *can* call an activation function are
  tracked (containers, and modules not defined by ``torch.nn``: a ``Linear`` or a
  ``BatchNorm2d`` never does), by global module hooks added for the monitored forward
  only, so other steps keep PyTorch's hook-free call path. A hooked activation module
  counts as running too, so that ``nn.ReLU.forward``'s own ``F.relu`` is not seen
  a second time.
* **Layouts**: which dimension indexes the units (features or channels) of an
  activation's input, decided from what produced it: the shape of each output of
  a layout-defining function (convolutions, batch/group/instance norms and pooling:
  channels, dimension 1; ``linear``, ``layer_norm``, matmuls, embeddings, attention:
  the last dimension) is remembered, and an activation whose input has that shape
  takes the unit dimension of the most recent such function. So a GELU after a
  ``Linear`` on a channels-last ``(N, H, W, C)`` tensor (ConvNeXt, Swin) has ``C``
  units, a ReLU after ``Conv1d`` on ``(N, C, L)`` has ``C``. Inputs of a shape no such
  function produced fall back to the rank rule (:func:`gradscope.activation_stats.resolve_unit_dim`).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.module import (
    register_module_forward_hook,
    register_module_forward_pre_hook,
)
from torch.utils.hooks import RemovableHandle

from gradscope.activations import family_of
from gradscope.capture.base import Context

__all__ = ["LAYOUTS", "Forward"]

_CHANNELS, _LAST = 1, -1

#: Layout-defining functions: the dimension that indexes units in their output.
LAYOUTS: dict[Callable[..., Any], int] = {
    **dict.fromkeys((
        F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
        F.conv_transpose3d, F.batch_norm, F.group_norm, F.instance_norm,
        F.local_response_norm, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d,
        F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d,
        F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
        F.adaptive_max_pool3d, F.pixel_shuffle, F.interpolate), _CHANNELS),
    **dict.fromkeys((
        F.linear, F.bilinear, F.layer_norm, F.rms_norm, F.embedding, torch.matmul,
        Tensor.matmul, Tensor.__matmul__, torch.bmm, Tensor.bmm, torch.baddbmm, torch.addmm,
        F.scaled_dot_product_attention), _LAST),
}


class Forward:
    """The state of the forward in progress, shared by the module and functional captures."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.calls: dict[str, int] = {}
        self.running: list[tuple[str, nn.Module]] = []  # innermost last
        self.in_activation = 0  # > 0 while a hooked activation module runs
        self.layouts: dict[tuple[int, ...], int] = {}  # output shape -> unit dimension
        self._root: Callable[[], Optional[nn.Module]] = lambda: None
        self._names: dict[int, str] = {}  # id -> name of the modules worth tracking
        self._handles: list[RemovableHandle] = []

    def start(self) -> None:
        """A forward of the model begins: indices, running modules and layouts start afresh."""
        self.calls.clear()
        self.running.clear()
        self.layouts.clear()
        self.in_activation = 0

    def next_call(self, base: str) -> int:
        """The call index of call-site ``base`` in this forward (0, 1, ...)."""
        k = self.calls.get(base, 0)
        self.calls[base] = k + 1
        return k

    def innermost(self) -> tuple[str, Optional[nn.Module]]:
        """The innermost running module that is tracked (``""``: the root's own code)."""
        return self.running[-1] if self.running else ("", self._root())

    def produced(self, func: Callable[..., Any], out: Any) -> None:
        """Remember the layout of ``out`` when ``func`` defines one."""
        dim = LAYOUTS.get(func)
        if dim is not None and isinstance(out, Tensor):
            self.layouts[tuple(out.shape)] = dim

    def unit_dim(self, x: Optional[Tensor]) -> Optional[int]:
        """The unit dimension for an activation of input ``x``: ``unit_dim=`` if given, else
        the dimension its producer's layout says (``None``: the rank rule)."""
        given = self.ctx.options.definitions.unit_dim
        if given is not None or x is None:
            return given
        return self.layouts.get(tuple(x.shape))

    # ------------------------------------------------------------ the running modules
    def register(self, model: nn.Module, hooked: set[int]) -> None:
        """Note the modules of ``model`` that can call an activation function, by id.

        ``hooked``: ids of the activation modules the module capture hooks (it tells
        this object when they run).
        """
        self._names = {
            id(module): name for name, module in model.named_modules()
            if module is not model and id(module) not in hooked and _may_call_activations(module)}

    def track(self) -> None:
        """Follow the running modules until :meth:`untrack`: global module hooks, added for
        one monitored forward only (other steps keep PyTorch's hook-free call path)."""
        self.untrack()
        self._handles = [register_module_forward_pre_hook(self._enter),
                         register_module_forward_hook(self._leave, always_call=True)]

    def untrack(self) -> None:
        """Remove the global hooks of :meth:`track` (idempotent)."""
        handles, self._handles = self._handles, []
        for h in handles:
            h.remove()

    def _enter(self, module: nn.Module, args: Any) -> None:
        name = self._names.get(id(module))
        if name is not None:
            self.running.append((name, module))

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.running and self.running[-1][1] is module:
            self.running.pop()


def _may_call_activations(module: nn.Module) -> bool:
    """Whether ``module``'s own code may call an activation function: it has children, it
    is an activation module (one ``include=`` leaves out: its own ``F.relu`` is then left
    out too), or ``torch.nn`` does not define it (torch.nn's other leaf layers never do)."""
    if next(module.children(), None) is not None or family_of(module) is not None:
        return True
    return not type(module).__module__.startswith("torch.nn.")
