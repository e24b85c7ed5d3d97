"""Activation modules: hooks on every module whose type is a known family.

Each activation module gets a forward pre-hook and a forward hook. The pre-hook
marks the module as running (so that the functional capture does not see its own
``F.relu`` a second time), keeps a copy of the input when the module runs in place
and its family needs the input, and notes the input's autograd node (for
``grad_in_*``). The hook hands the call to the
:class:`~gradscope.capture.activation.ActivationRecorder`. A module called several
times per forward (torchvision's ResNet reuses one ``relu`` per block) gives one
call-site per call: ``layer1.0.relu``, ``layer1.0.relu[1]``. A module that is both
an activation and has parameters (PReLU) names its call-site ``name.out``, since
``name`` is its layer.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

from gradscope.activations import ActivationFamily, family_of
from gradscope.capture.activation import ActivationRecorder, input_node
from gradscope.capture.base import Context
from gradscope.capture.forward import Forward

__all__ = ["ModuleCapture"]


class ModuleCapture:
    """Hooks on activation modules, feeding an :class:`ActivationRecorder`."""

    def __init__(self, ctx: Context, recorder: ActivationRecorder, forward: Forward) -> None:
        self.ctx = ctx
        self.recorder = recorder
        self.forward = forward
        self.hooked: set[int] = set()  # ids of the hooked activation modules
        self._stash: dict[int, tuple[Optional[Tensor], Any]] = {}  # id -> (input copy, node)

    def register(self, model: nn.Module) -> None:
        """Hook every included activation module of ``model``."""
        include = self.ctx.options.include_fn
        self.hooked = set()
        for name, module in model.named_modules():
            if not include(name, module):
                continue
            family = family_of(module)
            if family is None:
                continue
            self.hooked.add(id(module))
            copy = family.needs_input and bool(getattr(module, "inplace", False))
            self.ctx.hook(module.register_forward_pre_hook(self._pre_hook(copy)))
            hook = self._activation_hook(name, _base(name, module), family)
            self.ctx.hook(module.register_forward_hook(hook, always_call=True))

    def start_forward(self) -> None:
        """A forward of the model begins: call indices start again at 0 (on every step:
        the every-step non-finite check counts calls too)."""
        self.forward.start()

    def clear(self) -> None:
        """Drop kept inputs (on detach)."""
        self._stash.clear()

    def held(self) -> int:
        """Inputs kept between a pre-hook and its hook (0 outside a forward)."""
        return len(self._stash)

    def _pre_hook(self, copy: bool) -> Callable[[nn.Module, Any], None]:
        def activation_pre_hook(module: nn.Module, args: Any) -> None:
            if not self.ctx.recording():
                return
            self.forward.in_activation += 1
            x = args[0] if args and isinstance(args[0], Tensor) else None
            if x is None:
                return
            with torch._C.DisableTorchFunction():  # not the model's own ops
                kept = x.detach().clone() if copy else None
                node = input_node(x) if self.ctx.options.backprop else None
            if kept is not None or node is not None:
                self._stash[id(module)] = (kept, node)

        return activation_pre_hook

    def _activation_hook(self, module_name: str, base: str, family: ActivationFamily
                         ) -> Callable[[nn.Module, Any, Any], None]:
        def activation_hook(module: nn.Module, args: Any, output: Any) -> None:
            state = self.ctx.state
            if self.ctx.traced() or not (state.recording or state.checking):
                return  # (traced first: dynamo would guard on the state it reads)
            if threading.get_ident() != state.thread:
                return  # the root hook said so once
            if not state.recording:  # an unsampled step: the NaN/Inf check only
                call = self.forward.next_call(base)
                site = self.recorder.sites.get((base, call))
                if site is not None and isinstance(output, Tensor) and output.is_floating_point():
                    self.recorder.checks.check(site, output)  # a site a sampled step declared
                return
            kept, node = self._stash.pop(id(module), (None, None))
            self.forward.in_activation -= 1
            call = self.forward.next_call(base)
            if not isinstance(output, Tensor) or not output.is_floating_point():
                return
            x = args[0] if args and isinstance(args[0], Tensor) else None
            site = self.recorder.sites.get((base, call))
            if site is None:
                site = self.recorder.site(
                    base, call, family, module_name=module_name,
                    type_name=type(module).__name__, shape=tuple(output.shape),
                    unit_dim=self.forward.unit_dim(x))
            if kept is not None:
                x = kept
            elif not family.needs_input:
                x = None
            self.recorder.record(site, module, x, output, node)

        return activation_hook


def _base(module_name: str, module: nn.Module) -> str:
    """A module call-site's name before its call index: the module's, ``.out`` for PReLU."""
    base = module_name or "(root)"
    if any(True for _ in module.parameters(recurse=False)):
        base += ".out"  # the module is also a parameterised layer (PReLU)
    return base
