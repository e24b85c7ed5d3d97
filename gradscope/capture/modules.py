"""Activation modules: forward hooks on every module whose type is a known family.

Each activation module gets a forward hook (and, when it runs in place and its
family needs the input, a pre-hook that keeps a copy of the input before it is
overwritten). A module called several times per forward (torchvision's ResNet
reuses one ``relu`` per block) gives one call-site per call: ``layer1.0.relu``,
``layer1.0.relu[1]``. A module that is both an activation and has parameters
(PReLU) names its call-site ``name.out``, since ``name`` is its layer.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

from torch import Tensor, nn

from gradscope.activations import ActivationFamily, family_of
from gradscope.capture.activation import ActivationRecorder
from gradscope.capture.base import Context

__all__ = ["ModuleCapture"]


class ModuleCapture:
    """Hooks on activation modules, feeding an :class:`ActivationRecorder`."""

    def __init__(self, ctx: Context, recorder: ActivationRecorder) -> None:
        self.ctx = ctx
        self.recorder = recorder
        self._calls: dict[str, int] = {}
        self._stash: dict[int, Tensor] = {}

    def register(self, model: nn.Module) -> None:
        """Hook every included activation module of ``model``."""
        include = self.ctx.options.include_fn
        for name, module in model.named_modules():
            if not include(name, module):
                continue
            family = family_of(module)
            if family is None:
                continue
            if family.needs_input and getattr(module, "inplace", False):
                self.ctx.hook(module.register_forward_pre_hook(self._stash_hook()))
            self.ctx.hook(module.register_forward_hook(self._activation_hook(name, family)))

    def start_forward(self) -> None:
        """A new forward of the model begins: call indices start again at 0."""
        self._calls.clear()

    def clear(self) -> None:
        """Drop kept inputs (on detach)."""
        self._stash.clear()

    def held(self) -> int:
        """Inputs kept between a pre-hook and its hook (0 outside a forward)."""
        return len(self._stash)

    def _stash_hook(self) -> Callable[[nn.Module, Any], None]:
        def stash_input(module: nn.Module, args: Any) -> None:
            if (self.ctx.state.recording and args and isinstance(args[0], Tensor)
                    and threading.get_ident() == self.ctx.state.thread):
                self._stash[id(module)] = args[0].detach().clone()

        return stash_input

    def _activation_hook(self, module_name: str, family: ActivationFamily
                         ) -> Callable[[nn.Module, Any, Any], None]:
        def activation_hook(module: nn.Module, args: Any, output: Any) -> None:
            state = self.ctx.state
            if not (state.recording or state.checking):
                return
            if threading.get_ident() != state.thread:
                return  # the root hook said so once
            x = self._stash.pop(id(module), None)
            call = self._calls.get(module_name, 0)
            self._calls[module_name] = call + 1
            if not isinstance(output, Tensor) or not output.is_floating_point():
                return
            site = self.recorder.sites.get((module_name, call))
            if site is None:
                site = self.recorder.site(module_name, call, family,
                                          _site_name(module_name, call, module),
                                          type(module).__name__, tuple(output.shape))
            if not state.recording:
                self.recorder.check(site, output)
                return
            if family.needs_input and x is None and args and isinstance(args[0], Tensor):
                x = args[0]
            self.recorder.record(site, module, x, output)

        return activation_hook


def _site_name(module_name: str, call: int, module: nn.Module) -> str:
    base = module_name or "(root)"
    if any(True for _ in module.parameters(recurse=False)):
        base += ".out"  # the module is also a parameterised layer (PReLU)
    return base if call == 0 else f"{base}[{call}]"
