"""Functional activations: ``F.relu(x)``, ``torch.sigmoid(x)``, ``x.tanh()``, ``x.relu_()``.

During a monitored forward (a sampled training forward) a
:class:`~torch.overrides.TorchFunctionMode` is pushed by a forward pre-hook on the
root module and popped by its forward hook (registered with ``always_call=True``, so
an exception in the model's forward never leaves it pushed). PyTorch keeps a mode
stack per thread, so the count of root forwards in progress is kept per thread too
(only the training thread ever pushes; another thread running the model meanwhile
neither pushes nor pops). It sees every call of
the ``torch``, ``torch.nn.functional`` and ``Tensor`` API the forward makes; a call
of an activation listed in :data:`FUNCTIONS` is handed to the
:class:`~gradscope.capture.activation.ActivationRecorder` with the same metrics as a
module call-site (the back-propagated gradient included), unless it runs inside an
activation module gradscope already hooks (``nn.ReLU.forward`` calls ``F.relu``).
Other steps push nothing: their cost is one attribute check in the root's hooks.

A functional call-site is named after the innermost running module (see
:mod:`gradscope.capture.forward`), the function and the call index in that module:
``features.0.conv:relu``, ``features.0.conv:relu[1]``; ``(root):softmax`` in the
root's own ``forward``. ``F.relu``, ``torch.relu``, ``x.relu()``, ``torch.relu_`` and
``F.relu(x, inplace=True)`` are all ``relu``. Parameters (``negative_slope``,
``alpha``, ``dim``, ...) are read from the call's arguments into a
:class:`~gradscope.activations.Params` that the family functions read like a module.

What the mode also sees: the layout-defining functions (for the unit dimension,
:data:`gradscope.capture.forward.LAYOUTS`) and the calls whose activation is fused
into one kernel no hook can see into (:data:`FUSED`), for the coverage.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from gradscope.activations import FAMILIES, ActivationFamily, Params
from gradscope.capture.activation import ActivationRecorder, input_node
from gradscope.capture.base import Context
from gradscope.capture.coverage import CoverageTracker
from gradscope.capture.forward import Forward

__all__ = ["FUNCTIONS", "FUSED", "Function", "FunctionalCapture", "family_of_function"]


@dataclass(frozen=True)
class Function:
    """How one functional activation is read.

    Args:
        name: the name in call-site names (``"relu"``).
        module_type: the module whose family it has (``nn.ReLU``; looked up in
            :data:`gradscope.activations.FAMILIES` at each new call-site, so
            ``register_family`` overrides apply to functions too).
        params: ``(attribute, position, default)`` of each parameter: ``attribute`` is
            both the keyword of the function and the module's attribute name.
        inplace: the position of its ``inplace=`` argument, ``True`` for an in-place
            function (``relu_``), ``None`` for none.
        constants: parameters fixed by the function (``relu6``: ``max_val=6``).
    """

    name: str
    module_type: type[nn.Module]
    params: tuple[tuple[str, int, Any], ...] = ()
    inplace: Any = None
    constants: tuple[tuple[str, Any], ...] = ()

    def read(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Params:
        """The call's parameters."""
        p = dict(self.constants)
        for attr, pos, default in self.params:
            p[attr] = args[pos] if len(args) > pos else kwargs.get(attr, default)
        return Params(**p)

    def in_place(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """Whether this call overwrites its input."""
        if self.inplace is None or self.inplace is True:
            return bool(self.inplace)
        return bool(args[self.inplace] if len(args) > self.inplace
                    else kwargs.get("inplace", False))


def _table() -> dict[Callable[..., Any], Function]:
    T = Tensor
    rows: list[tuple[Function, tuple[Any, ...], tuple[Any, ...]]] = [
        # (how it is read, out-of-place functions, in-place functions)
        (Function("relu", nn.ReLU, inplace=1), (F.relu, torch.relu, T.relu), (F.relu_, T.relu_)),
        (Function("relu6", nn.ReLU6, inplace=1, constants=(("min_val", 0.0), ("max_val", 6.0))),
         (F.relu6,), ()),
        (Function("hardtanh", nn.Hardtanh, (("min_val", 1, -1.0), ("max_val", 2, 1.0)), 3),
         (F.hardtanh,), (F.hardtanh_,)),
        (Function("leaky_relu", nn.LeakyReLU, (("negative_slope", 1, 0.01),), 2),
         (F.leaky_relu,), (F.leaky_relu_,)),
        (Function("elu", nn.ELU, (("alpha", 1, 1.0),), 2), (F.elu,), (F.elu_,)),
        (Function("selu", nn.SELU, inplace=1), (F.selu, torch.selu), (F.selu_,)),
        (Function("celu", nn.CELU, (("alpha", 1, 1.0),), 2), (F.celu, torch.celu), (F.celu_,)),
        (Function("rrelu", nn.RReLU, (("lower", 1, 1.0 / 8), ("upper", 2, 1.0 / 3),
                                      ("training", 3, False)), 4), (F.rrelu, torch.rrelu),
         (F.rrelu_,)),
        (Function("prelu", nn.PReLU, (("weight", 1, None),)), (F.prelu,), ()),
        (Function("gelu", nn.GELU, (("approximate", 1, "none"),)), (F.gelu,), ()),
        (Function("silu", nn.SiLU, inplace=1), (F.silu,), ()),
        (Function("mish", nn.Mish, inplace=1), (F.mish,), ()),
        (Function("hardswish", nn.Hardswish, inplace=1), (F.hardswish,), ()),
        (Function("hardsigmoid", nn.Hardsigmoid, inplace=1), (F.hardsigmoid,), ()),
        (Function("softplus", nn.Softplus, (("beta", 1, 1.0), ("threshold", 2, 20.0))),
         (F.softplus,), ()),
        (Function("softsign", nn.Softsign), (F.softsign,), ()),
        (Function("sigmoid", nn.Sigmoid), (torch.sigmoid, T.sigmoid, F.sigmoid),
         (torch.sigmoid_, T.sigmoid_)),
        (Function("tanh", nn.Tanh), (torch.tanh, T.tanh, F.tanh), (torch.tanh_, T.tanh_)),
        (Function("softmax", nn.Softmax, (("dim", 1, None),)),
         (F.softmax, torch.softmax, T.softmax), ()),
        (Function("softmin", nn.Softmin, (("dim", 1, None),)), (F.softmin,), ()),
    ]
    table: dict[Callable[..., Any], Function] = {}
    for fn, plain, inplace in rows:
        table.update(dict.fromkeys(plain, fn))
        table.update(dict.fromkeys(inplace, Function(fn.name, fn.module_type, fn.params, True,
                                                     fn.constants)))
    return table


#: The functional activations gradscope records, by the function object called.
FUNCTIONS: dict[Callable[..., Any], Function] = _table()

#: Calls that run an activation inside one fused kernel: what the coverage says is unseen.
FUSED: dict[Callable[..., Any], str] = {
    F.scaled_dot_product_attention: "softmax fused in F.scaled_dot_product_attention",
    torch._native_multi_head_attention: "softmax fused in the MultiheadAttention fast path",
    # a mode sees this call, not the softmax inside it (need_weights=True; with False it
    # calls scaled_dot_product_attention)
    F.multi_head_attention_forward: "softmax inside F.multi_head_attention_forward",
    torch._transformer_encoder_layer_fwd:
        "activation and softmax fused in the TransformerEncoderLayer fast path",
}


class _Mode(TorchFunctionMode):
    """Sees every torch call of a monitored forward; activations go to the capture."""

    def __init__(self, capture: FunctionalCapture) -> None:
        super().__init__()
        self.capture = capture

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        if kwargs is None:
            kwargs = {}
        cap = self.capture
        spec = FUNCTIONS.get(func)
        if spec is not None and not cap.forward.in_activation:
            return cap.call(spec, func, args, kwargs)
        out = func(*args, **kwargs)
        cap.forward.produced(func, out)
        what = FUSED.get(func)
        if what is not None:
            cap.coverage.fused(cap.forward.innermost()[0], what)
        return out


class FunctionalCapture:
    """The functional activations of a model's monitored forwards."""

    def __init__(self, ctx: Context, recorder: ActivationRecorder, forward: Forward,
                 coverage: CoverageTracker) -> None:
        self.ctx = ctx
        self.recorder = recorder
        self.forward = forward
        self.coverage = coverage
        self._mode = _Mode(self)
        self._local = threading.local()  # .depth: this thread's root forwards in progress

    @property
    def _depth(self) -> int:
        """Root forwards in progress on the calling thread (a model may call itself)."""
        return getattr(self._local, "depth", 0)

    @_depth.setter
    def _depth(self, value: int) -> None:
        self._local.depth = value

    def register(self, model: nn.Module, hooked: set[int]) -> None:
        """Hook the root's forward (push and pop the mode) and track the running modules
        (``hooked``: ids of the activation modules the module capture hooks)."""
        self.forward.register(model, hooked)
        self.ctx.hook(model.register_forward_pre_hook(self._start))
        self.ctx.hook(model.register_forward_hook(self._stop, always_call=True))

    def clear(self) -> None:
        """Pop the mode and stop tracking modules if a forward is in progress on the calling
        thread (on detach; the mode stack is per thread, and only the training thread pushes)."""
        if self._depth:
            self._depth = 0
            self.forward.untrack()
            self._mode.__exit__(None, None, None)

    def _start(self, module: nn.Module, args: Any) -> None:
        if self._depth:
            self._depth += 1
        elif self.ctx.recording():
            self.forward.start()
            self._depth = 1
            self.forward.track()
            self._mode.__enter__()

    def _stop(self, module: nn.Module, args: Any, output: Any) -> None:
        if not self._depth:
            return
        self._depth -= 1
        if not self._depth:
            self.forward.untrack()
            self._mode.__exit__(None, None, None)

    def call(self, spec: Function, func: Callable[..., Any], args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Any:
        """Run one activation call and record it."""
        x = args[0] if args else kwargs.get("input")
        name, module = self.forward.innermost()
        family = FAMILIES.get(spec.module_type)
        if not (isinstance(x, Tensor) and x.is_floating_point()) or family is None \
                or not self.ctx.options.include_fn(name, module):  # type: ignore[arg-type]
            return func(*args, **kwargs)
        kept = x.detach().clone() if family.needs_input and spec.in_place(args, kwargs) else None
        node = input_node(x) if self.ctx.options.backprop else None
        unit_dim = self.forward.unit_dim(x)
        y = func(*args, **kwargs)
        if not isinstance(y, Tensor) or not y.is_floating_point():
            return y
        base = f"{name or '(root)'}:{spec.name}"
        call = self.forward.next_call(base)
        site = self.recorder.sites.get((base, call))
        if site is None:
            site = self.recorder.site(base, call, family, module_name=name,
                                      type_name=f"F.{spec.name}", shape=tuple(y.shape),
                                      unit_dim=unit_dim, function=spec.name)
        x_rec = kept if kept is not None else (x if family.needs_input else None)
        self.recorder.record(site, spec.read(args, kwargs), x_rec, y, node)
        return y


def family_of_function(func: Callable[..., Any]) -> Optional[ActivationFamily]:
    """The family gradscope records a call of ``func`` with (``None``: not an activation).

    Example:
        >>> import torch.nn.functional as F
        >>> family_of_function(F.leaky_relu).name
        'leaky_relu'
    """
    spec = FUNCTIONS.get(func)
    return None if spec is None else FAMILIES.get(spec.module_type)
